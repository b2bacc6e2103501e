#!/usr/bin/env bash
# The quick start on a machine where nothing answers on Redis' and
# PostgreSQL's default ports (issue 18), in a private network namespace
# (`unshare -n`, loopback up): the machine's own services are unreachable
# there, the filesystem is shared.
#
#  1. `FIRSTCOME_DEMO_EXIT=1 scripts/run.sh`: private stores come up; every
#     mode's rush runs with 0 violations.
#  2. The same again: the running private stores are reused (same pids).
#     Meanwhile, outside the namespace (nsenter), scripts/services.sh still
#     uses the machine's own 6379 / 5432 (when they answer there), and the
#     machine's servers are the same processes after the test as before.
#  3. The test command's service start (FIRSTCOME_TEST_SERVICES_ONLY=1
#     scripts/test.sh): its role can create databases.
#  4. `scripts/services.sh stop`: both stop, nothing answers any more.
#  5. A "system" PostgreSQL with password auth on 5432 (Debian's default
#     pg_hba): scripts/services.sh restarts its private cluster on another
#     port and leaves that server running and its files unchanged.
#  6. `FIRSTCOME_DB=mysql scripts/services.sh`: a private MariaDB comes up
#     (its database created), is reused the second time, and stops with
#     `scripts/services.sh stop`.
# Afterwards no process is left in the namespace, and the data is removed.
#
# The private stores live under target/fresh-machine/data
# (FIRSTCOME_DATA_DIR), not in the checkout's .firstcome/, so that the
# developer's own private instances are never involved. Logs: target/fresh-machine/.
# The release binary is built first, outside the namespace (timed apart).
#
# Needs root (unshare). Not root: skipped with a message, or fails if CI=true.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
WORK="$ROOT/target/fresh-machine"
export FIRSTCOME_DATA_DIR="$WORK/data"
export FIRSTCOME_ADDR=127.0.0.1:8080
# The namespace's defaults must not be overridden from outside.
unset REDIS_URL DATABASE_URL MYSQL_URL FIRSTCOME_DB

log() { echo "[fresh $(date +%H:%M:%S)] $*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
now() { date +%s; }
answers() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
# shellcheck source=scripts/lib/stores.sh
. scripts/lib/stores.sh

# ============================================================ inside
if [ "${1:-}" = --inside ]; then
  ip link set lo up
  readlink /proc/self/ns/net >"$WORK/netns"
  for p in 6379 5432 8080; do
    ! answers "$p" || fail "127.0.0.1:$p answers inside the namespace"
  done
  log "in a fresh network namespace: nothing answers on 6379, 5432, 8080"

  redis_pid() { cat "$FIRSTCOME_DATA_DIR/redis/redis.pid"; }
  pg_pid() { head -1 "$(cat "$FIRSTCOME_DATA_DIR/pg.dir")/postmaster.pid"; }
  check_demo() { # check_demo LOG
    local m
    for m in db-lock db-atomic redis-lua gate redis-queue; do
      grep -Eq "^$m +c=.*violations 0\$" "$1" || fail "no rush of mode $m with 0 violations in $1"
    done
    ! grep -Eq 'violations [1-9]' "$1" || fail "violations in $1"
    grep -q '^alice -> ' "$1" || fail "the repeat-claim demo did not run ($1)"
  }
  demo() { # demo N: runs the quick start, logs to run-N.log, prints its seconds
    local t0 rc=0
    t0=$(now)
    FIRSTCOME_DEMO_EXIT=1 timeout -k 10 900 scripts/run.sh >"$WORK/run-$1.log" 2>&1 || rc=$?
    [ "$rc" = 0 ] || { tail -20 "$WORK/run-$1.log" >&2; fail "run $1 of scripts/run.sh exited $rc (log: $WORK/run-$1.log)"; }
    echo $(( $(now) - t0 ))
  }

  # 1. first run: private stores are created and started
  s=$(demo 1)
  check_demo "$WORK/run-1.log"
  grep -q '\[services\] starting a private redis-server on 127.0.0.1:6379' "$WORK/run-1.log" ||
    fail "run 1 did not start a private redis-server on 6379"
  grep -q '\[services\] starting the private PostgreSQL .* on 127.0.0.1:5432' "$WORK/run-1.log" ||
    fail "run 1 did not start a private PostgreSQL on 5432"
  rpid=$(redis_pid); ppid=$(pg_pid)
  log "run 1 ok in ${s}s: private redis-server pid $rpid, PostgreSQL pid $ppid; every mode, 0 violations"

  # 2. second run: the same instances are reused
  s=$(demo 2)
  check_demo "$WORK/run-2.log"
  grep -q "reusing the private redis-server (pid $rpid) on 127.0.0.1:6379" "$WORK/run-2.log" ||
    fail "run 2 did not reuse redis-server pid $rpid"
  grep -q "reusing the private PostgreSQL (pid $ppid) on 127.0.0.1:5432" "$WORK/run-2.log" ||
    fail "run 2 did not reuse PostgreSQL pid $ppid"
  ! grep -q 'starting\|creating a private' "$WORK/run-2.log" || fail "run 2 started something"
  { [ "$(redis_pid)" = "$rpid" ] && [ "$(pg_pid)" = "$ppid" ]; } || fail "pids changed after run 2"
  log "run 2 ok in ${s}s: reused both (same pids)"

  # 2b. meanwhile, outside the namespace (same data dir, same pid files):
  # scripts/services.sh uses the machine's own stores, as before
  if [ "$FRESH_DEFAULTS_OUTSIDE" = 1 ]; then
    out=$(nsenter --net="$FRESH_OUTER_NETNS" -- scripts/services.sh 2>"$WORK/outside.log") ||
      { cat "$WORK/outside.log" >&2; fail "scripts/services.sh outside the namespace failed"; }
    [ "$out" = "export REDIS_URL='redis://127.0.0.1:6379'
export DATABASE_URL='postgres://postgres:postgres@127.0.0.1:5432/firstcome'" ] ||
      fail "outside the namespace, scripts/services.sh printed: $out"
    grep -q "private redis-server (pid $rpid) does not answer here" "$WORK/outside.log" ||
      fail "outside: no note about the private redis-server of the namespace"
    nsenter --net="$FRESH_OUTER_NETNS" -- scripts/services.sh status >"$WORK/outside-status.log" 2>&1
    grep -q 'runs in another network namespace' "$WORK/outside-status.log" ||
      fail "outside: status does not say the private stores run in another namespace"
    log "meanwhile outside the namespace: services.sh uses the machine's 6379 / 5432"
  fi

  # 3. the test command's service start
  FIRSTCOME_TEST_SERVICES_ONLY=1 timeout -k 5 120 scripts/test.sh >"$WORK/test-services.log" 2>&1 ||
    { cat "$WORK/test-services.log" >&2; fail "the test command's service start failed"; }
  grep -q "test stores ok: REDIS_URL=redis://127.0.0.1:6379 DATABASE_URL=postgres://postgres@127.0.0.1:5432/firstcome" \
    "$WORK/test-services.log" || fail "the test command did not use the private stores"
  log "the test command's service start ok (private stores, CREATE DATABASE allowed)"

  # 4. stop: what it started stops, nothing answers any more
  scripts/services.sh status >"$WORK/status-before-stop.log" 2>&1
  timeout 60 scripts/services.sh stop >"$WORK/stop.log" 2>&1 || { cat "$WORK/stop.log" >&2; fail "services.sh stop failed"; }
  grep -q "stopped the private redis-server (pid $rpid" "$WORK/stop.log" || fail "stop did not report redis pid $rpid"
  grep -q "stopped the private PostgreSQL (pid $ppid" "$WORK/stop.log" || fail "stop did not report PostgreSQL pid $ppid"
  stores_gone "$rpid" || fail "redis-server pid $rpid still runs after stop"
  stores_gone "$ppid" || fail "postmaster pid $ppid still runs after stop"
  for p in 6379 5432 8080; do ! answers "$p" || fail "127.0.0.1:$p still answers after stop"; done
  log "services.sh stop ok: both stopped, nothing answers on 6379, 5432, 8080"

  # 5. a "system" PostgreSQL with password auth on 5432 (as Debian's)
  sys="$WORK/system-pg"
  mkdir -p "$sys/data"; chmod 755 "$sys"; chmod 700 "$sys/data"; chown postgres:postgres "$sys/data"
  echo 'a-secret-not-postgres' >"$sys/pw"; chmod 644 "$sys/pw"
  stores_as_pg "$(stores_pgbin)/initdb" -D "$sys/data" -U postgres -A scram-sha-256 \
    --pwfile="$sys/pw" --no-sync >"$sys/initdb.log" 2>&1 || fail "initdb of the system-like cluster"
  stores_as_pg "$(stores_pgbin)/pg_ctl" -D "$sys/data" -l "$sys/data/log" -w -t 30 \
    -o "$(stores_pg_opts "$sys/data" 5432)" start >/dev/null || fail "the system-like cluster did not start"
  sum_before=$(cat "$sys/data/pg_hba.conf" "$sys/data/postgresql.conf" | sha256sum)
  sys_pid=$(head -1 "$sys/data/postmaster.pid")
  env_out=$(timeout 120 scripts/services.sh 2>"$WORK/password-pg.log") ||
    { cat "$WORK/password-pg.log" >&2; stores_pg_stop "$sys/data"; fail "services.sh failed next to a password-auth PostgreSQL"; }
  port=$(sed -n "s/^export DATABASE_URL='postgres:\/\/postgres@127.0.0.1:\([0-9]*\)\/firstcome'$/\1/p" <<<"$env_out")
  eval "$env_out"
  ok=1
  { [ -n "$port" ] && [ "$port" != 5432 ]; } || { log "DATABASE_URL not a private port: $env_out"; ok=0; }
  psql -w "$DATABASE_URL" -Atqc 'select 1' >/dev/null 2>&1 || { log "the private cluster does not answer on $port"; ok=0; }
  [ "$(head -1 "$sys/data/postmaster.pid")" = "$sys_pid" ] || { log "the system-like cluster was restarted"; ok=0; }
  [ "$(cat "$sys/data/pg_hba.conf" "$sys/data/postgresql.conf" | sha256sum)" = "$sum_before" ] ||
    { log "the system-like cluster's configuration changed"; ok=0; }
  grep -q 'answers but refuses' "$WORK/password-pg.log" || { log "no note about the refusing server on 5432"; ok=0; }
  timeout 60 scripts/services.sh stop >>"$WORK/stop.log" 2>&1 || ok=0
  stores_pg_stop "$sys/data" || ok=0
  [ "$ok" = 1 ] || fail "next to a password-auth PostgreSQL (log: $WORK/password-pg.log)"
  log "next to a password-auth PostgreSQL on 5432: private cluster on $port, that server untouched"

  # 6. MariaDB when asked for (FIRSTCOME_DB=mysql): a private one comes up,
  # is reused, and stops with the rest.
  # Steps 3 and 5 exported their stores' URLs (now stopped): none of them
  # may be taken as given.
  unset REDIS_URL DATABASE_URL MYSQL_URL
  env_out=$(FIRSTCOME_DB=mysql timeout 300 scripts/services.sh 2>"$WORK/mariadb.log") ||
    { cat "$WORK/mariadb.log" >&2; fail "services.sh with FIRSTCOME_DB=mysql failed"; }
  grep -q "^export DATABASE_URL='mysql://root@127.0.0.1:[0-9]*/firstcome'$" <<<"$env_out" ||
    fail "FIRSTCOME_DB=mysql: DATABASE_URL is not MariaDB's: $env_out"
  eval "$env_out"
  mpid=$(stores_mariadb_pid "$(cat "$FIRSTCOME_DATA_DIR/mariadb.dir")")
  [ -n "$mpid" ] || fail "no private mariadbd runs"
  mport=${MYSQL_URL##*:}; mport=${mport%%/*}
  [ "$(mariadb --no-defaults --protocol=tcp -h 127.0.0.1 -P "$mport" -u root -Nse \
      "select count(*) from information_schema.schemata where schema_name = 'firstcome'")" = 1 ] ||
    fail "the private MariaDB has no database firstcome"
  env -u REDIS_URL -u DATABASE_URL -u MYSQL_URL FIRSTCOME_DB=mysql timeout 60 scripts/services.sh \
    >/dev/null 2>"$WORK/mariadb-again.log" ||
    fail "services.sh with FIRSTCOME_DB=mysql failed the second time"
  grep -q "reusing the private MariaDB (pid $mpid)" "$WORK/mariadb-again.log" || fail "the private MariaDB was not reused"
  timeout 60 scripts/services.sh stop >"$WORK/stop-mariadb.log" 2>&1 || fail "services.sh stop failed (MariaDB)"
  grep -q "stopped the private MariaDB (pid $mpid" "$WORK/stop-mariadb.log" || fail "stop did not report MariaDB pid $mpid"
  stores_gone "$mpid" || fail "mariadbd pid $mpid still runs after stop"
  log "FIRSTCOME_DB=mysql: private MariaDB on $mport, reused, stopped"
  exit 0
fi

# ============================================================ outside
if [ "$(id -u)" != 0 ] || ! unshare -n true 2>/dev/null; then
  why="needs root and unshare -n (network namespaces)"
  if [ "${CI:-}" = true ]; then log "FAIL: $why, and CI=true"; exit 1; fi
  log "SKIPPED: $why; run it as root: sudo scripts/fresh-machine-test.sh"
  exit 0
fi

rm -rf "$WORK"; mkdir -p "$WORK"
T0=$(now)
# The machine's own stores, if they answer here: the same before and after.
machine_stores() {
  redis-cli -p 6379 info server 2>/dev/null | grep '^run_id:' || true
  psql -w "postgres://postgres:postgres@127.0.0.1:5432/postgres" -Atqc 'select pg_postmaster_start_time()' 2>/dev/null || true
}
export FRESH_OUTER_NETNS="/proc/$$/ns/net" FRESH_DEFAULTS_OUTSIDE=0
machine_before="$(machine_stores)"
[ "$(echo "$machine_before" | grep -c .)" != 2 ] || FRESH_DEFAULTS_OUTSIDE=1
# shellcheck disable=SC2317 # the EXIT trap
cleanup() {
  local rc=$? ns d pid left=""
  trap - EXIT INT TERM
  # Whatever the inner run left: private stores (any namespace: by pid)...
  scripts/services.sh stop >>"$WORK/cleanup.log" 2>&1 || true
  [ -z "$(cat "$WORK/system-pg/data/postmaster.pid" 2>/dev/null)" ] ||
    stores_pg_stop "$WORK/system-pg/data" >>"$WORK/cleanup.log" 2>&1 || true
  # ...and every process still in the test's namespace (only it is there).
  ns="$(cat "$WORK/netns" 2>/dev/null || true)"
  if [ -n "$ns" ]; then
    for d in /proc/[0-9]*; do
      pid="${d#/proc/}"
      [ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" = "$ns" ] || continue
      left="$left $pid($(cat "/proc/$pid/comm" 2>/dev/null))"
      kill -9 "$pid" 2>/dev/null || true
    done
  fi
  if [ -n "$left" ]; then
    log "FAIL: still running in the test's namespace (killed now):$left"
    [ "$rc" != 0 ] || rc=1
  fi
  scripts/services.sh remove >>"$WORK/cleanup.log" 2>&1 || true
  if [ "$(machine_stores)" != "$machine_before" ]; then
    log "FAIL: the machine's own Redis / PostgreSQL changed (restarted?) during the test"
    [ "$rc" != 0 ] || rc=1
  fi
  if [ "$rc" = 0 ]; then log "passed in $(( $(now) - T0 ))s"; else log "failed (logs: $WORK)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Nothing can be downloaded inside the namespace: MariaDB's packages (step
# 6) are installed here when missing, as services.sh would.
stores_mariadbd >/dev/null && stores_mariadb_client >/dev/null ||
  STORES_TAG=fresh stores_apt_install mariadb-server mariadb-client || fail "could not install MariaDB"

t=$(now)
# Both binaries: scripts/run.sh builds them again inside the namespace,
# where nothing can be downloaded.
cargo build --release --locked -q --workspace
log "release build: $(( $(now) - t ))s"

t=$(now)
rc=0
timeout -k 10 2400 unshare -n -- "$ROOT/scripts/fresh-machine-test.sh" --inside || rc=$?
log "inside the namespace: $(( $(now) - t ))s"
exit "$rc"
