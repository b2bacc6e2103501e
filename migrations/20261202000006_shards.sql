-- Redis shards a campaign's pools are spread over (issue 13): 1 is the
-- unsharded layout every campaign had before. Fixed at creation: the key
-- names, each shard's starting slot range and each user's home shard
-- derive from it.
ALTER TABLE campaigns ADD COLUMN shards INT NOT NULL DEFAULT 1 CHECK (shards BETWEEN 1 AND 64);
