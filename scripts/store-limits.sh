#!/usr/bin/env bash
# The two stores' own limits in one run (issue 17): the db-lock
# transaction (`SELECT ... FOR UPDATE`, UPDATE, COMMIT) over 1 and 6 hot
# rows from 64 connections, and the batched grant insert (500 rows per
# transaction, 1/2/4 connections), straight at PostgreSQL and at MariaDB
# (InnoDB, the database seed 004 measured its 60 TPS on), one after the
# other. `firstcome-bench --limits-only --mysql-url`; scratch tables,
# dropped afterwards; PostgreSQL's insert goes into a fresh database
# `firstcome_store_limits` (dropped at the end).
#   scripts/store-limits.sh            LIMIT_SECS=5 by default
# Brings up Redis, PostgreSQL and MariaDB (scripts/services.sh, installing
# MariaDB when missing), builds the bench, writes bench-out/store-limits.md.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh)"
eval "$(scripts/services.sh mysql)"
source scripts/lib/serve.sh
ADMIN_DB=$DATABASE_URL
fresh_bench_db firstcome_store_limits
trap 'psql "$ADMIN_DB" -qc "DROP DATABASE IF EXISTS firstcome_store_limits WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
cargo build --release --locked -q -p firstcome-bench
OUT=bench-out
mkdir -p "$OUT"
SECS=${LIMIT_SECS:-5}
B=target/release/firstcome-bench
# No service is driven: the admin token is only what the arguments need.
export FIRSTCOME_ADMIN_TOKEN=${FIRSTCOME_ADMIN_TOKEN:-store-limits-unused}
{
  echo "# The stores' own limits ($(date -u +%F), $SECS s each)"
  echo
  echo "PostgreSQL: ${ADMIN_DB%%\?*}; MariaDB: $MYSQL_URL ($(mariadb --no-defaults --version | sed 's/.*Distrib \([^,]*\),.*/\1/'))"
  echo
  "$B" --limits-only --scenario coupon --stock 100 --concurrency 64 --limit-secs "$SECS" --mysql-url "$MYSQL_URL" 2>&1 |
    grep -E '^\| (limit|---|SELECT)'
  "$B" --limits-only --scenario drain --limit-secs "$SECS" --mysql-url "$MYSQL_URL" 2>&1 |
    grep -E '^\| grant'
} | tee "$OUT/store-limits.md"
