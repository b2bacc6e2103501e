//! The `firstcome` command line: every clap type lives under this module,
//! one file per subcommand group (`serve`, `campaign`, `dlq`, `reconcile`;
//! `stores` holds the store flags they share). This file holds [`Cli`],
//! [`Command`] and the dispatch.
//!
//! The clap attributes are the one place defaults and environment
//! variables are written; the rest of the crate reads plain `config`
//! structs built from the parsed arguments and never imports this module.

use clap::{Parser, Subcommand};

use crate::app::{shutdown_signal, Application};

pub mod campaign;
pub mod dlq;
pub mod reconcile;
pub mod serve;
pub mod stores;
pub mod webhooks;

pub use campaign::CampaignCmd;
pub use dlq::DlqCmd;
pub use reconcile::ReconcileArgs;
pub use serve::ServeArgs;
pub use stores::StoreArgs;
pub use webhooks::WebhookArgs;

/// firstcome: hand a limited stock to whoever asks first.
#[derive(Debug, Parser)]
#[command(name = "firstcome", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
// Parsed once at startup: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the API and/or the background worker.
    Serve(ServeArgs),
    /// Create or inspect campaigns through a running service.
    #[command(subcommand)]
    Campaign(CampaignCmd),
    /// Compare Redis with PostgreSQL for Redis-mode campaigns, repair drift,
    /// and report what was repaired.
    Reconcile(ReconcileArgs),
    /// List or replay redis-queue dead letters.
    #[command(subcommand)]
    Dlq(DlqCmd),
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
        Command::Reconcile(args) => reconcile::run(args).await,
        Command::Dlq(cmd) => dlq::run(cmd).await,
        Command::Campaign(cmd) => campaign::run(cmd).await,
    }
}
