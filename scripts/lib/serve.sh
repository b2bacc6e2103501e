# Sourced by scripts/bench.sh and scripts/wrk.sh: builds the release binary
# and starts `firstcome serve` on ADDR in the background, logging to
# bench-out/LOG. Sets URL, OUT, BIN and SERVE_PID; `stop_serve` stops it.
#   start_serve ADDR LOG
start_serve() {
  export FIRSTCOME_ADMIN_TOKEN="bench-$$-$RANDOM$RANDOM"
  export FIRSTCOME_ADDR=$1
  export FIRSTCOME_RATE_PER_USER=0
  export RUST_LOG=warn
  URL="http://$FIRSTCOME_ADDR"
  OUT=bench-out
  mkdir -p "$OUT"
  cargo build --release --locked -q
  BIN=target/release/firstcome
  "$BIN" serve >"$OUT/$2" 2>&1 &
  SERVE_PID=$!
  local deadline=$(( $(date +%s) + 30 ))
  until curl -fsS "$URL/readyz" >/dev/null 2>&1; do
    kill -0 "$SERVE_PID" 2>/dev/null || { echo "firstcome serve exited (see $OUT/$2)" >&2; return 1; }
    [ "$(date +%s)" -lt "$deadline" ] || { echo "firstcome serve not ready in 30 s" >&2; return 1; }
    sleep 0.2
  done
}

stop_serve() {
  [ -n "${SERVE_PID:-}" ] || return 0
  kill "$SERVE_PID" 2>/dev/null || true
  wait "$SERVE_PID" 2>/dev/null || true
}
