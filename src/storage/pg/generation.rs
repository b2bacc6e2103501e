//! The generation fence: every insert derived from a Redis decision joins
//! the campaign row's generation under a shared lock; a rebuild bumps it.

use sqlx::{PgPool, Postgres, Transaction};

use super::grants::{insert_grants_gen, insert_rejections_gen, NewGrant, NewRejection};
use crate::domain::CampaignId;
use crate::storage::error::StoreError;

/// What a fenced insert stored.
#[derive(Debug, Default)]
pub struct Fenced {
    /// Codes of the grants inserted.
    pub codes: std::collections::HashSet<String>,
    /// (campaign, user) of the refusals inserted.
    pub refusals: std::collections::HashSet<(i64, String)>,
}

/// Inserts grants and refusals decided in Redis, each under the generation
/// of the state that decided it (`grant_gens[i]` for `grants[i]`). The
/// fence is the campaign row: each insert takes it `FOR SHARE` and joins on
/// its generation, so a rebuild's bump (an `UPDATE` of that row) waits for
/// the inserts in flight, and an insert that meets a bump re-reads the row
/// (READ COMMITTED re-checks a locked row's condition against its newest
/// version) and drops rows of the older generation. One statement (both
/// inserts as CTEs): one round trip and one fsync per group commit.
pub async fn insert_fenced(
    db: &PgPool,
    grants: &[NewGrant],
    grant_gens: &[i64],
    refusals: &[NewRejection],
    refusal_gens: &[i64],
) -> Result<Fenced, StoreError> {
    if refusals.is_empty() {
        let codes = insert_grants_gen(db, grants, grant_gens).await?;
        return Ok(Fenced {
            codes: codes.into_iter().collect(),
            refusals: Default::default(),
        });
    }
    if grants.is_empty() {
        let refused = insert_rejections_gen(db, refusals, refusal_gens).await?;
        return Ok(Fenced {
            codes: Default::default(),
            refusals: refused.into_iter().collect(),
        });
    }
    // Both: one transaction, so one fsync.
    let mut tx = db.begin().await?;
    let codes = insert_grants_gen(&mut *tx, grants, grant_gens).await?;
    let refused = insert_rejections_gen(&mut *tx, refusals, refusal_gens).await?;
    tx.commit().await?;
    Ok(Fenced {
        codes: codes.into_iter().collect(),
        refusals: refused.into_iter().collect(),
    })
}

/// Takes the campaign rows `FOR SHARE` for the rest of the transaction and
/// returns their generations: a rebuild's bump waits until it ends, so the
/// inserts of the transaction are all seen by the rebuild, or refused.
pub async fn lock_generations(
    tx: &mut Transaction<'_, Postgres>,
    campaign_ids: &[i64],
) -> Result<Vec<(i64, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, redis_gen FROM campaigns WHERE id = ANY($1) ORDER BY id FOR SHARE",
    )
    .bind(campaign_ids)
    .fetch_all(&mut **tx)
    .await?)
}

/// Starts a new generation of the campaign's Redis state. The `UPDATE`
/// waits for every fenced insert holding the row; whatever the rebuild
/// reads after this includes every write of older generations, and none of
/// them can land any more.
pub async fn bump_generation(db: &PgPool, campaign: CampaignId) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "UPDATE campaigns SET redis_gen = redis_gen + 1 WHERE id = $1 RETURNING redis_gen",
    )
    .bind(campaign.0)
    .fetch_one(db)
    .await?)
}

/// The campaign's current Redis generation.
pub async fn generation<'e, E>(exec: E, campaign: CampaignId) -> Result<i64, StoreError>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    Ok(
        sqlx::query_scalar("SELECT redis_gen FROM campaigns WHERE id = $1")
            .bind(campaign.0)
            .fetch_one(exec)
            .await?,
    )
}
