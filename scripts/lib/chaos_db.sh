# Sourced by scripts/chaos.sh: its source of truth, a private PostgreSQL
# (initdb) or, with CHAOS_DB=mysql, a private MariaDB (mariadb-install-db),
# on $PG_PORT under $TMP. Defines db_ok, start_db, db_restart fast|immediate
# and db_sql SQL (one statement on the `firstcome` database).
my_sql() { "$(stores_mariadb_client)" --no-defaults --protocol=tcp -h 127.0.0.1 -P "$PG_PORT" -u root -Nse "$@"; }
if [ "$DB" = mysql ]; then
  db_ok() { stores_mariadb_ok "$PG_PORT"; }
  start_db() {
    stores_mariadb_init "$TMP/my" >"$LOGS/initdb.log" 2>&1
    PG_STARTED=1
    chmod 755 "$TMP"
    stores_mariadb_start "$TMP/my" "$PG_PORT" 2>>"$LOGS/initdb.log"
    my_sql 'CREATE DATABASE firstcome'
  }
  db_restart() { # fast: TERM (a clean shutdown); immediate: kill -9 (crash recovery)
    local pid; pid="$(stores_mariadb_pid "$TMP/my")"
    if [ "$1" = fast ]; then stores_mariadb_stop "$TMP/my"
    else kill -9 "$pid" 2>/dev/null || true; stores_wait 10 stores_gone "$pid"; fi
    stores_mariadb_start "$TMP/my" "$PG_PORT" 2>>"$LOGS/initdb.log" >/dev/null
  }
  db_sql() { my_sql "$1" firstcome; }
else
  db_ok() { stores_pg_ok "$PG_PORT"; }
  start_db() {
    stores_pg_init "$TMP/pg" >"$LOGS/initdb.log" 2>&1
    PG_STARTED=1
    stores_pg_start "$TMP/pg" "$LOGS/postgres.log" "$PG_OPTS"
    psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qc 'CREATE DATABASE firstcome' >/dev/null
  }
  db_restart() {
    as_pg "$PGBIN/pg_ctl" -D "$TMP/pg" -o "$PG_OPTS" -l "$LOGS/postgres.log" -m "$1" -w -t 30 restart >/dev/null
  }
  db_sql() { psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d firstcome -Atq -c "$1"; }
fi
