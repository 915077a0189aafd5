#!/usr/bin/env python3
"""Mint the benchmark's signing key, JWKS and bearer tokens (ES256).

usage: mint.py OUT_DIR ISSUER AUDIENCE SUBJECT GROUP[,GROUP...] [USERS]
writes OUT_DIR/jwks.json and OUT_DIR/token (valid for 2 hours); with USERS, also
OUT_DIR/tokens: USERS tokens, one a line, for distinct subjects user-00000, user-00001, ...
each in the groups GROUP... plus team-<i mod 998> (so every user's token has the same
shape and the same policy path as the others'), signed by the same key.
"""
import json, sys, time, os
import jwt
from jwt.algorithms import ECAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec

out, issuer, audience, subject, groups = sys.argv[1:6]
users = int(sys.argv[6]) if len(sys.argv) > 6 else 0
key = ec.generate_private_key(ec.SECP256R1())
jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
jwk.update({"kid": "bench-1", "alg": "ES256", "use": "sig"})
with open(os.path.join(out, "jwks.json"), "w") as f:
    json.dump({"keys": [jwk]}, f)
now = int(time.time())

def mint(sub, grps):
    claims = {"iss": issuer, "aud": audience, "sub": sub, "groups": grps,
              "iat": now, "nbf": now - 5, "exp": now + 7200}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": "bench-1"})

with open(os.path.join(out, "token"), "w") as f:
    f.write(mint(subject, groups.split(",")))
if users:
    with open(os.path.join(out, "tokens"), "w") as f:
        for i in range(users):
            f.write(mint(f"user-{i:05d}", groups.split(",") + [f"team-{i % 998}"]) + "\n")
