#!/usr/bin/env bash
# Finds or brings up Redis and PostgreSQL for firstcome.
#
#   eval "$(scripts/services.sh)"   # prints export REDIS_URL=...; export DATABASE_URL=...
#   scripts/services.sh status      # what runs where
#   scripts/services.sh stop        # stops the private instances it started, nothing else
#   scripts/services.sh remove      # stop, then delete their data
#   scripts/services.sh install     # only install missing binaries (apt-get)
#   eval "$(scripts/services.sh cluster)"  # a local Redis Cluster: export REDIS_CLUSTER_URL=...
#   scripts/services.sh cluster-stop       # stops it (`stop` does too)
#   eval "$(scripts/services.sh mysql)"    # MariaDB (MySQL): export MYSQL_URL=...
#   FIRSTCOME_DB=mysql scripts/services.sh # DATABASE_URL is MariaDB's
#
# For each store, in this order:
# - REDIS_URL / DATABASE_URL set: used as they are (must answer).
# - The project's own private instance, if it runs (found by its pid file)
#   and answers here: reused.
# - The defaults, if they answer: redis://127.0.0.1:6379 and
#   postgres://postgres:postgres@127.0.0.1:5432 (a running server that refuses
#   these credentials, e.g. Debian's with scram on 127.0.0.1, does not count).
# - Otherwise a private instance is started (scripts/lib/stores.sh): a
#   redis-server and an initdb -A trust PostgreSQL cluster on 127.0.0.1, on
#   6379 / 5432 if free, else on a free port, with data under
#   $FIRSTCOME_DATA_DIR (default: .firstcome/ in the checkout). Missing
#   binaries are installed with apt-get first (as root or through sudo).
# MariaDB (asked for with `mysql`, or FIRSTCOME_DB=mysql) the same way:
# MYSQL_URL if set; the private instance if it runs; the default
# mysql://root@127.0.0.1:3306 if root gets in without a password; else a
# private mariadbd (Debian's mariadb-server, installed when missing) on
# 127.0.0.1, root without a password, data under $FIRSTCOME_DATA_DIR.
# The machine's own Redis, PostgreSQL and MariaDB are never started,
# stopped or reconfigured.
#
# A private instance that runs but does not answer from here (it was started
# inside another network namespace, e.g. `unshare -n`) is not reused and not
# replaced: if no default answers either, this fails and says so;
# `scripts/services.sh stop` stops it from any namespace.
#
# Exit status: 0 ok; 1 a store is unusable; 2 usage; 3 binaries missing and
# not installable (no root/sudo, or no apt-get).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/lib/stores.sh
. "$ROOT/scripts/lib/stores.sh"
STORES_TAG=services
log() { stores_log "$@"; }
die() { stores_log "$@"; exit 1; }

DATA="${FIRSTCOME_DATA_DIR:-$ROOT/.firstcome}"
REDIS_DIR="$DATA/redis"
REDIS_PIDFILE="$REDIS_DIR/redis.pid"
DEFAULT_REDIS_URL="redis://127.0.0.1:6379"
DEFAULT_DATABASE_URL="postgres://postgres:postgres@127.0.0.1:5432/firstcome"
DEFAULT_MYSQL_URL="mysql://root@127.0.0.1:3306/firstcome"

# ---------------------------------------------------------- inspection
need_clients() {
  local pkgs=()
  command -v redis-cli >/dev/null || pkgs+=(redis-tools)
  command -v psql >/dev/null || pkgs+=(postgresql-client)
  [ "${#pkgs[@]}" = 0 ] || stores_apt_install "${pkgs[@]}" || exit 3
}
redis_url_ok() { [ "$(timeout 5 redis-cli -u "$1" ping 2>/dev/null)" = PONG ]; }
# The maintenance database on the server of a database URL.
admin_url() { local u="${1%%\?*}"; echo "${u%/*}/postgres"; }
pg_url_ok() { PGCONNECT_TIMEOUT=5 psql -w "$(admin_url "$1")" -Atqc 'select 1' >/dev/null 2>&1; }

# The private redis-server's pid if it runs ("" otherwise).
redis_pid() {
  local pid
  pid="$(cat "$REDIS_PIDFILE" 2>/dev/null || true)"
  if [ -n "$pid" ] && [ "$(stores_comm "$pid")" = redis-server ]; then echo "$pid"; fi
}
redis_port() { cat "$REDIS_DIR/port" 2>/dev/null || true; }

# Where the private cluster lives: recorded at creation in $DATA/pg.dir.
# $DATA/pg, unless the caller is root and the postgres user cannot enter
# $DATA (a checkout under /root): then /var/lib/firstcome/pg-<hash of $DATA>.
pg_dir() { cat "$DATA/pg.dir" 2>/dev/null || echo "$DATA/pg"; }
choose_pg_dir() {
  if [ -s "$DATA/pg.dir" ]; then cat "$DATA/pg.dir"; return; fi
  local d="$DATA/pg"
  if ! stores_pg_reachable "$DATA"; then
    d="/var/lib/firstcome/pg-$(printf '%s' "$DATA" | sha256sum | cut -c1-12)"
    mkdir -p /var/lib/firstcome
  fi
  echo "$d" >"$DATA/pg.dir"
  echo "$d"
}
pg_port() { # of the running private cluster, else the one it used last
  sed -n 4p "$(pg_dir)/postmaster.pid" 2>/dev/null || cat "$DATA/pg.port" 2>/dev/null || true
}

# Runs "$@ PORT" on a free port, trying from $2 (a remembered port, may be
# empty) then from $3 (the default), three times in all; sets STARTED_PORT,
# or dies: could not start $1.
start_on_free_port() {
  local what="$1" first="$2" default="$3" try; shift 3
  for try in 1 2 3; do
    STARTED_PORT="$(stores_free_port "${first:-$default}")"
    "$@" "$STARTED_PORT" && return 0
    first=""
  done
  die "could not start $what"
}

# --------------------------------------------------------------- Redis
private_redis_start() { # port
  mkdir -p "$REDIS_DIR"; echo "$1" >"$REDIS_DIR/port"
  log "starting a private redis-server on 127.0.0.1:$1 (in $REDIS_DIR)"
  stores_redis_start "$REDIS_DIR" "$1" "$REDIS_DIR/redis.log" --daemon
}

private_redis_up() { # sets REDIS_URL
  local pid port
  pid="$(redis_pid)"; port="$(redis_port)"
  if [ -n "$pid" ]; then
    stores_same_netns "$pid" ||
      die "the private redis-server (pid $pid, 127.0.0.1:$port) runs in another network namespace and cannot be reached from here; stop it with: scripts/services.sh stop"
    stores_wait 10 stores_redis_ok "$port" ||
      die "the private redis-server (pid $pid) does not answer on 127.0.0.1:$port (log: $REDIS_DIR/redis.log); restart it with: scripts/services.sh stop"
    log "reusing the private redis-server (pid $pid) on 127.0.0.1:$port"
  else
    command -v redis-server >/dev/null || stores_apt_install redis-server || exit 3
    start_on_free_port "a private redis-server (see $REDIS_DIR/redis.log)" "$port" 6379 private_redis_start
    port="$STARTED_PORT"
  fi
  REDIS_URL="redis://127.0.0.1:$port"
}

redis_up() {
  if [ -n "${REDIS_URL:-}" ]; then
    redis_url_ok "$REDIS_URL" || die "REDIS_URL=$REDIS_URL does not answer"
    log "redis ok at $REDIS_URL (REDIS_URL)"; return
  fi
  local pid; pid="$(redis_pid)"
  if [ -n "$pid" ] && stores_same_netns "$pid" && stores_redis_ok "$(redis_port)"; then
    private_redis_up; return
  fi
  if redis_url_ok "$DEFAULT_REDIS_URL"; then
    [ -z "$pid" ] || log "note: the private redis-server (pid $pid) does not answer here; using $DEFAULT_REDIS_URL"
    REDIS_URL="$DEFAULT_REDIS_URL"; log "redis ok at $REDIS_URL (default)"; return
  fi
  private_redis_up
}

# ----------------------------------------------------------- PostgreSQL
private_pg_start() { # dir version port
  local dir="$1" ver="$2" port="$3"
  echo "$port" >"$DATA/pg.port"
  log "starting the private PostgreSQL $ver on 127.0.0.1:$port (data $dir)"
  stores_pg_start "$dir" "$dir/postgres.log" "$(stores_pg_opts "$dir" "$port") -c max_connections=200" && return 0
  [ -z "$(stores_pg_pid "$dir")" ] || stores_pg_stop "$dir" || true
  return 1
}

private_pg_up() { # sets DATABASE_URL
  local dir pid port
  mkdir -p "$DATA"
  dir="$(choose_pg_dir)"
  pid="$(stores_pg_pid "$dir")"
  if [ -n "$pid" ]; then
    port="$(pg_port)"
    stores_same_netns "$pid" ||
      die "the private PostgreSQL (pid $pid, 127.0.0.1:$port, $dir) runs in another network namespace and cannot be reached from here; stop it with: scripts/services.sh stop"
    stores_wait 10 stores_pg_ok "$port" ||
      die "the private PostgreSQL (pid $pid) does not accept connections on 127.0.0.1:$port (log: $dir/postgres.log); restart it with: scripts/services.sh stop"
    log "reusing the private PostgreSQL (pid $pid) on 127.0.0.1:$port"
  else
    stores_pgbin >/dev/null || stores_apt_install postgresql || exit 3
    if [ ! -s "$dir/PG_VERSION" ]; then
      if [ -d "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
        die "$dir exists but is no PostgreSQL cluster; remove it (scripts/services.sh remove)"
      fi
      log "creating a private PostgreSQL cluster in $dir (initdb -A trust, role postgres)"
      stores_pg_init "$dir" >"$DATA/initdb.log" 2>&1 ||
        die "initdb failed (see $DATA/initdb.log)"
    fi
    local ver; ver="$(cat "$dir/PG_VERSION")"
    start_on_free_port "the private PostgreSQL (see $dir/postgres.log)" \
      "$(cat "$DATA/pg.port" 2>/dev/null || true)" 5432 private_pg_start "$dir" "$ver"
    port="$STARTED_PORT"
  fi
  DATABASE_URL="postgres://postgres@127.0.0.1:$port/firstcome"
}

pg_up() {
  if [ -n "${DATABASE_URL:-}" ]; then
    pg_url_ok "$DATABASE_URL" || die "DATABASE_URL=$DATABASE_URL does not answer (or refuses its credentials)"
    log "postgres ok at $DATABASE_URL (DATABASE_URL)"
  else
    local dir pid
    dir="$(pg_dir)"; pid="$(stores_pg_pid "$dir")"
    if [ -n "$pid" ] && stores_same_netns "$pid" && stores_pg_ok "$(pg_port)"; then
      private_pg_up
    elif pg_url_ok "$DEFAULT_DATABASE_URL"; then
      [ -z "$pid" ] || log "note: the private PostgreSQL (pid $pid) does not answer here; using the default"
      DATABASE_URL="$DEFAULT_DATABASE_URL"; log "postgres ok at $DATABASE_URL (default)"
    else
      if stores_port_busy 5432; then
        log "127.0.0.1:5432 answers but refuses ${DEFAULT_DATABASE_URL%/*}: it is left alone"
      fi
      private_pg_up
    fi
  fi
  local admin dbname
  admin="$(admin_url "$DATABASE_URL")"
  dbname="${DATABASE_URL##*/}"; dbname="${dbname%%\?*}"
  if [ "$(psql -w "$admin" -Atqc "select 1 from pg_database where datname = '$dbname'")" != "1" ]; then
    log "creating database $dbname"
    psql -w "$admin" -qc "CREATE DATABASE \"$dbname\"" >&2
  fi
}

# -------------------------------------------------------------- MariaDB
need_mariadb_client() {
  stores_mariadb_client >/dev/null || stores_apt_install mariadb-client || exit 3
}
mysql_url_ok() { stores_mysql_run "$1" 'select 1' >/dev/null 2>&1; }

mariadb_dir() { cat "$DATA/mariadb.dir" 2>/dev/null || echo "$DATA/mariadb"; }
choose_mariadb_dir() {
  if [ -s "$DATA/mariadb.dir" ]; then cat "$DATA/mariadb.dir"; return; fi
  local d="$DATA/mariadb"
  if [ "$(id -u)" = 0 ] && ! runuser -u "$(stores_mariadb_user)" -- test -x "$DATA" 2>/dev/null; then
    d="/var/lib/firstcome/mariadb-$(printf '%s' "$DATA" | sha256sum | cut -c1-12)"
    mkdir -p /var/lib/firstcome
  fi
  echo "$d" >"$DATA/mariadb.dir"
  echo "$d"
}
mariadb_port() { cat "$DATA/mariadb.port" 2>/dev/null || true; }

private_mariadb_start() { # dir port
  echo "$2" >"$DATA/mariadb.port"
  log "starting a private MariaDB on 127.0.0.1:$2 (data $1)"
  stores_mariadb_start "$1" "$2" && return 0
  stores_mariadb_stop "$1" || true
  return 1
}

private_mariadb_up() { # sets MYSQL_URL
  local dir pid port
  mkdir -p "$DATA"
  # Installed first: as root the data dir depends on the mysql user it makes.
  stores_mariadbd >/dev/null || stores_apt_install mariadb-server || exit 3
  dir="$(choose_mariadb_dir)"
  pid="$(stores_mariadb_pid "$dir")"
  if [ -n "$pid" ]; then
    port="$(mariadb_port)"
    stores_same_netns "$pid" ||
      die "the private MariaDB (pid $pid, 127.0.0.1:$port, $dir) runs in another network namespace and cannot be reached from here; stop it with: scripts/services.sh stop"
    stores_wait 10 stores_mariadb_ok "$port" ||
      die "the private MariaDB (pid $pid) does not let root in on 127.0.0.1:$port (log: $dir/mariadb.err); restart it with: scripts/services.sh stop"
    log "reusing the private MariaDB (pid $pid) on 127.0.0.1:$port"
  else
    if [ ! -d "$dir/mysql" ]; then
      if [ -d "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
        die "$dir exists but is no MariaDB data directory; remove it (scripts/services.sh remove)"
      fi
      log "creating a private MariaDB data directory in $dir (root without a password, 127.0.0.1 only)"
      stores_mariadb_init "$dir" >"$DATA/mariadb-install.log" 2>&1 ||
        die "mariadb-install-db failed (see $DATA/mariadb-install.log)"
    fi
    start_on_free_port "the private MariaDB (see $dir/mariadb.err)" "$(mariadb_port)" 3306 \
      private_mariadb_start "$dir"
    port="$STARTED_PORT"
  fi
  MYSQL_URL="mysql://root@127.0.0.1:$port/firstcome"
}

mysql_up() { # sets MYSQL_URL, and creates its database
  need_mariadb_client
  if [ -n "${MYSQL_URL:-}" ]; then
    mysql_url_ok "$MYSQL_URL" || die "MYSQL_URL=$MYSQL_URL does not answer (or refuses its credentials)"
    log "mariadb ok at $MYSQL_URL (MYSQL_URL)"
  else
    local dir pid
    dir="$(mariadb_dir)"; pid="$(stores_mariadb_pid "$dir")"
    if [ -n "$pid" ] && stores_same_netns "$pid" && stores_mariadb_ok "$(mariadb_port)"; then
      private_mariadb_up
    elif mysql_url_ok "$DEFAULT_MYSQL_URL"; then
      MYSQL_URL="$DEFAULT_MYSQL_URL"; log "mariadb ok at $MYSQL_URL (default)"
    else
      if stores_port_busy 3306; then
        log "127.0.0.1:3306 answers but refuses root without a password: it is left alone"
      fi
      private_mariadb_up
    fi
  fi
  local db; db="$(stores_mysql_parts "$MYSQL_URL" | cut -d' ' -f5)"
  stores_mysql_run "$MYSQL_URL" "CREATE DATABASE IF NOT EXISTS \`$db\`" >&2 ||
    die "could not create database $db on $MYSQL_URL"
}

cmd_mysql() {
  mysql_up
  echo "export MYSQL_URL='$MYSQL_URL'"
}

# ------------------------------------------------------- Redis Cluster
# A local Redis Cluster for tests and benchmarks: 3 masters and 3 replicas
# from Debian's redis-server, on free ports of its own (each node's cluster
# bus on port + 10000), under $DATA/cluster/<port>/, nothing persisted. A
# replica always stands for election when its master fails (validity factor
# 0): tests fail masters on purpose.
CLUSTER_DIR="$DATA/cluster"
cluster_ports() { cat "$CLUSTER_DIR/ports" 2>/dev/null || true; }
cluster_url() {
  local p u=""
  for p in $(cluster_ports); do u="${u:+$u,}redis://127.0.0.1:$p"; done
  echo "$u"
}
cluster_ok() { # every node answers and sees the cluster whole
  local p
  [ -n "$(cluster_ports)" ] || return 1
  for p in $(cluster_ports); do
    timeout 3 redis-cli -h 127.0.0.1 -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
  done
}
cluster_node_start() { # port
  local d="$CLUSTER_DIR/$1"
  mkdir -p "$d"
  redis-server --bind 127.0.0.1 --port "$1" --cluster-enabled yes \
    --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
    --cluster-replica-validity-factor 0 \
    --save '' --appendonly no --dir "$d" --daemonize yes \
    --pidfile "$d/redis.pid" --logfile "$d/redis.log" </dev/null >/dev/null 2>&1 &&
    stores_wait 20 stores_redis_ok "$1"
}

cmd_cluster() {
  need_clients
  command -v redis-server >/dev/null || stores_apt_install redis-server || exit 3
  if cluster_ok; then
    log "reusing the local Redis Cluster on ports $(cluster_ports | tr '\n' ' ')"
  else
    cmd_cluster_stop >/dev/null 2>&1 || true
    rm -rf "$CLUSTER_DIR"; mkdir -p "$CLUSTER_DIR"
    local ports=() p tries=0
    while [ "${#ports[@]}" -lt 6 ]; do
      tries=$((tries + 1)); [ "$tries" -lt 200 ] || die "no free ports for a Redis Cluster"
      p="$(stores_free_port "")"
      case " ${ports[*]} " in *" $p "*) continue ;; esac
      stores_port_busy "$((p + 10000))" && continue
      ports+=("$p")
    done
    log "starting a local Redis Cluster (3 masters, 3 replicas) on ports ${ports[*]} (in $CLUSTER_DIR)"
    for p in "${ports[@]}"; do
      cluster_node_start "$p" || die "a cluster node did not start (see $CLUSTER_DIR/$p/redis.log)"
    done
    printf '%s\n' "${ports[@]}" >"$CLUSTER_DIR/ports"
    local addrs=()
    for p in "${ports[@]}"; do addrs+=("127.0.0.1:$p"); done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$CLUSTER_DIR/create.log" 2>&1 ||
      die "redis-cli --cluster create failed (see $CLUSTER_DIR/create.log)"
    stores_wait 30 cluster_ok || die "the Redis Cluster did not become ok (see $CLUSTER_DIR/*/redis.log)"
  fi
  echo "export REDIS_CLUSTER_URL='$(cluster_url)'"
}

cmd_cluster_stop() {
  local d pid
  for d in "$CLUSTER_DIR"/*/; do
    [ -f "$d/redis.pid" ] || continue
    pid="$(cat "$d/redis.pid")"
    if [ "$(stores_comm "$pid")" = redis-server ]; then
      kill -TERM "$pid" 2>/dev/null || true
      stores_wait 10 stores_gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
      log "stopped Redis Cluster node pid $pid ($(basename "$d"))"
    fi
    rm -f "$d/redis.pid"
  done
}

# ------------------------------------------------------------- commands
cmd_install() { # the binaries of private instances, nothing started
  local pkgs=()
  command -v redis-cli >/dev/null || pkgs+=(redis-tools)
  command -v redis-server >/dev/null || pkgs+=(redis-server)
  command -v psql >/dev/null || pkgs+=(postgresql-client)
  stores_pgbin >/dev/null || pkgs+=(postgresql)
  [ "${#pkgs[@]}" = 0 ] || stores_apt_install "${pkgs[@]}" || exit 3
}

cmd_up() {
  need_clients
  redis_up
  echo "export REDIS_URL='$REDIS_URL'"
  if [ "${FIRSTCOME_DB:-postgres}" = mysql ]; then
    mysql_up
    echo "export MYSQL_URL='$MYSQL_URL'"
    echo "export DATABASE_URL='$MYSQL_URL'"
  else
    pg_up
    echo "export DATABASE_URL='$DATABASE_URL'"
  fi
}

where() { # where PID: "" or " (another network namespace)"
  stores_same_netns "$1" || echo " -- runs in another network namespace, unreachable from here"
}

cmd_status() {
  local pid port dir
  echo "data dir: $DATA$([ -d "$DATA" ] || echo ' (none yet)')"
  pid="$(redis_pid)"; port="$(redis_port)"
  if [ -n "$pid" ]; then
    echo "redis:    private redis-server pid $pid on 127.0.0.1:$port$(where "$pid")"
  else
    echo "redis:    no private redis-server running"
  fi
  if redis_url_ok "$DEFAULT_REDIS_URL" 2>/dev/null; then
    echo "          $DEFAULT_REDIS_URL answers$([ "$port" = 6379 ] && [ -n "$pid" ] && stores_same_netns "$pid" && echo ' (the private one)')"
  else
    echo "          $DEFAULT_REDIS_URL does not answer"
  fi
  dir="$(pg_dir)"; pid="$(stores_pg_pid "$dir")"; port="$(pg_port)"
  if [ -n "$pid" ]; then
    echo "postgres: private PostgreSQL $(cat "$dir/PG_VERSION" 2>/dev/null) pid $pid on 127.0.0.1:$port, data $dir$(where "$pid")"
  elif [ -s "$dir/PG_VERSION" ]; then
    echo "postgres: private PostgreSQL not running (data kept in $dir)"
  else
    echo "postgres: no private PostgreSQL"
  fi
  if pg_url_ok "$DEFAULT_DATABASE_URL"; then
    echo "          ${DEFAULT_DATABASE_URL%/*} accepts$([ "$port" = 5432 ] && [ -n "$pid" ] && stores_same_netns "$pid" && echo ' (the private one)')"
  elif stores_port_busy 5432; then
    echo "          127.0.0.1:5432 answers but refuses ${DEFAULT_DATABASE_URL%/*}"
  else
    echo "          nothing answers on 127.0.0.1:5432"
  fi
  dir="$(mariadb_dir)"; pid="$(stores_mariadb_pid "$dir")"
  if [ -n "$pid" ]; then
    echo "mariadb:  private MariaDB pid $pid on 127.0.0.1:$(mariadb_port), data $dir$(where "$pid")"
  elif [ -d "$dir/mysql" ]; then
    echo "mariadb:  private MariaDB not running (data kept in $dir)"
  fi
  if cluster_ok; then
    echo "cluster:  local Redis Cluster on $(cluster_url)"
  elif [ -n "$(cluster_ports)" ]; then
    echo "cluster:  local Redis Cluster not ok (ports $(cluster_ports | tr '\n' ' '))"
  fi
  [ -z "${REDIS_URL:-}" ] || echo "REDIS_URL=$REDIS_URL is set: used instead"
  [ -z "${DATABASE_URL:-}" ] || echo "DATABASE_URL=$DATABASE_URL is set: used instead"
}

cmd_stop() {
  local pid port dir rc=0
  cmd_cluster_stop
  pid="$(redis_pid)"; port="$(redis_port)"
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    if ! stores_wait 10 stores_gone "$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
      stores_wait 5 stores_gone "$pid" || { log "redis-server pid $pid did not stop"; rc=1; }
    fi
    rm -f "$REDIS_PIDFILE"
    log "stopped the private redis-server (pid $pid, 127.0.0.1:$port)"
  else
    log "no private redis-server running"
  fi
  dir="$(pg_dir)"; pid="$(stores_pg_pid "$dir")"
  if [ -n "$pid" ]; then
    port="$(pg_port)"
    if stores_pg_stop "$dir"; then
      log "stopped the private PostgreSQL (pid $pid, 127.0.0.1:$port)"
    else
      log "the private PostgreSQL (pid $pid) did not stop"; rc=1
    fi
  else
    log "no private PostgreSQL running"
  fi
  dir="$(mariadb_dir)"; pid="$(stores_mariadb_pid "$dir")"
  if [ -n "$pid" ]; then
    if stores_mariadb_stop "$dir"; then
      log "stopped the private MariaDB (pid $pid, 127.0.0.1:$(mariadb_port))"
    else
      log "the private MariaDB (pid $pid) did not stop"; rc=1
    fi
  fi
  return "$rc"
}

cmd_remove() {
  local dir mdir
  dir="$(pg_dir)"; mdir="$(mariadb_dir)"
  cmd_stop
  case "$dir" in "$DATA"/*) ;; *) rm -rf "$dir" ;; esac
  case "$mdir" in "$DATA"/*) ;; *) rm -rf "$mdir" ;; esac
  rmdir /var/lib/firstcome 2>/dev/null || true
  rm -rf "$DATA"
  log "removed $DATA$([ "$dir" = "$DATA/pg" ] || echo " and $dir")$(case "$mdir" in "$DATA"/*) ;; *) [ -z "$mdir" ] || echo " and $mdir" ;; esac)"
}

case "${1:-up}" in
  up|env) cmd_up ;;
  status) cmd_status ;;
  stop) cmd_stop ;;
  remove) cmd_remove ;;
  install) cmd_install ;;
  cluster) cmd_cluster ;;
  cluster-stop) cmd_cluster_stop ;;
  mysql) cmd_mysql ;;
  -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" ;;
  *) echo "usage: scripts/services.sh [up|status|stop|remove|install|cluster|cluster-stop|mysql]" >&2; exit 2 ;;
esac
