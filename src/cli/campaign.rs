//! `firstcome campaign`: create, inspect and control campaigns through a
//! running service's HTTP API (never the stores directly).

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{json, Value};

use crate::client::Client;

/// Where the service is and who acts: every admin subcommand's flags.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Service URL.
    #[arg(long, env = "FIRSTCOME_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Admin token.
    #[arg(long, env = "FIRSTCOME_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// Who acts, recorded in the campaign's log of operator actions
    /// (default: the login name, `$USER`; without one the service logs
    /// `admin`).
    #[arg(long, env = "USER")]
    pub actor: Option<String>,
}

impl AdminArgs {
    /// A client of the service naming the actor.
    fn client(&self) -> Client {
        Client::new(&self.url, Some(self.admin_token.clone()), 1).with_actor(self.actor.clone())
    }
}

/// `firstcome campaign ...`: talk to a running service.
#[derive(Debug, Subcommand)]
pub enum CampaignCmd {
    /// Create a campaign.
    Create {
        /// Service and actor.
        #[command(flatten)]
        admin: AdminArgs,
        /// Name.
        #[arg(long)]
        name: String,
        /// Mode.
        #[arg(long, default_value = "gate")]
        mode: String,
        /// Pools as NAME=STOCK, repeatable.
        #[arg(long = "pool", required = true)]
        pools: Vec<String>,
        /// Redis shards each pool is spread over (gate, redis-lua).
        #[arg(long, default_value_t = 1)]
        shards: u16,
    },
    /// Show a campaign with its counts.
    Show {
        /// Service URL.
        #[arg(long, env = "FIRSTCOME_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Campaign id.
        id: i64,
    },
    /// Pause a campaign: new users get 409 `paused` until it is resumed.
    Pause {
        /// Service and actor.
        #[command(flatten)]
        admin: AdminArgs,
        /// Campaign id.
        id: i64,
    },
    /// Resume a paused campaign.
    Resume {
        /// Service and actor.
        #[command(flatten)]
        admin: AdminArgs,
        /// Campaign id.
        id: i64,
    },
    /// Change a live campaign: the window's end, pools' stock (db modes).
    Patch {
        /// Service and actor.
        #[command(flatten)]
        admin: AdminArgs,
        /// Campaign id.
        id: i64,
        /// The window's new end (RFC 3339, e.g. 2026-12-24T18:00:00Z).
        #[arg(long)]
        closes_at: Option<String>,
        /// A pool's new stock as NAME=STOCK, repeatable.
        #[arg(long = "pool")]
        pools: Vec<String>,
    },
    /// List a campaign's operator actions, newest first.
    Actions {
        /// Service and actor.
        #[command(flatten)]
        admin: AdminArgs,
        /// Campaign id.
        id: i64,
        /// Most actions listed.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
}

/// `NAME=STOCK` pairs as the API's pools.
fn parse_pools(pools: &[String]) -> anyhow::Result<Vec<Value>> {
    pools
        .iter()
        .map(|p| {
            let (n, s) = p
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--pool wants NAME=STOCK, got {p:?}"))?;
            Ok(json!({"name": n, "stock": s.parse::<i64>()?}))
        })
        .collect()
}

/// Sends an admin call; prints the answer; fails unless 200.
async fn admin_call(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<()> {
    let (s, v) = c.call(method, path, body, true).await?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    anyhow::ensure!(s == 200, "service answered {s}");
    Ok(())
}

/// Runs `firstcome campaign ...`: the service's answer on stdout.
pub async fn run(cmd: CampaignCmd) -> anyhow::Result<()> {
    match cmd {
        CampaignCmd::Create {
            admin,
            name,
            mode,
            pools,
            shards,
        } => {
            let pools = parse_pools(&pools)?;
            let v = admin
                .client()
                .create_campaign(
                    &json!({"name": name, "mode": mode, "pools": pools, "shards": shards}),
                )
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        CampaignCmd::Show { url, id } => {
            let c = Client::new(&url, None, 1);
            let (s, v) = c
                .call(Method::GET, &format!("/v1/campaigns/{id}"), None, false)
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            anyhow::ensure!(s == 200, "service answered {s}");
            Ok(())
        }
        CampaignCmd::Pause { admin, id } => {
            let path = format!("/v1/campaigns/{id}/pause");
            admin_call(&admin.client(), Method::POST, &path, None).await
        }
        CampaignCmd::Resume { admin, id } => {
            let path = format!("/v1/campaigns/{id}/resume");
            admin_call(&admin.client(), Method::POST, &path, None).await
        }
        CampaignCmd::Patch {
            admin,
            id,
            closes_at,
            pools,
        } => {
            let mut body = json!({});
            if let Some(t) = closes_at {
                body["closes_at"] = json!(t);
            }
            if !pools.is_empty() {
                body["pools"] = json!(parse_pools(&pools)?);
            }
            let path = format!("/v1/campaigns/{id}");
            admin_call(&admin.client(), Method::PATCH, &path, Some(&body)).await
        }
        CampaignCmd::Actions { admin, id, limit } => {
            let path = format!("/v1/campaigns/{id}/actions?limit={limit}");
            admin_call(&admin.client(), Method::GET, &path, None).await
        }
    }
}
