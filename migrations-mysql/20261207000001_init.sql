-- firstcome schema on MySQL/MariaDB (InnoDB) (issue 17): the same tables
-- and the same invariants as migrations/ (PostgreSQL), as they stand
-- after all of its migrations. docs/ARCHITECTURE.md, "MySQL and MariaDB",
-- says how each PostgreSQL mechanism maps here and why. DATETIME holds
-- UTC: defaults are UTC_TIMESTAMP whatever the session's time zone.
-- Text compares byte by byte, trailing spaces included (utf8mb4_nopad_bin),
-- as PostgreSQL compares text.

CREATE TABLE campaigns (
    id                  BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name                TEXT         NOT NULL,
    mode                VARCHAR(16)  NOT NULL
                        CHECK (mode IN ('db-lock', 'db-atomic', 'redis-lua', 'gate', 'redis-queue')),
    per_user_limit      INT          NOT NULL DEFAULT 1 CHECK (per_user_limit >= 1),
    opens_at            DATETIME(6)  NULL,
    closes_at           DATETIME(6)  NULL,
    hold_secs           BIGINT       NOT NULL DEFAULT 7200 CHECK (hold_secs >= 0),
    created_at          DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    confirm_within_secs BIGINT       NULL CHECK (confirm_within_secs IS NULL OR confirm_within_secs > 0),
    -- The generation of the campaign's Redis state: the fence between a
    -- rebuild and the writes decided in the state it replaces.
    redis_gen           BIGINT       NOT NULL DEFAULT 0,
    published           BOOLEAN      NOT NULL DEFAULT TRUE,
    shards              INT          NOT NULL DEFAULT 1 CHECK (shards BETWEEN 1 AND 64),
    paused              BOOLEAN      NOT NULL DEFAULT FALSE,
    webhook_url         TEXT         NULL,
    webhook_secret      TEXT         NULL,
    prequeue_secs       BIGINT       NULL CHECK (prequeue_secs IS NULL OR prequeue_secs > 0),
    draw_seed           VARBINARY(32) NULL CHECK (draw_seed IS NULL OR LENGTH(draw_seed) = 32),
    CONSTRAINT campaigns_window CHECK (opens_at IS NULL OR closes_at IS NULL OR closes_at > opens_at),
    CONSTRAINT campaigns_webhook_both CHECK ((webhook_url IS NULL) = (webhook_secret IS NULL)),
    CONSTRAINT campaigns_prequeue CHECK (prequeue_secs IS NULL OR (opens_at IS NOT NULL AND draw_seed IS NOT NULL))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;

CREATE TABLE pools (
    id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    campaign_id BIGINT       NOT NULL,
    idx         INT          NOT NULL,
    name        VARCHAR(255) NOT NULL,
    stock       INT          NOT NULL CHECK (stock > 0),
    -- Kept by the db-* modes only (the Redis modes count in Redis).
    granted     INT          NOT NULL DEFAULT 0,
    next_slot   INT          NOT NULL DEFAULT 1,
    CONSTRAINT pools_granted CHECK (granted >= 0 AND granted <= stock),
    CONSTRAINT pools_next_slot CHECK (next_slot >= 1 AND next_slot <= stock + 1),
    UNIQUE KEY pools_campaign_name (campaign_id, name),
    UNIQUE KEY pools_campaign_idx (campaign_id, idx),
    CONSTRAINT pools_campaign FOREIGN KEY (campaign_id) REFERENCES campaigns (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;

-- Slots released by cancellation, reused lowest first (db-* modes).
CREATE TABLE free_slots (
    pool_id BIGINT NOT NULL,
    slot    INT    NOT NULL,
    PRIMARY KEY (pool_id, slot),
    CONSTRAINT free_slots_pool FOREIGN KEY (pool_id) REFERENCES pools (id) ON DELETE CASCADE
) ENGINE = InnoDB;

-- No foreign keys, as on PostgreSQL (migration 3 there): each took a
-- shared lock on the one pool row and campaign row every insert of a
-- campaign shares. InnoDB's cascades fire no triggers, so grants of a
-- deleted campaign are not deleted with it; the service never deletes
-- campaigns or pools.
CREATE TABLE grants (
    id           BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    campaign_id  BIGINT       NOT NULL,
    pool_id      BIGINT       NOT NULL,
    user_id      VARCHAR(255) NOT NULL,
    slot         INT          NOT NULL CHECK (slot >= 1),
    code         VARCHAR(64)  NOT NULL,
    seq          BIGINT       NOT NULL,
    state        VARCHAR(16)  NOT NULL DEFAULT 'active'
                 CHECK (state IN ('active', 'cancelled', 'expired', 'void')),
    created_at   DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    released_at  DATETIME(6)  NULL,
    confirm_by   DATETIME(6)  NULL,
    confirmed_at DATETIME(6)  NULL,
    -- InnoDB has no partial indexes. These columns hold the user and the
    -- slot only while the grant is active, NULL otherwise; a unique index
    -- never counts NULLs as equal, so only active grants can collide.
    active_user  VARCHAR(255) AS (IF(state = 'active', user_id, NULL)) STORED,
    active_slot  INT          AS (IF(state = 'active', slot, NULL)) STORED,
    -- The expiry sweeper's queue: active, unconfirmed holds by deadline.
    hold_due     DATETIME(6)  AS (IF(state = 'active' AND confirmed_at IS NULL, confirm_by, NULL)) STORED,
    -- Invariant 2: at most one active grant per (campaign, user).
    UNIQUE KEY grants_one_active_per_user (campaign_id, active_user),
    -- Invariant 3: each active grant holds a distinct slot of its pool.
    UNIQUE KEY grants_one_active_per_slot (pool_id, active_slot),
    -- Codes are unique forever, and the idempotency key of batch inserts.
    UNIQUE KEY grants_code (code),
    KEY grants_campaign_id (campaign_id, id),
    KEY grants_campaign_user (campaign_id, user_id),
    KEY grants_hold_due (hold_due)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;

-- Refusals worth remembering (sold_out) in the db-* modes.
CREATE TABLE rejections (
    campaign_id BIGINT       NOT NULL,
    user_id     VARCHAR(255) NOT NULL,
    reason      VARCHAR(64)  NOT NULL,
    seq         BIGINT       NOT NULL,
    created_at  DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    PRIMARY KEY (campaign_id, user_id),
    CONSTRAINT rejections_campaign FOREIGN KEY (campaign_id) REFERENCES campaigns (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;

-- Arrival numbers in the db-* modes (NEXTVAL never blocks or rolls back).
CREATE SEQUENCE claim_seq;

-- Refusals of the Redis modes, one row per group commit: the users and
-- their arrival numbers as JSON arrays (PostgreSQL: TEXT[] and BIGINT[]).
CREATE TABLE refusal_batches (
    id          BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    campaign_id BIGINT NOT NULL,
    users       JSON   NOT NULL,
    seqs        JSON   NOT NULL,
    CONSTRAINT refusal_batches_same_length CHECK (JSON_LENGTH(users) = JSON_LENGTH(seqs)),
    KEY refusal_batches_campaign (campaign_id),
    CONSTRAINT refusal_batches_campaign FOREIGN KEY (campaign_id) REFERENCES campaigns (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;

-- Every operator action on a campaign, with what it changed.
CREATE TABLE operator_actions (
    id          BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    campaign_id BIGINT      NOT NULL,
    actor       TEXT        NOT NULL,
    action      VARCHAR(16) NOT NULL
                CHECK (action IN ('create', 'publish', 'pause', 'resume', 'patch')),
    `before`    JSON        NULL,
    `after`     JSON        NULL,
    at          DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    KEY operator_actions_campaign (campaign_id, id),
    CONSTRAINT operator_actions_campaign FOREIGN KEY (campaign_id) REFERENCES campaigns (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;

-- The signed webhooks' outbox, written by the triggers below in the
-- transaction that writes the fact (no fact without its event).
CREATE TABLE webhook_events (
    id              BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    campaign_id     BIGINT      NOT NULL,
    type            VARCHAR(32) NOT NULL
                    CHECK (type IN ('claim.granted', 'claim.confirmed', 'claim.cancelled', 'claim.expired')),
    body            TEXT        NOT NULL,
    state           VARCHAR(16) NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        INT         NOT NULL DEFAULT 0,
    created_at      DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    next_attempt_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    pending_since   DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    last_status     INT         NULL,
    last_error      TEXT        NULL,
    delivered_at    DATETIME(6) NULL,
    -- The delivery task's queue: pending rows by due time.
    due_at          DATETIME(6) AS (IF(state = 'pending', next_attempt_at, NULL)) STORED,
    KEY webhook_events_due (due_at),
    KEY webhook_events_campaign (campaign_id, state, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;

-- The fair start's draw, written whole before anyone pre-queued is admitted.
CREATE TABLE prequeue_draws (
    campaign_id BIGINT       NOT NULL,
    `rank`      BIGINT       NOT NULL CHECK (`rank` >= 1),
    user_id     VARCHAR(255) NOT NULL,
    pool_idx    INT          NOT NULL,
    PRIMARY KEY (campaign_id, `rank`),
    UNIQUE KEY prequeue_draws_user (campaign_id, user_id),
    CONSTRAINT prequeue_draws_campaign FOREIGN KEY (campaign_id) REFERENCES campaigns (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;

-- The JSON body of one event, keys in the documented order, the fact's
-- own time in UTC (as PostgreSQL's webhook_body). MariaDB's JSON_OBJECT
-- writes a routine's integer parameters as strings; `+ 0` makes them
-- numbers again (tests/it/mysql.rs compares with PostgreSQL's body).
CREATE FUNCTION webhook_body(t VARCHAR(32), at DATETIME(6), campaign BIGINT, usr VARCHAR(255),
                             pool VARCHAR(255), slot INT, code VARCHAR(64), seq BIGINT)
RETURNS TEXT DETERMINISTIC
RETURN JSON_OBJECT(
    'type', t,
    'timestamp', DATE_FORMAT(at, '%Y-%m-%dT%H:%i:%s.%fZ'),
    'data', JSON_OBJECT('campaign_id', campaign + 0, 'user_id', usr, 'pool', pool,
                        'slot', slot + 0, 'code', code, 'seq', seq + 0));

-- MySQL has no statement-level triggers: one per row. An inserted grant
-- (void rows are gate's released reservations, never grants), and its
-- later facts if it was inserted already confirmed, cancelled or expired.
CREATE TRIGGER grants_webhook_insert AFTER INSERT ON grants FOR EACH ROW
BEGIN
    DECLARE pool_name VARCHAR(255);
    IF NEW.state <> 'void'
       AND EXISTS (SELECT 1 FROM campaigns c WHERE c.id = NEW.campaign_id AND c.webhook_url IS NOT NULL) THEN
        SELECT p.name INTO pool_name FROM pools p WHERE p.id = NEW.pool_id;
        INSERT INTO webhook_events (campaign_id, type, body) VALUES
            (NEW.campaign_id, 'claim.granted',
             webhook_body('claim.granted', NEW.created_at, NEW.campaign_id, NEW.user_id, pool_name,
                          NEW.slot, NEW.code, NEW.seq));
        IF NEW.confirmed_at IS NOT NULL THEN
            INSERT INTO webhook_events (campaign_id, type, body) VALUES
                (NEW.campaign_id, 'claim.confirmed',
                 webhook_body('claim.confirmed', NEW.confirmed_at, NEW.campaign_id, NEW.user_id,
                              pool_name, NEW.slot, NEW.code, NEW.seq));
        END IF;
        IF NEW.state IN ('cancelled', 'expired') THEN
            INSERT INTO webhook_events (campaign_id, type, body) VALUES
                (NEW.campaign_id, CONCAT('claim.', NEW.state),
                 webhook_body(CONCAT('claim.', NEW.state), COALESCE(NEW.released_at, NEW.created_at),
                              NEW.campaign_id, NEW.user_id, pool_name, NEW.slot, NEW.code, NEW.seq));
        END IF;
    END IF;
END;

-- A changed grant: confirmed_at set = confirmed; active -> cancelled or
-- expired = that. Nothing else is a fact a receiver is told.
CREATE TRIGGER grants_webhook_update AFTER UPDATE ON grants FOR EACH ROW
BEGIN
    DECLARE pool_name VARCHAR(255);
    IF NEW.state <> 'void'
       AND ((OLD.confirmed_at IS NULL AND NEW.confirmed_at IS NOT NULL)
            OR (OLD.state = 'active' AND NEW.state IN ('cancelled', 'expired')))
       AND EXISTS (SELECT 1 FROM campaigns c WHERE c.id = NEW.campaign_id AND c.webhook_url IS NOT NULL) THEN
        SELECT p.name INTO pool_name FROM pools p WHERE p.id = NEW.pool_id;
        IF OLD.confirmed_at IS NULL AND NEW.confirmed_at IS NOT NULL THEN
            INSERT INTO webhook_events (campaign_id, type, body) VALUES
                (NEW.campaign_id, 'claim.confirmed',
                 webhook_body('claim.confirmed', NEW.confirmed_at, NEW.campaign_id, NEW.user_id,
                              pool_name, NEW.slot, NEW.code, NEW.seq));
        END IF;
        IF OLD.state = 'active' AND NEW.state IN ('cancelled', 'expired') THEN
            INSERT INTO webhook_events (campaign_id, type, body) VALUES
                (NEW.campaign_id, CONCAT('claim.', NEW.state),
                 webhook_body(CONCAT('claim.', NEW.state), COALESCE(NEW.released_at, UTC_TIMESTAMP(6)),
                              NEW.campaign_id, NEW.user_id, pool_name, NEW.slot, NEW.code, NEW.seq));
        END IF;
    END IF;
END;
