#!/usr/bin/env bash
# Claims/s and p99 against shard count on the local Redis Cluster (3
# masters, 3 replicas; issue 13), with what Redis spent per claim on each
# master, read from INFO around each run:
#   scripts/bench-shards.sh [USERS [STOCK [SHARDS...]]]   (default 20000 2000 1 2 4 8)
# Every run is the coupon rush (closed loop, 64 connections) of gate and
# redis-lua, its invariants checked by the bench's verifier. On this 2-core
# machine throughput cannot grow with masters (they share the cores with
# the service and the load); the per-master CPU says what would.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh)"
eval "$(scripts/services.sh cluster)"
export REDIS_URL=$REDIS_CLUSTER_URL
source scripts/lib/serve.sh
trap stop_serve EXIT INT TERM
start_serve 127.0.0.1:18081 serve-shards.log
USERS=${1:-20000}
STOCK=${2:-2000}
shift $(( $# > 2 ? 2 : $# ))
SHARDS=("$@")
[ ${#SHARDS[@]} -gt 0 ] || SHARDS=(1 2 4 8)
first=${REDIS_CLUSTER_URL%%,*}
port=${first##*:}
masters=$(redis-cli -p "$port" cluster nodes | awk '$3 ~ /master/ && $3 !~ /fail/ {split($2, a, "[:@]"); print a[2]}' | sort -n)

# One line per master: port, CPU seconds (user + sys), commands processed.
snapshot() {
  for m in $masters; do
    cpu=$(redis-cli -p "$m" info cpu | awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%.6f", s}')
    cmds=$(redis-cli -p "$m" info stats | awk -F: '/^total_commands_processed:/ {print $2+0}')
    echo "$m $cpu $cmds"
  done
}

echo "| shards | mode | claims/s | p99 ms | grants | violations | Redis cmds/claim | Redis CPU µs/claim per master | busiest master |"
echo "|---|---|---|---|---|---|---|---|---|"
for n in "${SHARDS[@]}"; do
  for mode in gate redis-lua; do
    before=$(snapshot)
    "$BENCH_BIN" --url "$URL" --redis-url "$first" --scenario coupon --modes "$mode" \
      --users "$USERS" --stock "$STOCK" --concurrency 64 --limit-secs 0 --shards "$n" \
      --json "$OUT/shards-$n-$mode.json" >"$OUT/shards-$n-$mode.md" 2>&1
    after=$(snapshot)
    python3 - "$OUT/shards-$n-$mode.json" "$n" "$before" "$after" <<'EOF'
import json, sys
path, n, before, after = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
r = json.load(open(path))["results"][0]
b = {l.split()[0]: l.split()[1:] for l in before.splitlines()}
a = {l.split()[0]: l.split()[1:] for l in after.splitlines()}
claims = max(r["requests"], 1)
cpu = {m: (float(a[m][0]) - float(b[m][0])) * 1e6 / claims for m in a}
cmds = sum(int(a[m][1]) - int(b[m][1]) for m in a) / claims
busiest = max(cpu.values())
share = busiest / max(sum(cpu.values()), 1e-9)
per = " / ".join(f"{cpu[m]:.1f}" for m in sorted(cpu))
v = r["violations"]
bad = sum(x for x in v.values() if isinstance(x, (int, float)))
print(f"| {n} | {r['mode']} | {r['rps']:.0f} | {r['p99_ms']:.2f} | {r['grants']} | {bad} | {cmds:.2f} | {per} | {share:.0%} |")
EOF
  done
done
echo "results in $OUT/shards-*.{json,md}"
