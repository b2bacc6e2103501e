#!/usr/bin/env bash
# The claim path measured with a cheap C client: wrk (one thread) claims
# for a fresh user per request, against gate, redis-lua and redis-queue, at
# each concurrency; then `firstcome-bench --limits-only` measures claim.lua
# straight at Redis (redis-benchmark among them) at the same concurrencies,
# and the ratio is printed. firstcome-bench's own client (hyper, with the
# invariant checks) costs more CPU per request than wrk, and everything
# shares the same cores, so this shows what the service does when the
# client is cheap. wrk does not verify answers: after each run the grants
# are counted (never more than the stock).
#   scripts/wrk.sh [CONCURRENCY...]       default: 64 128
# Brings up the stores, installs wrk if missing (apt-get), builds the
# release binary, starts `firstcome serve` on 127.0.0.1:18081, writes
# bench-out/wrk.md, and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh)"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
command -v wrk >/dev/null || {
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >&2
}
CONCS=("$@"); [ ${#CONCS[@]} -gt 0 ] || CONCS=(64 128)
SECS=${WRK_SECS:-10}
LUA=$(mktemp)
RATES=$(mktemp)
source scripts/lib/serve.sh
trap 'stop_serve; rm -f "$LUA" "$RATES"' EXIT INT TERM
start_serve 127.0.0.1:18081 wrk-serve.log

# A fresh user per request; 409 sold_out is the expected answer of most.
cat >"$LUA" <<'EOF'
local n = 0
function request()
  n = n + 1
  return wrk.format("POST", wrk.path, {["Content-Type"] = "application/json"},
    '{"user_id":"w' .. n .. '"}')
end
EOF

admin() { curl -fsS -H "Authorization: Bearer $FIRSTCOME_ADMIN_TOKEN" -H 'content-type: application/json' "$@"; }
{
  echo "| mode | conc | claims/s | p50 ms | p99 ms | grants (stock 100) |"
  echo "|---|---|---|---|---|---|"
  for c in "${CONCS[@]}"; do
    for m in gate redis-lua redis-queue; do
      cid=$(admin -d "{\"name\":\"wrk-$m-$c\",\"mode\":\"$m\",\"pools\":[{\"name\":\"main\",\"stock\":100}]}" \
        "$URL/v1/campaigns" | sed -E 's/.*"id":([0-9]+).*/\1/')
      w=$(wrk -t1 -c"$c" -d"${SECS}s" --latency -s "$LUA" "$URL/v1/campaigns/$cid/claims")
      rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$w")
      p50=$(awk '$1 == "50%" {print $2}' <<<"$w")
      p99=$(awk '$1 == "99%" {print $2}' <<<"$w")
      # gate's grants are durable before it answers; the others drain:
      # wait (10 s at most) for the 100, never accept more.
      for _ in $(seq 1 50); do
        grants=$(admin "$URL/v1/campaigns/$cid/grants?limit=1000" | grep -o '"code"' | wc -l)
        [ "$grants" -lt 100 ] || break
        sleep 0.2
      done
      [ "$grants" -le 100 ] || { echo "oversold: $grants grants of 100 in $m" >&2; exit 1; }
      echo "$m $c $rps" >>"$RATES"
      echo "| $m | $c | ${rps%.*} | $p50 | $p99 | $grants |"
    done
  done
} | tee "$OUT/wrk.md"

# Drain with the cheap client: every claim wins (stock 2,000,000) for
# WRK_SECS at 256 connections; durable grants/s = grants in PostgreSQL /
# time until nothing is left queued (gate answers after its commit).
{
  echo
  echo "| mode | conc | claims/s | durable grants | durable grants/s | drain after the rush (s) |"
  echo "|---|---|---|---|---|---|"
  for m in gate redis-queue; do
    cid=$(admin -d "{\"name\":\"wrk-drain-$m\",\"mode\":\"$m\",\"pools\":[{\"name\":\"main\",\"stock\":2000000}]}" \
      "$URL/v1/campaigns" | sed -E 's/.*"id":([0-9]+).*/\1/')
    t0=$(date +%s.%N)
    w=$(wrk -t1 -c256 -d"${SECS}s" -s "$LUA" "$URL/v1/campaigns/$cid/claims")
    t1=$(date +%s.%N)
    for _ in $(seq 1 600); do
      body=$(admin "$URL/v1/campaigns/$cid")
      [ "$(sed -E 's/.*"queued":([0-9]+).*/\1/' <<<"$body")" = 0 ] && break
      sleep 0.2
    done
    t2=$(date +%s.%N)
    granted=$(sed -E 's/.*"granted":([0-9]+).*/\1/' <<<"$body")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$w")
    awk -v m="$m" -v r="$rps" -v g="$granted" -v t0="$t0" -v t1="$t1" -v t2="$t2" \
      'BEGIN { printf "| %s | 256 | %.0f | %d | %.0f | %.2f |\n", m, r, g, g / (t2 - t0), t2 - t1 }'
  done
} | tee -a "$OUT/wrk.md"

IFS=,; CLIST="${CONCS[*]}"; unset IFS
"$BENCH_BIN" --url "$URL" --limits-only --scenario coupon --stock 100 \
  --concurrency "$CLIST" --json "$OUT/wrk-limits.json" | tee "$OUT/wrk-limits.md"
{
  echo
  echo "| mode | conc | claims/s (wrk) | x redis-benchmark (unpipelined) | x claim.lua limit (firstcome client) |"
  echo "|---|---|---|---|---|"
  for c in "${CONCS[@]}"; do
    rb=$(awk -F'|' -v c="$c" '$2 ~ /redis-benchmark, unpipelined/ && $3+0 == c {print $4+0}' "$OUT/wrk-limits.md")
    ll=$(awk -F'|' -v c="$c" '$2 ~ /straight at Redis, pipeline 1 / && $3+0 == c {print $4+0}' "$OUT/wrk-limits.md")
    for m in gate redis-lua redis-queue; do
      r=$(awk -v m="$m" -v c="$c" '$1 == m && $2 == c {print $3}' "$RATES")
      awk -v m="$m" -v c="$c" -v r="$r" -v rb="$rb" -v ll="$ll" \
        'BEGIN { printf "| %s | %s | %.0f | %s | %s |\n", m, c, r, (rb > 0 ? sprintf("%.2f", r / rb) : "-"), (ll > 0 ? sprintf("%.2f", r / ll) : "-") }'
    done
  done
} | tee -a "$OUT/wrk.md"
echo "results in $OUT/wrk.md"
