# Sourced by scripts/bench.sh, scripts/wrk.sh and scripts/drain-profile.sh: builds the release binaries
# (the service and firstcome-bench) and starts `firstcome serve` on ADDR in
# the background, logging to bench-out/LOG, on a fresh database
# (`fresh_bench_db`). Sets URL, OUT, BIN (the service), BENCH_BIN and
# SERVE_PID; `stop_serve` stops it.
#   start_serve ADDR LOG
start_serve() {
  fresh_bench_db firstcome_bench
  export FIRSTCOME_ADMIN_TOKEN="bench-$$-$RANDOM$RANDOM"
  export FIRSTCOME_ADDR=$1
  export FIRSTCOME_RATE_PER_USER=0
  # The bench names its users (no JWT key): trusting them is explicit.
  export FIRSTCOME_INSECURE_TRUST_USER_ID=true
  export RUST_LOG=warn
  URL="http://$FIRSTCOME_ADDR"
  OUT=bench-out
  mkdir -p "$OUT"
  cargo build --release --locked -q --workspace
  BIN=target/release/firstcome
  BENCH_BIN=target/release/firstcome-bench
  "$BIN" serve >"$OUT/$2" 2>&1 &
  SERVE_PID=$!
  wait_ready "$URL" "$SERVE_PID" "$OUT/$2"
}

# Waits up to 30 s for `firstcome serve` (process PID, logging to LOG) to
# answer /readyz at URL; fails at once if it exits.
#   wait_ready URL PID LOG
wait_ready() {
  local deadline=$(( $(date +%s) + 30 ))
  until curl -fsS "$1/readyz" >/dev/null 2>&1; do
    kill -0 "$2" 2>/dev/null || { echo "firstcome serve exited (see $3)" >&2; return 1; }
    [ "$(date +%s)" -lt "$deadline" ] || { echo "firstcome serve at $1 not ready in 30 s" >&2; return 1; }
    sleep 0.2
  done
}

stop_serve() {
  [ -n "${SERVE_PID:-}" ] || return 0
  kill "$SERVE_PID" 2>/dev/null || true
  wait "$SERVE_PID" 2>/dev/null || true
}

# Points DATABASE_URL (PostgreSQL's or MariaDB's) at a freshly created database NAME (dropped first if
# an earlier run left it) and FIRSTCOME_REDIS_PREFIX at a prefix of its
# own: a run's numbers must not depend on the rows of earlier runs (a
# grants table grown to millions of rows makes every insert slower).
#   fresh_bench_db NAME
fresh_bench_db() {
  local admin=$DATABASE_URL
  case "$admin" in
    mysql://* | mariadb://*)
      # shellcheck source=scripts/lib/stores.sh
      . "$(dirname "${BASH_SOURCE[0]}")/stores.sh"
      stores_mysql_run "$admin" "DROP DATABASE IF EXISTS \`$1\`; CREATE DATABASE \`$1\`" ;;
    *) psql "$admin" -qc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1" >/dev/null ;;
  esac
  export DATABASE_URL="${admin%/*}/$1"
  export FIRSTCOME_REDIS_PREFIX="$1-$$-$RANDOM"
}
