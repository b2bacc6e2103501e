#!/usr/bin/env bash
# Instructions the service spends per claim, counted by valgrind's callgrind
# (repeatable for the same binary and inputs, whatever else the machine
# does, unlike seconds): starts BIN under callgrind with instrumentation
# off, warms it up with a small rush, counts only a rush of USERS users for
# 100 units in MODE (8 connections, closed loop), stops it, and prints the
# instructions per claim and the 15 costliest functions (self cost).
#   scripts/callgrind-claims.sh [BIN] [MODE] [USERS]
#   (defaults: target/release/firstcome, gate, 3000; firstcome-bench from
#   target/release). Output: bench-out/callgrind/<mode>-<pid>.out
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/firstcome} MODE=${2:-gate} USERS=${3:-3000}
command -v valgrind >/dev/null || { . scripts/lib/stores.sh; stores_apt_install valgrind || exit 3; }
stores_env="$(scripts/services.sh)"
eval "$stores_env"
. scripts/lib/serve.sh
[ -x "$BIN" ] && [ -x target/release/firstcome-bench ] || cargo build --release --locked -q --workspace
fresh_bench_db firstcome_callgrind
export FIRSTCOME_ADMIN_TOKEN="callgrind-$$-$RANDOM$RANDOM" FIRSTCOME_ADDR=127.0.0.1:18114
export FIRSTCOME_RATE_PER_USER=0 FIRSTCOME_INSECURE_TRUST_USER_ID=true RUST_LOG=warn
# Everything is ~50x slower under valgrind: no Redis call may time out.
export FIRSTCOME_REDIS_TIMEOUT_MS=20000
mkdir -p bench-out/callgrind
out="bench-out/callgrind/$MODE-$$.out"
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" "$BIN" serve \
  >"bench-out/callgrind/$MODE-$$.log" 2>&1 &
SP=$!
trap 'kill $SP 2>/dev/null || true' EXIT
URL="http://$FIRSTCOME_ADDR"
deadline=$(( $(date +%s) + 300 ))
until curl -fsS "$URL/readyz" >/dev/null 2>&1; do
  kill -0 "$SP" 2>/dev/null || { echo "the service exited (bench-out/callgrind/$MODE-$$.log)" >&2; exit 1; }
  [ "$(date +%s)" -lt "$deadline" ] || { echo "not ready in 300 s" >&2; exit 1; }
  sleep 0.5
done
bench() { target/release/firstcome-bench --url "$URL" --scenario coupon --modes "$MODE" --stock "$2" \
  --users "$1" --concurrency 8 --limit-secs 0 --request-timeout-secs 0 "${@:3}"; }
bench 300 10 >/dev/null 2>&1
callgrind_control -i on "$SP" >/dev/null 2>&1
bench "$USERS" 100 --json "bench-out/callgrind/$MODE-$$.json" >/dev/null 2>&1
callgrind_control -i off "$SP" >/dev/null 2>&1
kill -TERM "$SP"; wait "$SP" || true
trap - EXIT
python3 - "bench-out/callgrind/$MODE-$$.json" "$out" <<'PY'
import json, re, sys
r = json.load(open(sys.argv[1]))["results"][0]
bad = sum(v for v in r["violations"].values())
total = None
for line in open(sys.argv[2]):
    if line.startswith("totals:") or line.startswith("summary:"):
        total = int(line.split()[1])
print(f"{r['mode']}: {r['requests']} claims, {r['grants']} grants, violations {bad}")
print(f"instructions: {total:,} in all, {total // r['requests']:,} per claim")
PY
callgrind_annotate --inclusive=no "$out" 2>/dev/null | sed -n '/file:function/,$p' | sed -n '3,17p' | cut -c1-160
