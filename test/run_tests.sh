#!/usr/bin/env bash
# The whole test suite from a fresh Debian 12 machine: installs what it needs,
# builds with -Werror, installs, starts a throwaway cluster (as a non-root
# user) and the mock Amplitude server, runs the mock's own tests, the C++ unit
# tests and the pg_regress suite, checks the server log for the API key,
# stops what it started, and exits non-zero on any failure.
set -uo pipefail
source "$(dirname "$0")/harness.sh"
cd "$HARNESS_REPO"
trap harness_cleanup EXIT
failed=0

harness_install_packages || exit 1
harness_build_and_install || exit 1

log "mock server tests"
/usr/bin/python3 -m unittest test/test_mock_amplitude.py || failed=1

log "the extension's SQL names pg_catalog's operators and functions"
/usr/bin/python3 test/check_qualified_sql.py || failed=1

log "C++ core unit tests"
make -s unittest || failed=1

# A random API key per run, known to the mock and read by the tests from a
# file; the whole suite runs with every statement and debug message logged,
# and the log is then searched for the key.
TEST_API_KEY="mock-key-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
# pg_cron runs a saved sync on a schedule in sql/cron.sql; amplitude_sync is
# preloaded for its shared memory (run_progress on PostgreSQL 15; the 17/18
# clusters of pg_versions.sh test the unpreloaded way).
harness_start_cluster "log_min_messages = debug1" "log_statement = 'all'" \
    "shared_preload_libraries = 'pg_cron, amplitude_sync'" "cron.database_name = 'contrib_regression'" \
    "cron.host = '@DIR@'" || exit 1
echo "$TEST_API_KEY" | as_cluster_user tee "$HARNESS_DIR/data/amplitude_test_key" >/dev/null
harness_start_mock --api-key "$TEST_API_KEY" || exit 1

log "pg_regress suite (make installcheck)"
rm -f regression.diffs
if ! make -s installcheck; then
    failed=1
    [ -f regression.diffs ] && cat regression.diffs
fi

log "searching the server log for the API key"
if ! grep -q "amplitude_send_events" "$HARNESS_DIR/server.log"; then
    echo "the server log holds no statements: the leak check would prove nothing"
    failed=1
elif grep -n -- "$TEST_API_KEY" "$HARNESS_DIR/server.log"; then
    echo "the API key appears in the server log (lines above)"
    failed=1
else
    echo "no trace of the key in $(wc -l <"$HARNESS_DIR/server.log") log lines"
fi

# The same suite on PostgreSQL 17 and 18, assembled from pinned packages.
"$HARNESS_REPO/test/pg_versions.sh" || failed=1

if [ "$failed" = 0 ]; then log "all tests passed"; else log "TESTS FAILED"; fi
exit "$failed"
