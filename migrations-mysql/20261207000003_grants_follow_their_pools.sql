-- Grants carry no foreign key, as in PostgreSQL (migrations/
-- 20261123000003: a per-row check locked the shared pool and campaign
-- rows on every insert). Deleting a pool deletes its grants by trigger.
-- InnoDB fires no trigger for the rows a foreign key's cascade deletes, so
-- deleting a campaign (which cascades to its pools) deletes its grants in
-- a trigger of its own, before the cascade.
CREATE TRIGGER pools_delete_their_grants AFTER DELETE ON pools FOR EACH ROW
    DELETE FROM grants WHERE campaign_id = OLD.campaign_id AND pool_id = OLD.id;

CREATE TRIGGER campaigns_delete_their_grants BEFORE DELETE ON campaigns FOR EACH ROW
    DELETE FROM grants WHERE campaign_id = OLD.id;
