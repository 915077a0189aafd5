#!/usr/bin/env bash
# Where the latency tail comes from: kubegate against nginx at 16 connections, small object,
# HTTP/1.1 over TLS, the same paths as run.sh (it starts them with SETUP_ONLY=1), alternating
# rounds. Each request's start time and latency is logged (h2load --h1 --log-file), and each
# thread's CPU time and wake-ups are read from /proc before and after every round. tail.py
# then tests the first pass's suspects one by one, with nginx as the control:
#   the metrics upkeep (every 5 s): latency folded onto a 5 s period; a periodic stall shows
#     as one phase bin far above the others, and the upkeep thread's CPU per run is reported;
#   the log flusher (5 ms linger): its wake-ups per round (none when nothing is logged);
#   the audit writer (2 ms linger): the main runtime's and blocking pool's CPU and wake-ups;
#   imbalance between the connection threads: each one's share of the CPU per round;
#   the host: each thread's time runnable but waiting for a CPU, and whether the slowest
#     requests bunch into a few 100 ms windows (stalls) or spread over the round.
# Environment: ROUNDS (6), DURATION (s per round, 10), CONNS (16), RATE (requests per second
# in all, spread over the connections; unset: each connection sends its next request as soon
# as the last is answered, which saturates this host), KUBEGATE_BIN (skip the build), BENCH_WORK (scratch dir), and what run.sh takes (KUBEGATE_LOG, KUBEGATE_GLIBC_TUNABLES).
# About 3 minutes with the defaults. Results: bench/compare/results/<timestamp>-tail.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=$PWD/bench/compare
ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-10}
CONNS=${CONNS:-16}
W=${BENCH_WORK:-$(mktemp -d /tmp/kubegate-tail.XXXXXX)}
mkdir -p "$W"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$HERE/results/$STAMP-tail${RATE:+-$RATE}.md

SETUP_ONLY=1 BENCH_WORK=$W WATCHES=10 USERS=10 bash "$HERE/run.sh" > "$W/setup.log" 2>&1 &
SETUP=$!
trap 'kill "$SETUP" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
until grep -q '^token: ' "$W/setup.log"; do
  if ! kill -0 "$SETUP" 2>/dev/null; then cat "$W/setup.log" >&2; echo "run.sh setup failed" >&2; exit 1; fi
  sleep 1
done
field() { awk -v p="$1" -v f="$2" '$1 == p && $3 == "pid" {print $f}' "$W/setup.log"; }
TOKEN=$(cat "$W/token")
OBJ=/api/v1/namespaces/bench/pods/small
PATHS=(nginx kubegate)
declare -A URL PIDOF
for p in "${PATHS[@]}"; do URL[$p]=$(field "$p" 2); PIDOF[$p]=$(field "$p" 4); done

# One line per thread (kubegate) or process (nginx's master and workers): name, then
# schedstat's ns on the CPU and ns runnable but waiting for one, then wake-ups (voluntary
# context switches) and preemptions (involuntary), tab-separated.
threads() { # pid
  local pid=$1 t
  local -a dirs=()
  for t in /proc/"$pid"/task/*; do dirs+=("$t"); done
  for t in $(cat "/proc/$pid/task/$pid/children" 2>/dev/null || true); do dirs+=("/proc/$t"); done
  for t in "${dirs[@]}"; do
    [[ -r $t/schedstat ]] || continue
    printf '%s\t%s\t%s\t%s\t%s\n' "$(cat "$t/comm")" \
      "$(awk '{print $1}' "$t/schedstat")" "$(awk '{print $2}' "$t/schedstat")" \
      "$(awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status")" \
      "$(awk '/^nonvoluntary_ctxt_switches/ {print $2}' "$t/status")"
  done
}

PACE=()
[[ -n ${RATE:-} ]] && PACE=(--rps=$((RATE / CONNS)))
export RATE
echo "tail study: ${ROUNDS} rounds x ${DURATION}s at $CONNS connections, work dir $W"
for p in "${PATHS[@]}"; do # warm-up: pools, token cache, page cache
  h2load --h1 -t1 -c"$CONNS" -m1 -D 2 -H "authorization: Bearer $TOKEN" -H 'accept: application/json' \
    "${URL[$p]}$OBJ" > /dev/null
done
for r in $(seq 1 "$ROUNDS"); do
  for p in "${PATHS[@]}"; do
    threads "${PIDOF[$p]}" > "$W/$p-$r.before"
    h2load --h1 -t1 -c"$CONNS" -m1 -D "$DURATION" "${PACE[@]}" --log-file="$W/$p-$r.lat" \
      -H "authorization: Bearer $TOKEN" -H 'accept: application/json' "${URL[$p]}$OBJ" > "$W/$p-$r.out"
    threads "${PIDOF[$p]}" > "$W/$p-$r.after"
    grep -q ' 0 failed' "$W/$p-$r.out" || { cat "$W/$p-$r.out" >&2; echo "$p: failed requests" >&2; exit 1; }
    echo "  round $r $p: $(grep '^finished in' "$W/$p-$r.out")"
  done
done
python3 "$HERE/tail.py" "$W" "$ROUNDS" "$DURATION" "$CONNS" "${PATHS[@]}" > "$OUT"
{
  echo
  echo "meta: $(date -u +%FT%TZ), $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes'), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), KUBEGATE_LOG=${KUBEGATE_LOG:-warn}, GLIBC_TUNABLES=${KUBEGATE_GLIBC_TUNABLES-glibc.malloc.tcache_count=64}"
} >> "$OUT"
cat "$OUT"
echo "written: $OUT"
