#!/usr/bin/env bash
# Runs the whole test suite: brings up Redis, PostgreSQL and MariaDB
# (installing them if needed), checks formatting and lints, then runs every test against the
# real stores. Each test makes its own database and Redis key prefix.
# Ends with scripts/fresh-machine-test.sh: the quick start where nothing
# answers on the default ports (as root; skipped otherwise outside CI).
# FIRSTCOME_TEST_SERVICES_ONLY=1: only bring up the stores and check that
# tests could use them (what the fresh-machine test runs).
set -euo pipefail
cd "$(dirname "$0")/.."
stores_env="$(scripts/services.sh)" # a failure stops here (`eval "$(...)"` would hide it)
eval "$stores_env"
# MariaDB, for the suite's run on MySQL (below) and the MySQL schema's
# tests (tests/it/mysql.rs): MYSQL_URL.
stores_env="$(scripts/services.sh mysql)"
eval "$stores_env"
my_hp=${MYSQL_URL#*@}; my_hp=${my_hp%%/*}
mysql_admin() { mariadb --no-defaults --protocol=tcp -h "${my_hp%:*}" -P "${my_hp##*:}" -u root -Nse "$1"; }
{ mysql_admin "select schema_name from information_schema.schemata where schema_name like 'fc\\_test\\_%'" || true; } |
  while read -r db; do mysql_admin "DROP DATABASE IF EXISTS \`$db\`" || true; done

# Databases left by earlier runs (tests never share one).
psql "${DATABASE_URL%/*}/postgres" -Atqc \
  "select datname from pg_database where datname like 'fc\_test\_%'" 2>/dev/null |
  while read -r db; do psql "${DATABASE_URL%/*}/postgres" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true; done

if [ "${FIRSTCOME_TEST_SERVICES_ONLY:-0}" = 1 ]; then
  # Tests create their databases (fc_test_*) on the server of DATABASE_URL.
  psql -w "${DATABASE_URL%/*}/postgres" -qc 'CREATE DATABASE fc_test_probe' -c 'DROP DATABASE fc_test_probe'
  redis-cli -u "$REDIS_URL" ping >/dev/null
  mysql_admin 'CREATE DATABASE fc_test_probe; DROP DATABASE fc_test_probe'
  echo "test stores ok: REDIS_URL=$REDIS_URL DATABASE_URL=$DATABASE_URL MYSQL_URL=$MYSQL_URL"
  exit 0
fi

# The pages' browser tests drive Debian's chromium headless; a Korean font
# makes their screenshots (docs/screenshots/) readable.
. scripts/lib/stores.sh
command -v chromium >/dev/null || stores_apt_install chromium || exit 3
fc-list 2>/dev/null | grep -qi nanum || stores_apt_install fonts-nanum || exit 3

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The cluster tests' local Redis Cluster (3 masters, 3 replicas), stopped
# when the suite ends unless one was given (REDIS_CLUSTER_URL).
if [ -z "${REDIS_CLUSTER_URL:-}" ]; then
  eval "$(scripts/services.sh cluster)"
  trap 'scripts/services.sh cluster-stop >/dev/null 2>&1 || true' EXIT
fi
cargo test --locked --workspace --all-targets "$@"
# The integration suite again with MySQL/MariaDB as the source of truth
# (issue 17): the same tests on MYSQL_URL (FIRSTCOME_TEST_DB=mysql makes
# each test's fresh database a MariaDB one). Not repeated there: the
# MariaDB schema's own tests (mysql::, which compare it with PostgreSQL and
# ran above) and the pages' browser tests (the same API under a page).
FIRSTCOME_TEST_DB=mysql cargo test --locked --test it -- --skip mysql:: --skip pages::

# The service against its own OpenAPI document (schemathesis from PyPI):
# 0 answers 5xx, 0 answers that break the documented schema.
scripts/schemathesis.sh

# A short chaos round (docs/GUARANTEES.md): one round per fault per mode on
# private Redis and PostgreSQL instances, with the debug binaries just built
# (chaos.sh finds firstcome-bench beside firstcome).
cargo build --locked --workspace --bins
FIRSTCOME_BIN=target/debug/firstcome scripts/chaos.sh --quick
# The same round with MariaDB as the source of truth (a private mariadbd;
# every fault but slowpg, whose trigger is PostgreSQL's).
CHAOS_DB=mysql CHAOS_OUT=target/chaos-mysql FIRSTCOME_BIN=target/debug/firstcome scripts/chaos.sh --quick

# The walk-through of docs/RUNNING-A-DROP.md still runs (it exits non-zero
# if the draw does not check out or a webhook is missing or unsigned).
FIRSTCOME_BIN=target/debug/firstcome scripts/drop-demo.sh

# The quick start on a machine where nothing answers on the default ports:
# private stores in a network namespace (issue 18).
scripts/fresh-machine-test.sh
