#!/usr/bin/env bash
# The bounded loopback flood of issue 19 (tests/it/security/flood.rs), run
# alone so nothing else shares the machine, printing its figures: a service
# process of its own takes a rush (400 claims for 50 held grants) while it
# is flooded with SSE opens, slow headers, unknown methods, campaign reads
# and forged tokens, all from 127.0.0.1; the test asserts Redis round
# trips, PostgreSQL transactions and file descriptors stay bounded and the
# rush keeps every invariant. SECURITY.md cites the line it prints.
# Usage: scripts/flood.sh [--release]
set -euo pipefail
cd "$(dirname "$0")/.."
stores_env="$(scripts/services.sh)" # a failure stops here
eval "$stores_env"
cargo test "$@" --test it security::flood -- --nocapture --test-threads=1 2>&1 |
  grep -oE 'flood: .*|test result: .*'
