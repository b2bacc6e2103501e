//! The dispatch over every mode, generated from the mode registry
//! ([`crate::for_each_mode`]): adding a mode there adds it here.

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;

use super::{
    admission::{Admission, Deps},
    error::{AdmissionError, CancelOutcome},
    redis_common::RedisCommon,
};
use crate::{
    domain::{Campaign, ClaimOutcome, Mode, Pool, UserId},
    storage::redis::{stream::TaskEnv, ScriptMode},
};

macro_rules! admissions {
    ($($(#[$doc:meta])* $variant:ident = $name:literal, $store:ident, $module:ident :: $ty:ident;)*) => {
        /// Every mode, built once, dispatched on a campaign's [`Mode`].
        #[derive(Clone)]
        pub struct Admissions {
            $($module: super::$module::$ty,)*
            /// The Redis side (campaign state, counters) of the Redis modes.
            common: RedisCommon,
        }

        impl Admissions {
            /// Builds every mode over the shared connections.
            pub fn new(deps: &Deps) -> Self {
                Self {
                    $($module: <super::$module::$ty as Admission>::build(deps),)*
                    common: deps.common.clone(),
                }
            }

            /// Dispatches a claim to the campaign's mode.
            pub async fn claim(
                &self,
                campaign: &Campaign,
                pool: &Pool,
                user: &UserId,
            ) -> Result<ClaimOutcome, AdmissionError> {
                match campaign.mode {
                    $(Mode::$variant => self.$module.claim(campaign, pool, user).await,)*
                }
            }

            /// Dispatches a status read to the campaign's mode.
            pub async fn status(
                &self,
                campaign: &Campaign,
                user: &UserId,
            ) -> Result<Option<ClaimOutcome>, AdmissionError> {
                match campaign.mode {
                    $(Mode::$variant => self.$module.status(campaign, user).await,)*
                }
            }

            /// Dispatches a cancellation to the campaign's mode; past the
            /// hold, grants are final whatever the mode.
            pub async fn cancel(
                &self,
                campaign: &Campaign,
                user: &UserId,
                now: DateTime<Utc>,
            ) -> Result<CancelOutcome, AdmissionError> {
                if campaign.hold_until().is_some_and(|h| now >= h) {
                    return Ok(CancelOutcome::HoldOver);
                }
                match campaign.mode {
                    $(Mode::$variant => self.$module.cancel(campaign, user, now).await,)*
                }
            }

            /// The Redis side of the campaign's mode, if it decides in Redis.
            pub fn redis_of(&self, mode: Mode) -> Option<&RedisCommon> {
                match mode {
                    $(Mode::$variant => self.$module.redis(),)*
                }
            }

            /// Starts the campaign's mode's background task, if it has one.
            pub fn background(&self, campaign: Campaign, env: TaskEnv) -> Option<JoinHandle<()>> {
                match campaign.mode {
                    $(Mode::$variant => self.$module.background(campaign, env),)*
                }
            }
        }

        /// How the claim script decides for `mode`; `None` for a mode that
        /// decides in PostgreSQL.
        pub fn script_mode(mode: Mode) -> Option<ScriptMode> {
            match mode {
                $(Mode::$variant => <super::$module::$ty as Admission>::SCRIPT,)*
            }
        }
    };
}

crate::for_each_mode!(admissions);

impl Admissions {
    /// Prepares a new campaign: a Redis mode loads its empty state now (if
    /// Redis is down, the first claim rebuilds it from PostgreSQL).
    pub async fn on_create(&self, campaign: &Campaign) -> Result<(), AdmissionError> {
        match self.redis_of(campaign.mode) {
            Some(r) => r.init_new(campaign).await,
            None => Ok(()),
        }
    }

    /// Stock left per pool and the queued count, where the mode keeps them
    /// outside PostgreSQL; `None` otherwise (or when Redis has no state).
    pub async fn counters(
        &self,
        campaign: &Campaign,
    ) -> Result<Option<(Vec<i64>, i64)>, AdmissionError> {
        match self.redis_of(campaign.mode) {
            Some(r) => r.counters(campaign).await,
            None => Ok(None),
        }
    }

    /// The shared Redis side of the Redis modes (lifetimes, server checks,
    /// rebuilds, reconciliation).
    pub fn redis(&self) -> &RedisCommon {
        &self.common
    }
}
