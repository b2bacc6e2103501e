#!/usr/bin/env bash
# Brings the service up on local Redis and PostgreSQL and shows it working:
# builds firstcome, starts `firstcome serve`, rushes one campaign per
# admission mode with `firstcome bench` (printing the outcome and the
# invariant checks), then keeps serving on http://127.0.0.1:8080 until
# Ctrl-C. Set FIRSTCOME_DEMO_EXIT=1 to stop after the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh)"
export FIRSTCOME_ADMIN_TOKEN="${FIRSTCOME_ADMIN_TOKEN:-demo-admin-token}"
export FIRSTCOME_ADDR="${FIRSTCOME_ADDR:-127.0.0.1:8080}"

command -v curl >/dev/null || { sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd=sudo;
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq curl; }
cargo build --release --locked
bin=target/release/firstcome

"$bin" serve &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT INT TERM

url="http://$FIRSTCOME_ADDR"
deadline=$(( $(date +%s) + 30 ))
until curl -fsS "$url/readyz" >/dev/null 2>&1; do
  kill -0 "$pid" 2>/dev/null || { echo "firstcome exited" >&2; exit 1; }
  [ "$(date +%s)" -lt "$deadline" ] || { echo "firstcome did not become ready" >&2; exit 1; }
  sleep 0.2
done

echo
echo "== 5,000 users rush 100 coupons, once per admission mode =="
"$bin" bench --url "$url" --scenario coupon --users 5000 --stock 100 --concurrency 32
echo
echo "== the same user asks again: the first answer comes back =="
cid=$(curl -fsS -H "Authorization: Bearer $FIRSTCOME_ADMIN_TOKEN" -H 'content-type: application/json' \
  -d '{"name":"demo","pools":[{"name":"main","stock":1}]}' "$url/v1/campaigns" | sed -E 's/.*"id":([0-9]+).*/\1/')
for who in alice alice bob; do
  printf '%s -> ' "$who"
  curl -sS -H 'content-type: application/json' -d "{\"user_id\":\"$who\"}" "$url/v1/campaigns/$cid/claims"
  echo
done
curl -fsS "$url/v1/campaigns/$cid"; echo

if [ "${FIRSTCOME_DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
echo
echo "firstcome is serving on $url (admin token: $FIRSTCOME_ADMIN_TOKEN). Ctrl-C stops it."
wait "$pid"
