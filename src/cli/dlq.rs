//! `firstcome dlq`: list or replay the dead letters of a redis-queue
//! campaign, straight against the stores.

use clap::Subcommand;
use serde_json::json;

use super::stores::{self, StoreArgs};
use crate::{domain::UserId, modes::script_mode, storage::redis::ScriptMode};

/// `firstcome dlq ...`: dead letters of a redis-queue campaign.
#[derive(Debug, Subcommand)]
pub enum DlqCmd {
    /// List the dead letters.
    List {
        /// Campaign id.
        #[arg(long)]
        campaign: i64,
        /// Stores.
        #[command(flatten)]
        stores: StoreArgs,
    },
    /// Put every dead letter back in the queue (or answer sold_out when no
    /// stock is left).
    Replay {
        /// Campaign id.
        #[arg(long)]
        campaign: i64,
        /// Stores.
        #[command(flatten)]
        stores: StoreArgs,
    },
}

/// Runs `firstcome dlq list|replay`: one JSON line per dead letter.
pub async fn run(cmd: DlqCmd) -> anyhow::Result<()> {
    let (id, s, replay) = match &cmd {
        DlqCmd::List { campaign, stores } => (*campaign, stores, false),
        DlqCmd::Replay { campaign, stores } => (*campaign, stores, true),
    };
    let common = stores::open(s).await?;
    let c = stores::campaign(&common, id).await?;
    anyhow::ensure!(
        // Dead letters exist where claims are queued and drained.
        script_mode(c.mode) == Some(ScriptMode::Enqueue),
        "campaign {id} is {}, not redis-queue",
        c.mode
    );
    let k = common.keys(&c);
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for e in common.redis.dead_letters(&k).await? {
        let (u, sq) = (e.user.clone(), e.seq.to_string());
        if !replay {
            println!(
                "{}",
                json!({"id": e.id, "user_id": u, "pool": e.pidx.to_string(), "seq": sq})
            );
            continue;
        }
        let pidx = usize::try_from(e.pidx)?;
        let r = common.redis.replay(&k, pidx, &u, &sq, &e.id).await?;
        let gen: Option<i64> = r.get(1).and_then(|g| g.parse().ok());
        let mut r = r.first().cloned().unwrap_or_default();
        if r == "noinit" {
            r = "not replayed: the campaign's state is not loaded (a claim or the worker rebuilds it); replay again".into();
        }
        if let (true, Some(gen)) = (r == "sold_out", gen) {
            // A refusal is final: durable before anyone can read it (in the
            // generation of the state that decided it).
            let user = UserId::parse(u.clone())?;
            if let Err(e) = common.resolve_refusal(&c, &user, e.seq, gen).await {
                r = format!("sold_out (not yet durable: {e}; the next read makes it so)");
            }
        }
        println!("{}", json!({"id": e.id, "user_id": u, "result": r}));
        *counts.entry(r).or_default() += 1;
    }
    if replay {
        eprintln!("replayed: {counts:?}");
    }
    Ok(())
}
