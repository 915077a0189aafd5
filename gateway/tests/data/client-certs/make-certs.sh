#!/usr/bin/env bash
# Regenerates the client certificates the tests read (gateway/src/tls.rs unit tests and
# tests/tests/client_cert.rs). Run from anywhere; the outputs are checked in, so the tests
# never depend on openssl. Everything is valid until 2125 and signed by ca.pem.
#
#   ca.pem / ca.key            the client CA ("kubegate test client CA")
#   two-cns.pem / .key         CN=bob, O=devs, CN=alice, O=ops: two CNs (the last is the
#                              user, as the API server reads it) and two groups
#   bmp.pem / .key             CN=dave (PrintableString), O=devs (PrintableString),
#                              O=team_bmp (BMPString: UTF-16BE, which x509-parser leaves
#                              undecoded)
#   t61.pem / .key             CN=tess, O=team_t61 (T61String, read as Latin-1)
#   no-cn.pem / .key           O=devs only: names no one
#   universal.pem / .key       CN=erin, O=devs, O=ops as a UniversalString: a string type
#                              Go's crypto/x509 cannot read, so the API server refuses
#                              the certificate; openssl req cannot pick that type for an O,
#                              so this one is assembled with asn1parse -genconf and signed
#                              by hand
set -euo pipefail
cd "$(dirname "$0")"

days=36500
new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

new_key ca.key
openssl req -x509 -key ca.key -out ca.pem -subj "/CN=kubegate test client CA" -days $days \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign

ext=$(mktemp)
req_cnf=$(mktemp)
trap 'rm -f "$ext" "$req_cnf" ./*.csr ./*.genconf ./*.der' EXIT
printf 'extendedKeyUsage=clientAuth\n' >"$ext"

# A leaf signed by the CA. $1 name, $2 subject, $3 openssl string_mask for the subject's
# strings (which ASN.1 string type each value gets: openssl takes the first type in the
# mask that can hold the value).
leaf() {
  new_key "$1.key"
  printf '[req]\ndistinguished_name = dn\nstring_mask = %s\n[dn]\n' "$3" >"$req_cnf"
  openssl req -new -config "$req_cnf" -key "$1.key" -subj "$2" -out "$1.csr"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -set_serial "$4" -days $days \
    -extfile "$ext" -out "$1.pem"
}

leaf two-cns "/CN=bob/O=devs/CN=alice/O=ops" utf8only 1
# PrintableString (0x2) or BMPString (0x800): "team_bmp" has "_", not printable.
leaf bmp "/CN=dave/O=devs/O=team_bmp" MASK:0x802 2
# PrintableString (0x2) or T61String (0x4).
leaf t61 "/CN=tess/O=team_t61" MASK:0x6 3
leaf no-cn "/O=devs" utf8only 5

# universal: the TBSCertificate is described to asn1parse, signed with the CA key, and
# described again with its signature (DER is deterministic, so both encodings agree).
new_key universal.key
point=$(openssl pkey -in universal.key -pubout -outform DER | tail -c 65 | xxd -p -c 200)
cat >universal.genconf <<EOF
asn1 = SEQUENCE:cert
[cert]
tbs = SEQUENCE:tbs
alg = SEQUENCE:alg
sig = FORMAT:HEX,BITSTRING:SIGNATURE
[tbs]
version = EXPLICIT:0,INTEGER:2
serial = INTEGER:4
alg = SEQUENCE:alg
issuer = SEQUENCE:issuer
validity = SEQUENCE:validity
subject = SEQUENCE:subject
spki = SEQUENCE:spki
[alg]
oid = OID:ecdsa-with-SHA256
[issuer]
cn = SET:issuer_cn
[issuer_cn]
a = SEQUENCE:issuer_cn_attr
[issuer_cn_attr]
type = OID:commonName
value = UTF8:kubegate test client CA
[validity]
from = UTCTIME:250101000000Z
to = GENTIME:21250101000000Z
[subject]
cn = SET:cn
o1 = SET:o1
o2 = SET:o2
[cn]
a = SEQUENCE:cn_attr
[cn_attr]
type = OID:commonName
value = UTF8:erin
[o1]
a = SEQUENCE:o1_attr
[o1_attr]
type = OID:organizationName
value = UTF8:devs
[o2]
a = SEQUENCE:o2_attr
[o2_attr]
type = OID:organizationName
value = UNIV:ops
[spki]
alg = SEQUENCE:spki_alg
key = FORMAT:HEX,BITSTRING:$point
[spki_alg]
type = OID:id-ecPublicKey
curve = OID:prime256v1
EOF
sed 's/^asn1 = SEQUENCE:cert/asn1 = SEQUENCE:tbs/' universal.genconf >tbs.genconf
openssl asn1parse -genconf tbs.genconf -out tbs.der -noout
openssl dgst -sha256 -sign ca.key -out sig.der tbs.der
sed -i "s/SIGNATURE/$(xxd -p -c 1000 sig.der)/" universal.genconf
openssl asn1parse -genconf universal.genconf -out universal.der -noout
openssl x509 -inform DER -in universal.der -out universal.pem

for name in two-cns bmp t61 no-cn universal; do
  openssl verify -CAfile ca.pem "$name.pem"
done
