#!/usr/bin/env bash
# Runs a command beside a real PostgreSQL server and an S3-compatible server (s3s-fs), both on
# loopback, for the scale-out registry tests; both are stopped when the command ends.
#   REGISTRY_TEST_POSTGRES   postgres://infergate@127.0.0.1:PORT (a superuser; tests create databases)
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

"${AS[@]}" "$PG_BIN/initdb" -D "$WORK/pg" -U infergate --auth=trust --no-sync >/dev/null
"${AS[@]}" "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg/server.log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $WORK -c fsync=off" start >/dev/null

mkdir -p "$WORK/s3/infergate"
"$S3S" --host 127.0.0.1 --port "$S3_PORT" --access-key infergate-test --secret-key infergate-test-secret \
  "$WORK/s3" >"$WORK/s3.log" 2>&1 &
S3_PID=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null && break
  sleep 0.1
done

export REGISTRY_TEST_POSTGRES="postgres://infergate@127.0.0.1:$PG_PORT"
export REGISTRY_TEST_S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
export REGISTRY_TEST_S3_BUCKET=infergate
export REGISTRY_TEST_S3_ACCESS_KEY=infergate-test
export REGISTRY_TEST_S3_SECRET_KEY=infergate-test-secret
echo "services: postgres 127.0.0.1:$PG_PORT, s3s-fs 127.0.0.1:$S3_PORT" >&2
"$@"
