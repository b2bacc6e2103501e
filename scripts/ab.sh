#!/usr/bin/env bash
# A/B: this checkout's `firstcome-bench` against an older revision's
# service binary and this checkout's, alternately, in one sitting (the
# machine's speed drifts ±30% between sittings, so only ratios within one
# run mean anything).
#   scripts/ab.sh OLD_REV ROUNDS -- BENCH_ARGS...
# e.g. scripts/ab.sh 570e7d5 3 -- --scenario coupon --stock 100 --users 20000 \
#        --modes gate,redis-queue,redis-lua --concurrency 64 --limit-secs 0
# Builds OLD_REV in a temporary worktree (target/ab/) and uses only its
# `firstcome` binary (so a revision from before the bench crate works too);
# each service binary serves on a fresh database (scripts/lib/serve.sh), and
# every round prints each mode's claims/s, p50, p99 and the slowest 100 ms
# window's slowest answer (and the median window's) for A (old) then B (this
# checkout); JSON per run in bench-out/ab/. AB_OLD_BIN=PATH uses a service
# binary saved earlier as A (OLD_REV then only names it in the output).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] && [ "$3" = "--" ] || { sed -n '2,13p' "$0"; exit 2; }
OLD_REV=$1 ROUNDS=$2; shift 3
eval "$(scripts/services.sh)"
source scripts/lib/serve.sh

WT=target/ab/old
A="$PWD/target/ab/target-old/release/firstcome"
if [ -n "${AB_OLD_BIN:-}" ]; then
  A=$AB_OLD_BIN
elif [ ! -d "$WT" ] || [ "$(git -C "$WT" rev-parse HEAD 2>/dev/null)" != "$(git rev-parse "$OLD_REV")" ]; then
  git worktree remove --force "$WT" 2>/dev/null || rm -rf "$WT"
  git worktree prune
  git worktree add --detach "$WT" "$OLD_REV" >/dev/null
fi
[ -n "${AB_OLD_BIN:-}" ] || (cd "$WT" && CARGO_TARGET_DIR="$PWD/../target-old" cargo build --release --locked -q)
cargo build --release --locked -q --workspace
B="$PWD/target/release/firstcome"
BENCH="$PWD/target/release/firstcome-bench"
mkdir -p bench-out/ab

serve_bin() { # serve_bin BIN ADDR LOG: like start_serve, with a given binary
  fresh_bench_db firstcome_ab
  export FIRSTCOME_ADMIN_TOKEN="ab-$$-$RANDOM$RANDOM" FIRSTCOME_ADDR=$2 FIRSTCOME_RATE_PER_USER=0 RUST_LOG=warn \
    FIRSTCOME_INSECURE_TRUST_USER_ID=true
  URL="http://$2"
  "$1" serve >"bench-out/ab/$3" 2>&1 &
  SERVE_PID=$!
  wait_ready "$URL" "$SERVE_PID" "bench-out/ab/$3"
}
trap stop_serve EXIT INT TERM
base_db=$DATABASE_URL
for round in $(seq 1 "$ROUNDS"); do
  for side in A B; do
    bin=$A; [ "$side" = B ] && bin=$B
    export DATABASE_URL=$base_db
    serve_bin "$bin" 127.0.0.1:18090 "serve-$side.log"
    json="bench-out/ab/$side-$round.json"
    "$BENCH" --url "$URL" --json "$json" "$@" >/dev/null
    python3 - "$json" "$side" "$round" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
for r in d["results"]:
    v = r["violations"]
    bad = sum(x for x in v.values() if isinstance(x, int)) if isinstance(v, dict) else v
    w = r.get("slowest_windows") or [[0, 0]]
    print(f"round {sys.argv[3]} {sys.argv[2]} {r['mode']:<12} c={r['concurrency']:<4} "
          f"{r['rps']:>8.0f} req/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
          f"slowest 100 ms {w[0][1]:6.1f} ms at {w[0][0]:4.1f} s, median {r.get('median_window_max_ms', 0):5.1f} ms  "
          f"violations {bad}")
EOF
    stop_serve; SERVE_PID=""
  done
done
