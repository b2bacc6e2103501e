-- Grants lose their two foreign keys. Each fired a per-row check that
-- takes a key-share lock on the one pools row and the one campaigns row
-- every concurrent insert of a campaign shares: measured by
-- scripts/drain-profile.sh, the batched grant insert went from 16,093 to
-- 28,315 rows/s on one connection and from 31,442 to 52,391 on two
-- without them (docs/BENCHMARKS.md, "Drain profile").
--
-- What they guaranteed is kept otherwise:
-- * a grant names a pool of its own campaign: the batched insert joins
--   pools on (id, campaign_id), and the db-* modes insert in the
--   transaction that locks or updates that pool's row;
-- * deleting a pool (or a campaign, which cascades to its pools) deletes
--   its grants: the trigger below, which costs nothing on insert.
ALTER TABLE grants
    DROP CONSTRAINT grants_campaign_id_fkey,
    DROP CONSTRAINT grants_pool_id_fkey;

CREATE FUNCTION grants_follow_their_pool() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM grants WHERE campaign_id = OLD.campaign_id AND pool_id = OLD.id;
    RETURN OLD;
END
$$;

CREATE TRIGGER pools_delete_their_grants
    AFTER DELETE ON pools
    FOR EACH ROW EXECUTE FUNCTION grants_follow_their_pool();
