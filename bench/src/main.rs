//! The `firstcome-bench` binary: everything lives in the library.

use clap::Parser;

/// The service's allocator here too: the load generator's own peak RSS is
/// reported, and it was measured under mimalloc when the bench was a
/// subcommand of the service binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load-test every mode against a running firstcome service and verify
/// invariants.
#[derive(Debug, Parser)]
#[command(name = "firstcome-bench", version)]
struct Cli {
    #[command(flatten)]
    bench: firstcome_bench::BenchArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    firstcome::telemetry::init_logs();
    firstcome_bench::run(cli.bench).await
}
