#!/usr/bin/env bash
# What the webhook outbox triggers cost the grant insert (docs/BENCHMARKS.md,
# "Webhook outbox"). On a scratch database with the schema as migrated
# (every file of migrations/, in order), one connection inserts ROWS grants
# in statements of BATCH rows (the shape of a group commit or a flusher
# batch), three ways: without the insert trigger, with them for a campaign
# without a webhook, with them for a campaign with one (one outbox row per
# grant). Each way runs inside one transaction (no commit, so no fsync):
# what is measured is the statement's own work. Prints rows/s per way.
#   scripts/webhook-trigger-cost.sh        ROWS=200000 BATCH=500 by default
# The scratch database `firstcome_webhook_cost` is dropped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh)"
ROWS=${ROWS:-200000}
BATCH=${BATCH:-500}
DB=firstcome_webhook_cost
ADMIN_URL="${DATABASE_URL%/*}/postgres"
URL="${DATABASE_URL%/*}/$DB"
cleanup() { psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true; }
trap cleanup EXIT INT TERM
cleanup
psql "$ADMIN_URL" -qc "CREATE DATABASE $DB" >/dev/null
for f in migrations/*.sql; do psql "$URL" -q -v ON_ERROR_STOP=1 -f "$f" >/dev/null; done

run() { # LABEL WEBHOOK(true|false) TRIGGERS(on|off)
  psql "$URL" -qAt -v ON_ERROR_STOP=1 <<SQL
BEGIN;
$( [ "$3" = off ] && echo "ALTER TABLE grants DISABLE TRIGGER grants_webhook_insert;" )
WITH c AS (INSERT INTO campaigns (name, mode, webhook_url, webhook_secret)
           VALUES ('cost', 'gate',
                   CASE WHEN $2 THEN 'https://hooks.example/x' END,
                   CASE WHEN $2 THEN 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw' END)
           RETURNING id)
INSERT INTO pools (campaign_id, idx, name, stock) SELECT id, 0, 'p', $ROWS FROM c;
DO \$\$
DECLARE cid bigint; pid bigint; t0 timestamptz; b int;
BEGIN
  SELECT id, campaign_id INTO pid, cid FROM pools ORDER BY id DESC LIMIT 1;
  t0 := clock_timestamp();
  FOR b IN 0 .. ($ROWS / $BATCH) - 1 LOOP
    INSERT INTO grants (campaign_id, pool_id, user_id, slot, code, seq)
    SELECT cid, pid, 'u' || g, g, 'c' || cid || '-' || g, g
    FROM generate_series(b * $BATCH + 1, (b + 1) * $BATCH) AS g;
  END LOOP;
  RAISE NOTICE '%: % rows/s (% outbox rows)', '$1',
    round($ROWS / extract(epoch FROM clock_timestamp() - t0)),
    (SELECT count(*) FROM webhook_events WHERE campaign_id = cid);
END
\$\$;
ROLLBACK;
SQL
}
echo "ROWS=$ROWS BATCH=$BATCH, one connection, inside one transaction each"
for round in 1 2 3; do
  echo "round $round"
  run "insert trigger off        " false off 2>&1 | sed 's/^.*NOTICE:  /  /'
  run "triggers on, no webhook  " false on 2>&1 | sed 's/^.*NOTICE:  /  /'
  run "triggers on, webhook     " true on 2>&1 | sed 's/^.*NOTICE:  /  /'
done
