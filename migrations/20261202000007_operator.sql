-- Operator controls (issue 14). A paused campaign refuses claims of users
-- without an answer (409 `paused`) and its drainer waits; PostgreSQL holds
-- the flag so that a rebuild of the Redis state keeps it, and the db-*
-- modes read it inside the claim's transaction.
ALTER TABLE campaigns ADD COLUMN paused boolean NOT NULL DEFAULT false;

-- Every operator action on a campaign, with what it changed: who (the
-- X-Firstcome-Actor header, else 'admin'), when, what, before and after.
CREATE TABLE operator_actions (
    id          BIGSERIAL   PRIMARY KEY,
    campaign_id BIGINT      NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    actor       TEXT        NOT NULL,
    action      TEXT        NOT NULL
                CHECK (action IN ('create', 'publish', 'pause', 'resume', 'patch')),
    before      JSONB,
    after       JSONB,
    at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX operator_actions_campaign ON operator_actions (campaign_id, id DESC);
