#!/usr/bin/env bash
# Self-test for the OIDC provider fixture: starts server.mjs on a free port and
# checks discovery, JWKS, a client_credentials JWT access token, key rotation
# and shutdown. Exits non-zero on the first mismatch.
# Needs: bash, curl, node (>= 20). Runs `npm ci` first if node_modules is absent.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

if [[ ! -d node_modules/oidc-provider ]]; then
  npm ci --no-audit --no-fund >&2
fi

WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

PASS=0
FAIL=0
ok() { PASS=$((PASS + 1)); echo "ok   - $*"; }
fail() {
  FAIL=$((FAIL + 1))
  echo "FAIL - $*"
  echo "--- server stderr ---"; cat "$WORK/server.err" || true
  echo "$PASS passed, $FAIL failed"
  exit 1
}

# check NAME NODE_EXPR: NODE_EXPR is evaluated with `j` = parsed $JSON and must
# return true.
check() {
  local name=$1 expr=$2
  if JSON_IN="$JSON" node -e "
    const j = JSON.parse(process.env.JSON_IN);
    const r = (() => ($expr))();
    if (r !== true) { console.error('  got: ' + JSON.stringify(j)); process.exit(1); }
  "; then ok "$name"; else fail "$name"; fi
}

# decode_jwt TOKEN -> {"header":{...},"payload":{...}}
decode_jwt() {
  TOKEN_IN="$1" node -e "
    const [h, p] = process.env.TOKEN_IN.split('.');
    const d = (s) => JSON.parse(Buffer.from(s, 'base64url').toString('utf8'));
    process.stdout.write(JSON.stringify({ header: d(h), payload: d(p) }));
  "
}

# verify_sig TOKEN JWKS_JSON -> exit 0 if the RS256 signature verifies with the
# JWKS key whose kid matches the token header.
verify_sig() {
  TOKEN_IN="$1" JWKS_IN="$2" node -e "
    const crypto = require('node:crypto');
    const [h, p, s] = process.env.TOKEN_IN.split('.');
    const header = JSON.parse(Buffer.from(h, 'base64url'));
    const jwk = JSON.parse(process.env.JWKS_IN).keys.find((k) => k.kid === header.kid);
    if (!jwk) { console.error('  no JWKS key with kid ' + header.kid); process.exit(1); }
    const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
    const good = crypto.verify('RSA-SHA256', Buffer.from(h + '.' + p), key, Buffer.from(s, 'base64url'));
    process.exit(good ? 0 : 1);
  "
}

get_token() {
  curl -sS --fail-with-body -X POST "$ISS/token" \
    -H 'content-type: application/x-www-form-urlencoded' \
    --data-urlencode grant_type=client_credentials \
    --data-urlencode client_id=kubegate-test \
    --data-urlencode client_secret=kubegate-test-secret
}

# --- start -----------------------------------------------------------------
node server.mjs 0 >"$WORK/server.out" 2>"$WORK/server.err" &
SERVER_PID=$!
for _ in $(seq 1 100); do
  [[ -s "$WORK/server.out" ]] && break
  kill -0 "$SERVER_PID" 2>/dev/null || fail "server exited before READY"
  sleep 0.1
done
READY_LINE=$(head -n1 "$WORK/server.out")
[[ "$READY_LINE" =~ ^READY\ (http://127\.0\.0\.1:[0-9]+)$ ]] || fail "READY line: '$READY_LINE'"
ISS=${BASH_REMATCH[1]}
ok "server printed '$READY_LINE'"

# --- discovery ---------------------------------------------------------------
JSON=$(curl -sS --fail-with-body "$ISS/.well-known/openid-configuration") || fail "discovery fetch"
check "discovery issuer == $ISS" "j.issuer === '$ISS'"
check "discovery jwks_uri == $ISS/jwks" "j.jwks_uri === '$ISS/jwks'"
check "discovery token_endpoint == $ISS/token" "j.token_endpoint === '$ISS/token'"
check "discovery lists client_credentials" "j.grant_types_supported.includes('client_credentials')"

# --- JWKS (k1) ---------------------------------------------------------------
JWKS1=$(curl -sS --fail-with-body "$ISS/jwks") || fail "jwks fetch"
JSON=$JWKS1
check "JWKS lists exactly [k1]" "JSON.stringify(j.keys.map((k) => k.kid)) === '[\"k1\"]'"
check "JWKS key is public RSA RS256" "j.keys[0].kty === 'RSA' && j.keys[0].alg === 'RS256' && j.keys[0].use === 'sig' && !('d' in j.keys[0])"

# --- token (k1) --------------------------------------------------------------
RESP=$(get_token) || fail "token request: $RESP"
JSON=$RESP
check "token response is Bearer, expires_in 600" "j.token_type === 'Bearer' && j.expires_in === 600"
TOKEN1=$(JSON_IN="$RESP" node -e "process.stdout.write(JSON.parse(process.env.JSON_IN).access_token)")
JSON=$(decode_jwt "$TOKEN1")
check "token1 header alg RS256, kid k1, typ at+jwt" "j.header.alg === 'RS256' && j.header.kid === 'k1' && j.header.typ === 'at+jwt'"
check "token1 iss == $ISS" "j.payload.iss === '$ISS'"
check "token1 aud == kubegate" "j.payload.aud === 'kubegate'"
check "token1 sub == kubegate-test" "j.payload.sub === 'kubegate-test' && j.payload.client_id === 'kubegate-test'"
check "token1 groups == [devs]" "JSON.stringify(j.payload.groups) === '[\"devs\"]'"
check "token1 exp = iat + 600, in the future" "j.payload.exp - j.payload.iat === 600 && j.payload.exp > Date.now() / 1000 && Math.abs(j.payload.iat - Date.now() / 1000) < 60"
verify_sig "$TOKEN1" "$JWKS1" && ok "token1 signature verifies with JWKS k1" || fail "token1 signature"

# --- bad secret --------------------------------------------------------------
CODE=$(curl -sS -o /dev/null -w '%{http_code}' -X POST "$ISS/token" \
  --data-urlencode grant_type=client_credentials \
  --data-urlencode client_id=kubegate-test \
  --data-urlencode client_secret=wrong)
[[ "$CODE" == 401 ]] && ok "wrong client_secret -> 401" || fail "wrong client_secret gave $CODE"

# --- rotate to k2 ------------------------------------------------------------
ROT=$(curl -sS --fail-with-body -X POST "$ISS/test/rotate") || fail "rotate"
[[ "$ROT" == '{"kid":"k2"}' ]] && ok "rotate answered $ROT" || fail "rotate answered '$ROT'"
JSON=$(curl -sS --fail-with-body "$ISS/.well-known/openid-configuration") || fail "discovery after rotate"
check "discovery issuer unchanged after rotate" "j.issuer === '$ISS' && j.jwks_uri === '$ISS/jwks'"
JWKS2=$(curl -sS --fail-with-body "$ISS/jwks") || fail "jwks fetch after rotate"
JSON=$JWKS2
check "JWKS lists exactly [k2] after rotate" "JSON.stringify(j.keys.map((k) => k.kid)) === '[\"k2\"]' && !('d' in j.keys[0])"
RESP=$(get_token) || fail "token request after rotate: $RESP"
TOKEN2=$(JSON_IN="$RESP" node -e "process.stdout.write(JSON.parse(process.env.JSON_IN).access_token)")
JSON=$(decode_jwt "$TOKEN2")
check "token2 header alg RS256, kid k2" "j.header.alg === 'RS256' && j.header.kid === 'k2'"
check "token2 iss/aud/groups/exp" "j.payload.iss === '$ISS' && j.payload.aud === 'kubegate' && JSON.stringify(j.payload.groups) === '[\"devs\"]' && j.payload.exp - j.payload.iat === 600"
verify_sig "$TOKEN2" "$JWKS2" && ok "token2 signature verifies with JWKS k2" || fail "token2 signature"
if verify_sig "$TOKEN1" "$JWKS2" 2>/dev/null; then fail "token1 still verifiable from new JWKS"; else ok "token1 (k1) no longer verifiable from JWKS"; fi

# --- rotate to k3 ------------------------------------------------------------
ROT=$(curl -sS --fail-with-body -X POST "$ISS/test/rotate") || fail "second rotate"
[[ "$ROT" == '{"kid":"k3"}' ]] && ok "second rotate answered $ROT" || fail "second rotate answered '$ROT'"
JSON=$(curl -sS --fail-with-body "$ISS/jwks") || fail "jwks fetch after second rotate"
check "JWKS lists exactly [k3]" "JSON.stringify(j.keys.map((k) => k.kid)) === '[\"k3\"]'"

# --- stdout hygiene + shutdown -----------------------------------------------
LINES=$(wc -l <"$WORK/server.out")
[[ "$LINES" == 1 ]] && ok "server stdout is exactly one line" || fail "server stdout has $LINES lines: $(cat "$WORK/server.out")"
SHUT=$(curl -sS --fail-with-body -X POST "$ISS/test/shutdown") || fail "shutdown"
for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$SERVER_PID" 2>/dev/null; then fail "server still running after /test/shutdown"; fi
wait "$SERVER_PID" && RC=0 || RC=$?
[[ "$RC" == 0 ]] && ok "shutdown ($SHUT) exited 0" || fail "server exit code $RC after shutdown"
SERVER_PID=""

echo "$PASS passed, $FAIL failed"
