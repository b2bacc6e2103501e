//! Identifiers parsed at the boundary: campaign ids, pool names and user ids
//! (parse, don't validate: a value of these types is well-formed). No I/O.

use std::fmt;

/// Why an identifier was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// The identifier was empty.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// The identifier was longer than allowed.
    #[error("{0} must be at most {1} bytes")]
    TooLong(&'static str, usize),
    /// The identifier held a character outside `[A-Za-z0-9_.:@-]`.
    #[error("{0} may only contain letters, digits and _ . : @ -")]
    BadChar(&'static str),
}

/// Longest accepted user id, in bytes. Long enough for a UUID, an e-mail
/// address or a JWT subject; short enough that a bot cannot bloat Redis.
pub const MAX_USER_ID_LEN: usize = 128;

/// Longest accepted pool name, in bytes.
pub const MAX_POOL_NAME_LEN: usize = 64;

fn check(kind: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty(kind));
    }
    if s.len() > max {
        return Err(IdError::TooLong(kind, max));
    }
    // A closed character set keeps ids safe inside Redis values (we use `|`
    // as a separator there), URLs and logs.
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'))
    {
        return Err(IdError::BadChar(kind));
    }
    Ok(())
}

/// Declares a well-formed text identifier: a newtype whose only way in is
/// `parse` (1..=max bytes of `[A-Za-z0-9_.:@-]`).
macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, [$($derive:ident),*]) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash $(, $derive)*)]
        pub struct $name(String);

        impl $name {
            #[doc = concat!("Parses a ", $kind, ": 1..=", stringify!($max), " bytes of `[A-Za-z0-9_.:@-]`.")]
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check($kind, &s, $max)?;
                Ok(Self(s))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_id!(
    /// A user's identity as the caller states it (or as a JWT's `sub`).
    UserId,
    "user_id",
    MAX_USER_ID_LEN,
    [PartialOrd, Ord]
);

text_id!(
    /// The name of a pool within a campaign (a school, a ticket tier).
    PoolName,
    "pool",
    MAX_POOL_NAME_LEN,
    []
);

/// A campaign's id, as PostgreSQL assigned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CampaignId(pub i64);

impl fmt::Display for CampaignId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_checked() {
        assert!(UserId::parse("alice-1@example.com").is_ok());
        assert_eq!(UserId::parse(""), Err(IdError::Empty("user_id")));
        assert_eq!(UserId::parse("a|b"), Err(IdError::BadChar("user_id")));
        assert_eq!(UserId::parse("a b"), Err(IdError::BadChar("user_id")));
        assert_eq!(
            UserId::parse("x".repeat(129)),
            Err(IdError::TooLong("user_id", 128))
        );
        assert!(UserId::parse("x".repeat(128)).is_ok());
    }

    #[test]
    fn pool_names_are_checked() {
        assert!(PoolName::parse("school-3").is_ok());
        assert!(PoolName::parse("").is_err());
        assert!(PoolName::parse("é").is_err());
    }
}
