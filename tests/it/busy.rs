//! A database busy with other transactions (a claim behind a held lock, a
//! deadlock victim) answers 503 `database_busy` with `Retry-After`, never
//! 500, and writes nothing: on PostgreSQL and on MySQL alike (the suite
//! runs on both).

use axum::response::IntoResponse;
use firstcome::{
    http::error::ApiError,
    storage::{StoreError, StoreTx},
};

use crate::common::{count, spawn_app};

/// Runs `sql` (`$1` = `arg`) inside an open transaction of either store.
async fn run_in(tx: &mut StoreTx<'_>, sql: &str, arg: i64) -> Result<(), sqlx::Error> {
    match tx {
        StoreTx::Pg(tx) => sqlx::query(sql)
            .bind(arg)
            .execute(&mut **tx)
            .await
            .map(drop),
        StoreTx::MySql(tx) => {
            let sql = sql.replace("$1", "?");
            sqlx::query(&sql)
                .bind(arg)
                .execute(&mut **tx)
                .await
                .map(drop)
        }
    }
}

/// Runs `sql` in `tx`; on an error (a deadlock victim) rolls `tx` back and
/// takes it (PostgreSQL keeps an aborted transaction's locks until then).
async fn cross(tx: &mut Option<StoreTx<'static>>, sql: &str, row: i64) -> Result<(), sqlx::Error> {
    let r = run_in(tx.as_mut().unwrap(), sql, row).await;
    if r.is_err() {
        tx.take().unwrap().rollback().await.unwrap();
    }
    r
}

/// A claim waiting on the pool row past the statement (lock wait) timeout
/// gives up with 503 `database_busy` and `Retry-After`; the user has no
/// answer; once the lock is gone the same claim is granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_stuck_behind_a_lock_answers_503_database_busy() {
    let app = spawn_app().await;
    let id = app.campaign("db-lock", &[("main", 5)]).await;
    let pool = count(&app, "SELECT id FROM pools WHERE campaign_id = $1", id).await;
    let mut holder = app.db.begin().await.unwrap();
    run_in(
        &mut holder,
        "SELECT stock FROM pools WHERE id = $1 FOR UPDATE",
        pool,
    )
    .await
    .unwrap();
    let r = app
        .http
        .post(format!("{}/v1/campaigns/{id}/claims", app.base))
        .json(&serde_json::json!({"user_id": "stuck"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"), "{:?}", r.headers());
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "database_busy", "{v}");
    holder.rollback().await.unwrap();
    assert_eq!(app.status(id, "stuck").await.0, 404, "nothing was written");
    let (s, v) = app.claim(id, "stuck", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(app.assert_db_invariants(id).await, 1);
}

/// Two transactions each holding the row the other wants: the database
/// ends one of them (PostgreSQL 40P01, InnoDB 1213); that error counts as
/// contention and answers 503 `database_busy` with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadlock_victim_answers_503_database_busy() {
    let app = spawn_app().await;
    let a = app.campaign("db-lock", &[("main", 5)]).await;
    let b = app.campaign("db-lock", &[("main", 5)]).await;
    let pool_of = "SELECT id FROM pools WHERE campaign_id = $1";
    let (pa, pb) = (count(&app, pool_of, a).await, count(&app, pool_of, b).await);
    let lock = "UPDATE pools SET granted = granted WHERE id = $1";
    let mut one = Some(app.db.begin().await.unwrap());
    let mut two = Some(app.db.begin().await.unwrap());
    run_in(one.as_mut().unwrap(), lock, pa).await.unwrap();
    run_in(two.as_mut().unwrap(), lock, pb).await.unwrap();
    // Each wants the other's row; the victim rolls back, its partner goes on.
    let (r1, r2) = tokio::join!(cross(&mut one, lock, pb), cross(&mut two, lock, pa));
    for survivor in [one, two].into_iter().flatten() {
        survivor.rollback().await.unwrap();
    }
    let victim = match (r1, r2) {
        (Err(e), Ok(())) | (Ok(()), Err(e)) => StoreError::from(e),
        other => panic!("expected exactly one deadlock victim, got {other:?}"),
    };
    assert!(victim.is_contention(), "{victim}");
    assert!(!victim.is_unique_violation());
    let resp = ApiError::from(victim).into_response();
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["code"], "database_busy", "{v}");
}
