#!/usr/bin/env python3
"""Mint the benchmark's signing keys, JWKS and bearer tokens (ES256, and RS256 for the
cache-off comparison of key types).

usage: mint.py OUT_DIR ISSUER AUDIENCE SUBJECT GROUP[,GROUP...] [USERS]
writes OUT_DIR/jwks.json (both keys), OUT_DIR/token (ES256) and OUT_DIR/token-rs256 (the
same claims, RS256), valid for 2 hours; with USERS, also
OUT_DIR/tokens: USERS tokens, one a line, for distinct subjects user-00000, user-00001, ...
each in the groups GROUP... plus team-<i mod 998> (so every user's token has the same
shape and the same policy path as the others'), signed by the same key.
"""
import json, sys, time, os
import jwt
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa

out, issuer, audience, subject, groups = sys.argv[1:6]
users = int(sys.argv[6]) if len(sys.argv) > 6 else 0
key = ec.generate_private_key(ec.SECP256R1())
jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
jwk.update({"kid": "bench-1", "alg": "ES256", "use": "sig"})
rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
rsa_jwk = json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key()))
rsa_jwk.update({"kid": "bench-rs", "alg": "RS256", "use": "sig"})
with open(os.path.join(out, "jwks.json"), "w") as f:
    json.dump({"keys": [jwk, rsa_jwk]}, f)
now = int(time.time())

def mint(sub, grps, alg="ES256"):
    claims = {"iss": issuer, "aud": audience, "sub": sub, "groups": grps,
              "iat": now, "nbf": now - 5, "exp": now + 7200}
    if alg == "RS256":
        return jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "bench-rs"})
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": "bench-1"})

with open(os.path.join(out, "token"), "w") as f:
    f.write(mint(subject, groups.split(",")))
with open(os.path.join(out, "token-rs256"), "w") as f:
    f.write(mint(subject, groups.split(","), "RS256"))
if users:
    with open(os.path.join(out, "tokens"), "w") as f:
        for i in range(users):
            f.write(mint(f"user-{i:05d}", groups.split(",") + [f"team-{i % 998}"]) + "\n")
