-- firstcome schema. PostgreSQL is the source of truth: the unique indexes
-- below enforce "no duplicate" and "no double-booked slot" for active grants
-- whatever the admission mode does.

CREATE TABLE campaigns (
    id             BIGSERIAL PRIMARY KEY,
    name           TEXT        NOT NULL,
    mode           TEXT        NOT NULL
                   CHECK (mode IN ('db-lock', 'db-atomic', 'redis-lua', 'gate', 'redis-queue')),
    per_user_limit INT         NOT NULL DEFAULT 1 CHECK (per_user_limit >= 1),
    opens_at       TIMESTAMPTZ,
    closes_at      TIMESTAMPTZ,
    hold_secs      BIGINT      NOT NULL DEFAULT 7200 CHECK (hold_secs >= 0),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (opens_at IS NULL OR closes_at IS NULL OR closes_at > opens_at)
);

CREATE TABLE pools (
    id          BIGSERIAL PRIMARY KEY,
    campaign_id BIGINT NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    idx         INT    NOT NULL,
    name        TEXT   NOT NULL,
    stock       INT    NOT NULL CHECK (stock > 0),
    -- Counters kept by the db-* modes only (the Redis modes count in Redis
    -- and never touch this hot row): active grants, and the next never-used
    -- slot. Released slots wait in free_slots.
    granted     INT    NOT NULL DEFAULT 0,
    next_slot   INT    NOT NULL DEFAULT 1,
    CHECK (granted >= 0 AND granted <= stock),
    CHECK (next_slot >= 1 AND next_slot <= stock + 1),
    UNIQUE (campaign_id, name),
    UNIQUE (campaign_id, idx)
);

-- Slots released by cancellation, reused lowest first (db-* modes).
CREATE TABLE free_slots (
    pool_id BIGINT NOT NULL REFERENCES pools (id) ON DELETE CASCADE,
    slot    INT    NOT NULL,
    PRIMARY KEY (pool_id, slot)
);

CREATE TABLE grants (
    id           BIGSERIAL PRIMARY KEY,
    campaign_id  BIGINT      NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    pool_id      BIGINT      NOT NULL REFERENCES pools (id) ON DELETE CASCADE,
    user_id      TEXT        NOT NULL,
    slot         INT         NOT NULL CHECK (slot >= 1),
    code         TEXT        NOT NULL,
    seq          BIGINT      NOT NULL,
    state        TEXT        NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'cancelled')),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    released_at  TIMESTAMPTZ
);

-- Invariant 2: at most one active grant per (campaign, user).
CREATE UNIQUE INDEX grants_one_active_per_user
    ON grants (campaign_id, user_id) WHERE state = 'active';
-- Invariant 3: each active grant holds a distinct slot of its pool.
CREATE UNIQUE INDEX grants_one_active_per_slot
    ON grants (pool_id, slot) WHERE state = 'active';
-- Codes are unique forever; the write-behind modes also use the code as the
-- idempotency key when an outbox batch is delivered twice.
CREATE UNIQUE INDEX grants_code ON grants (code);
-- Grants export pages through a campaign in id order.
CREATE INDEX grants_campaign_id ON grants (campaign_id, id);
CREATE INDEX grants_campaign_user ON grants (campaign_id, user_id);

-- Refusals worth remembering (sold_out) in the db-* modes, so that a repeated
-- claim gets the first answer again. The Redis modes keep them in Redis.
CREATE TABLE rejections (
    campaign_id BIGINT      NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    user_id     TEXT        NOT NULL,
    reason      TEXT        NOT NULL,
    seq         BIGINT      NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, user_id)
);

-- Arrival numbers in the db-* modes (nextval never blocks or rolls back).
CREATE SEQUENCE claim_seq;
