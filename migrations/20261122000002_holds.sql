-- Holds that must be confirmed (seat and ticket sales): a grant of a
-- campaign with confirm_within_secs is held until confirmed, and expires
-- (its slot returned to stock) when the deadline passes unconfirmed.
ALTER TABLE campaigns
    ADD COLUMN confirm_within_secs BIGINT CHECK (confirm_within_secs IS NULL OR confirm_within_secs > 0);

ALTER TABLE grants
    ADD COLUMN confirm_by   TIMESTAMPTZ,
    ADD COLUMN confirmed_at TIMESTAMPTZ;

ALTER TABLE grants DROP CONSTRAINT grants_state_check;
ALTER TABLE grants ADD CONSTRAINT grants_state_check CHECK (state IN ('active', 'cancelled', 'expired'));

-- The expiry sweeper's queue: active, unconfirmed holds by deadline.
CREATE INDEX grants_hold_due ON grants (confirm_by)
    WHERE state = 'active' AND confirmed_at IS NULL AND confirm_by IS NOT NULL;
