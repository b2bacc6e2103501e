//! Pool settings both databases share.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::pool::PoolConnectionMetadata;

/// Database connections opened at start and kept open (at most the pool's
/// size): the group committer's transactions in flight, a campaign read, a
/// background task. Opening one mid-rush cost a commit several ms.
pub const WARM_CONNECTIONS: u32 = 6;

/// A pooled connection idle this long is pinged before it is handed out
/// (it may have outlived a database restart); busier ones are not, which
/// saves a round trip per transaction under load.
pub const PING_IDLE: Duration = Duration::from_secs(1);

/// The pools' `before_acquire`: pings a connection that sat idle for
/// [`PING_IDLE`] or more (a broken one is then dropped, not handed to a
/// commit); hands a busier one out as it is.
pub fn ping_if_idle<C: sqlx::Connection>(
    conn: &mut C,
    meta: PoolConnectionMetadata,
) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        if meta.idle_for >= PING_IDLE {
            conn.ping().await?;
        }
        Ok(true)
    })
}
