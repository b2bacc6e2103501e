#!/usr/bin/env bash
# Fuzzes the running service against its own OpenAPI document with
# schemathesis: no 5xx, and every documented response matches its schema.
#
#   scripts/schemathesis.sh            # about 1,500+ generated requests
#   ST_MAX_EXAMPLES=300 scripts/schemathesis.sh
#
# It installs schemathesis from PyPI into a venv (target/schemathesis-venv,
# reused), builds firstcome, starts `firstcome serve` on a free loopback port
# over a fresh database and Redis prefix (admin token set, no JWT key),
# creates two campaigns, runs schemathesis, and stops what it started (by
# pid) and drops the database, whatever happens.
set -euo pipefail

cd "$(dirname "$0")/.."
log() { echo "[schemathesis] $*" >&2; }
START=$(date +%s)

eval "$(scripts/services.sh)"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
VENV="${ST_VENV:-$TARGET_DIR/schemathesis-venv}"
MAX_EXAMPLES="${ST_MAX_EXAMPLES:-200}"
ST_VERSION="${ST_VERSION:-4.32.5}"

# ------------------------------------------------------------ schemathesis
if [ ! -x "$VENV/bin/schemathesis" ]; then
  log "installing schemathesis $ST_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis==$ST_VERSION" >&2
fi

# ------------------------------------------------------------ the service
log "building firstcome"
cargo build -q --bin firstcome >&2
BIN="$TARGET_DIR/debug/firstcome"

TAG="st_$(date +%s)_$$"
ADMIN_URL="${DATABASE_URL%/*}/postgres"
DB_URL="${DATABASE_URL%/*}/$TAG"
TOKEN="schemathesis-admin-token-$$-$RANDOM$RANDOM"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
BASE="http://127.0.0.1:$PORT"
WORK="$(mktemp -d)"
SERVICE_PID=""

cleanup() {
  local rc=$?
  if [ -n "$SERVICE_PID" ] && kill -0 "$SERVICE_PID" 2>/dev/null; then
    kill "$SERVICE_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SERVICE_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVICE_PID" 2>/dev/null || true
  fi
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS \"$TAG\" WITH (FORCE)" >/dev/null 2>&1 || true
  redis-cli -u "$REDIS_URL" --scan --pattern "$TAG:*" 2>/dev/null | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
  rm -rf "$WORK"
  log "done in $(( $(date +%s) - START )) s (exit $rc)"
  exit $rc
}
trap cleanup EXIT INT TERM

psql "$ADMIN_URL" -qc "CREATE DATABASE \"$TAG\"" >&2
log "starting firstcome on $BASE (log: $WORK/service.log)"
RUST_LOG="${RUST_LOG:-warn}" "$BIN" serve --addr "127.0.0.1:$PORT" --database-url "$DB_URL" \
  --redis-url "$REDIS_URL" --redis-prefix "$TAG" --admin-token "$TOKEN" \
  --sse-max-secs 5 --insecure-trust-user-id >"$WORK/service.log" 2>&1 &
SERVICE_PID=$!

deadline=$(( $(date +%s) + 60 ))
until curl -fsS "$BASE/readyz" >/dev/null 2>&1; do
  kill -0 "$SERVICE_PID" 2>/dev/null || { log "the service died:"; cat "$WORK/service.log" >&2; exit 1; }
  [ "$(date +%s)" -lt "$deadline" ] || { log "the service did not get ready"; exit 1; }
  sleep 0.2
done

create() { # create MODE POOLS_JSON -> id
  curl -fsS -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d "{\"name\":\"schemathesis $1\",\"mode\":\"$1\",\"pools\":$2}" "$BASE/v1/campaigns" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}
GATE_ID="$(create gate '[{"name":"main","stock":50}]')"
QUEUE_ID="$(create redis-queue '[{"name":"a","stock":20},{"name":"b","stock":20}]')"
log "campaigns: gate $GATE_ID, redis-queue $QUEUE_ID"

# Claims go to the gate campaign and the grants export to the queue one, so
# generated requests reach the handlers instead of stopping at 404; reading
# a campaign keeps random ids.
cat >"$WORK/schemathesis.toml" <<EOF
[[operations]]
include-path-regex = "^/v1/campaigns/\\\\{id\\\\}/claims"
parameters = { "path.id" = $GATE_ID }

[[operations]]
include-path = "/v1/campaigns/{id}/grants"
parameters = { "path.id" = $QUEUE_ID }
EOF

log "running schemathesis (max $MAX_EXAMPLES examples per operation)"
set +e
"$VENV/bin/schemathesis" --config-file "$WORK/schemathesis.toml" run "$BASE/openapi.json" \
  --checks "${ST_CHECKS:-not_a_server_error,response_schema_conformance}" \
  --max-examples "$MAX_EXAMPLES" \
  --header "Authorization: Bearer $TOKEN" \
  --phases examples,coverage,fuzzing \
  --request-timeout 10 \
  --seed "${ST_SEED:-42}" \
  --no-color
RC=$?
set -e
log "schemathesis exit $RC"
exit $RC
