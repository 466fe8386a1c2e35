#!/usr/bin/env bash
# Regenerates the test certificates of node/tests/security.rs (and the
# config tests): two unrelated CAs, each with one certificate for
# 127.0.0.1 / localhost that serves as server and client certificate. Valid
# for 100 years, so nobody has to run this again until something about the
# certificates themselves must change. Test-only: never use them elsewhere.
#
#   ca.pem                     the cluster's CA (tls.ca)
#   node.pem, node.key         a node certificate issued by ca.pem (every test node uses it)
#   other-ca.pem               an unrelated CA
#   other-node.pem, other-node.key  issued by other-ca.pem: a stranger
#
# The CA keys are thrown away. Needs openssl.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

days=36500
ext="$tmp/leaf.ext"
cat > "$ext" <<'CONF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
CONF

issue() { # ca-name leaf-name
  local ca=$1 leaf=$2
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -subj "/CN=keel test $ca" -keyout "$tmp/$ca.key" -out "$ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=keel test $leaf" \
    -keyout "$tmp/$leaf.key" -out "$tmp/$leaf.csr" 2>/dev/null
  openssl x509 -req -in "$tmp/$leaf.csr" -CA "$ca.pem" -CAkey "$tmp/$ca.key" -CAserial "$tmp/$ca.srl" -CAcreateserial \
    -days "$days" -extfile "$ext" -out "$leaf.pem" 2>/dev/null
  # PKCS#8, the form rustls reads most widely.
  openssl pkcs8 -topk8 -nocrypt -in "$tmp/$leaf.key" -out "$leaf.key"
}

issue ca node
issue other-ca other-node
echo "wrote $(ls *.pem *.key | tr '\n' ' ')"
