//! The integration tests: one binary (one build, one link) with a module
//! per topic, all against the real Redis and PostgreSQL. Every test makes
//! its own database and Redis key prefix (`common::spawn_app`), so they run
//! in parallel and in any order.

mod common;

mod api;
mod busy;
mod cluster;
mod dashboards;
mod fair_start;
mod faults;
mod invariants;
mod lua;
mod mysql;
mod operator;
mod pages;
mod properties;
mod recovery;
mod rush;
mod security;
mod shards;
mod webhooks;
