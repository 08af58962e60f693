#!/usr/bin/env bash
# Makes the TLS test material in this directory (committed; run again only to
# change it): a test CA, the broker's certificate (localhost, 127.0.0.1, ::1)
# and client certificates whose DNS SANs name identities in the tests, plus a
# client certificate from an untrusted CA. Valid for 100 years; the keys are
# test keys, worthless anywhere else.
set -euo pipefail
cd "$(dirname "$0")"
days=36500

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# ca NAME SUBJECT
ca() {
  key "$1.key"
  openssl req -x509 -new -key "$1.key" -subj "/CN=$2" -days "$days" -sha256 \
    -addext "basicConstraints=critical,CA:true" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$1.crt"
}

# leaf NAME CA SUBJECT SAN USAGE
leaf() {
  key "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$3" -out "$1.csr"
  printf 'subjectAltName=%s\nextendedKeyUsage=%s\nbasicConstraints=CA:false\n' "$4" "$5" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" -CAcreateserial -days "$days" \
    -sha256 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

ca ca "iommu-broker test CA"
ca other-ca "some other CA"
leaf server ca "iommu-brokerd" "DNS:localhost,IP:127.0.0.1,IP:::1" serverAuth
leaf operator ca "operator" "DNS:operator.clients.iommu-broker.test" clientAuth
leaf driver ca "driver" "DNS:driver.clients.iommu-broker.test" clientAuth
leaf viewer ca "viewer" "DNS:viewer.clients.iommu-broker.test" clientAuth
leaf untrusted other-ca "operator" "DNS:operator.clients.iommu-broker.test" clientAuth
rm -f ./*.srl ca.key other-ca.key
