#!/usr/bin/env bash
# Makes sure Redis and PostgreSQL answer, and prints the environment to use
# them:   eval "$(scripts/services.sh)"
#
# - REDIS_URL / DATABASE_URL set: used as they are (must answer).
# - Otherwise the local defaults are tried (127.0.0.1:6379, :5432).
# - If nothing answers, Redis and PostgreSQL are installed with apt-get
#   (when missing) and local instances are started.
# Idempotent: a second run finds everything up and changes nothing.
set -euo pipefail

log() { echo "[services] $*" >&2; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

apt_install() {
  log "installing $* with apt-get"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

wait_for() { # wait_for SECONDS CMD...: retries CMD until it succeeds or time runs out
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then return 1; fi
    sleep 0.2
  done
}

# ---------------------------------------------------------------- Redis
DEFAULT_REDIS_URL="redis://127.0.0.1:6379"
REDIS_URL="${REDIS_URL:-$DEFAULT_REDIS_URL}"
redis_ok() { command -v redis-cli >/dev/null && [ "$(redis-cli -u "$REDIS_URL" ping 2>/dev/null)" = "PONG" ]; }

if ! redis_ok; then
  if [ "$REDIS_URL" != "$DEFAULT_REDIS_URL" ]; then
    log "REDIS_URL=$REDIS_URL does not answer"; exit 1
  fi
  command -v redis-server >/dev/null || apt_install redis-server redis-tools
  log "starting a local redis-server on 127.0.0.1:6379"
  mkdir -p /tmp/firstcome-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp/firstcome-redis --logfile /tmp/firstcome-redis/redis.log >&2
  wait_for 20 redis_ok || { log "redis did not come up"; exit 1; }
fi
log "redis ok at $REDIS_URL"

# ----------------------------------------------------------- PostgreSQL
DEFAULT_DATABASE_URL="postgres://postgres:postgres@127.0.0.1:5432/firstcome"
DATABASE_URL="${DATABASE_URL:-$DEFAULT_DATABASE_URL}"
# The maintenance database on the same server, to create databases from.
ADMIN_URL="${DATABASE_URL%/*}/postgres"
pg_ok() { command -v psql >/dev/null && psql "$ADMIN_URL" -Atqc 'select 1' >/dev/null 2>&1; }

if ! pg_ok; then
  if [ "$DATABASE_URL" != "$DEFAULT_DATABASE_URL" ]; then
    log "DATABASE_URL=$DATABASE_URL does not answer"; exit 1
  fi
  if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    apt_install postgresql postgresql-client
  fi
  ver="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
  created=0
  if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "$ver main"; then
    log "creating PostgreSQL $ver cluster 'main'"
    $SUDO pg_createcluster "$ver" main >&2
    created=1
  fi
  if ! pg_lsclusters -h | awk -v v="$ver" '$1==v && $2=="main" {print $4}' | grep -q online; then
    log "starting PostgreSQL $ver"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start >&2 || $SUDO pg_ctlcluster "$ver" main start >&2
  fi
  wait_for 30 $SUDO -u postgres psql -Atqc 'select 1' || { log "postgres did not come up"; exit 1; }
  if ! pg_ok; then
    if [ "$created" = 1 ] || [ "${FIRSTCOME_SET_PG_PASSWORD:-0}" = 1 ]; then
      # Our own fresh cluster: give the postgres role the password in the URL.
      log "setting the postgres role's password for TCP logins"
      $SUDO -u postgres psql -qc "ALTER USER postgres PASSWORD 'postgres'" >&2
    fi
  fi
  pg_ok || { log "PostgreSQL runs but refuses $ADMIN_URL; set DATABASE_URL"; exit 1; }
fi
dbname="${DATABASE_URL##*/}"; dbname="${dbname%%\?*}"
if [ "$(psql "$ADMIN_URL" -Atqc "select 1 from pg_database where datname = '$dbname'")" != "1" ]; then
  log "creating database $dbname"
  psql "$ADMIN_URL" -qc "CREATE DATABASE \"$dbname\"" >&2
fi
log "postgres ok at $DATABASE_URL"

echo "export REDIS_URL='$REDIS_URL'"
echo "export DATABASE_URL='$DATABASE_URL'"
