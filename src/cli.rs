//! The `firstcome` command line: dispatch of subcommands.

use clap::{Parser, Subcommand};
use hyper::Method;
use serde_json::json;

use std::time::Duration;

use crate::{
    app::{shutdown_signal, Application},
    client::Client,
    config::{Cli, Command, ReconcileArgs, StoreArgs},
    domain::{Campaign, CampaignId, Mode, UserId},
    modes::redis_common::RedisCommon,
    storage::{pg, redis::RedisStore},
    tasks::reconcile,
};

/// `firstcome campaign ...`: talk to a running service.
#[derive(Debug, Subcommand)]
pub enum CampaignCmd {
    /// Create a campaign.
    Create {
        /// Service URL.
        #[arg(long, env = "FIRSTCOME_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Admin token.
        #[arg(long, env = "FIRSTCOME_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: String,
        /// Name.
        #[arg(long)]
        name: String,
        /// Mode.
        #[arg(long, default_value = "gate")]
        mode: String,
        /// Pools as NAME=STOCK, repeatable.
        #[arg(long = "pool", required = true)]
        pools: Vec<String>,
    },
    /// Show a campaign with its counts.
    Show {
        /// Service URL.
        #[arg(long, env = "FIRSTCOME_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Campaign id.
        id: i64,
    },
}

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

async fn stores(s: &StoreArgs) -> anyhow::Result<RedisCommon> {
    let db = pg::connect(&s.database_url, 4).await?;
    let redis = RedisStore::connect(
        &s.redis_url,
        &s.redis_prefix,
        Duration::from_millis(s.redis_timeout_ms),
    )
    .await?;
    Ok(RedisCommon::new(db, redis, Duration::from_secs(3)))
}

async fn campaign(common: &RedisCommon, id: i64) -> anyhow::Result<Campaign> {
    pg::load_campaign(&common.db, CampaignId(id))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no campaign {id}"))
}

async fn dlq(cmd: DlqCmd) -> anyhow::Result<()> {
    let (id, s, replay) = match &cmd {
        DlqCmd::List { campaign, stores } => (*campaign, stores, false),
        DlqCmd::Replay { campaign, stores } => (*campaign, stores, true),
    };
    let common = stores(s).await?;
    let c = campaign(&common, id).await?;
    anyhow::ensure!(
        c.mode == Mode::RedisQueue,
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
        let pk = k
            .pools
            .get(pidx)
            .ok_or_else(|| anyhow::anyhow!("bad pool index {p}"))?;
        let r: Vec<String> = common
            .redis
            .eval(
                &common.redis.scripts().replay,
                &[&k.ans, &pk.left, &k.queue, &k.queued, &k.dlq, &k.meta],
                &[&u, &p, &sq, &e.id],
            )
            .await?;
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

async fn reconcile_cmd(args: ReconcileArgs) -> anyhow::Result<()> {
    let common = stores(&args.stores).await?;
    let ids = match args.campaign {
        Some(id) => vec![CampaignId(id)],
        None => pg::live_campaigns(&common.db, &Mode::redis_modes()).await?,
    };
    for id in ids {
        let c = campaign(&common, id.0).await?;
        let r = reconcile::reconcile(&common, &c, !args.dry_run).await?;
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}

/// Parses the command line and runs it.
pub async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    crate::telemetry::init_logs();
    match cli.command {
        Command::Serve(args) => {
            Application::build(args)
                .await?
                .run_until(shutdown_signal())
                .await
        }
        Command::Reconcile(args) => reconcile_cmd(args).await,
        Command::Dlq(cmd) => dlq(cmd).await,
        Command::Campaign(CampaignCmd::Create {
            url,
            admin_token,
            name,
            mode,
            pools,
        }) => {
            let pools = pools
                .iter()
                .map(|p| {
                    let (n, s) = p
                        .split_once('=')
                        .ok_or_else(|| anyhow::anyhow!("--pool wants NAME=STOCK, got {p:?}"))?;
                    Ok(json!({"name": n, "stock": s.parse::<i64>()?}))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let c = Client::new(&url, Some(admin_token), 1);
            let v = c
                .create_campaign(&json!({"name": name, "mode": mode, "pools": pools}))
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Command::Campaign(CampaignCmd::Show { url, id }) => {
            let c = Client::new(&url, None, 1);
            let (s, v) = c
                .call(Method::GET, &format!("/v1/campaigns/{id}"), None, false)
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            anyhow::ensure!(s == 200, "service answered {s}");
            Ok(())
        }
    }
}
