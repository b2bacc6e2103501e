//! `firstcome campaign`: create or inspect campaigns through a running
//! service's HTTP API (never the stores directly).

use clap::Subcommand;
use hyper::Method;
use serde_json::json;

use crate::client::Client;

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
}

/// Runs `firstcome campaign create|show`: the service's answer on stdout.
pub async fn run(cmd: CampaignCmd) -> anyhow::Result<()> {
    match cmd {
        CampaignCmd::Create {
            url,
            admin_token,
            name,
            mode,
            pools,
            shards,
        } => {
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
    }
}
