//! The admission modes' registry and the [`Mode`] it defines. Names and
//! kinds only: what each mode does lives in `modes/`, which expands the
//! same registry into its dispatch.

use std::{fmt, str::FromStr};

/// The mode registry: every admission mode once, in the order reports list
/// them — its [`Mode`] variant, its name in the API and the database,
/// where it decides (`db` or `redis`), and its implementation under
/// `modes/`. Adding a mode is one line here (with its folder under
/// `modes/` and, for a Redis mode, its Lua). Each layer expands it with a
/// macro of its own: this module builds [`Mode`], `modes` the dispatch.
#[macro_export]
macro_rules! for_each_mode {
    ($then:ident) => {
        $then! {
            /// `SELECT ... FOR UPDATE` on the pool row, then insert (both seeds' baseline).
            DbLock = "db-lock", db, db_lock::DbLock;
            /// Conditional `UPDATE ... WHERE issued < stock RETURNING`, then insert.
            DbAtomic = "db-atomic", db, db_atomic::DbAtomic;
            /// Redis Lua as the database; a flusher writes the outbox behind.
            RedisLua = "redis-lua", redis, redis_lua::RedisLua;
            /// Redis Lua reservation, then a group-committed PostgreSQL insert
            /// before answering. The default.
            Gate = "gate", redis, gate::Gate;
            /// Redis validates and queues; a drainer grants in arrival order.
            RedisQueue = "redis-queue", redis, redis_queue::RedisQueue;
        }
    };
}

macro_rules! define_mode {
    ($($(#[$doc:meta])* $variant:ident = $name:literal, $store:ident, $module:ident :: $ty:ident;)*) => {
        /// How a campaign admits claims. Chosen once, at creation.
        // Names on the wire are the kebab-case variants (the OpenAPI schema
        // derive reads only the enum-level rename); a unit test checks they
        // equal the registry's names.
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
            utoipa::ToSchema,
        )]
        #[serde(rename_all = "kebab-case")]
        pub enum Mode {
            $($(#[$doc])* $variant,)*
        }

        impl Mode {
            /// Every mode, in the registry's order.
            pub const ALL: &'static [Mode] = &[$(Mode::$variant),*];

            /// The mode's name as it appears in the API and the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Mode::$variant => $name,)*
                }
            }

            /// Whether admission runs through Redis.
            pub fn uses_redis(self) -> bool {
                match self {
                    $(Mode::$variant => stringify!($store) == "redis",)*
                }
            }
        }
    };
}

for_each_mode!(define_mode);

impl Mode {
    /// The modes that decide in Redis (their campaigns need a worker).
    pub fn redis_modes() -> Vec<Mode> {
        Mode::ALL
            .iter()
            .copied()
            .filter(|m| m.uses_redis())
            .collect()
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .iter()
            .copied()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown mode {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for &m in Mode::ALL {
            assert_eq!(m.as_str().parse::<Mode>(), Ok(m));
            assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
        }
        assert!("redis".parse::<Mode>().is_err());
        // The OpenAPI document lists the same names.
        let schema = serde_json::to_value(<Mode as utoipa::PartialSchema>::schema()).unwrap();
        let names: Vec<&str> = schema["enum"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(
            names,
            Mode::ALL.iter().map(|m| m.as_str()).collect::<Vec<_>>()
        );
        assert_eq!(
            Mode::redis_modes(),
            [Mode::RedisLua, Mode::Gate, Mode::RedisQueue]
        );
    }
}
