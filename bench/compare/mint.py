#!/usr/bin/env python3
"""Mint the benchmark's signing key, JWKS and one bearer token (ES256).

usage: mint.py OUT_DIR ISSUER AUDIENCE SUBJECT GROUP[,GROUP...]
writes OUT_DIR/jwks.json and OUT_DIR/token (valid for 2 hours).
"""
import json, sys, time, os
import jwt
from jwt.algorithms import ECAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec

out, issuer, audience, subject, groups = sys.argv[1:6]
key = ec.generate_private_key(ec.SECP256R1())
jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
jwk.update({"kid": "bench-1", "alg": "ES256", "use": "sig"})
with open(os.path.join(out, "jwks.json"), "w") as f:
    json.dump({"keys": [jwk]}, f)
now = int(time.time())
claims = {"iss": issuer, "aud": audience, "sub": subject, "groups": groups.split(","),
          "iat": now, "nbf": now - 5, "exp": now + 7200}
token = jwt.encode(claims, key, algorithm="ES256", headers={"kid": "bench-1"})
with open(os.path.join(out, "token"), "w") as f:
    f.write(token)
