//! `firstcome reconcile`: compare Redis with PostgreSQL for Redis-mode
//! campaigns, repair drift, report what was repaired.

use clap::Args;

use super::stores::{self, StoreArgs};
use crate::{
    domain::{CampaignId, Mode},
    tasks::reconcile,
};

/// `firstcome reconcile`.
#[derive(Debug, Clone, Args)]
pub struct ReconcileArgs {
    /// Only this campaign (default: every live Redis-mode campaign).
    #[arg(long)]
    pub campaign: Option<i64>,
    /// Report only; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Stores.
    #[command(flatten)]
    pub stores: StoreArgs,
}

/// Runs `firstcome reconcile`: one JSON report per campaign on stdout.
pub async fn run(args: ReconcileArgs) -> anyhow::Result<()> {
    let common = stores::open(&args.stores).await?;
    let ids = match args.campaign {
        Some(id) => vec![CampaignId(id)],
        None => common.db.live_campaigns(&Mode::redis_modes()).await?,
    };
    for id in ids {
        let c = stores::campaign(&common, id.0).await?;
        let r = reconcile::reconcile(&common, &c, !args.dry_run).await?;
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}
