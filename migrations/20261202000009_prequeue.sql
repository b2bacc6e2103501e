-- Fair start (issue 14): claims up to prequeue_secs before opens_at are
-- pre-queued and admitted at opening in an order drawn from draw_seed
-- (docs/ARCHITECTURE.md, "Fair start"). The seed is fixed at creation;
-- its SHA-256 is shown from creation, the seed itself from opening.
ALTER TABLE campaigns
    ADD COLUMN prequeue_secs BIGINT CHECK (prequeue_secs IS NULL OR prequeue_secs > 0),
    ADD COLUMN draw_seed     BYTEA  CHECK (draw_seed IS NULL OR length(draw_seed) = 32),
    ADD CHECK (prequeue_secs IS NULL OR (opens_at IS NOT NULL AND draw_seed IS NOT NULL));

-- The draw, written whole in one transaction before anyone pre-queued is
-- admitted: the list anyone can check against the seed (rank = the place
-- in draw order, which is also the claim's arrival number).
CREATE TABLE prequeue_draws (
    campaign_id BIGINT NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    rank        BIGINT NOT NULL CHECK (rank >= 1),
    user_id     TEXT   NOT NULL,
    pool_idx    INT    NOT NULL,
    PRIMARY KEY (campaign_id, rank),
    UNIQUE (campaign_id, user_id)
);
