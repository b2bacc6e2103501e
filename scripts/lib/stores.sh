# shellcheck shell=bash
# Private Redis and PostgreSQL instances owned by the project: one
# implementation, sourced by scripts/services.sh (long-lived instances under
# the data dir, found again by their pid files) and scripts/chaos.sh
# (throwaway instances under a temp dir). Defines functions only.
#
# Every instance listens on 127.0.0.1 only. PostgreSQL is an initdb cluster
# with trust authentication (role `postgres`, superuser) whose unix socket
# lives in its own data dir; it runs as the `postgres` user when the caller
# is root (initdb refuses root), as the caller otherwise. Redis keeps no data
# on disk. Nothing here touches the machine's own services or their files.

stores_log() { echo "[${STORES_TAG:-stores}] $*" >&2; }

# stores_wait SECONDS CMD...: retries CMD until it succeeds or time runs out.
stores_wait() {
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# ------------------------------------------------------------ packages
STORES_APT_UPDATED=0
# stores_apt_install PKG...: apt-get update (once per process), then
# install. As root directly, otherwise through sudo. Returns 3 with a message
# when that is impossible.
stores_apt_install() {
  local run=()
  if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null; then
      stores_log "missing: $* -- installing needs root or sudo, and neither is available."
      stores_log "install them as root (apt-get install $*), or point REDIS_URL / DATABASE_URL at running servers"
      return 3
    fi
    run=(sudo)
  fi
  if ! command -v apt-get >/dev/null; then
    stores_log "missing: $* -- and this is not a Debian-like system (no apt-get): install them, or set REDIS_URL / DATABASE_URL"
    return 3
  fi
  stores_log "installing $* with apt-get"
  if [ "$STORES_APT_UPDATED" = 0 ]; then
    "${run[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 ||
      { stores_log "apt-get update failed"; return 3; }
    STORES_APT_UPDATED=1
  fi
  "${run[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 ||
    { stores_log "apt-get install $* failed"; return 3; }
}

# ------------------------------------------------------------- helpers
# stores_port_busy PORT: something accepts connections on 127.0.0.1:PORT.
stores_port_busy() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# stores_free_port [PREFERRED]: PREFERRED if nothing listens there, else a
# free port in 15000-32767 (below the kernel's ephemeral range).
stores_free_port() {
  local p
  if [ -n "${1:-}" ] && ! stores_port_busy "$1"; then echo "$1"; return 0; fi
  for _ in $(seq 1 100); do
    p=$(( 15000 + (RANDOM * 32768 + RANDOM) % 17768 ))
    stores_port_busy "$p" || { echo "$p"; return 0; }
  done
  stores_log "no free port found"; return 1
}

# stores_same_netns PID: the process shares this shell's network namespace
# (false when it runs in another one, e.g. started inside `unshare -n`).
# Unknown (unreadable) counts as the same.
stores_same_netns() {
  local theirs
  theirs="$(readlink "/proc/$1/ns/net" 2>/dev/null)" || return 0
  [ "$theirs" = "$(readlink /proc/self/ns/net)" ]
}

# stores_comm PID: the process's command name ("" when it does not exist).
stores_comm() { cat "/proc/$1/comm" 2>/dev/null || true; }
# stores_gone PID: no such process (any more), or only its zombie.
stores_gone() {
  local st
  st="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)"
  [ -z "$st" ] || [ "$st" = Z ]
}

# ---------------------------------------------------------------- Redis
stores_redis_ok() { # stores_redis_ok PORT
  [ "$(timeout 3 redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]
}

# stores_redis_start DIR PORT LOG [--daemon]: a redis-server on
# 127.0.0.1:PORT working in DIR (created), nothing persisted. By default a
# child of this shell, logging to LOG; with --daemon it detaches into its own
# session and writes DIR/redis.pid. Either way its pid is left in
# STORES_REDIS_PID. Waits (20 s) until it answers PING.
stores_redis_start() {
  local dir=$1 port=$2 logf=$3 mode=${4:-}
  local args=(--bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$dir")
  mkdir -p "$dir"
  # shellcheck disable=SC2034 # read by the caller
  STORES_REDIS_PID=""
  if [ "$mode" = --daemon ]; then
    rm -f "$dir/redis.pid"
    # shellcheck disable=SC2094 # redis-server writes LOG only once detached
    redis-server "${args[@]}" --daemonize yes --pidfile "$dir/redis.pid" --logfile "$logf" \
      </dev/null >>"$logf" 2>&1 || { stores_log "redis-server failed to start (see $logf)"; return 1; }
    stores_wait 10 test -s "$dir/redis.pid" || true
    STORES_REDIS_PID="$(cat "$dir/redis.pid" 2>/dev/null || true)"
  else
    redis-server "${args[@]}" --daemonize no </dev/null >>"$logf" 2>&1 &
    # shellcheck disable=SC2034
    STORES_REDIS_PID=$!
  fi
  stores_wait 20 stores_redis_ok "$port" ||
    { stores_log "redis-server on 127.0.0.1:$port did not come up (see $logf)"; return 1; }
}

# ----------------------------------------------------------- PostgreSQL
# stores_pgbin [MAJOR]: the bin dir holding initdb and pg_ctl, of version
# MAJOR or else the newest installed (Debian's /usr/lib/postgresql/*/bin, then PATH).
stores_pgbin() {
  local d
  if [ -n "${1:-}" ]; then
    d="/usr/lib/postgresql/$1/bin"
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  fi
  # shellcheck disable=SC2012 # version directories: plain names
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  d="$(command -v initdb 2>/dev/null)" && [ -x "$(dirname "$d")/pg_ctl" ] && { dirname "$d"; return 0; }
  return 1
}

# stores_as_pg CMD...: CMD as the owner of private clusters: the postgres
# user when root (from /, which it can always enter), the caller otherwise.
stores_as_pg() {
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || { stores_log "root, but no postgres user to run PostgreSQL as"; return 1; }
    ( cd / && exec runuser -u postgres -- "$@" )
  else
    "$@"
  fi
}

# stores_pg_reachable DIR: the user PostgreSQL runs as can enter DIR (as
# root: can `postgres` reach it? /root/... cannot).
stores_pg_reachable() {
  [ "$(id -u)" != 0 ] || stores_as_pg test -x "$1"
}

# stores_pg_opts DIR PORT: server options of a private cluster: loopback
# only, its unix socket in DIR (none if that path is too long for a socket).
stores_pg_opts() {
  local sock="'$1'"
  [ $(( ${#1} + 20 )) -lt 100 ] || sock="''"
  echo "-p $2 -k $sock -c listen_addresses=127.0.0.1"
}

# stores_pg_ok PORT: the private cluster on 127.0.0.1:PORT accepts `postgres`.
stores_pg_ok() {
  PGCONNECT_TIMEOUT=3 psql -w -h 127.0.0.1 -p "$1" -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1
}

# stores_pg_init DIR: initdb -A trust -U postgres into DIR (created, mode
# 700, owned by the postgres user when root). Output goes to stdout.
stores_pg_init() {
  local dir=$1 bin
  bin="$(stores_pgbin)" || { stores_log "no initdb found"; return 1; }
  mkdir -p "$dir"; chmod 700 "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$dir"; fi
  stores_as_pg "$bin/initdb" -D "$dir" -A trust -U postgres -E UTF8 --no-sync
}

# stores_pg_start DIR LOG OPTS: pg_ctl start of cluster DIR with server
# options OPTS (see stores_pg_opts), logging to LOG (made writable for the
# cluster's user). Waits (30 s) until it accepts connections.
stores_pg_start() {
  local dir=$1 logf=$2 opts=$3 bin port
  bin="$(stores_pgbin "$(cat "$dir/PG_VERSION" 2>/dev/null)")" || { stores_log "no pg_ctl found"; return 1; }
  touch "$logf"
  if [ "$(id -u)" = 0 ]; then chown postgres "$logf"; fi
  stores_as_pg "$bin/pg_ctl" -D "$dir" -o "$opts" -l "$logf" -w -t 30 start >/dev/null ||
    { stores_log "PostgreSQL in $dir did not start (see $logf)"; return 1; }
  port="$(sed -n 4p "$dir/postmaster.pid" 2>/dev/null)"
  stores_wait 20 stores_pg_ok "$port" ||
    { stores_log "PostgreSQL in $dir does not accept connections on 127.0.0.1:$port (see $logf)"; return 1; }
}

# stores_pg_pid DIR: the postmaster's pid if cluster DIR runs ("" otherwise).
stores_pg_pid() {
  local pid
  pid="$(head -1 "$1/postmaster.pid" 2>/dev/null || true)"
  case "$(stores_comm "${pid:-0}")" in postgres|postmaster) echo "$pid" ;; esac
}

# stores_pg_stop DIR: stops cluster DIR (fast, then immediate, then kill -9
# of its postmaster). Works from any network namespace: pg_ctl signals.
stores_pg_stop() {
  local dir=$1 bin pid
  pid="$(stores_pg_pid "$dir")"
  [ -n "$pid" ] || return 0
  bin="$(stores_pgbin "$(cat "$dir/PG_VERSION" 2>/dev/null)")" || bin=""
  if [ -n "$bin" ]; then
    stores_as_pg "$bin/pg_ctl" -D "$dir" -m fast -w -t 20 stop >/dev/null 2>&1 ||
      stores_as_pg "$bin/pg_ctl" -D "$dir" -m immediate -w -t 10 stop >/dev/null 2>&1 || true
  fi
  if [ -n "$(stores_pg_pid "$dir")" ]; then
    kill -9 "$pid" 2>/dev/null || true
    stores_wait 10 stores_gone "$pid" || return 1
  fi
}

# -------------------------------------------------------------- MariaDB
# A private MariaDB (issue 17: MySQL/MariaDB as the source of truth):
# mariadb-install-db into DIR, root without a password on 127.0.0.1 only,
# its socket and pid file in DIR. Runs as the `mysql` user when the caller
# is root (mariadbd refuses root), as the caller otherwise.

# stores_mariadbd: the server binary ("" and false when not installed).
stores_mariadbd() {
  local b
  for b in mariadbd mysqld /usr/sbin/mariadbd /usr/sbin/mysqld; do
    command -v "$b" 2>/dev/null && return 0
  done
  return 1
}

# stores_mariadb_client: the command-line client ("" and false when none).
stores_mariadb_client() { command -v mariadb 2>/dev/null || command -v mysql 2>/dev/null; }

# stores_mariadb_user: the OS user a private server runs as (mysql, made
# by Debian's mariadb-server, when root: mariadbd refuses root).
stores_mariadb_user() {
  if [ "$(id -u)" = 0 ]; then echo mysql; else id -un; fi
}

# stores_mariadb_user_ok: that user exists (false, with a message, if not).
stores_mariadb_user_ok() {
  id "$(stores_mariadb_user)" >/dev/null 2>&1 && return 0
  stores_log "root, but no mysql user to run MariaDB as (Debian's mariadb-server makes it)"
  return 1
}

# stores_mariadb_ok PORT: the server on 127.0.0.1:PORT lets root in.
stores_mariadb_ok() {
  timeout 5 "$(stores_mariadb_client)" --no-defaults --protocol=tcp -h 127.0.0.1 -P "$1" -u root \
    -Nse 'select 1' >/dev/null 2>&1
}

# stores_mariadb_init DIR: a new data directory in DIR (created, owned by
# the server's user). Output goes to stdout.
stores_mariadb_init() {
  local dir=$1 user
  stores_mariadb_user_ok || return 1
  user="$(stores_mariadb_user)"
  mkdir -p "$dir"; chmod 700 "$dir"
  if [ "$(id -u)" = 0 ]; then chown "$user" "$dir"; fi
  mariadb-install-db --no-defaults --datadir="$dir" --user="$user" \
    --auth-root-authentication-method=normal --skip-test-db
}

# stores_mariadb_sock DIR: the unix socket of the instance in DIR: in DIR,
# or under /tmp when that path is too long for a socket (107 bytes).
stores_mariadb_sock() {
  if [ $(( ${#1} + 12 )) -lt 100 ]; then echo "$1/mysqld.sock"
  else echo "/tmp/firstcome-mariadb-$(printf '%s' "$1" | sha256sum | cut -c1-12).sock"; fi
}

# stores_mariadb_start DIR PORT: mariadbd on 127.0.0.1:PORT from data dir
# DIR, detached (its own session), logging to DIR/mariadb.err. Waits (60
# s) until its socket answers, then lets root in from 127.0.0.1 by address
# (name resolution is off, so 'root'@'localhost' is the socket's only),
# and waits (20 s) until root gets in over TCP.
stores_mariadb_start() {
  local dir=$1 port=$2 bin sock as=()
  bin="$(stores_mariadbd)" || { stores_log "no mariadbd found"; return 1; }
  stores_mariadb_user_ok || return 1
  [ "$(id -u)" != 0 ] || as=(--user="$(stores_mariadb_user)")
  sock="$(stores_mariadb_sock "$dir")"
  # A socket left by a server killed -9 would pass for a live one.
  rm -f "$sock"
  setsid "$bin" --no-defaults --datadir="$dir" "${as[@]}" --port="$port" \
    --bind-address=127.0.0.1 --skip-name-resolve --socket="$sock" \
    --pid-file="$dir/mariadb.pid" --log-error="$dir/mariadb.err" \
    --innodb-buffer-pool-size=256M --max-connections=300 </dev/null >/dev/null 2>&1 &
  stores_wait 60 "$(stores_mariadb_client)" --no-defaults -S "$sock" -u root -e 'select 1' ||
    { stores_log "MariaDB in $dir did not start (see $dir/mariadb.err)"; return 1; }
  "$(stores_mariadb_client)" --no-defaults -S "$sock" -u root -e \
    "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'; GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION" ||
    { stores_log "MariaDB in $dir: could not let root in from 127.0.0.1 (see $dir/mariadb.err)"; return 1; }
  stores_wait 20 stores_mariadb_ok "$port" ||
    { stores_log "MariaDB in $dir does not accept root on 127.0.0.1:$port (see $dir/mariadb.err)"; return 1; }
}

# stores_mariadb_pid DIR: the server's pid if the instance in DIR runs.
# (Its command line must name DIR: a reused pid is never taken for it.)
stores_mariadb_pid() {
  local pid
  pid="$(cat "$1/mariadb.pid" 2>/dev/null || true)"
  case "$(stores_comm "${pid:-0}")" in
    mariadbd|mysqld)
      tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "--datadir=$1" && echo "$pid" ;;
  esac
}

# stores_mariadb_stop DIR: stops the instance in DIR (TERM, then KILL).
stores_mariadb_stop() {
  local pid
  pid="$(stores_mariadb_pid "$1")"
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  stores_wait 30 stores_gone "$pid" && return 0
  kill -KILL "$pid" 2>/dev/null || true
  stores_wait 10 stores_gone "$pid"
}

# stores_mysql_parts URL: "host port user password database" of a mysql:// or
# mariadb:// URL (port 3306, no password when absent).
stores_mysql_parts() {
  local rest="${1#*://}" auth="" hostport db user pass host port
  rest="${rest%%\?*}"
  case "$rest" in *@*) auth="${rest%%@*}"; rest="${rest#*@}" ;; esac
  hostport="${rest%%/*}"; db=""; [ "$hostport" = "$rest" ] || db="${rest#*/}"
  user="${auth%%:*}"; pass=""; [ "$user" = "$auth" ] || pass="${auth#*:}"
  host="${hostport%%:*}"; port=3306; [ "$host" = "$hostport" ] || port="${hostport#*:}"
  echo "$host $port ${user:-root} ${pass:--} ${db:-firstcome}"
}
# stores_mysql_run URL SQL: runs SQL as the URL's user (no database selected).
stores_mysql_run() {
  local host port user pass db
  read -r host port user pass db <<<"$(stores_mysql_parts "$1")"
  [ "$pass" != - ] || pass=""
  MYSQL_PWD="$pass" timeout 5 "$(stores_mariadb_client)" --no-defaults --protocol=tcp \
    -h "$host" -P "$port" -u "$user" -Nse "$2"
}
