#!/usr/bin/env bash
# Runs the whole test suite: brings up Redis and PostgreSQL (installing them
# if needed), checks formatting and lints, then runs every test against the
# real stores. Each test makes its own database and Redis key prefix.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh)"

# Databases left by earlier runs (tests never share one).
psql "${DATABASE_URL%/*}/postgres" -Atqc \
  "select datname from pg_database where datname like 'fc\_test\_%'" 2>/dev/null |
  while read -r db; do psql "${DATABASE_URL%/*}/postgres" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true; done

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --all-targets "$@"

# The service against its own OpenAPI document (schemathesis from PyPI):
# 0 answers 5xx, 0 answers that break the documented schema.
scripts/schemathesis.sh

# A short chaos round (docs/GUARANTEES.md): one round per fault per mode on
# private Redis and PostgreSQL instances, with the debug binary just built.
cargo build --locked --bin firstcome
FIRSTCOME_BIN=target/debug/firstcome scripts/chaos.sh --quick
