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
    let dlq_key = k.dlq.clone();
    let entries: redis::streams::StreamRangeReply = common
        .redis
        .run(|mut conn| async move {
            redis::cmd("XRANGE")
                .arg(&dlq_key)
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
        })
        .await?;
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for e in entries.ids {
        let get = |f: &str| e.get::<String>(f).unwrap_or_default();
        let (u, p, sq) = (get("u"), get("p"), get("s"));
        if !replay {
            println!(
                "{}",
                json!({"id": e.id, "user_id": u, "pool": p, "seq": sq})
            );
            continue;
        }
        let pidx: usize = p.parse()?;
        let r = common.redis.replay(&k, pidx, &u, &sq, &e.id).await?;
        let gen: Option<i64> = r.get(1).and_then(|g| g.parse().ok());
        let mut r = r.first().cloned().unwrap_or_default();
        if let (true, Some(gen)) = (r == "sold_out", gen) {
            // A refusal is final: durable before anyone can read it (in the
            // generation of the state that decided it).
            let user = UserId::parse(u.clone())?;
            if let Err(e) = common.resolve_refusal(&c, &user, sq.parse()?, gen).await {
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
