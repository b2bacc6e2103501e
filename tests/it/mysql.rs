//! MySQL/MariaDB's schema (issue 17, begun), against a real MariaDB
//! (`MYSQL_URL`, which scripts/test.sh gets from `scripts/services.sh
//! mysql`): its unique keys enforce invariants 2 and 3 for active grants
//! as PostgreSQL's partial indexes do, the batched insert learns which rows
//! landed, and the webhook triggers write the bodies PostgreSQL's write.

use serde_json::Value;
use sqlx::{MySqlPool, Row};

use crate::common::{drop_database, fresh_database, fresh_mysql_database, unique};

/// A fresh MariaDB database, migrated, and its URL (for
/// [`drop_database`]).
async fn fresh_mysql(name: &str) -> (MySqlPool, String) {
    let url = fresh_mysql_database(name).await;
    let pool = firstcome::storage::mysql::connect(&url, 4)
        .await
        .expect("connect and migrate");
    (pool, url)
}

/// A campaign with one pool of `stock` (and a webhook endpoint when
/// `webhook`); returns (campaign, pool).
async fn campaign(db: &MySqlPool, stock: i32, webhook: bool) -> (i64, i64) {
    let (url, secret) = if webhook {
        (Some("http://127.0.0.1:9/hook"), Some("whsec_test"))
    } else {
        (None, None)
    };
    let c = sqlx::query(
        "INSERT INTO campaigns (name, mode, webhook_url, webhook_secret) VALUES ('c', 'gate', ?, ?)",
    )
    .bind(url)
    .bind(secret)
    .execute(db)
    .await
    .unwrap()
    .last_insert_id() as i64;
    let p =
        sqlx::query("INSERT INTO pools (campaign_id, idx, name, stock) VALUES (?, 0, 'main', ?)")
            .bind(c)
            .bind(stock)
            .execute(db)
            .await
            .unwrap()
            .last_insert_id() as i64;
    (c, p)
}

async fn grant(
    db: &MySqlPool,
    c: i64,
    p: i64,
    user: &str,
    slot: i32,
    code: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO grants (campaign_id, pool_id, user_id, slot, code, seq) VALUES (?, ?, ?, ?, ?, ?)")
        .bind(c)
        .bind(p)
        .bind(user)
        .bind(slot)
        .bind(code)
        .bind(slot as i64)
        .execute(db)
        .await
        .map(|_| ())
}

/// The unique key a refused insert broke.
fn broken_key(e: sqlx::Error) -> String {
    let db = e.as_database_error().expect("a database error");
    assert_eq!(db.code().as_deref(), Some("23000"), "{db}");
    db.message().to_string()
}

#[tokio::test]
async fn unique_keys_hold_active_grants_to_one_per_user_and_slot() {
    let name = unique("my");
    let (db, url) = fresh_mysql(&name).await;
    let (c, p) = campaign(&db, 10, false).await;
    grant(&db, c, p, "u1", 1, "CODE1").await.unwrap();
    // Invariant 2: a second active grant for u1.
    let e = grant(&db, c, p, "u1", 2, "CODE2").await.unwrap_err();
    assert!(broken_key(e).contains("grants_one_active_per_user"));
    // Invariant 3: slot 1 again, for another user.
    let e = grant(&db, c, p, "u2", 1, "CODE3").await.unwrap_err();
    assert!(broken_key(e).contains("grants_one_active_per_slot"));
    // A code is unique forever.
    let e = grant(&db, c, p, "u3", 3, "CODE1").await.unwrap_err();
    assert!(broken_key(e).contains("grants_code"));
    // Once cancelled, neither the user nor the slot is held any more.
    sqlx::query("UPDATE grants SET state = 'cancelled' WHERE code = 'CODE1'")
        .execute(&db)
        .await
        .unwrap();
    grant(&db, c, p, "u1", 2, "CODE4").await.unwrap();
    grant(&db, c, p, "u2", 1, "CODE5").await.unwrap();
    // Cancelled and void rows of one user may be many.
    sqlx::query("UPDATE grants SET state = 'void' WHERE code = 'CODE4'")
        .execute(&db)
        .await
        .unwrap();
    grant(&db, c, p, "u1", 3, "CODE6").await.unwrap();
    let active: i64 = sqlx::query_scalar("SELECT count(*) FROM grants WHERE state = 'active'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(active, 2);
    db.close().await;
    drop_database(&url).await;
}

#[tokio::test]
async fn a_batched_insert_learns_which_rows_landed() {
    let name = unique("my");
    let (db, url) = fresh_mysql(&name).await;
    let (c, p) = campaign(&db, 10, false).await;
    grant(&db, c, p, "taken", 2, "OLD").await.unwrap();
    // One of three collides (an active grant of "taken"); one repeats a
    // code of the batch itself: INSERT IGNORE skips both, RETURNING names
    // what landed (the idempotent redelivery of a batch).
    let rows = sqlx::query(
        "INSERT IGNORE INTO grants (campaign_id, pool_id, user_id, slot, code, seq) VALUES
           (?, ?, 'a', 1, 'A1', 1), (?, ?, 'taken', 3, 'T1', 2), (?, ?, 'b', 4, 'B1', 3), (?, ?, 'c', 5, 'B1', 4)
         RETURNING code",
    )
    .bind(c).bind(p).bind(c).bind(p).bind(c).bind(p).bind(c).bind(p)
    .fetch_all(&db)
    .await
    .unwrap();
    // (utf8mb4_bin columns reach sqlx as bytes: sqlx#3387.)
    let landed: Vec<String> = rows
        .iter()
        .map(|r| String::from_utf8(r.get::<Vec<u8>, _>(0)).unwrap())
        .collect();
    assert_eq!(landed, ["A1", "B1"]);
    db.close().await;
    drop_database(&url).await;
}

#[tokio::test]
async fn the_webhook_triggers_write_the_bodies_postgres_writes() {
    let name = unique("my");
    let (db, url) = fresh_mysql(&name).await;
    let (c, p) = campaign(&db, 10, true).await;
    let (quiet, quiet_pool) = campaign(&db, 10, false).await;
    grant(&db, c, p, "u1", 1, "CODE1").await.unwrap();
    grant(&db, quiet, quiet_pool, "u1", 1, "QUIET1")
        .await
        .unwrap();
    sqlx::query("UPDATE grants SET confirmed_at = UTC_TIMESTAMP(6) WHERE code = 'CODE1'")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("UPDATE grants SET state = 'cancelled', released_at = UTC_TIMESTAMP(6) WHERE code IN ('CODE1', 'QUIET1')")
        .execute(&db)
        .await
        .unwrap();
    // A void row (gate's released reservation) is never a grant.
    sqlx::query(
        "INSERT INTO grants (campaign_id, pool_id, user_id, slot, code, seq, state)
         VALUES (?, ?, 'u2', 2, 'VOID1', 2, 'void')",
    )
    .bind(c)
    .bind(p)
    .execute(&db)
    .await
    .unwrap();
    let events = sqlx::query(
        "SELECT CAST(e.type AS CHAR) AS type, CAST(e.body AS CHAR) AS body,
                g.created_at, g.confirmed_at, g.released_at
         FROM webhook_events e JOIN grants g ON g.code = 'CODE1' ORDER BY e.id",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let types: Vec<String> = events.iter().map(|r| r.get("type")).collect();
    assert_eq!(
        types,
        ["claim.granted", "claim.confirmed", "claim.cancelled"],
        "none for the campaign without a webhook, none for the void row"
    );
    // The same facts through PostgreSQL's webhook_body: the same JSON.
    let pg_name = unique("mypg");
    let pg_url = fresh_database(&pg_name).await;
    let pg = firstcome::storage::pg::connect(&pg_url, 2).await.unwrap();
    for (r, at_col) in events
        .iter()
        .zip(["created_at", "confirmed_at", "released_at"])
    {
        let t: String = r.get("type");
        let at: chrono::NaiveDateTime = r.get(at_col);
        let want: String = sqlx::query_scalar(
            "SELECT webhook_body($1, $2 AT TIME ZONE 'UTC', $3, 'u1', 'main', 1, 'CODE1', 1)",
        )
        .bind(&t)
        .bind(at)
        .bind(c)
        .fetch_one(&pg)
        .await
        .unwrap();
        let got: String = r.get("body");
        // The same bytes, keys in the same order, but for the spacing
        // PostgreSQL's json_build_object puts before a colon.
        assert_eq!(got, want.replace(" : ", ": "), "{t}");
        let (got, want): (Value, Value) = (
            serde_json::from_str(&got).unwrap(),
            serde_json::from_str(&want).unwrap(),
        );
        assert_eq!(got, want, "{t}");
    }
    pg.close().await;
    db.close().await;
    drop_database(&url).await;
}

/// A time past 2038 bound as naive UTC lands as that time; bound as
/// chrono's `DateTime<Utc>` (a MySQL TIMESTAMP, which ends in 2038) it
/// lands as NULL: why the store binds naive UTC times only.
#[tokio::test]
async fn a_time_past_2038_lands_only_when_bound_as_naive_utc() {
    let name = unique("mytime");
    let (db, url) = fresh_mysql(&name).await;
    let t: chrono::DateTime<chrono::Utc> = "2099-01-01T00:00:00Z".parse().unwrap();
    for bound in [0, 1] {
        let q = sqlx::query("INSERT INTO campaigns (name, mode, opens_at) VALUES ('t', 'gate', ?)");
        let q = if bound == 0 {
            q.bind(t)
        } else {
            q.bind(t.naive_utc())
        };
        let id = q.execute(&db).await.unwrap().last_insert_id() as i64;
        let got: Option<chrono::DateTime<chrono::Utc>> =
            sqlx::query_scalar("SELECT opens_at FROM campaigns WHERE id = ?")
                .bind(id)
                .fetch_one(&db)
                .await
                .unwrap();
        let want = [None, Some(t)][bound];
        assert_eq!(
            got,
            want,
            "bound as {}",
            ["DateTime<Utc>", "NaiveDateTime"][bound]
        );
    }
    drop_database(&url).await;
}

/// A fenced insert takes every campaign of its batch at once, in id order,
/// before it writes: it holds nothing while it waits for a rebuild of one
/// of them. (Locked in two rounds, the grants' campaigns then the
/// refusals', two batches crossing two campaigns deadlocked with a bump
/// waiting on each: the red-team review reproduced it on MariaDB.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_insert_locks_all_its_campaigns_before_it_writes() {
    use firstcome::{
        domain::CampaignId,
        storage::{
            pg::{NewGrant, NewRejection},
            Store,
        },
    };
    let name = unique("myfence");
    let (db, url) = fresh_mysql(&name).await;
    let (a, _) = campaign(&db, 5, false).await;
    let (b, pb) = campaign(&db, 5, false).await;
    assert!(a < b);
    let store = Store::MySql(db.clone());
    let (gen_a, gen_b) = (
        store.generation(CampaignId(a)).await.unwrap(),
        store.generation(CampaignId(b)).await.unwrap(),
    );
    // A rebuild of `a` in flight holds its row.
    let mut bump = db.begin().await.unwrap();
    sqlx::query("UPDATE campaigns SET redis_gen = redis_gen + 1 WHERE id = ?")
        .bind(a)
        .execute(&mut *bump)
        .await
        .unwrap();
    let insert = tokio::spawn(async move {
        let grant = NewGrant {
            campaign_id: b,
            pool_id: pb,
            user_id: "g".into(),
            slot: 1,
            code: "FENCEDB".into(),
            seq: 1,
        };
        let refusal = NewRejection {
            campaign_id: a,
            user_id: "r".into(),
            seq: 2,
        };
        store
            .insert_fenced(&[grant], &[gen_b], &[refusal], &[gen_a])
            .await
    });
    crate::common::until("the insert waits for the rebuild", || {
        let db = db.clone();
        let name = name.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM information_schema.PROCESSLIST
                 WHERE DB = ? AND INFO LIKE '%LOCK IN SHARE MODE%' AND INFO NOT LIKE '%PROCESSLIST%'",
            )
            .bind(&name)
            .fetch_one(&db)
            .await
            .unwrap();
            n > 0
        }
    })
    .await;
    // Meanwhile `b` is not held: another writer takes it at once.
    let mut probe = db.begin().await.unwrap();
    sqlx::query("SELECT id FROM campaigns WHERE id = ? FOR UPDATE NOWAIT")
        .bind(b)
        .fetch_one(&mut *probe)
        .await
        .expect("the waiting insert holds no campaign");
    probe.rollback().await.unwrap();
    bump.commit().await.unwrap();
    let f = insert.await.unwrap().unwrap();
    assert!(
        f.codes.contains("FENCEDB") && f.codes.len() == 1,
        "b's grant landed"
    );
    assert!(
        f.refusals.is_empty(),
        "a's refusal was of the replaced state"
    );
    drop(db);
    drop_database(&url).await;
}
