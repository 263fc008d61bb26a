#!/usr/bin/env bash
# Make the PKI and the Secrets of the linkage namespace from it (run where kubectl points at
# the cluster). Each system's Secret holds the CA certificate and only its own identities'
# keys: the CA's private key never leaves PKI_DIR.
#
#   PKI_DIR=./pki POSTGRES_PASSWORD=... deploy/kubernetes/make-secrets.sh
set -euo pipefail
PKI_DIR=${PKI_DIR:-./pki}
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
NS=linkage
ORGS_MUNICIPAL="sakai osaka toyonaka suita"

identities=(network registry admin platform.municipal platform.jps platform.insurers)
for org in sakai osaka toyonaka suita osaka-kouiki jps; do
  identities+=("org.$org" "ua.$org")
done
linkage pki init --dir "$PKI_DIR" $(printf -- '--identity=%s ' "${identities[@]}")

secret() {  # secret NAME IDENTITY...: ca.pem and each identity's key and certificate
  local name=$1; shift
  local files=(--from-file="ca.pem=$PKI_DIR/ca.pem")
  for id in "$@"; do
    files+=(--from-file="$id.key=$PKI_DIR/$id.key" --from-file="$id.pem=$PKI_DIR/$id.pem")
  done
  kubectl -n "$NS" create secret generic "$name" "${files[@]}" --dry-run=client -o yaml \
    | kubectl apply -f -
}

secret pki-network network
secret pki-registry registry
secret pki-admin admin
secret pki-platform-municipal platform.municipal $(for o in $ORGS_MUNICIPAL; do echo "org.$o"; done)
secret pki-platform-jps platform.jps org.jps
secret pki-platform-insurers platform.insurers org.osaka-kouiki
for org in sakai osaka toyonaka suita osaka-kouiki jps; do
  secret "pki-ua-$org" "ua.$org"
done

kubectl -n "$NS" create secret generic postgres --from-literal=password="$POSTGRES_PASSWORD" \
  --dry-run=client -o yaml | kubectl apply -f -
url() { echo "postgresql+psycopg://linkage:$POSTGRES_PASSWORD@postgres.$NS.svc.cluster.local:5432/$1?connect_timeout=5"; }
args=()
for db in network registry platform_municipal platform_jps platform_insurers ua_sakai ua_osaka \
  ua_toyonaka ua_suita ua_osaka_kouiki ua_jps; do
  args+=(--from-literal="$db=$(url "$db")")
done
kubectl -n "$NS" create secret generic linkage-database "${args[@]}" --dry-run=client -o yaml \
  | kubectl apply -f -
