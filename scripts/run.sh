#!/usr/bin/env bash
# Brings the service up on local Redis and PostgreSQL and shows it working:
# builds firstcome and firstcome-bench, starts `firstcome serve`, rushes one
# campaign per admission mode with `firstcome-bench` (printing the outcome and the
# invariant checks), then keeps serving on http://127.0.0.1:8080 until
# Ctrl-C. Set FIRSTCOME_DEMO_EXIT=1 to stop after the demo.
# The stores come from scripts/services.sh: the machine's own Redis and
# PostgreSQL if they answer on the default ports, else private instances it
# starts under .firstcome/ and leaves running (`scripts/services.sh stop`).
set -euo pipefail
cd "$(dirname "$0")/.."
stores_env="$(scripts/services.sh)" # a failure stops here (`eval "$(...)"` would hide it)
eval "$stores_env"
export FIRSTCOME_ADMIN_TOKEN="${FIRSTCOME_ADMIN_TOKEN:-demo-admin-token}"
export FIRSTCOME_ADDR="${FIRSTCOME_ADDR:-127.0.0.1:8080}"

# shellcheck source=scripts/lib/stores.sh
. scripts/lib/stores.sh
command -v curl >/dev/null || stores_apt_install curl || exit 3
cargo build --release --locked --workspace
bin="${CARGO_TARGET_DIR:-target}/release/firstcome"
bench_bin="${CARGO_TARGET_DIR:-target}/release/firstcome-bench"

# The demo names its users (no JWT key): trusting them is explicit.
FIRSTCOME_INSECURE_TRUST_USER_ID="${FIRSTCOME_INSECURE_TRUST_USER_ID:-true}" "$bin" serve &
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
"$bench_bin" --url "$url" --scenario coupon --users 5000 --stock 100 --concurrency 32
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

# A campaign to look at in a browser: the public page claims through the API.
pid_page=$(curl -fsS -H "Authorization: Bearer $FIRSTCOME_ADMIN_TOKEN" -H 'content-type: application/json' \
  -d '{"name":"Demo concert","mode":"gate","pools":[{"name":"floor","stock":50},{"name":"balcony","stock":20}]}' \
  "$url/v1/campaigns" | sed -E 's/.*"id":([0-9]+).*/\1/')
echo
echo "== in a browser =="
echo "campaign page (Korean or English by your browser's language): $url/c/$pid_page"
echo "operator dashboard (sign in with the admin token): $url/admin"

if [ "${FIRSTCOME_DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
echo
echo "firstcome is serving on $url (admin token: $FIRSTCOME_ADMIN_TOKEN). Ctrl-C stops it."
wait "$pid"
