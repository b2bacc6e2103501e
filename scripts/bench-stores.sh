#!/usr/bin/env bash
# The modes on each source of truth in one run (issue 17): the service on
# PostgreSQL, then on MariaDB (InnoDB, seed 004's database), each time the
# same coupon rush over db-lock, db-atomic, gate, redis-queue and
# redis-lua, then the durable write path (drain: stock = users, gate,
# redis-queue, redis-lua), with both stores' own limits (the FOR UPDATE transaction and
# the batched insert, straight at each database) measured in the same
# bench run. Every run ends with the bench's invariant checks.
#   scripts/bench-stores.sh                  USERS=20000 CONC=64 MAX_SECS=20
# Brings up Redis, PostgreSQL and MariaDB (installing MariaDB when missing),
# builds the release binaries, writes bench-out/stores-{postgres,mysql}.md
# and stops the service it started.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh)"
eval "$(scripts/services.sh mysql)"
PG_ADMIN=$DATABASE_URL
# PostgreSQL's limits run in a scratch database of their own.
PG_LIMITS="${PG_ADMIN%/*}/firstcome_store_limits"
psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS firstcome_store_limits WITH (FORCE)" -c "CREATE DATABASE firstcome_store_limits" >/dev/null
source scripts/lib/serve.sh
cleanup() {
  stop_serve
  psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS firstcome_store_limits WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM
USERS=${USERS:-20000} CONC=${CONC:-64} MAX_SECS=${MAX_SECS:-20}
for store in postgres mysql; do
  if [ "$store" = mysql ]; then DATABASE_URL=$MYSQL_URL; else DATABASE_URL=$PG_ADMIN; fi
  start_serve 127.0.0.1:18080 "serve-$store.log"
  {
    echo "== the service on $store ($(date -u +%FT%TZ)): coupon, $USERS users for 100 coupons, $CONC connections =="
    # Both stores' limits, in scratch tables (dropped afterwards).
    "$BENCH_BIN" --url "$URL" --scenario coupon --stock 100 --users "$USERS" \
      --concurrency "$CONC" --max-secs "$MAX_SECS" \
      --modes db-lock,db-atomic,gate,redis-queue,redis-lua \
      --database-url "$PG_LIMITS" --mysql-url "$MYSQL_URL" --limit-secs 5 \
      --json "$OUT/stores-$store.json"
    echo "== the durable write path on $store: drain, stock = users = $USERS =="
    "$BENCH_BIN" --url "$URL" --scenario drain --users "$USERS" --concurrency 256 \
      --modes gate,redis-queue,redis-lua --database-url "$PG_LIMITS" --mysql-url "$MYSQL_URL" \
      --limit-secs 5 --json "$OUT/stores-drain-$store.json"
  } 2>&1 | tee "$OUT/stores-$store.md"
  stop_serve
  SERVE_PID=
done
echo "results in $OUT/stores-postgres.md and $OUT/stores-mysql.md"
