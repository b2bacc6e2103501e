//! The generation fence on MySQL/MariaDB: every insert derived from a
//! Redis decision first takes the campaign rows in share mode and compares
//! their generation; a rebuild bumps it.

use sqlx::{MySql, MySqlPool, Transaction};

use super::inserts::{insert_grants_gen, insert_rejections_gen, lock_campaigns};
use crate::domain::CampaignId;
use crate::storage::error::StoreError;
use crate::storage::pg::{Fenced, NewGrant, NewRejection};

/// Inserts grants and refusals decided in Redis, each under the generation
/// of the state that decided it (`grant_gens[i]` for `grants[i]`). The
/// fence is the campaign row: the inserts' transaction takes it in share
/// mode first and compares its generation, so a rebuild's bump (an
/// `UPDATE` of that row) waits for the inserts in flight, and an insert
/// that meets a bump waits for it, then reads the row's newest version
/// (a locking read at READ COMMITTED) and drops rows of the older
/// generation. Always one transaction (PostgreSQL's grants-only or
/// refusals-only insert is one statement): MariaDB cannot lock only the
/// campaign rows inside the insert itself (see [`lock_campaigns`]). One
/// commit, so one fsync per group commit.
pub async fn insert_fenced(
    db: &MySqlPool,
    grants: &[NewGrant],
    grant_gens: &[i64],
    refusals: &[NewRejection],
    refusal_gens: &[i64],
) -> Result<Fenced, StoreError> {
    if grants.is_empty() && refusals.is_empty() {
        return Ok(Fenced::default());
    }
    let mut tx = db.begin().await?;
    // Every campaign of the batch at once, in id order, before anything
    // else: locked in two rounds (the grants' campaigns, then the
    // refusals'), two batches crossing two campaigns deadlocked with a
    // bump waiting on each (InnoDB queues a share request behind a waiting
    // exclusive one). The inserts below find them held already.
    let all: Vec<i64> = grants
        .iter()
        .map(|g| g.campaign_id)
        .chain(refusals.iter().map(|r| r.campaign_id))
        .collect();
    lock_campaigns(&mut tx, &all).await?;
    let codes = insert_grants_gen(&mut tx, grants, grant_gens).await?;
    let refused = insert_rejections_gen(&mut tx, refusals, refusal_gens).await?;
    tx.commit().await?;
    Ok(Fenced {
        codes: codes.into_iter().collect(),
        refusals: refused.into_iter().collect(),
    })
}

/// Takes the campaign rows in share mode for the rest of the transaction
/// and returns their generations, by id: a rebuild's bump waits until it
/// ends, so the inserts of the transaction are all seen by the rebuild, or
/// refused.
pub async fn lock_generations(
    tx: &mut Transaction<'_, MySql>,
    campaign_ids: &[i64],
) -> Result<Vec<(i64, i64)>, StoreError> {
    Ok(lock_campaigns(tx, campaign_ids)
        .await?
        .into_iter()
        .map(|(id, gen, _)| (id, gen))
        .collect())
}

/// Starts a new generation of the campaign's Redis state. The `UPDATE`
/// waits for every fenced insert holding the row; whatever the rebuild
/// reads after this includes every write of older generations, and none of
/// them can land any more.
pub async fn bump_generation(db: &MySqlPool, campaign: CampaignId) -> Result<i64, StoreError> {
    // No UPDATE ... RETURNING: the update, then the row read back under its
    // lock in the same transaction (a missing campaign: RowNotFound, as
    // PostgreSQL's fetch_one).
    let mut tx = db.begin().await?;
    sqlx::query("UPDATE campaigns SET redis_gen = redis_gen + 1 WHERE id = ?")
        .bind(campaign.0)
        .execute(&mut *tx)
        .await?;
    let gen: i64 = sqlx::query_scalar("SELECT redis_gen FROM campaigns WHERE id = ?")
        .bind(campaign.0)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(gen)
}

/// The campaign's current Redis generation.
pub async fn generation<'e, E>(exec: E, campaign: CampaignId) -> Result<i64, StoreError>
where
    E: sqlx::Executor<'e, Database = MySql>,
{
    Ok(
        sqlx::query_scalar("SELECT redis_gen FROM campaigns WHERE id = ?")
            .bind(campaign.0)
            .fetch_one(exec)
            .await?,
    )
}
