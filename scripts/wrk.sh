#!/usr/bin/env bash
# The claim path measured with a cheap C client: wrk (one thread) claims
# for a fresh user per request, against gate, redis-lua and redis-queue, at
# each concurrency, in issue 16's two workloads: losers (stock 100) and
# mixed (stock 20,000: winners, then losers); beside them the floor, the
# same service answering GET /healthz (its HTTP stack and middleware, no
# store). Then a drain (every claim wins) at 256 connections, then
# `firstcome-bench --limits-only` measures claim.lua straight at Redis
# (redis-benchmark among them) at the same concurrencies, and the ratios
# are printed.
#
# Every run also says where the cores went (scripts/lib/cpu.sh, from
# /proc): µs of CPU per request spent by the service, Redis, PostgreSQL
# and the rest (wrk, the kernel's share not charged to them, anything else
# running), and how busy the machine was. From those, the ceiling the run
# had: cores / (Redis + PostgreSQL + rest per request), the rate were the
# service's own CPU free.
#
# wrk does not verify answers: after each run the grants are counted
# (never more than the stock).
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
source scripts/lib/cpu.sh
NCPU=$(nproc)
# One wrk run at concurrency $1 against URL $2 (extra wrk arguments after),
# with the CPU each party spent per request. Sets W_RPS, W_P50, W_P99 and
# W_CPU ("service redis postgres rest busy%", see scripts/lib/cpu.sh).
wrk_run() {
  local c=$1 url=$2; shift 2
  cpu_mark
  w=$(wrk -t1 -c"$c" -d"${SECS}s" --latency "$@" "$url")
  W_CPU=$(cpu_since "$(awk '/requests in/ {print $1}' <<<"$w")")
  W_RPS=$(awk '/^Requests\/sec/ {print $2}' <<<"$w")
  W_P50=$(awk '$1 == "50%" {print $2}' <<<"$w")
  W_P99=$(awk '$1 == "99%" {print $2}' <<<"$w")
}
# The workloads: losers (stock 100: all but the first 100 lose) and mixed
# (stock 20,000: the first 20,000 win, then the rest lose), as issue 16
# measured them; and the floor: the same service answering GET /healthz
# (the whole HTTP stack and its middleware, no store), which bounds what
# any claim can reach on this machine with this client.
{
  echo "| workload | mode | conc | req/s | p50 ms | p99 ms | grants | µs CPU per request: service / redis / postgres / client+rest | machine busy % |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for c in "${CONCS[@]}"; do
    wrk_run "$c" "$URL/healthz"
    read -r s r p o b <<<"$W_CPU"
    echo "floor $c $W_RPS $s $r $p $o" >>"$RATES"
    echo "| floor (GET /healthz) | - | $c | ${W_RPS%.*} | $W_P50 | $W_P99 | - | $s / $r / $p / $o | $b |"
    for stock in 100 20000; do
      [ "$stock" = 100 ] && wl=losers || wl=mixed
      for m in gate redis-lua redis-queue; do
        cid=$(admin -d "{\"name\":\"wrk-$m-$c-$stock\",\"mode\":\"$m\",\"pools\":[{\"name\":\"main\",\"stock\":$stock}]}" \
          "$URL/v1/campaigns" | sed -E 's/.*"id":([0-9]+).*/\1/')
        wrk_run "$c" "$URL/v1/campaigns/$cid/claims" -s "$LUA"
        # gate's grants are durable before it answers; the others drain:
        # wait (30 s at most) for the whole stock, never accept more.
        for _ in $(seq 1 150); do
          body=$(admin "$URL/v1/campaigns/$cid")
          grants=$(sed -E 's/.*"granted":([0-9]+).*/\1/' <<<"$body")
          [ "$grants" -lt "$stock" ] || break
          sleep 0.2
        done
        [ "$grants" -le "$stock" ] || { echo "oversold: $grants grants of $stock in $m" >&2; exit 1; }
        read -r s r p o b <<<"$W_CPU"
        echo "$wl $c $W_RPS $s $r $p $o $m" >>"$RATES"
        echo "| $wl | $m | $c | ${W_RPS%.*} | $W_P50 | $W_P99 | $grants | $s / $r / $p / $o | $b |"
      done
    done
  done
} | tee "$OUT/wrk.md"

# Drain with the cheap client: every claim wins (stock 2,000,000) for
# WRK_SECS at 256 connections; durable grants/s = grants in PostgreSQL /
# time until nothing is left queued (gate answers after its commit).
{
  echo
  echo "| mode | conc | claims/s | durable grants | durable grants/s | drain after the rush (s) | µs CPU per durable grant: service / redis / postgres / client+rest | machine busy % |"
  echo "|---|---|---|---|---|---|---|---|"
  for m in gate redis-queue; do
    cid=$(admin -d "{\"name\":\"wrk-drain-$m\",\"mode\":\"$m\",\"pools\":[{\"name\":\"main\",\"stock\":2000000}]}" \
      "$URL/v1/campaigns" | sed -E 's/.*"id":([0-9]+).*/\1/')
    cpu_mark
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
    read -r s r p o b <<<"$(cpu_since "$granted")"
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$w")
    awk -v m="$m" -v r="$rps" -v g="$granted" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v cpu="$s / $r / $p / $o | $b" \
      'BEGIN { printf "| %s | 256 | %.0f | %d | %.0f | %.2f | %s |\n", m, r, g, g / (t2 - t0), t2 - t1, cpu }'
  done
} | tee -a "$OUT/wrk.md"

IFS=,; CLIST="${CONCS[*]}"; unset IFS
"$BENCH_BIN" --url "$URL" --limits-only --scenario coupon --stock 100 \
  --concurrency "$CLIST" --json "$OUT/wrk-limits.json" | tee "$OUT/wrk-limits.md"
# The ratios, and the ceiling each run had on this machine: were the
# service's own CPU free, the rate could not pass NCPU cores / (redis +
# postgres + client per request); the floor's row is the service's HTTP
# stack alone.
{
  echo
  echo "| workload | mode | conc | req/s (wrk) | x redis-benchmark | x claim.lua limit (firstcome client) | ceiling without the service's CPU (req/s) | service µs per request |"
  echo "|---|---|---|---|---|---|---|---|"
  for c in "${CONCS[@]}"; do
    rb=$(awk -F'|' -v c="$c" '$2 ~ /redis-benchmark, unpipelined/ && $3+0 == c {print $4+0}' "$OUT/wrk-limits.md")
    ll=$(awk -F'|' -v c="$c" '$2 ~ /straight at Redis, pipeline 1 / && $3+0 == c {print $4+0}' "$OUT/wrk-limits.md")
    awk -v c="$c" -v rb="$rb" -v ll="$ll" -v n="$NCPU" '$2 == c {
        m = ($1 == "floor") ? "-" : $8;
        printf "| %s | %s | %s | %.0f | %s | %s | %.0f | %s |\n", $1, m, c, $3,
          (rb > 0 ? sprintf("%.2f", $3 / rb) : "-"), (ll > 0 ? sprintf("%.2f", $3 / ll) : "-"),
          n * 1e6 / ($5 + $6 + $7 > 0 ? $5 + $6 + $7 : 1), $4 }' "$RATES"
  done
} | tee -a "$OUT/wrk.md"
echo "results in $OUT/wrk.md"
