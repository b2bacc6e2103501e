-- Signed webhooks (issue 14): a campaign may name an endpoint; every
-- durable fact about its grants (granted, confirmed, cancelled, expired)
-- becomes a row of the outbox `webhook_events`, written by the triggers
-- below in the transaction that writes the fact. Whatever path writes a
-- grant (db-* modes, gate's group commit, redis-queue's drainer,
-- redis-lua's flusher, cancellation, confirmation, hold expiry, reconciler
-- repairs), its event commits or rolls back with it: no fact without its
-- event, no event without its fact. The worker delivers the outbox
-- (src/tasks/webhooks.rs).

-- Both or neither. The secret is never shown back (it signs deliveries).
ALTER TABLE campaigns
    ADD COLUMN webhook_url    TEXT,
    ADD COLUMN webhook_secret TEXT,
    ADD CONSTRAINT campaigns_webhook_both CHECK ((webhook_url IS NULL) = (webhook_secret IS NULL));

-- The outbox. No foreign key to campaigns: a per-row key-share lock on the
-- campaign row is what migration 3 removed from the grant insert, and
-- campaigns are never deleted by the service. `body` is the exact JSON
-- sent, fixed when the fact is written, so every retry signs the same
-- bytes; the webhook-id is `evt_<id>`.
CREATE TABLE webhook_events (
    id              BIGSERIAL   PRIMARY KEY,
    campaign_id     BIGINT      NOT NULL,
    type            TEXT        NOT NULL
                    CHECK (type IN ('claim.granted', 'claim.confirmed', 'claim.cancelled', 'claim.expired')),
    body            TEXT        NOT NULL,
    state           TEXT        NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        INT         NOT NULL DEFAULT 0,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Since when it waits for a 2xx: its creation, or its last redelivery.
    -- Pending longer than the dead-letter age, a failure makes it dead.
    pending_since   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_status     INT,
    last_error      TEXT,
    delivered_at    TIMESTAMPTZ
);
-- The delivery task's queue: only pending rows, by due time.
CREATE INDEX webhook_events_due ON webhook_events (next_attempt_at) WHERE state = 'pending';
-- The admin listing pages through a campaign's events in id order.
CREATE INDEX webhook_events_campaign ON webhook_events (campaign_id, state, id);

-- The JSON body of one event. `json` (not `jsonb`) keeps the keys in the
-- documented order; the timestamp is the fact's own time, in UTC.
CREATE FUNCTION webhook_body(t TEXT, at TIMESTAMPTZ, campaign BIGINT, usr TEXT, pool TEXT,
                             slot INT, code TEXT, seq BIGINT) RETURNS TEXT
LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'type', t,
        'timestamp', to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'data', json_build_object('campaign_id', campaign, 'user_id', usr, 'pool', pool,
                                  'slot', slot, 'code', code, 'seq', seq))::text
$$;

-- Inserted rows: a grant (void rows are gate's released reservations,
-- never grants). A row inserted already confirmed, cancelled or expired
-- (no path does that today) also gets those events, after its grant, so
-- a receiver never sees the end of a grant it was not told about.
-- Statement-level with a transition table: one INSERT ... SELECT per
-- statement (a whole group commit or flusher batch), and for campaigns
-- without a webhook only the join that finds none.
CREATE FUNCTION webhook_events_of_new_grants() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_events (campaign_id, type, body)
    SELECT n.campaign_id, e.type,
           webhook_body(e.type, e.at, n.campaign_id, n.user_id, p.name, n.slot, n.code, n.seq)
    FROM new_grants n
    JOIN campaigns c ON c.id = n.campaign_id AND c.webhook_url IS NOT NULL
    JOIN pools p ON p.id = n.pool_id
    CROSS JOIN LATERAL (VALUES
        (1, 'claim.granted',   true,                          n.created_at),
        (2, 'claim.confirmed', n.confirmed_at IS NOT NULL,    n.confirmed_at),
        (3, 'claim.cancelled', n.state = 'cancelled',         coalesce(n.released_at, n.created_at)),
        (4, 'claim.expired',   n.state = 'expired',           coalesce(n.released_at, n.created_at))
    ) AS e(ord, type, happened, at)
    WHERE n.state <> 'void' AND e.happened
    ORDER BY n.id, e.ord;
    RETURN NULL;
END
$$;

CREATE TRIGGER grants_webhook_insert
    AFTER INSERT ON grants
    REFERENCING NEW TABLE AS new_grants
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_events_of_new_grants();

-- Updated rows: confirmed_at set = confirmed; active -> cancelled =
-- cancelled; active -> expired = expired. Nothing else is a fact a
-- receiver is told (void rows never change).
CREATE FUNCTION webhook_events_of_changed_grants() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_events (campaign_id, type, body)
    SELECT n.campaign_id, e.type,
           webhook_body(e.type, e.at, n.campaign_id, n.user_id, p.name, n.slot, n.code, n.seq)
    FROM new_grants n
    JOIN old_grants o ON o.id = n.id
    JOIN campaigns c ON c.id = n.campaign_id AND c.webhook_url IS NOT NULL
    JOIN pools p ON p.id = n.pool_id
    CROSS JOIN LATERAL (VALUES
        (1, 'claim.confirmed', o.confirmed_at IS NULL AND n.confirmed_at IS NOT NULL,
            n.confirmed_at),
        (2, 'claim.cancelled', o.state = 'active' AND n.state = 'cancelled',
            coalesce(n.released_at, now())),
        (3, 'claim.expired',   o.state = 'active' AND n.state = 'expired',
            coalesce(n.released_at, now()))
    ) AS e(ord, type, happened, at)
    WHERE n.state <> 'void' AND e.happened
    ORDER BY n.id, e.ord;
    RETURN NULL;
END
$$;

CREATE TRIGGER grants_webhook_update
    AFTER UPDATE ON grants
    REFERENCING OLD TABLE AS old_grants NEW TABLE AS new_grants
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_events_of_changed_grants();
