//! What the event streams' watcher reads from MySQL/MariaDB: one opaque
//! signature per user of a campaign, in one query for all of them, that
//! changes whenever the user's answer (or a hold's confirmation) does.

use sqlx::{MySqlPool, Row};

use super::text::opt_text;
use crate::domain::CampaignId;
use crate::storage::error::StoreError;

/// Longest user id the tables hold (`VARCHAR(255)`, in characters).
const USER_ID_MAX: usize = 255;

/// A signature per user of `users`, in order: the latest grant's state, id
/// and confirmation (as [`super::grant_answer`] picks it), and whether a
/// refusal is recorded (as [`super::rejection_answer`] finds it). Opaque:
/// its text differs from PostgreSQL's (the confirmation's format), never
/// compared across stores.
pub async fn answer_signatures(
    db: &MySqlPool,
    campaign: CampaignId,
    users: &[String],
) -> Result<Vec<String>, StoreError> {
    // No unnest ... WITH ORDINALITY: the users as one JSON parameter,
    // numbered by JSON_TABLE. Read as VARCHAR(255), so the grants lookup
    // uses its index; a longer id, which no row can hold, goes as null
    // (matches nothing) rather than cut short (which could match another).
    let list: Vec<Option<&str>> = users
        .iter()
        .map(|u| Some(u.as_str()).filter(|u| u.chars().count() <= USER_ID_MAX))
        .collect();
    let list = serde_json::to_string(&list)
        .map_err(|e| StoreError::Failed(format!("encoding users: {e}")))?;
    // No `||` (without PIPES_AS_CONCAT it is OR): CONCAT. No `= ANY
    // (b.users)`: JSON_TABLE over each batch (JSON_CONTAINS compares escaped
    // text as written, so `\u00e9` would not match `é`).
    let rows = sqlx::query(
        "SELECT
           (SELECT CONCAT(g.state, ':', g.id, ':', COALESCE(CAST(g.confirmed_at AS CHAR), ''))
              FROM grants g
             WHERE g.campaign_id = ? AND g.user_id = u.user_id AND g.state <> 'void'
             ORDER BY g.state = 'active' DESC, g.id DESC LIMIT 1) AS grant_sig,
           EXISTS (SELECT 1 FROM rejections r
                    WHERE r.campaign_id = ? AND r.user_id = u.user_id)
           OR EXISTS (SELECT 1 FROM refusal_batches b,
                             JSON_TABLE(b.users, '$[*]' COLUMNS (
                                 x TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin PATH '$')) AS x
                       WHERE b.campaign_id = ? AND x.x = u.user_id) AS refused
         FROM JSON_TABLE(?, '$[*]' COLUMNS (
                  n FOR ORDINALITY,
                  user_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin PATH '$')) AS u
         ORDER BY u.n",
    )
    .bind(campaign.0)
    .bind(campaign.0)
    .bind(campaign.0)
    .bind(list)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| -> Result<String, StoreError> {
            let g = opt_text(r, 0)?;
            let refused: bool = r.try_get(1)?;
            Ok(format!("{}|{refused}", g.unwrap_or_default()))
        })
        .collect()
}
