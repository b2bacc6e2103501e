//! The redis-queue streams read and written as claims (user, pool, arrival
//! number): the dead letters, and the claims still waiting in the queue.

use super::{CampaignKeys, RedisStore, RedisStoreError};

/// A dead-lettered redis-queue claim, as its `dlq` stream entry holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Stream entry id.
    pub id: String,
    /// The user.
    pub user: String,
    /// Pool index.
    pub pidx: i32,
    /// Arrival number.
    pub seq: i64,
}

impl RedisStore {
    /// Appends a dead letter (user, pool index, arrival number) to the
    /// campaign's `dlq` stream.
    pub async fn add_dead_letter(
        &self,
        k: &CampaignKeys,
        user: &str,
        pidx: i32,
        seq: i64,
    ) -> Result<(), RedisStoreError> {
        let (dlq, user) = (k.dlq.clone(), user.to_string());
        let fields = [("u", user), ("p", pidx.to_string()), ("s", seq.to_string())];
        self.run(|mut conn| async move {
            redis::cmd("XADD")
                .arg(&dlq)
                .arg("*")
                .arg(&fields)
                .query_async::<String>(&mut conn)
                .await
        })
        .await?;
        Ok(())
    }

    /// Every dead letter of the campaign, oldest first.
    pub async fn dead_letters(&self, k: &CampaignKeys) -> Result<Vec<DeadLetter>, RedisStoreError> {
        self.claims_in(&k.dlq).await
    }

    /// Every claim still in the campaign's queue stream (redis-queue:
    /// accepted, not yet granted or refused), in arrival order.
    pub async fn queued_claims(
        &self,
        k: &CampaignKeys,
    ) -> Result<Vec<DeadLetter>, RedisStoreError> {
        self.claims_in(&k.queue).await
    }

    /// The claims (user, pool, arrival number) of a stream, oldest first.
    async fn claims_in(&self, stream: &str) -> Result<Vec<DeadLetter>, RedisStoreError> {
        let dlq = stream.to_string();
        let reply: redis::streams::StreamRangeReply = self
            .run(|mut conn| async move {
                redis::cmd("XRANGE")
                    .arg(&dlq)
                    .arg("-")
                    .arg("+")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        reply
            .ids
            .into_iter()
            // The fair start's draw marker (freeze.lua) is not a claim.
            .filter(|e| !e.map.contains_key("op"))
            .map(|e| {
                let get = |f: &str| e.get::<String>(f).unwrap_or_default();
                let bad = || RedisStoreError::Protocol(format!("bad dead letter {}", e.id));
                Ok(DeadLetter {
                    user: get("u"),
                    pidx: get("p").parse().map_err(|_| bad())?,
                    seq: get("s").parse().map_err(|_| bad())?,
                    id: e.id.clone(),
                })
            })
            .collect()
    }
}
