//! The tests' own reads and writes of the app's database, on either store
//! (standard SQL with `$1` for the campaign id, which becomes `?` on
//! MySQL), and the fault helpers that reach into one database's machinery.

use super::*;

/// A pool of either store that connects on first use.
pub fn lazy_store(db_url: &str) -> Store {
    if firstcome::storage::store::is_mysql_url(db_url) {
        Store::MySql(sqlx::MySqlPool::connect_lazy(db_url).expect("lazy pool"))
    } else {
        Store::Pg(PgPool::connect_lazy(db_url).expect("lazy pool"))
    }
}

/// A test's SQL (`$1` for the campaign id, maybe more than once) as MySQL
/// takes it: `?` for each, each bound.
struct MySqlText {
    /// The statement with `?` placeholders.
    sql: String,
    /// How many `$1` it had.
    uses: usize,
}

impl MySqlText {
    fn of(sql: &str) -> Self {
        Self {
            sql: sql.replace("$1", "?"),
            uses: sql.matches("$1").count(),
        }
    }

    /// The statement with `id` bound to every placeholder.
    fn query(&self, id: i64) -> sqlx::query::Query<'_, sqlx::MySql, sqlx::mysql::MySqlArguments> {
        (0..self.uses).fold(sqlx::query(&self.sql), |q, _| q.bind(id))
    }
}

/// `sql` (standard SQL, `$1` for the campaign id, which may appear more
/// than once) as a number, on either store.
pub async fn count(app: &TestApp, sql: &str, id: i64) -> i64 {
    // A BIGINT, or an INT column widened.
    match &app.db {
        Store::Pg(db) => {
            let r = sqlx::query(sql).bind(id).fetch_one(db).await.unwrap();
            r.try_get::<i64, _>(0)
                .or_else(|_| r.try_get::<i32, _>(0).map(i64::from))
                .unwrap()
        }
        Store::MySql(db) => {
            let sql = MySqlText::of(sql);
            let r = sql.query(id).fetch_one(db).await.unwrap();
            r.try_get::<i64, _>(0)
                .or_else(|_| r.try_get::<i32, _>(0).map(i64::from))
                .unwrap()
        }
    }
}

/// `sql`'s one text column (standard SQL, `$1` for the campaign id), every
/// row, on either store.
pub async fn strings(app: &TestApp, sql: &str, id: i64) -> Vec<String> {
    match &app.db {
        Store::Pg(db) => sqlx::query_scalar(sql)
            .bind(id)
            .fetch_all(db)
            .await
            .unwrap(),
        Store::MySql(db) => {
            let sql = MySqlText::of(sql);
            let rows = sql.query(id).fetch_all(db).await.unwrap();
            rows.iter()
                .map(|r| String::from_utf8(r.try_get::<Vec<u8>, _>(0).unwrap()).unwrap())
                .collect()
        }
    }
}

/// A table locked against every other session (reads included) until
/// [`TableLock::release`]: PostgreSQL's `LOCK TABLE ... IN ACCESS
/// EXCLUSIVE MODE` in a transaction, MySQL's `LOCK TABLES ... WRITE` on a
/// connection of its own.
pub enum TableLock {
    /// PostgreSQL's.
    Pg(sqlx::Transaction<'static, sqlx::Postgres>),
    /// MySQL's.
    MySql(MySqlConnection),
}

impl TableLock {
    /// Locks `table` of the database at `db_url`.
    pub async fn take(db_url: &str, table: &str) -> TableLock {
        if firstcome::storage::store::is_mysql_url(db_url) {
            let mut c = MySqlConnection::connect(db_url).await.unwrap();
            sqlx::query(&format!("LOCK TABLES {table} WRITE"))
                .execute(&mut c)
                .await
                .unwrap();
            TableLock::MySql(c)
        } else {
            let c = PgPool::connect(db_url).await.unwrap();
            let mut tx = c.begin().await.unwrap();
            sqlx::query(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
                .execute(&mut *tx)
                .await
                .unwrap();
            TableLock::Pg(tx)
        }
    }

    /// Lets the other sessions in.
    pub async fn release(self) {
        match self {
            TableLock::Pg(tx) => tx.rollback().await.unwrap(),
            TableLock::MySql(mut c) => {
                sqlx::query("UNLOCK TABLES").execute(&mut c).await.unwrap();
            }
        }
    }
}

/// The users of a campaign's refusal batches (a text[] in PostgreSQL, a
/// JSON array in MySQL), as a FROM clause naming each user `x.u`; `$1` is
/// the campaign.
pub fn refused_users() -> &'static str {
    if on_mysql() {
        "refusal_batches b, JSON_TABLE(b.users, '$[*]' COLUMNS (u VARCHAR(255) PATH '$')) x
         WHERE b.campaign_id = $1"
    } else {
        "refusal_batches b, unnest(b.users) AS x(u) WHERE b.campaign_id = $1"
    }
}

/// Runs `sql` as it is (no parameters, the store's own dialect).
pub async fn execute_raw(app: &TestApp, sql: &str) {
    match &app.db {
        Store::Pg(db) => drop(sqlx::raw_sql(sql).execute(db).await.unwrap()),
        Store::MySql(db) => drop(sqlx::raw_sql(sql).execute(db).await.unwrap()),
    }
}

/// Runs `sql` (standard SQL, `$1` for the campaign id) on either store.
pub async fn execute(app: &TestApp, sql: &str, id: i64) {
    match &app.db {
        Store::Pg(db) => {
            sqlx::query(sql).bind(id).execute(db).await.unwrap();
        }
        Store::MySql(db) => {
            let sql = MySqlText::of(sql);
            sql.query(id).execute(db).await.unwrap();
        }
    }
}
