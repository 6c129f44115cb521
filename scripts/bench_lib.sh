# Sourced by the benchmark scripts: a release server on loopback serving $OUT/models.
# start_server NAME [prefix...]: runs `prefix... infergate serve`, sets HTTP, GRPC, ADMIN, SERVER.
start_server() {
  local name=$1; shift
  "$@" target/release/infergate serve --model-repository "$OUT/models" \
    --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 --insecure-admin \
    > "$OUT/$name.out" 2> "$OUT/$name.log" &
  SERVER=$!
  for _ in $(seq 1 300); do grep -q "infergate serving" "$OUT/$name.out" 2>/dev/null && break; sleep 0.1; done
  HTTP=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$OUT/$name.out")
  GRPC=$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' "$OUT/$name.out")
  ADMIN=$(sed -n 's/.*admin=\([^ ]*\).*/\1/p' "$OUT/$name.out")
  [ -n "$HTTP" ] || { echo "server did not start"; cat "$OUT/$name.log"; exit 1; }
}
stop_server() { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; }
