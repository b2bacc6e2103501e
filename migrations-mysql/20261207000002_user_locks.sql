-- The db-* modes' per-user lock (PostgreSQL: pg_advisory_xact_lock on a
-- hash of "campaign:user", released when the transaction ends). MySQL's
-- GET_LOCK belongs to the session, not the transaction: on a pooled
-- connection it would outlive a transaction that ended without releasing
-- it (an error, a dropped future). A row lock ends with its transaction:
-- a claim locks one row of this table first (SELECT ... FOR UPDATE), the
-- row its (campaign, user) hashes to, as PostgreSQL's lock is a hash too.
-- The rows exist from the start: locking a row that a transaction inserts
-- would deadlock the waiters when the inserter rolls back (InnoDB turns
-- their waits into gap locks), and a table of every user would grow with
-- every claimant. 65,536 buckets: two users sharing one only take turns,
-- as two whose PostgreSQL hashes collide do; a claim takes one bucket
-- and takes it before any other lock, so sharing never deadlocks.
CREATE TABLE user_locks (
    bucket INT NOT NULL PRIMARY KEY
) ENGINE = InnoDB;

INSERT INTO user_locks (bucket)
WITH RECURSIVE h (n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM h WHERE n < 15)
SELECT a.n + 16 * b.n + 256 * c.n + 4096 * d.n FROM h a, h b, h c, h d;
