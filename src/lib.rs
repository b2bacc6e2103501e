//! firstcome: hands a limited stock to whoever asks first, while a crowd
//! many times larger asks in the same second. Redis absorbs the rush;
//! PostgreSQL is the source of truth.
//!
//! Layout: [`domain`] (types, no I/O) → [`modes`] (one module per admission
//! mode behind one trait) → [`storage`] (PostgreSQL, Redis scripts) and
//! [`tasks`] (background work) → [`http`] (the API) → [`app`] (wiring);
//! [`flights`] lets concurrent callers share one slow load.
#![warn(missing_docs)]

pub mod app;
pub mod cli;
pub mod client;
pub mod config;
pub mod domain;
pub mod flights;
pub mod http;
pub mod modes;
pub mod storage;
pub mod tasks;
pub mod telemetry;
