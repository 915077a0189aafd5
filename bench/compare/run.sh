#!/usr/bin/env bash
# kubegate side by side with kubectl proxy, nginx and a direct connection (issues #8, #18).
#
#   bash bench/compare/run.sh
#
# One command: installs what it lacks (nginx-light, wrk, h2load from nghttp2-client, curl,
# pyjwt/cryptography/h2), builds the dist binary (the image's profile), picks free ports
# (each one bound-tested at start, below the kernel's ephemeral range, so a running
# gateway or a second copy of this script does not collide), runs everything on 127.0.0.1
# and stops it all at the end.
#
# One nginx TLS upstream serving API-shaped JSON from memory; five paths to it, measured in
# alternation (A B C D E A B C D E ...) with wrk (HTTP/1.1, 1 thread, keep-alive):
#   direct            wrk -> nginx upstream (TLS)
#   kubectl-proxy     wrk -> kubectl proxy (plain http on loopback) -> upstream (TLS)
#   nginx             wrk -> nginx TLS reverse proxy, no auth -> upstream (TLS, keepalive)
#   kubegate          wrk -> kubegate (TLS, ES256 JWT, token cache 60s, 1,000-rule policy, audit file) -> upstream
#   kubegate-nocache  the same with token_cache_ttl = "0s" (a signature check per request)
#   kubegate-nocache-rs256  the same, the token signed RS256 (what the key type costs)
# then, in order:
#   HTTP/2 the way kubectl talks: h2load (1 thread, -c 16 -m 10 and -c 128 -m 10, TLS, ALPN h2)
#     against kubegate and against nginx as an h2 TLS reverse proxy (a second server block of
#     the nginx proxy, HTTP/1.1 keepalive to the same upstream), alternated; percentiles from
#     h2load's --log-file;
#   many users: USERS distinct users with their own tokens (one file, wrk picks the next token
#     per request, users.lua), after a warm-up pass over every token; alternated with the same
#     script given one token, at 16 and 128 connections (and the same pair against nginx,
#     which ignores the token: the load generator's own cost). Memory: two more gateways,
#     started for this alone (token cache on and off), RSS before and after a first pass over
#     the USERS tokens: per rate-limit bucket (no-cache variant: no identity kept) and per
#     cached identity (the difference). The token cache TTL is 60 s: kubegate's cells that
#     run later than that after its pass (longer DURATION or ROUNDS) re-verify each token
#     once a minute, as a real gateway does;
#   TLS handshakes/s (Connection: close), a STREAM_BYTES response, WATCHES idle watches.
# The report lists each round of the small-object cells (req/s, p99, CPU per 10k requests)
# and ends with a targets table (issue 18's targets, then issue 8's still in force).
# Environment: DURATION (s per cell, 4), ROUNDS (2), WARMUP (s, 2), WATCHES (10000, capped by
# the open-file limit), USERS (10000), STREAM_BYTES (1073741824), KUBEGATE_BIN (skip the
# build), BENCH_WORK (scratch dir, default a new mktemp -d), SETUP_ONLY=1 (start every path,
# print the URLs and wait: for profiling by hand), KUBEGATE_LOG (the gateways' log filter,
# default warn: no per-request log line, as nginx here runs with access_log off; the audit
# file still records every request. KUBEGATE_LOG=info measures with the access line),
# KUBEGATE_GLIBC_TUNABLES (the gateways' GLIBC_TUNABLES, default the image's
# glibc.malloc.tcache_count=64; empty measures glibc's defaults).
# The defaults take about 10 minutes on 2 cores (the report's meta lines say how long).
# Short trial run (about 3 minutes; do not keep its results files):
#   DURATION=2 ROUNDS=1 WARMUP=1 WATCHES=500 STREAM_BYTES=100000000 bash bench/compare/run.sh
# Results: bench/compare/results/<timestamp>.md (+ .jsonl raw data).
# The latency tail, suspect by suspect (per-request logs, per-thread CPU and wake-ups):
#   bash bench/compare/tail.sh   (it starts this script with SETUP_ONLY=1)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
HERE=$ROOT/bench/compare
DURATION=${DURATION:-4}
ROUNDS=${ROUNDS:-2}
WARMUP=${WARMUP:-2}
WATCHES=${WATCHES:-10000}
USERS=${USERS:-10000}
T_START=$(date +%s)
# Each watch costs the proxy two sockets (client + HTTP/1.1 upstream): stay under the limit.
max_watches=$(( ($(ulimit -Hn) - 1000) / 2 ))
if (( WATCHES > max_watches )); then echo "open-file hard limit $(ulimit -Hn): $max_watches watches instead of $WATCHES"; WATCHES=$max_watches; fi
STREAM_BYTES=${STREAM_BYTES:-1073741824}
W=${BENCH_WORK:-$(mktemp -d /tmp/kubegate-compare.XXXXXX)}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$HERE/results" "$W/data" "$W/up" "$W/px"
chmod 755 "$W" "$W/data"  # nginx workers run as www-data
RAW=$HERE/results/$STAMP.jsonl
[[ -n ${SETUP_ONLY:-} ]] && RAW=$W/raw.jsonl
: > "$RAW"
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "work dir $W, open-file limit $(ulimit -n)"

# ---------------------------------------------------------------- ports
# Each port is one that binds on 127.0.0.1 now (taken ones are skipped), chosen at random
# below the ephemeral range, so no outgoing connection of this run is handed one before its
# server has bound it, and two copies of this script rarely try the same one.
free_ports() { # count
  python3 - "$1" <<'PY'
import random, socket, sys
eph = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
lo, hi = (10000, eph) if eph > 12000 else (eph, 65535)
held, tries = [], 0
while len(held) < int(sys.argv[1]):
    tries += 1
    if tries > 10000:
        sys.exit("no free ports on 127.0.0.1")
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", random.randrange(lo, hi)))
        held.append(s)
    except OSError:
        s.close()
print(" ".join(str(s.getsockname()[1]) for s in held))
for s in held:
    s.close()
PY
}
read -r P_UP P_PX P_PXH P_KG P_KGN P_KP P_WATCH A_KG A_KGN P_KGW A_KGW P_KPW P_KGU A_KGU P_KGUN A_KGUN \
  P_KGNR A_KGNR <<<"$(free_ports 18)"
echo "ports: upstream $P_UP, nginx $P_PX (h2 $P_PXH), kubegate $P_KG, no cache $P_KGN, kubectl proxy $P_KP"

# ---------------------------------------------------------------- tools
need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
command -v h2load >/dev/null || need+=(nghttp2-client)
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
python3 -c 'import jwt, cryptography, h2' 2>/dev/null || python3 -m pip install -q pyjwt cryptography h2
KUBECTL=${KUBECTL:-/usr/bin/kubectl}
# KUBEGATE_BIN=path skips the build (e.g. while another cargo command holds the build lock).
# The image's profile (`dist`: fat LTO), so the numbers are those of the shipped binary.
if [[ -z ${KUBEGATE_BIN:-} ]]; then cargo build --profile dist -p kubegate --bin kubegate; fi
KG=${KUBEGATE_BIN:-$ROOT/target/dist/kubegate}
export KUBEGATE_LOG=${KUBEGATE_LOG:-warn}
# The gateways run as the image runs them (Dockerfile); nothing else gets the tunable.
KUBEGATE_GLIBC_TUNABLES=${KUBEGATE_GLIBC_TUNABLES-glibc.malloc.tcache_count=64}
# env execs the gateway, so $! is the gateway's own pid.
KGRUN=(env "GLIBC_TUNABLES=$KUBEGATE_GLIBC_TUNABLES" "$KG")

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# ---------------------------------------------------------------- certificates (ECDSA P-256)
openssl ecparam -name prime256v1 -genkey -noout -out "$W/ca.key" 2>/dev/null
openssl req -x509 -new -key "$W/ca.key" -subj /CN=bench-ca -days 2 -out "$W/ca.crt" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$W/tls.key" 2>/dev/null
openssl req -new -key "$W/tls.key" -subj /CN=localhost -out "$W/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$W/ext.cnf"
openssl x509 -req -in "$W/tls.csr" -CA "$W/ca.crt" -CAkey "$W/ca.key" -CAcreateserial -days 2 \
  -extfile "$W/ext.cnf" -out "$W/tls.crt" 2>/dev/null

# ---------------------------------------------------------------- data, token, policy
python3 "$HERE/gen_data.py" "$W/data"
truncate -s "$STREAM_BYTES" "$W/data/big.log"
ISSUER=https://issuer.bench.example
python3 "$HERE/mint.py" "$W" "$ISSUER" kubegate bench-user bench,team-42 "$USERS"
TOKEN=$(cat "$W/token")
# The one-user control of the many-users cells: the first of the USERS tokens (same shape).
head -n 1 "$W/tokens" > "$W/token1"
echo "minted $(wc -l < "$W/tokens") user tokens"
{
  echo 'default = "deny"'
  for i in $(seq 0 997); do
    printf '[[rule]]\nname = "team-%d"\neffect = "allow"\nsubjects = { groups = ["team-%d"] }\nresources = [{ api_groups = ["", "apps"], resources = ["pods", "pods/log", "deployments"], namespaces = ["team-%d"], verbs = ["get", "list", "watch"] }]\n' "$i" "$i" "$i"
  done
  printf '[[rule]]\nname = "discovery"\neffect = "allow"\nsubjects = { authenticated = true }\npaths = [{ path = "/api", prefix = true, methods = ["get"] }, { path = "/version", methods = ["get"] }]\n'
  printf '[[rule]]\nname = "bench"\neffect = "allow"\nsubjects = { groups = ["bench"] }\nresources = [{ api_groups = [""], resources = ["pods", "pods/log", "configmaps"], namespaces = ["bench"], verbs = ["get", "list", "watch"] }]\n'
} > "$W/policy.toml"
echo "policy rules: $(grep -c '^\[\[rule\]\]' "$W/policy.toml")"

# ---------------------------------------------------------------- nginx upstream and nginx proxy
# HTTP/2 on a TLS listener: `listen ... ssl http2` until nginx 1.25.1, `http2 on;` from then.
ngx_version=$(nginx -v 2>&1 | sed 's|.*nginx/||; s| .*||')
if [[ $(printf '%s\n1.25.1\n' "$ngx_version" | sort -V | head -n 1) == 1.25.1 ]]; then
  H2_LISTEN="ssl" H2_ON="http2 on;"
else
  H2_LISTEN="ssl http2" H2_ON=""
fi
# The main context both nginx configs share; the directory holds the pid and error log.
ngx_main() { # dir
  cat <<NGX
worker_processes auto;
worker_rlimit_nofile 200000;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 60000; }
NGX
}
{ ngx_main "$W/up"; cat <<NGX
http {
  access_log off;
  default_type application/json;
  types { }
  etag off;
  open_file_cache max=100 inactive=600s;
  open_file_cache_valid 600s;
  keepalive_requests 100000000;
  keepalive_timeout 3600s;
  http2_max_concurrent_streams 100000;
  client_body_temp_path $W/up/tmp; proxy_temp_path $W/up/tmp; fastcgi_temp_path $W/up/tmp; uwsgi_temp_path $W/up/tmp; scgi_temp_path $W/up/tmp;
  server {
    listen 127.0.0.1:$P_UP $H2_LISTEN backlog=8192;
    $H2_ON
    ssl_certificate $W/tls.crt;
    ssl_certificate_key $W/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location = /api/v1/namespaces/bench/pods/small { alias $W/data/pod.json; }
    location = /api/v1/namespaces/bench/configmaps/large { alias $W/data/configmap.json; }
    location = /api/v1/namespaces/bench/pods { alias $W/data/podlist.json; }
    location = /api/v1/namespaces/bench/pods/big/log { alias $W/data/big.log; }
    location = /version { alias $W/data/version.json; }
    location ~ ^/(readyz|livez|healthz)$ { return 200 "ok"; }
  }
}
NGX
} > "$W/up/nginx.conf"
mkdir -p "$W/up/tmp" "$W/px/tmp"
# One proxy server's body after its listen line (closing brace included).
NGX_PROXY_SERVER=$(cat <<NGX
    ssl_certificate $W/tls.crt;
    ssl_certificate_key $W/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass https://kube;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $W/ca.crt;
      proxy_ssl_name localhost;
      proxy_ssl_session_reuse on;
      proxy_buffering off;
      proxy_buffer_size 64k;
      proxy_buffers 4 64k;
      proxy_busy_buffers_size 128k;
      proxy_read_timeout 3600s;
    }
  }
NGX
)
{ ngx_main "$W/px"; cat <<NGX
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 3600s;
  client_body_temp_path $W/px/tmp; proxy_temp_path $W/px/tmp; fastcgi_temp_path $W/px/tmp; uwsgi_temp_path $W/px/tmp; scgi_temp_path $W/px/tmp;
  # keepalive: idle upstream connections kept per worker; above the h2 cells' 1,280
  # concurrent requests, so nginx does not open and close upstream TLS connections there.
  upstream kube { server 127.0.0.1:$P_UP; keepalive 2048; keepalive_requests 100000000; keepalive_timeout 3600s; }
  server {
    listen 127.0.0.1:$P_PX ssl backlog=8192;
$NGX_PROXY_SERVER
  # The same proxy for HTTP/2 clients (ALPN h2), on a port of its own so the HTTP/1.1 cells
  # above are unchanged; the upstream side stays HTTP/1.1 keepalive (nginx proxies no h2).
  server {
    listen 127.0.0.1:$P_PXH $H2_LISTEN backlog=8192;
    $H2_ON
$NGX_PROXY_SERVER
}
NGX
} > "$W/px/nginx.conf"
nginx -q -t -c "$W/up/nginx.conf" -p "$W/up"
nginx -q -t -c "$W/px/nginx.conf" -p "$W/px"
nginx -c "$W/up/nginx.conf" -p "$W/up" -g 'daemon off;' & PID_UP=$!; PIDS+=("$PID_UP")
nginx -c "$W/px/nginx.conf" -p "$W/px" -g 'daemon off;' & PID_PX=$!; PIDS+=("$PID_PX")
python3 "$HERE/longlived.py" server "$P_WATCH" "$W/tls.crt" "$W/tls.key" & PIDS+=("$!")

# ---------------------------------------------------------------- kubeconfig, kubectl proxy, kubegate
cat > "$W/upstream.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: bench
  cluster:
    server: https://127.0.0.1:$P_UP
    certificate-authority: $W/ca.crt
users:
- name: gateway
  user:
    token: bench-upstream-token
contexts:
- name: bench
  context: {cluster: bench, user: gateway}
current-context: bench
KC
sed "s/:$P_UP/:$P_WATCH/" "$W/upstream.kubeconfig" > "$W/watch.kubeconfig"
"$KUBECTL" proxy --kubeconfig="$W/upstream.kubeconfig" --address=127.0.0.1 --port=$P_KP \
  > "$W/kubectl-proxy.log" 2>&1 & PID_KP=$!; PIDS+=("$PID_KP")
# The watch test has its own kubectl proxy and kubegate in front of longlived.py.
"$KUBECTL" proxy --kubeconfig="$W/watch.kubeconfig" --address=127.0.0.1 --port=$P_KPW \
  > "$W/kubectl-proxy-watch.log" 2>&1 & PID_KPW=$!; PIDS+=("$PID_KPW")

# A full token cache is emptied (gateway/src/authn/cache.rs): room for every user's token
# and the one-user token, with margin, so the many-users cells measure a warm cache.
TOKEN_CACHE_SIZE=$(( USERS * 2 > 10000 ? USERS * 2 : 10000 ))
kg_config() { # name port admin_port cache_ttl
  cat > "$W/$1.toml" <<TOML
policy = "policy.toml"
[listen]
address = "127.0.0.1"
port = $2
tls_cert = "tls.crt"
tls_key = "tls.key"
[upstream]
kubeconfig = "upstream.kubeconfig"
timeout = "30s"
[[auth.oidc]]
issuer = "$ISSUER"
audiences = ["kubegate"]
jwks_file = "jwks.json"
groups_claim = "groups"
algorithms = ["ES256", "RS256"]
[auth]
token_cache_ttl = "$4"
token_cache_size = $TOKEN_CACHE_SIZE
[limits]
requests_per_second = 1000000
burst = 1000000
unauthenticated_per_second = 1000000
unauthenticated_burst = 1000000
max_in_flight = 1000000
max_in_flight_per_user = 1000000
max_streams = 1000000
max_streams_per_user = 1000000
max_connections = 1000000
# Every benchmark client comes from 127.0.0.1: the per-address cap would refuse the watches.
max_connections_per_address = 1000000
[admin]
address = "127.0.0.1"
port = $3
[audit]
file = "$1-audit.log"
max_file_size = 104857600
max_backups = 1
TOML
}
kg_config kubegate $P_KG $A_KG 60s
kg_config kubegate-nocache $P_KGN $A_KGN 0s
kg_config kubegate-nocache-rs256 $P_KGNR $A_KGNR 0s
kg_config kubegate-watch $P_KGW $A_KGW 60s
kg_config users-mem $P_KGU $A_KGU 60s
kg_config users-mem-nocache $P_KGUN $A_KGUN 0s
sed -i 's/^kubeconfig = "upstream.kubeconfig"/kubeconfig = "watch.kubeconfig"/' "$W/kubegate-watch.toml"
"${KGRUN[@]}" serve --config "$W/kubegate.toml" > "$W/kubegate.log" 2>&1 & PID_KG=$!; PIDS+=("$PID_KG")
"${KGRUN[@]}" serve --config "$W/kubegate-nocache.toml" > "$W/kubegate-nocache.log" 2>&1 & PID_KGN=$!; PIDS+=("$PID_KGN")
"${KGRUN[@]}" serve --config "$W/kubegate-nocache-rs256.toml" > "$W/kubegate-nocache-rs256.log" 2>&1 & PID_KGNR=$!; PIDS+=("$PID_KGNR")
"${KGRUN[@]}" serve --config "$W/kubegate-watch.toml" > "$W/kubegate-watch.log" 2>&1 & PID_KGW=$!; PIDS+=("$PID_KGW")
# Two more, only for the memory per user (see "many users").
"${KGRUN[@]}" serve --config "$W/users-mem.toml" > "$W/users-mem.log" 2>&1 & PID_KGU=$!; PIDS+=("$PID_KGU")
"${KGRUN[@]}" serve --config "$W/users-mem-nocache.toml" > "$W/users-mem-nocache.log" 2>&1 & PID_KGUN=$!; PIDS+=("$PID_KGUN")

wait_http() { # url [curl args...]
  local url=$1; shift
  for _ in $(seq 1 200); do
    if curl -fsS -o /dev/null "$@" "$url" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "not ready: $url" >&2; exit 1
}
wait_http "https://127.0.0.1:$P_UP/readyz" --cacert "$W/ca.crt"
wait_http "https://127.0.0.1:$P_PX/readyz" --cacert "$W/ca.crt"
wait_http "https://127.0.0.1:$P_PXH/readyz" --cacert "$W/ca.crt" --http2
wait_http "http://127.0.0.1:$P_KP/version"
wait_http "http://127.0.0.1:$A_KG/readyz"
wait_http "http://127.0.0.1:$A_KGN/readyz"
wait_http "http://127.0.0.1:$A_KGNR/readyz"
wait_http "http://127.0.0.1:$A_KGW/readyz"
wait_http "http://127.0.0.1:$A_KGU/readyz"
wait_http "http://127.0.0.1:$A_KGUN/readyz"
wait_http "http://127.0.0.1:$P_KPW/version"

declare -A URL PIDOF
PATHS=(direct kubectl-proxy nginx kubegate kubegate-nocache kubegate-nocache-rs256)
URL[direct]=https://127.0.0.1:$P_UP;        PIDOF[direct]=$PID_UP
URL[kubectl-proxy]=http://127.0.0.1:$P_KP;  PIDOF[kubectl-proxy]=$PID_KP
URL[nginx]=https://127.0.0.1:$P_PX;         PIDOF[nginx]=$PID_PX
URL[kubegate]=https://127.0.0.1:$P_KG;      PIDOF[kubegate]=$PID_KG
URL[kubegate-nocache]=https://127.0.0.1:$P_KGN; PIDOF[kubegate-nocache]=$PID_KGN
URL[kubegate-nocache-rs256]=https://127.0.0.1:$P_KGNR; PIDOF[kubegate-nocache-rs256]=$PID_KGNR
# The bearer token each path is sent: the ES256 one, but where a path says otherwise.
declare -A TOKENOF=([kubegate-nocache-rs256]=$(cat "$W/token-rs256"))
URL[users-mem]=https://127.0.0.1:$P_KGU;    PIDOF[users-mem]=$PID_KGU
URL[users-mem-nocache]=https://127.0.0.1:$P_KGUN; PIDOF[users-mem-nocache]=$PID_KGUN
declare -A OBJ
OBJ[small]=/api/v1/namespaces/bench/pods/small
OBJ[large]=/api/v1/namespaces/bench/configmaps/large
OBJ[list]=/api/v1/namespaces/bench/pods
declare -A FILE=([small]=pod.json [large]=configmap.json [list]=podlist.json)

# Every path must return the upstream's exact bytes as application/json.
for p in "${PATHS[@]}"; do
  for o in small large list; do
    ct=$(curl -fsS -k -H "Authorization: Bearer ${TOKENOF[$p]:-$TOKEN}" -o "$W/check.json" -w '%{content_type}' "${URL[$p]}${OBJ[$o]}")
    cmp -s "$W/check.json" "$W/data/${FILE[$o]}" || { echo "$p $o: body differs" >&2; exit 1; }
    [[ $ct == application/json* ]] || { echo "$p $o: content type $ct" >&2; exit 1; }
  done
done
# And over HTTP/2 (ALPN h2) for the h2 cells.
declare -A H2URL=([nginx]=https://127.0.0.1:$P_PXH [kubegate]=https://127.0.0.1:$P_KG)
for p in nginx kubegate; do
  ver=$(curl -fsS -k --http2 -H "Authorization: Bearer $TOKEN" -o "$W/check.json" -w '%{http_version}' "${H2URL[$p]}${OBJ[small]}")
  cmp -s "$W/check.json" "$W/data/pod.json" || { echo "$p over h2: body differs" >&2; exit 1; }
  [[ $ver == 2 ]] || { echo "$p: HTTP/$ver where HTTP/2 was offered" >&2; exit 1; }
done
echo "all paths serve identical bodies (nginx and kubegate over HTTP/2 too)"
if [[ -n ${SETUP_ONLY:-} ]]; then
  # Leave everything running for profiling by hand; Ctrl-C (or killing this script) stops it.
  for p in "${PATHS[@]}"; do echo "$p ${URL[$p]} pid ${PIDOF[$p]}"; done
  echo "HTTP/2: nginx ${H2URL[nginx]}, kubegate ${H2URL[kubegate]}"
  echo "user tokens: $W/tokens"
  echo "token: $W/token"
  wait
fi

# /proc helpers: the process and its direct children (nginx workers).
procs() { echo "$1" $(cat "/proc/$1/task/$1/children" 2>/dev/null || true); }
cpu_ticks() { local t=0 p; for p in $(procs "$1"); do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
mem_kb() { local t=0 p v; for p in $(procs "$1"); do v=$(awk -v k="$2:" '$1 == k {print $2}' "/proc/$p/status"); t=$((t + v)); done; echo $t; }
reset_hwm() { local p; for p in $(procs "$1"); do echo 5 > "/proc/$p/clear_refs" 2>/dev/null || true; done; }
HZ=$(getconf CLK_TCK)

for p in "${PATHS[@]}"; do
  printf '{"kind":"rest","path":"%s","rss_kb":%s}\n' "$p" "$(mem_kb "${PIDOF[$p]}" VmRSS)" >> "$RAW"
done

# With WRK_TOKENS=file, users.lua sends the file's tokens round-robin instead of $TOKEN.
# The cell's JSON is left in $LAST.
run_wrk() { # kind path object conns duration round [extra wrk args]
  local kind=$1 p=$2 o=$3 c=$4 d=$5 r=$6; shift 6
  local pid=${PIDOF[$p]} c0 c1 out line script=(-s "$HERE/report.lua") tokens=()
  if [[ -n ${WRK_TOKENS:-} ]]; then script=(-s "$HERE/users.lua"); tokens=(-- "$WRK_TOKENS" "${WRK_START:-0}"); fi
  c0=$(cpu_ticks "$pid")
  out=$(wrk -t1 -c"$c" -d"${d}s" --timeout 10s --latency "${script[@]}" \
    -H "Authorization: Bearer ${TOKENOF[$p]:-$TOKEN}" -H 'Accept: application/json' "$@" "${URL[$p]}${OBJ[$o]}" "${tokens[@]}")
  c1=$(cpu_ticks "$pid")
  line=$(grep '^WRKJSON' <<<"$out" | sed 's/^WRKJSON //')
  LAST=$line
  printf '{"kind":"%s","path":"%s","object":"%s","conns":%d,"round":%d,"cpu_s":%s,"hwm_kb":%d,"rss_kb":%d,"wrk":%s}\n' \
    "$kind" "$p" "$o" "$c" "$r" "$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" 'BEGIN{print (b-a)/hz}')" \
    "$(mem_kb "$pid" VmHWM)" "$(mem_kb "$pid" VmRSS)" "$line" >> "$RAW"
  echo "  $kind $p $o c=$c r=$r: $line"
}

echo "== warm-up (at $(( $(date +%s) - T_START )) s)"
for p in "${PATHS[@]}"; do for o in small list; do run_wrk warmup "$p" "$o" 16 "$WARMUP" 0; done; done

echo "== keep-alive matrix (${ROUNDS} rounds x ${DURATION}s, alternating paths) (at $(( $(date +%s) - T_START )) s)"
for o in small list; do
  for c in 1 16 128; do
    for r in $(seq 1 "$ROUNDS"); do
      for p in "${PATHS[@]}"; do run_wrk load "$p" "$o" "$c" "$DURATION" "$r"; done
    done
  done
done
for r in $(seq 1 "$ROUNDS"); do
  for p in "${PATHS[@]}"; do run_wrk load "$p" large 16 "$DURATION" "$r"; done
done

# One h2load run: 1 thread, C connections with M concurrent streams each, TLS with ALPN h2.
run_h2() { # kind path conns streams duration round
  local kind=$1 p=$2 c=$3 m=$4 d=$5 r=$6
  local pid=${PIDOF[$p]} c0 c1 line
  c0=$(cpu_ticks "$pid")
  h2load -t1 -c"$c" -m"$m" -D "$d" --log-file="$W/h2.log" \
    -H "authorization: Bearer $TOKEN" -H 'accept: application/json' "${H2URL[$p]}${OBJ[small]}" > "$W/h2.out"
  c1=$(cpu_ticks "$pid")
  line=$(python3 "$HERE/h2json.py" "$W/h2.out" "$W/h2.log")
  rm -f "$W/h2.log"
  printf '{"kind":"%s","path":"%s","object":"small","conns":%d,"streams":%d,"round":%d,"cpu_s":%s,"hwm_kb":%d,"rss_kb":%d,"wrk":%s}\n' \
    "$kind" "$p" "$c" "$m" "$r" "$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" 'BEGIN{print (b-a)/hz}')" \
    "$(mem_kb "$pid" VmHWM)" "$(mem_kb "$pid" VmRSS)" "$line" >> "$RAW"
  echo "  $kind $p small c=$c m=$m r=$r: $line"
}

echo "== HTTP/2 (h2load, ${ROUNDS} rounds x ${DURATION}s, alternating nginx and kubegate) (at $(( $(date +%s) - T_START )) s)"
# Warm-up at the largest concurrency, so both proxies open upstream connections for it
# (nginx: HTTP/1.1 keepalive; kubegate: HTTP/1.1 pools too for ordinary requests, one
# connection per concurrent request) before any measured cell. Only partly: h2load ends a
# run with its streams in flight, and both proxies close the upstream connections of the
# requests so abandoned (docs/benchmarks.md, eighth pass), so each 128 x 10 cell reopens
# many of them.
for p in nginx kubegate; do run_h2 warmup "$p" 128 10 "$WARMUP" 0; done
for c in 16 128; do
  for r in $(seq 1 "$ROUNDS"); do
    for p in nginx kubegate; do run_h2 h2 "$p" "$c" 10 "$DURATION" "$r"; done
  done
done

echo "== many users ($USERS distinct users, a token each, round-robin over the connections) (at $(( $(date +%s) - T_START )) s)"
json_field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
# Every one of the USERS tokens answered at least once, at 16 connections, in runs of
# WARMUP s each continuing where the last one stopped; any refused token stops the run.
users_pass() { # path
  local p=$1 sent=0 answered try
  for try in $(seq 1 100); do
    WRK_TOKENS=$W/tokens WRK_START=$sent run_wrk users-warmup "$p" small 16 "$WARMUP" 0
    if (( $(json_field "$LAST" status_errors) + $(json_field "$LAST" sock_errors) > 0 )); then
      echo "$p refused some of the $USERS user tokens: see $W/$p.log and $W/$p-audit.log" >&2; exit 1
    fi
    # Tokens go out in order, one connection's next request after its last answer, so
    # only the last 16 sent can be unanswered.
    answered=$(json_field "$LAST" requests)
    (( answered > 16 )) && sent=$(( sent + answered - 16 ))
    (( sent >= USERS )) && return 0
  done
  echo "$p: could not send all $USERS user tokens in 100 runs" >&2; exit 1
}
# Memory, on two gateways started for it alone (a fresh heap, so growth is not hidden in
# memory an earlier cell freed): the no-cache variant keeps no identity, only per-user
# state such as the rate-limit bucket; the cached one keeps both, and the difference is the
# cached identities. A one-token pass first brings connection buffers to working size.
for p in users-mem-nocache users-mem; do
  WRK_TOKENS=$W/token1 run_wrk users-warmup "$p" small 16 "$WARMUP" 0
  before=$(mem_kb "${PIDOF[$p]}" VmRSS)
  users_pass "$p"
  printf '{"kind":"users-mem","path":"%s","users":%d,"rss_before_kb":%d,"rss_after_kb":%d}\n' \
    "$p" "$USERS" "$before" "$(mem_kb "${PIDOF[$p]}" VmRSS)" >> "$RAW"
done
# Throughput on the kubegate of the other cells, its cache warmed just before (60 s TTL).
users_pass kubegate
# nginx ignores the token: its pair (after kubegate's, which should run within the TTL)
# shows what the token file costs the load generator.
for p in kubegate nginx; do
  for c in 16 128; do
    for r in $(seq 1 "$ROUNDS"); do
      WRK_TOKENS=$W/token1 run_wrk users-1 "$p" small "$c" "$DURATION" "$r"
      WRK_TOKENS=$W/tokens run_wrk users-n "$p" small "$c" "$DURATION" "$r"
    done
  done
done

echo "== new TLS handshakes (Connection: close, 16 connections) (at $(( $(date +%s) - T_START )) s)"
for r in $(seq 1 "$ROUNDS"); do
  for p in direct nginx kubegate; do run_wrk handshake "$p" small 16 "$DURATION" "$r" -H 'Connection: close'; done
done

echo "== $STREAM_BYTES-byte response (at $(( $(date +%s) - T_START )) s)"
for p in direct kubectl-proxy nginx kubegate; do
  pid=${PIDOF[$p]}
  before=$(mem_kb "$pid" VmRSS); reset_hwm "$pid"
  res=$(curl -fsS -k -H "Authorization: Bearer $TOKEN" -o /dev/null -w '%{size_download} %{time_total} %{http_version}' \
    "${URL[$p]}/api/v1/namespaces/bench/pods/big/log")
  read -r size secs ver <<<"$res"
  printf '{"kind":"stream","path":"%s","bytes":%s,"seconds":%s,"http":"%s","rss_before_kb":%d,"hwm_kb":%d}\n' \
    "$p" "$size" "$secs" "$ver" "$before" "$(mem_kb "$pid" VmHWM)" >> "$RAW"
  echo "  $p: $size bytes in $secs s (HTTP/$ver)"
done

echo "== $WATCHES idle watches (at $(( $(date +%s) - T_START )) s)"
declare -A WURL=([kubectl-proxy]=http://127.0.0.1:$P_KPW [kubegate]=https://127.0.0.1:$P_KGW)
declare -A WPID=([kubectl-proxy]=$PID_KPW [kubegate]=$PID_KGW)
for p in kubectl-proxy kubegate; do
  res=$(python3 "$HERE/longlived.py" watches "${WURL[$p]}/api/v1/namespaces/bench/configmaps?watch=1" \
    "$WATCHES" "${WPID[$p]}" "$TOKEN")
  printf '{"kind":"watches","path":"%s","result":%s}\n' "$p" "$res" >> "$RAW"
  echo "  $p: $res"
  sleep 3
done
for p in "${PATHS[@]}"; do
  printf '{"kind":"end","path":"%s","rss_kb":%s,"hwm_kb":%s}\n' "$p" "$(mem_kb "${PIDOF[$p]}" VmRSS)" "$(mem_kb "${PIDOF[$p]}" VmHWM)" >> "$RAW"
done
audit_lines=$(cat "$W"/kubegate-audit.log* | wc -l)

# ---------------------------------------------------------------- report
{
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), $(. /etc/os-release; echo "$PRETTY_NAME")"
  echo "kubegate: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- gateway config policy || echo ' (+ uncommitted changes)'), binary $KG, KUBEGATE_LOG=$KUBEGATE_LOG, GLIBC_TUNABLES=${KUBEGATE_GLIBC_TUNABLES:-(glibc defaults)}"
  echo "nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //')"
  echo "wrk: $(wrk -v 2>&1 | head -1 | sed 's/ Copyright.*//')"
  echo "kubectl: $("$KUBECTL" version --client 2>/dev/null | head -1)"
  echo "h2load: $(h2load --version 2>&1 | head -1)"
  echo "command: DURATION=$DURATION ROUNDS=$ROUNDS WARMUP=$WARMUP WATCHES=$WATCHES USERS=$USERS STREAM_BYTES=$STREAM_BYTES bash bench/compare/run.sh"
  echo "run time: $(( $(date +%s) - T_START )) s (from start to the report, tools and build included)"
  echo "kubegate token_cache_size: $TOKEN_CACHE_SIZE (for $USERS users)"
  echo "audit lines written by kubegate (cached variant, incl. rotated file): $audit_lines"
} > "$W/meta.txt"
python3 "$HERE/report.py" "$RAW" "$W/meta.txt" > "$HERE/results/$STAMP.md"
echo "wrote bench/compare/results/$STAMP.md"
cat "$HERE/results/$STAMP.md"
