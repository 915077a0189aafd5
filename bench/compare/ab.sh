#!/usr/bin/env bash
# A/B of two kubegate binaries at the same moment, on the small object: each runs the
# harness's kubegate configuration on its own ports, and wrk -c16 alternates between them,
# so each round's pair shares the host's state. On a noisy host the paired ratios are the
# measurement; a single full run is not.
#
# usage: bash bench/compare/ab.sh BIN_A BIN_B [ROUNDS]
#   CONNS: client connections (default 16). STREAMS: above 1, h2load (one thread, as in
#   the harness's HTTP/2 cells) speaks HTTP/2 with that many concurrent streams a
#   connection instead of wrk's HTTP/1.1.
#   BENCH_WORK: the work dir of a `SETUP_ONLY=1 bash bench/compare/run.sh` (default
#   /tmp/kg-prof); its paths must still be up. Its tokens are valid for two hours: re-run
#   the setup (or bench/compare/mint.py) after that, or every round measures refusals.
# Prints a line per run (req/s, CPU µs per request, non-2xx answers) and the paired medians.
set -euo pipefail
A=$1 B=$2 N=${3:-12}
CONNS=${CONNS:-16} STREAMS=${STREAMS:-1}
W=${BENCH_WORK:-/tmp/kg-prof}
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$W"
read -r PA_PORT PA_ADMIN PB_PORT PB_ADMIN <<<"$(python3 - <<'PY'
import socket
held = [socket.socket() for _ in range(4)]
for s in held:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in held))
for s in held:
    s.close()
PY
)"
# The harness's configuration with the listener, admin port and audit file replaced.
config() { # NAME PORT ADMIN
  awk -v port="$2" -v admin="$3" -v audit="$1-audit.log" '
    /^\[/ { section = $0 }
    section == "[listen]" && /^port = / { $0 = "port = " port }
    section == "[admin]" && /^port = / { $0 = "port = " admin }
    section == "[audit]" && /^file = / { $0 = "file = \"" audit "\"" }
    { print }' kubegate.toml > "$1.toml"
}
config ab-a "$PA_PORT" "$PA_ADMIN"
config ab-b "$PB_PORT" "$PB_ADMIN"
printf 'wrk.headers["Authorization"] = "Bearer %s"\n' "$(cat token)" > ab-auth.lua
KUBEGATE_LOG=warn "$A" serve --config ab-a.toml > ab-a.log 2>&1 & PA=$!
KUBEGATE_LOG=warn "$B" serve --config ab-b.toml > ab-b.log 2>&1 & PB=$!
trap 'kill $PA $PB 2>/dev/null || true' EXIT
URL=/api/v1/namespaces/bench/pods/small
# One 5 s run against PORT: prints "REQUESTS REQ/S NON2XX".
load() { # PORT SECONDS
  if (( STREAMS > 1 )); then
    h2load -t1 -c "$CONNS" -m "$STREAMS" -D "$2" -H "Authorization: Bearer $(cat token)" \
      "https://127.0.0.1:$1$URL" | awk '
        /^requests:/ { done = $8 }
        /^finished in/ { gsub(",", "", $4); rps = $4 }
        /^status codes:/ { bad = $5 + $7 + $9 }
        END { print done, rps, bad }'
  else
    wrk -t2 -c"$CONNS" -d"$2"s -s ab-auth.lua "https://127.0.0.1:$1$URL" | awk '
      /requests in/ { done = $1 }
      /Requests\/sec/ { rps = $2 }
      /Non-2xx/ { bad = $NF }
      END { print done, rps, bad + 0 }'
  fi
}
for port in "$PA_PORT" "$PB_PORT"; do
  for _ in $(seq 1 50); do curl -sk -o /dev/null "https://127.0.0.1:$port/version" && break; sleep 0.2; done
  load "$port" 2 > /dev/null
done
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tick=$(getconf CLK_TCK)
for i in $(seq 1 "$N"); do
  for side in A B; do
    if [[ $side == A ]]; then port=$PA_PORT pid=$PA; else port=$PB_PORT pid=$PB; fi
    c0=$(cpu "$pid")
    read -r reqs rps non2xx <<<"$(load "$port" 5)"
    c1=$(cpu "$pid")
    us=$(python3 -c "print(round(($c1 - $c0) * 1e6 / $tick / $reqs, 1))")
    echo "$i $side rps=$rps cpu_us_per_req=$us non2xx=$non2xx"
  done
done | tee ab.txt
python3 "$HERE/ab_summary.py" ab.txt
