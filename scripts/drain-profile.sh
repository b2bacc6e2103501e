#!/usr/bin/env bash
# Where the redis-queue drain's time goes (docs/BENCHMARKS.md, "Drain:
# after the foreign keys went"). Two measurements:
#  1. The drainer alone: an API process takes a rush of USERS claims
#     (stock = users) while the worker process is stopped (SIGSTOP); once
#     every claim is queued the worker resumes, and the time until its
#     `firstcome_drained_total` reaches USERS gives the drain rate with no
#     claim traffic beside it. Per-process CPU during that window comes from
#     `top`.
#  2. What foreign keys would cost: the grant INSERT limit (`firstcome-bench
#     --limits-only`) on a scratch database with the schema as
#     migrated (grants carry no foreign key), then with the two foreign
#     keys of the first schema put back.
#   scripts/drain-profile.sh              USERS=100000 by default
# Brings up the stores, builds the release binaries, uses 127.0.0.1:18281-3,
# a fresh database `firstcome_bench` and a scratch one
# `firstcome_drain_profile` (dropped at the end), writes
# bench-out/drain-profile.md, and stops and drops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh)"
USERS=${USERS:-100000}
OUT=bench-out
mkdir -p "$OUT"
cargo build --release --locked -q --workspace
# FIRSTCOME_BIN: another service binary to profile (an A/B).
BIN=${FIRSTCOME_BIN:-target/release/firstcome}
BENCH_BIN=target/release/firstcome-bench
SCRATCH=firstcome_drain_profile
SCRATCH_URL="${DATABASE_URL%/*}/$SCRATCH"
source scripts/lib/serve.sh
fresh_bench_db firstcome_bench
API_URL=http://127.0.0.1:18281
WORKER_URL=http://127.0.0.1:18282
export FIRSTCOME_ADMIN_TOKEN="profile-$$-$RANDOM$RANDOM" FIRSTCOME_RATE_PER_USER=0 RUST_LOG=warn
# The bench names its users (no JWT key): trusting them is explicit.
export FIRSTCOME_INSECURE_TRUST_USER_ID=true
PIDS=()
TOP=$OUT/drain-profile-top.txt
cleanup() {
  for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  psql "${SCRATCH_URL%/*}/postgres" -qc "DROP DATABASE IF EXISTS $SCRATCH WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

metric() { # URL NAME-REGEX -> value (0 when absent)
  curl -fsS "$1/metrics" 2>/dev/null | awk -v m="$2" '$1 ~ m {v=$2} END {print v+0}'
}

# 1. The drainer alone.
FIRSTCOME_ROLE=api FIRSTCOME_ADDR=${API_URL#http://} "$BIN" serve >"$OUT/profile-api.log" 2>&1 &
API=$!; PIDS+=("$API")
FIRSTCOME_ROLE=worker FIRSTCOME_ADDR=${WORKER_URL#http://} "$BIN" serve >"$OUT/profile-worker.log" 2>&1 &
WORKER=$!; PIDS+=("$WORKER")
wait_ready "$API_URL" "$API" "$OUT/profile-api.log" || exit 1
wait_ready "$WORKER_URL" "$WORKER" "$OUT/profile-worker.log" || exit 1
kill -STOP "$WORKER"
"$BENCH_BIN" --url "$API_URL" --scenario drain --modes redis-queue --users "$USERS" \
  --concurrency 1024 --limit-secs 0 --json "$OUT/drain-profile.json" --html "$OUT/drain-profile.html" \
  >"$OUT/drain-profile-bench.txt" 2>&1 &
BENCH=$!; PIDS+=("$BENCH")
deadline=$(( $(date +%s) + 300 ))
until [ "$(metric "$API_URL" '^firstcome_claims_total.*outcome="queued"')" -ge "$USERS" ]; do
  kill -0 "$BENCH" 2>/dev/null || { echo "bench exited before the rush was queued" >&2; cat "$OUT/drain-profile-bench.txt" >&2; exit 1; }
  [ "$(date +%s)" -lt "$deadline" ] || { echo "rush not queued in 300 s" >&2; exit 1; }
  sleep 0.2
done
kill -CONT "$WORKER"
t0=$(date +%s.%N)
top -b -d 1 -w 200 >"$TOP" &
TOP_PID=$!; PIDS+=("$TOP_PID")
until [ "$(metric "$WORKER_URL" '^firstcome_drained_total')" -ge "$USERS" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "drain not done in 300 s" >&2; exit 1; }
  sleep 0.05
done
t1=$(date +%s.%N)
kill "$TOP_PID"
wait "$BENCH" || { cat "$OUT/drain-profile-bench.txt" >&2; exit 1; }
grep -q "violations 0" "$OUT/drain-profile-bench.txt" || { echo "the bench found violations" >&2; cat "$OUT/drain-profile-bench.txt" >&2; exit 1; }
rate=$(echo "$USERS / ($t1 - $t0)" | bc)
# Mean %CPU per process family over the drain window (top's first sample
# is an average since boot: skipped).
secs=$(echo "$t1 - $t0" | bc)
cpu=$(awk -v api="$API" -v wk="$WORKER" -v secs="$secs" -v users="$USERS" -v ncpu="$(nproc)" '
  /^top -/ {n++; next}
  n < 2 || !/^ *[0-9]+ / {next}
  { who = $12; if ($1 == api) who = "api process"; else if ($1 == wk) who = "worker process";
    else if (who ~ /^postgres/) who = "postgres (all backends)"; else if (who ~ /^redis/) who = "redis-server";
    else if (who == "firstcome-bench") who = "bench client"; else next;
    sum[who] += $9 }
  END { for (w in sum) { pct = sum[w] / (n - 1); all += pct
          printf "| %s | %.0f | %.1f |\n", w, pct, pct / 100 * secs * 1e6 / users }
        # The drain could not pass the machine: its cores over the CPU
        # every durable grant took (api process and bench idle here).
        printf "| all of them | %.0f | %.1f (ceiling on %d cores: %.0f grants/s) |\n", all,
          all / 100 * secs * 1e6 / users, ncpu, ncpu * 1e6 / (all / 100 * secs * 1e6 / users) }' "$TOP" | sort)
for p in "$API" "$WORKER"; do kill "$p"; wait "$p" 2>/dev/null || true; done
PIDS=()

# 2. The schema's cost on the grant INSERT.
psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $SCRATCH WITH (FORCE)" -c "CREATE DATABASE $SCRATCH" >/dev/null
# `serve` migrates the database it starts on.
DATABASE_URL="$SCRATCH_URL" FIRSTCOME_INSECURE_TRUST_USER_ID=true FIRSTCOME_ROLE=api FIRSTCOME_ADDR=127.0.0.1:18283 FIRSTCOME_REDIS_PREFIX=fcprofile \
  "$BIN" serve >"$OUT/profile-scratch.log" 2>&1 &
SCRATCH_PID=$!; PIDS+=("$SCRATCH_PID")
wait_ready http://127.0.0.1:18283 "$SCRATCH_PID" "$OUT/profile-scratch.log" || exit 1
kill "$SCRATCH_PID"; wait "$SCRATCH_PID" 2>/dev/null || true
PIDS=()
limit() {
  DATABASE_URL="$SCRATCH_URL" "$BENCH_BIN" --scenario drain --limits-only --limit-secs 3 2>&1 |
    awk -F'|' -v what="$1" '/grant INSERT/ {printf "| %s | %s | %s | %s |\n", what, $3, $4, $5}'
}
without_fk=$(limit "as migrated (no foreign key)")
psql "$SCRATCH_URL" -qc "ALTER TABLE grants
  ADD FOREIGN KEY (campaign_id) REFERENCES campaigns (id) ON DELETE CASCADE,
  ADD FOREIGN KEY (pool_id) REFERENCES pools (id) ON DELETE CASCADE"
with_fk=$(limit "2 foreign keys put back")

{
  echo "# Drain profile ($(date -u +%F), $USERS users)"
  echo
  echo "Drainer alone (worker resumed after the rush was queued): **$rate durable grants/s**"
  echo "($USERS rows in $(printf %.2f "$(echo "$t1 - $t0" | bc)") s)."
  echo
  echo "| process | mean %CPU during the drain (100 = one core) | µs CPU per durable grant |"
  echo "|---|---|---|"
  echo "$cpu"
  echo
  echo "| grant INSERT (500 rows/tx) | connections | rows/s | p50 ms per tx |"
  echo "|---|---|---|---|"
  echo "$without_fk"
  echo "$with_fk"
} | tee "$OUT/drain-profile.md"
