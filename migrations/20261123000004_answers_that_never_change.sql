-- Answers that never change (docs/GUARANTEES.md).
--
-- redis_gen: the generation of a campaign's Redis state. A rebuild from
-- PostgreSQL bumps it (an UPDATE of the campaign row) before it reads the
-- truth; every insert derived from a Redis decision (gate group commit,
-- redis-queue drainer, redis-lua flusher) names the generation it was
-- decided in and takes the campaign row FOR SHARE, joining on the
-- generation, so it either lands before the rebuild reads, or is refused.
-- Nothing decided in a lost state can land behind a rebuild's back.
ALTER TABLE campaigns ADD COLUMN redis_gen BIGINT NOT NULL DEFAULT 0;

-- 'void': a gate reservation the orphan sweeper (or a failed commit's
-- compensation) gave up on. The row takes the reservation's code, so the
-- unique index on code arbitrates between a late commit and the release:
-- whichever inserts the code first wins, the other learns it. Void rows are
-- not grants: every reader filters on state.
ALTER TABLE grants DROP CONSTRAINT grants_state_check;
ALTER TABLE grants ADD CONSTRAINT grants_state_check
    CHECK (state IN ('active', 'cancelled', 'expired', 'void'));

-- Refusals (sold_out) of the Redis modes, remembered before they are told
-- (gate, redis-queue) or with the outbox (redis-lua), so a rebuild after
-- Redis loses its state gives every user the answer they had. One row per
-- group commit, the users and their arrival numbers as arrays: a loser then
-- costs an array element, not an indexed row (measured: per-row inserts
-- into `rejections` cut gate's loser-heavy rush from ~21k to ~8.5k
-- claims/s on the development machine, docs/BENCHMARKS.md). Read whole
-- when a campaign is rebuilt, per user only when Redis has no state.
-- The db-* modes keep their per-row `rejections`.
CREATE TABLE refusal_batches (
    id          BIGSERIAL PRIMARY KEY,
    campaign_id BIGINT   NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    users       TEXT[]   NOT NULL,
    seqs        BIGINT[] NOT NULL,
    CHECK (cardinality(users) = cardinality(seqs))
);
CREATE INDEX refusal_batches_campaign ON refusal_batches (campaign_id);
