//! What the event streams' watcher reads from PostgreSQL: one opaque
//! signature per user of a campaign, in one query for all of them, that
//! changes whenever the user's answer (or a hold's confirmation) does.

use sqlx::{PgPool, Row};

use crate::domain::CampaignId;
use crate::storage::error::StoreError;

/// A signature per user of `users`, in order: the latest grant's state, id
/// and confirmation (as [`super::grant_answer`] picks it), and whether a
/// refusal is recorded (as [`super::rejection_answer`] finds it).
pub async fn answer_signatures(
    db: &PgPool,
    campaign: CampaignId,
    users: &[String],
) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query(
        "SELECT u.user_id,
           (SELECT g.state || ':' || g.id || ':' || coalesce(g.confirmed_at::text, '')
              FROM grants g
             WHERE g.campaign_id = $1 AND g.user_id = u.user_id AND g.state <> 'void'
             ORDER BY (g.state = 'active') DESC, g.id DESC LIMIT 1) AS grant_sig,
           EXISTS (SELECT 1 FROM rejections r
                    WHERE r.campaign_id = $1 AND r.user_id = u.user_id)
           OR EXISTS (SELECT 1 FROM refusal_batches b
                       WHERE b.campaign_id = $1 AND u.user_id = ANY (b.users)) AS refused
         FROM unnest($2::text[]) WITH ORDINALITY AS u(user_id, n)
         ORDER BY u.n",
    )
    .bind(campaign.0)
    .bind(users)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let g: Option<String> = r.get("grant_sig");
            let refused: bool = r.get("refused");
            format!("{}|{refused}", g.unwrap_or_default())
        })
        .collect())
}
