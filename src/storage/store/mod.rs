//! The source of truth, whichever database holds it: [`Store`] is a pool
//! of PostgreSQL's or of MySQL/MariaDB's, [`StoreTx`] a transaction of
//! either. Each method runs the same-named function of `storage::pg` or
//! `storage::mysql`, which hold every SQL statement, one dialect each.
//!
//! An enum rather than a trait object: the set is closed (two databases),
//! a `match` makes every operation exist in both or not compile, and no
//! call boxes its future.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{MySqlPool, PgPool};

use super::{error::StoreError, mysql, pg, tx::StoreTx};
use crate::domain::{Campaign, CampaignId, ClaimOutcome, Mode, NewCampaign, UserId};
use pg::{
    Action, ActionRow, CampaignLine, CodeFate, Confirmation, DrawEntry, DueEvent, Expired, Fenced,
    GrantRow, LatestGrant, NewGrant, NewRejection, OpenPatch, PatchError, Restock, WebhookEventRow,
};

/// A pool of connections to the source of truth.
#[derive(Clone, Debug)]
pub enum Store {
    /// PostgreSQL (`postgres://`), the default.
    Pg(PgPool),
    /// MySQL or MariaDB with InnoDB (`mysql://`, `mariadb://`).
    MySql(MySqlPool),
}

/// Runs `$f` of the store's own module with the pool (or, for a
/// transaction, the transaction) as its first argument.
macro_rules! dispatch {
    ($self:expr, $($f:ident)::+ ($($a:expr),*)) => {
        match $self {
            Store::Pg(db) => pg::$($f)::+(db, $($a),*).await,
            Store::MySql(db) => mysql::$($f)::+(db, $($a),*).await,
        }
    };
}

macro_rules! dispatch_tx {
    ($self:expr, $($f:ident)::+ ($($a:expr),*)) => {
        match $self {
            StoreTx::Pg(tx) => pg::$($f)::+(tx, $($a),*).await,
            StoreTx::MySql(tx) => mysql::$($f)::+(tx, $($a),*).await,
        }
    };
}

/// Like `dispatch_tx!`, for the functions that take any executor.
macro_rules! dispatch_exec {
    ($self:expr, $f:ident ($($a:expr),*)) => {
        match $self {
            StoreTx::Pg(tx) => pg::$f(&mut **tx, $($a),*).await,
            StoreTx::MySql(tx) => mysql::$f(&mut **tx, $($a),*).await,
        }
    };
}

// After the macros: textual scope.
mod in_tx;

impl Store {
    /// Opens a pool at `url` and applies the migrations: `mysql://` or
    /// `mariadb://` selects MySQL/MariaDB, anything else PostgreSQL.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, sqlx::Error> {
        Ok(if is_mysql_url(url) {
            // sqlx knows the scheme as mysql:// only.
            let url = url.replacen("mariadb://", "mysql://", 1);
            Store::MySql(mysql::connect(&url, max_connections).await?)
        } else {
            Store::Pg(pg::connect(url, max_connections).await?)
        })
    }

    /// Which database this is, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Pg(_) => "postgres",
            Store::MySql(_) => "mysql",
        }
    }

    /// Begins a transaction.
    pub async fn begin(&self) -> Result<StoreTx<'static>, StoreError> {
        Ok(match self {
            Store::Pg(db) => StoreTx::Pg(db.begin().await?),
            Store::MySql(db) => StoreTx::MySql(db.begin().await?),
        })
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, ping())
    }

    /// Creates a campaign and its pools (and logs it).
    pub async fn create_campaign(
        &self,
        new: &NewCampaign,
        published: bool,
        actor: &str,
    ) -> Result<Campaign, StoreError> {
        dispatch!(self, create_campaign(new, published, actor))
    }

    /// A campaign, published or not.
    pub async fn load_campaign(&self, id: CampaignId) -> Result<Option<Campaign>, StoreError> {
        dispatch!(self, load_campaign(id))
    }

    /// A campaign as `admin` (or the public) may see it.
    pub async fn load_campaign_seen_by(
        &self,
        id: CampaignId,
        admin: bool,
    ) -> Result<Option<Campaign>, StoreError> {
        dispatch!(self, load_campaign_seen_by(id, admin))
    }

    /// Publishes a draft; `false` when there is no such campaign.
    pub async fn publish_campaign(&self, id: CampaignId, actor: &str) -> Result<bool, StoreError> {
        dispatch!(self, publish_campaign(id, actor))
    }

    /// Campaigns in `modes` whose state a worker keeps.
    pub async fn live_campaigns(&self, modes: &[Mode]) -> Result<Vec<CampaignId>, StoreError> {
        dispatch!(self, live_campaigns(modes))
    }

    /// (pool id, active grants) per pool.
    pub async fn active_counts(&self, campaign: CampaignId) -> Result<Vec<(i64, i64)>, StoreError> {
        dispatch!(self, active_counts(campaign))
    }

    /// Active grants per pool id.
    pub async fn active_per_pool(
        &self,
        campaign: CampaignId,
    ) -> Result<HashMap<i64, i64>, StoreError> {
        dispatch!(self, active_per_pool(campaign))
    }

    /// A page of campaigns, newest first.
    pub async fn list_campaigns(
        &self,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<CampaignLine>, StoreError> {
        dispatch!(self, list_campaigns(before, limit))
    }

    /// Where a user's held grant stands.
    pub async fn confirmation_state(
        &self,
        campaign: CampaignId,
        user: &UserId,
    ) -> Result<Option<Confirmation>, StoreError> {
        dispatch!(self, confirmation_state(campaign, user))
    }

    /// Confirms a held grant; `true` when it was held and is now confirmed.
    pub async fn confirm(&self, campaign: CampaignId, user: &UserId) -> Result<bool, StoreError> {
        dispatch!(self, confirm(campaign, user))
    }

    /// Expires up to `limit` holds past their deadline.
    pub async fn expire_due(&self, limit: i64) -> Result<Vec<Expired>, StoreError> {
        dispatch!(self, expire_due(limit))
    }

    /// Records a fair start's draw once; `false` if one was recorded.
    pub async fn record_draw(
        &self,
        campaign: CampaignId,
        ordered: &[(String, i32)],
    ) -> Result<bool, StoreError> {
        dispatch!(self, record_draw(campaign, ordered))
    }

    /// A page of the recorded draw.
    pub async fn draw_entries(
        &self,
        campaign: CampaignId,
        after: i64,
        limit: i64,
    ) -> Result<Vec<DrawEntry>, StoreError> {
        dispatch!(self, draw_entries(campaign, after, limit))
    }

    /// How many the recorded draw holds.
    pub async fn draw_size(&self, campaign: CampaignId) -> Result<i64, StoreError> {
        dispatch!(self, draw_size(campaign))
    }

    /// Inserts grants and refusals, each only if its campaign's generation
    /// is still the one given.
    pub async fn insert_fenced(
        &self,
        grants: &[NewGrant],
        grant_gens: &[i64],
        refusals: &[NewRejection],
        refusal_gens: &[i64],
    ) -> Result<Fenced, StoreError> {
        dispatch!(
            self,
            insert_fenced(grants, grant_gens, refusals, refusal_gens)
        )
    }

    /// Starts a new generation of a campaign's Redis state.
    pub async fn bump_generation(&self, campaign: CampaignId) -> Result<i64, StoreError> {
        dispatch!(self, bump_generation(campaign))
    }

    /// A campaign's generation.
    pub async fn generation(&self, campaign: CampaignId) -> Result<i64, StoreError> {
        dispatch!(self, generation(campaign))
    }

    /// A page of a campaign's grants.
    pub async fn grants_page(
        &self,
        campaign: CampaignId,
        after: i64,
        limit: i64,
    ) -> Result<Vec<GrantRow>, StoreError> {
        dispatch!(self, grants_page(campaign, after, limit))
    }

    /// A user's grant answer (active or cancelled).
    pub async fn grant_answer(
        &self,
        campaign: &Campaign,
        user: &UserId,
    ) -> Result<Option<ClaimOutcome>, StoreError> {
        dispatch!(self, grant_answer(campaign, user))
    }

    /// A user's remembered refusal.
    pub async fn rejection_answer(
        &self,
        campaign: CampaignId,
        user: &UserId,
    ) -> Result<Option<ClaimOutcome>, StoreError> {
        dispatch!(self, rejection_answer(campaign, user))
    }

    /// Inserts grants (unfenced); the codes that landed.
    pub async fn insert_grants(&self, grants: &[NewGrant]) -> Result<Vec<String>, StoreError> {
        dispatch!(self, insert_grants(grants))
    }

    /// Voids gate's reservation unless it committed.
    pub async fn void_reservation(&self, g: &NewGrant) -> Result<CodeFate, StoreError> {
        dispatch!(self, void_reservation(g))
    }

    /// A code's state.
    pub async fn code_state(&self, code: &str) -> Result<Option<String>, StoreError> {
        dispatch!(self, code_state(code))
    }

    /// The user's durable answer, if any.
    pub async fn durable_answer(
        &self,
        campaign: &Campaign,
        user: &UserId,
    ) -> Result<Option<ClaimOutcome>, StoreError> {
        dispatch!(self, durable_answer(campaign, user))
    }

    /// Which of `codes` are stored.
    pub async fn existing_codes(&self, codes: &[String]) -> Result<Vec<String>, StoreError> {
        dispatch!(self, existing_codes(codes))
    }

    /// Each user's latest grant (for rebuilding Redis).
    pub async fn latest_grants(
        &self,
        campaign: CampaignId,
    ) -> Result<Vec<LatestGrant>, StoreError> {
        dispatch!(self, latest_grants(campaign))
    }

    /// Remembered refusals (user, seq).
    pub async fn refusals(&self, campaign: CampaignId) -> Result<Vec<(String, i64)>, StoreError> {
        dispatch!(self, refusals(campaign))
    }

    /// Logs an operator's action now.
    pub async fn record_action_now(
        &self,
        campaign: CampaignId,
        actor: &str,
        action: Action,
        before: Option<&serde_json::Value>,
        after: Option<&serde_json::Value>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        tx.record_action(campaign, actor, action, before, after)
            .await?;
        tx.commit().await
    }

    /// The campaign's recent operator actions.
    pub async fn list_actions(
        &self,
        campaign: CampaignId,
        limit: i64,
    ) -> Result<Vec<ActionRow>, StoreError> {
        dispatch!(self, list_actions(campaign, limit))
    }

    /// Pauses or resumes; the previous state, or None if no campaign.
    pub async fn set_paused(
        &self,
        campaign: CampaignId,
        paused: bool,
        actor: &str,
    ) -> Result<Option<bool>, StoreError> {
        dispatch!(self, set_paused(campaign, paused, actor))
    }

    /// Moves the window and/or restocks, committed.
    pub async fn patch_campaign(
        &self,
        campaign: CampaignId,
        closes_at: Option<DateTime<Utc>>,
        stocks: &[Restock],
        actor: &str,
    ) -> Result<(), PatchError> {
        self.begin_patch(campaign, closes_at, stocks, actor)
            .await?
            .commit()
            .await
    }

    /// [`Store::patch_campaign`] up to its commit.
    pub async fn begin_patch(
        &self,
        campaign: CampaignId,
        closes_at: Option<DateTime<Utc>>,
        stocks: &[Restock],
        actor: &str,
    ) -> Result<OpenPatch, PatchError> {
        dispatch!(self, begin_patch(campaign, closes_at, stocks, actor))
    }

    /// The stored answers' signatures of `users` (for the event stream).
    pub async fn answer_signatures(
        &self,
        campaign: CampaignId,
        users: &[String],
    ) -> Result<Vec<String>, StoreError> {
        dispatch!(self, answer_signatures(campaign, users))
    }

    /// Leases due webhook events.
    pub async fn claim_due_events(
        &self,
        batch: i64,
        per_endpoint: i64,
        lease: Duration,
        busy: &[(String, i64)],
    ) -> Result<Vec<DueEvent>, StoreError> {
        dispatch!(self, claim_due_events(batch, per_endpoint, lease, busy))
    }

    /// Marks an event delivered.
    pub async fn event_delivered(&self, id: i64, status: u16) -> Result<(), StoreError> {
        dispatch!(self, event_delivered(id, status))
    }

    /// Records a failed attempt; `true` when the event is now dead.
    pub async fn event_failed(
        &self,
        id: i64,
        status: Option<u16>,
        error: &str,
        retry_in: Duration,
        dead_after: Duration,
    ) -> Result<bool, StoreError> {
        dispatch!(self, event_failed(id, status, error, retry_in, dead_after))
    }

    /// A page of a campaign's webhook events.
    pub async fn webhook_events_page(
        &self,
        campaign: CampaignId,
        state: Option<&str>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<WebhookEventRow>, StoreError> {
        dispatch!(self, webhook_events_page(campaign, state, after, limit))
    }

    /// Schedules an event for delivery again.
    pub async fn redeliver_event(
        &self,
        campaign: CampaignId,
        id: i64,
    ) -> Result<Option<WebhookEventRow>, StoreError> {
        dispatch!(self, redeliver_event(campaign, id))
    }

    /// (undelivered events, oldest's age in seconds).
    pub async fn webhook_lag(&self) -> Result<(i64, f64), StoreError> {
        dispatch!(self, webhook_lag())
    }
}

/// Whether `url` names MySQL/MariaDB.
pub fn is_mysql_url(url: &str) -> bool {
    url.starts_with("mysql://") || url.starts_with("mariadb://")
}
