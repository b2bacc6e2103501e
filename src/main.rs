//! The `firstcome` binary: everything lives in the library.

/// mimalloc instead of glibc malloc: a profile of a gate rush spent about a
/// third of the service's CPU in glibc's malloc/free (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    firstcome::cli::run().await
}
