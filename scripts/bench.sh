#!/usr/bin/env bash
# The full comparison of docs/BENCHMARKS.md, in one command (about 15 minutes):
#   scripts/bench.sh [quick|drain]      drain: only the full drain scenario
# Brings up the stores, builds the release binaries, starts `firstcome serve`
# on 127.0.0.1:18080, runs `firstcome-bench` for each scenario (limits of
# the machine measured in the same run, redis-benchmark of the same
# claim.lua among them), writes bench-out/*.json|html|md, and stops what it
# started.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh)"
command -v redis-benchmark >/dev/null || echo "redis-benchmark missing (apt-get install redis-tools): its column stays empty" >&2
source scripts/lib/serve.sh
trap stop_serve EXIT INT TERM
start_serve 127.0.0.1:18080 serve.log

if [ "${1:-}" = quick ]; then
  COUPON=(--users 20000 --concurrency 64) ; EXAM=(--users 2400 --concurrency 64)
  STORM=(--users 5000 --concurrency 64) ; DRAIN=(--users 20000 --concurrency 256)
  PACED=(--users 20000 --concurrency 128 --rate 10000) ; DRAIN_PACED=(--users 20000 --concurrency 256 --rate 8000)
else
  # Each rush is bounded by --max-secs: the db-* modes stop short of the
  # crowd (the table's request count says how far they got).
  COUPON=(--users 100000 --concurrency 16,64,256,1024 --max-secs 20) ; EXAM=(--users 3000 --concurrency 128)
  STORM=(--users 20000 --concurrency 128 --max-secs 20) ; DRAIN=(--users 100000 --concurrency 1024)
  PACED=(--users 100000 --concurrency 128 --rate 10000) ; DRAIN_PACED=(--users 100000 --concurrency 256 --rate 8000)
fi
run() { # run NAME ARGS...
  local name=$1; shift
  echo "== firstcome-bench $* ==" | tee "$OUT/$name.md"
  "$BENCH_BIN" --url "$URL" --json "$OUT/$name.json" --html "$OUT/$name.html" "$@" | tee -a "$OUT/$name.md"
}
if [ "${1:-}" = drain ]; then
  run drain --scenario drain --modes gate,redis-queue,redis-lua "${DRAIN[@]}"
  exit 0
fi
run coupon --scenario coupon --stock 100 "${COUPON[@]}"
run exam --scenario exam "${EXAM[@]}"
run retry-storm --scenario retry-storm --stock 100 --repeats 2 "${STORM[@]}"
run drain --scenario drain --modes gate,redis-queue,redis-lua "${DRAIN[@]}"
# Open loop at a paced rate: latency below saturation (the p99 target at
# 128 connections), and claim-to-durable when the drainer keeps up.
run paced --scenario coupon --stock 100 --modes gate,redis-lua,redis-queue --limit-secs 0 "${PACED[@]}"
run drain-paced --scenario drain --modes redis-queue,gate --limit-secs 0 "${DRAIN_PACED[@]}"
if [ "${1:-}" != quick ]; then
  # Scale: a million users in one rush (memory per claimant, RSS).
  run million --scenario coupon --stock 1000 --modes gate,redis-lua,redis-queue --limit-secs 0 --users 1000000 --concurrency 256
fi

# The claim path with a cheap C client (wrk) beside the same limits.
if [ "${1:-}" = quick ]; then WRK_SECS=5 scripts/wrk.sh 64; else WRK_SECS=10 scripts/wrk.sh 64 128; fi

echo "results in $OUT/"
