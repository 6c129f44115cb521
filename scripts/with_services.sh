#!/usr/bin/env bash
# Runs a command beside a real PostgreSQL server and an S3-compatible server (s3s-fs), both on
# loopback, for the scale-out registry tests; both are stopped when the command ends.
#   REGISTRY_TEST_POSTGRES   postgres://infergate@127.0.0.1:PORT (a superuser; tests create databases)
#   REGISTRY_TEST_POSTGRES_TLS  a folder with ca.pem (the CA of the server's certificate, which
#                            names only localhost), other-ca.pem (an unrelated CA), and
#                            client.pem + client.key (role infergate_cert, which may only log
#                            in over TLS with that certificate); role infergate_scram logs in
#                            with the password 'scram s3cret@' (SCRAM-SHA-256), over TLS or not
#   REGISTRY_TEST_S3_*       ENDPOINT, BUCKET, ACCESS_KEY, SECRET_KEY
# PostgreSQL comes from Debian's `postgresql` package, s3s-fs from crates.io (`make services`).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
S3S=${S3S_FS:-$ROOT/.tools/bin/s3s-fs}
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$PG_BIN/pg_ctl" ] || { echo "PostgreSQL server missing: run make services" >&2; exit 1; }
[ -x "$S3S" ] || { echo "s3s-fs missing: run make services" >&2; exit 1; }

WORK=$(mktemp -d)
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port)
S3_PORT=$(free_port)
# PostgreSQL refuses to run as root; as root it runs as the package's postgres user.
AS=()
if [ "$(id -u)" = 0 ]; then AS=(runuser -u postgres --); chown postgres "$WORK"; fi
S3_PID=""
cleanup() {
  [ -n "$S3_PID" ] && kill "$S3_PID" 2>/dev/null || true
  "${AS[@]}" "$PG_BIN/pg_ctl" -D "$WORK/pg" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# TLS for the registry's TLS tests: a throwaway CA, the server's certificate for "localhost"
# (not for 127.0.0.1, so that verify-full has a name to refuse), a client certificate.
TLS=$WORK/tls
mkdir -p "$TLS"
ca() {  # ca NAME: a self-signed CA, NAME.pem and NAME.key
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=infergate test $1" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -keyout "$TLS/$1.key" -out "$TLS/$1.pem" 2>>"$TLS/openssl.log"
}
leaf() {  # leaf NAME CN EXTENSIONS: NAME.pem and NAME.key signed by ca
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$2" \
    -keyout "$TLS/$1.key" -out "$TLS/$1.csr" 2>>"$TLS/openssl.log" &&
  printf 'basicConstraints=CA:FALSE\n%s\n' "$3" > "$TLS/$1.ext" &&
  openssl x509 -req -in "$TLS/$1.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca.key" -CAcreateserial \
    -days 2 -extfile "$TLS/$1.ext" -out "$TLS/$1.pem" 2>>"$TLS/openssl.log"
}
# openssl's progress goes to a log, shown only when a step fails (each step chained with &&:
# set -e does not apply on the left of ||).
certificates() {
  ca ca && ca other-ca &&
    leaf server localhost "subjectAltName=DNS:localhost
extendedKeyUsage=serverAuth" &&
    leaf client infergate_cert "extendedKeyUsage=clientAuth"
}
certificates || { echo "openssl failed:" >&2; cat "$TLS/openssl.log" >&2; exit 1; }
chmod 600 "$TLS"/*.key
if [ ${#AS[@]} -gt 0 ]; then chown -R postgres "$TLS"; fi

"${AS[@]}" "$PG_BIN/initdb" -D "$WORK/pg" -U infergate --auth=trust --no-sync >/dev/null
# The certificate-only role: over TLS with a client certificate, refused otherwise (first match).
# The password role: SCRAM-SHA-256, over TLS or not.
{ printf 'hostssl all infergate_cert 127.0.0.1/32 cert\nhost all infergate_cert 127.0.0.1/32 reject\n'
  printf 'host all infergate_scram 127.0.0.1/32 scram-sha-256\n'
  cat "$WORK/pg/pg_hba.conf"; } > "$WORK/pg_hba.conf"
"${AS[@]}" cp "$WORK/pg_hba.conf" "$WORK/pg/pg_hba.conf"
"${AS[@]}" "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg/server.log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $WORK -c fsync=off -c ssl=on -c ssl_cert_file=$TLS/server.pem -c ssl_key_file=$TLS/server.key -c ssl_ca_file=$TLS/ca.pem" start >/dev/null
"${AS[@]}" "$PG_BIN/psql" -q -h "$WORK" -p "$PG_PORT" -U infergate -d postgres -c "CREATE ROLE infergate_cert LOGIN" \
  -c "SET password_encryption = 'scram-sha-256'" -c "CREATE ROLE infergate_scram LOGIN PASSWORD 'scram s3cret@'" >/dev/null

mkdir -p "$WORK/s3/infergate"
"$S3S" --host 127.0.0.1 --port "$S3_PORT" --access-key infergate-test --secret-key infergate-test-secret \
  "$WORK/s3" >"$WORK/s3.log" 2>&1 &
S3_PID=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null && break
  sleep 0.1
done

export REGISTRY_TEST_POSTGRES="postgres://infergate@127.0.0.1:$PG_PORT"
export REGISTRY_TEST_POSTGRES_TLS="$TLS"
export REGISTRY_TEST_S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
export REGISTRY_TEST_S3_BUCKET=infergate
export REGISTRY_TEST_S3_ACCESS_KEY=infergate-test
export REGISTRY_TEST_S3_SECRET_KEY=infergate-test-secret
echo "services: postgres 127.0.0.1:$PG_PORT, s3s-fs 127.0.0.1:$S3_PORT" >&2
"$@"
