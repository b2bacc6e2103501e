//! The `firstcome` binary: everything lives in the library.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    firstcome::cli::run().await
}
