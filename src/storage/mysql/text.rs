//! Reading MariaDB's text columns.

use crate::storage::error::StoreError;

/// A text column, read as bytes: sqlx reports MariaDB's binary-collated
/// text (`utf8mb4_nopad_bin`, chosen so comparisons are byte-wise as
/// PostgreSQL's) as a binary type and refuses to decode it as `String`
/// (launchbadge/sqlx#3387).
pub(crate) fn text(row: &sqlx::mysql::MySqlRow, i: usize) -> Result<String, StoreError> {
    use sqlx::Row;
    let b: Vec<u8> = row.try_get(i)?;
    String::from_utf8(b).map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
}

/// [`text`] of a nullable column.
pub(crate) fn opt_text(
    row: &sqlx::mysql::MySqlRow,
    i: usize,
) -> Result<Option<String>, StoreError> {
    use sqlx::Row;
    let b: Option<Vec<u8>> = row.try_get(i)?;
    b.map(String::from_utf8)
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
}
