#!/usr/bin/env bash
# Runs a fair-start drop end to end, as docs/RUNNING-A-DROP.md walks through
# it, and prints every call and answer: a redis-queue campaign of 5 seats
# whose pre-queue opens at once and whose sale opens 8 s later, a signed
# webhook to a local receiver (scripts/lib/webhook_receiver.py, which fails
# the first attempt of every third event), 12 users pre-queued, the draw
# checked against its commitment and recomputed from the published list,
# a late arrival, pause, resume, a restock, a cancellation, the actions log,
# the webhook deliveries and the queue metrics. Stops what it started.
#   scripts/drop-demo.sh            (FIRSTCOME_BIN to use a built binary)
set -euo pipefail
cd "$(dirname "$0")/.."
stores_env="$(scripts/services.sh)"
eval "$stores_env"
. scripts/lib/serve.sh
. scripts/lib/stores.sh
command -v jq >/dev/null || stores_apt_install jq || exit 3
command -v curl >/dev/null || stores_apt_install curl || exit 3
if [ -z "${FIRSTCOME_BIN:-}" ]; then
  cargo build --release --locked -q -p firstcome
  FIRSTCOME_BIN=target/release/firstcome
fi
fresh_bench_db firstcome_drop_demo
export FIRSTCOME_ADMIN_TOKEN="drop-demo-$$-$RANDOM$RANDOM" FIRSTCOME_ADDR=127.0.0.1:18097
export FIRSTCOME_INSECURE_TRUST_USER_ID=true RUST_LOG=warn
URL="http://$FIRSTCOME_ADDR"
work=$(mktemp -d)
HOOK_PORT=18098 SECRET="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
python3 scripts/lib/webhook_receiver.py "$HOOK_PORT" "$SECRET" "$work/hooks.jsonl" &
HOOK_PID=$!
"$FIRSTCOME_BIN" serve --webhook-allow "127.0.0.1:$HOOK_PORT" >"$work/serve.log" 2>&1 &
SERVE_PID=$!
trap 'kill $SERVE_PID $HOOK_PID 2>/dev/null || true; wait $SERVE_PID $HOOK_PID 2>/dev/null || true; rm -rf "$work"' EXIT INT TERM
wait_ready "$URL" "$SERVE_PID" "$work/serve.log"

say() { printf '\n## %s\n' "$*"; }
# call METHOD PATH [BODY]: prints the call and the answer (status, JSON).
call() {
  local m=$1 p=$2 b=${3:-}
  printf '$ %s %s %s\n' "$m" "$p" "$b"
  local args=(-sS -X "$m" -H "authorization: Bearer $FIRSTCOME_ADMIN_TOKEN" -H "x-firstcome-actor: dana" -w '\n%{http_code}')
  [ -n "$b" ] && args+=(-H 'content-type: application/json' -d "$b")
  local out; out=$(curl "${args[@]}" "$URL$p")
  printf '%s %s\n' "${out##*$'\n'}" "$(jq -c . <<<"${out%$'\n'*}" 2>/dev/null || echo "${out%$'\n'*}")"
}
claim() { call POST "/v1/campaigns/$ID/claims" "{\"user_id\":\"$1\"}"; }
# decided USER: the user's answer once the drainer decided it (30 s at most).
decided() {
  local a deadline=$(( $(date +%s) + 30 ))
  while a=$(curl -sS "$URL/v1/campaigns/$ID/claims/$1"); [ "$(jq -r .status <<<"$a")" = queued ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "$1 still queued after 30 s" >&2; exit 1; }
    sleep 0.2
  done
  echo "$a"
}

opens=$(date -u -d '+8 seconds' +%Y-%m-%dT%H:%M:%SZ)
say "1. Create the drop: 5 seats, pre-queue open now, sale at $opens, a signed webhook"
created=$(curl -sS -H "authorization: Bearer $FIRSTCOME_ADMIN_TOKEN" -H 'content-type: application/json' \
  -d "{\"name\":\"concert\",\"mode\":\"redis-queue\",\"pools\":[{\"name\":\"seats\",\"stock\":5}],
       \"opens_at\":\"$opens\",\"prequeue_secs\":600,
       \"webhook\":{\"url\":\"http://127.0.0.1:$HOOK_PORT/hooks\",\"secret\":\"$SECRET\"}}" "$URL/v1/campaigns")
echo "$created" | jq -c '{id, mode, opens_at, prequeue_secs, draw_commitment, draw_seed, webhook}'
ID=$(jq -r .id <<<"$created")
COMMIT=$(jq -r .draw_commitment <<<"$created")

say "2. Twelve users arrive before the opening: each is pre-queued (no place yet)"
for i in $(seq -w 1 12); do
  if [ "$i" = 01 ] || [ "$i" = 12 ]; then claim "fan$i"; else claim "fan$i" >/dev/null; fi
done
echo "(fan02..fan11 answered the same, not shown)"

say "3. fan07 leaves the pre-queue"
call DELETE "/v1/campaigns/$ID/claims/fan07"

say "4. The opening: the seed is revealed, the order is drawn"
until [ "$(date -u +%s)" -ge "$(date -u -d "$opens" +%s)" ]; do sleep 0.2; done
claim late01
deadline=$(( $(date +%s) + 30 ))
until [ "$(curl -sS -H "authorization: Bearer $FIRSTCOME_ADMIN_TOKEN" "$URL/v1/campaigns/$ID/draw" | jq -r .drawn)" = "true" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "the draw was not recorded in 30 s" >&2; exit 1; }
  sleep 0.2
done
call GET "/v1/campaigns/$ID/draw?limit=20"
draw=$(curl -sS -H "authorization: Bearer $FIRSTCOME_ADMIN_TOKEN" "$URL/v1/campaigns/$ID/draw?limit=100")

say "5. Anyone can check the draw: the seed against the commitment, the order from the seed and the list"
python3 - "$COMMIT" "$draw" <<'PY'
import hashlib, json, sys
commitment, d = sys.argv[1], json.loads(sys.argv[2])
seed = bytes.fromhex(d["draw_seed"])
users = [p["user_id"] for p in d["places"]]
order = sorted(users, key=lambda u: hashlib.sha256(seed + u.encode()).digest())
committed = hashlib.sha256(seed).hexdigest() == commitment
same = [p["user_id"] for p in sorted(d["places"], key=lambda p: p["rank"])] == order
print("sha256(seed) == draw_commitment:", committed)
print("published ranks == recomputed order:", same)
print("drawn order:", " ".join(order))
sys.exit(0 if committed and same else 1)
PY

say "6. Everyone's answer once the queue drained: 5 seats in drawn order, fan07 skipped; late01 came after the opening and the pre-queue had taken every seat"
for u in $(jq -r '.places | sort_by(.rank) | .[].user_id' <<<"$draw") late01; do
  printf '%-7s %s\n' "$u" "$(decided "$u" | jq -c '{status, slot, reason, seq}')"
done

say "7. Pause: a new user is asked to come back; resume"
call POST "/v1/campaigns/$ID/pause" | sed 's/"name".*"paused"/... "paused"/'
claim late02
call POST "/v1/campaigns/$ID/resume" | sed 's/"name".*"paused"/... "paused"/'

say "8. Restock: two more seats; the next arrivals get seats 6 and 7"
call PATCH "/v1/campaigns/$ID" '{"pools":[{"name":"seats","stock":7}]}' | jq -Rr 'split(" ") | .[0] + " " + (.[1:] | join(" ") | fromjson | {pools} | tostring)' 2>/dev/null || true
for u in late02 late03 late04; do
  claim "$u" >/dev/null
  printf '%-7s %s\n' "$u" "$(decided "$u" | jq -c '{status, slot, reason}')"
done
say "   ...and lowering below what is taken is refused"
call PATCH "/v1/campaigns/$ID" '{"pools":[{"name":"seats","stock":4}]}'

# The first drawn who holds a seat (the draw may rank fan07, who left, first).
winner=$(jq -r '[.places | sort_by(.rank) | .[] | select(.user_id != "fan07")][0].user_id' <<<"$draw")
say "9. $winner cancels: the seat goes back"
call DELETE "/v1/campaigns/$ID/claims/$winner"

say "10. The operator actions log"
curl -sS -H "authorization: Bearer $FIRSTCOME_ADMIN_TOKEN" "$URL/v1/campaigns/$ID/actions" \
  | jq -r '.actions | reverse | .[] | "\(.at[0:19])  \(.actor)  \(.action)  \(.after | tostring)"'

say "11. Webhooks: every durable fact delivered, signed, retried after a failure"
deadline=$(( $(date +%s) + 60 ))
until [ "$(curl -sS -H "authorization: Bearer $FIRSTCOME_ADMIN_TOKEN" "$URL/v1/campaigns/$ID/webhooks/events?state=pending" | jq '.events | length')" = 0 ]; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "webhook events still pending after 60 s" >&2; exit 1; }
  sleep 0.5
done
python3 - "$work/hooks.jsonl" <<'PY'
import collections, json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ok = {r["id"]: r for r in rows if r["status"] == 204}
print(f"attempts received: {len(rows)}, signatures valid: {sum(r['valid'] for r in rows)}/{len(rows)}")
print(f"events delivered (2xx): {len(ok)}, of which after a 503 first: {sum(1 for r in ok.values() if r['attempt'] > 1)}")
for t, n in sorted(collections.Counter(r["type"] for r in ok.values()).items()):
    print(f"  {t:<16} {n}")
# 7 seats granted (5 drawn, 2 after the restock) and 1 cancellation.
sys.exit(0 if all(r["valid"] for r in rows) and len(ok) == 8 else 1)
PY
curl -sS -H "authorization: Bearer $FIRSTCOME_ADMIN_TOKEN" "$URL/v1/campaigns/$ID/webhooks/events?state=delivered&limit=1" \
  | jq -c '.events[0] | {type, state, attempts, last_status, body}'

say "12. Metrics"
curl -sS "$URL/metrics" | grep -E "^firstcome_(queue_length|queue_oldest_wait_seconds)\{campaign=\"$ID\"\}|^firstcome_webhook_deliveries_total|^firstcome_operator_actions_total" | sort
