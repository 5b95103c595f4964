#!/usr/bin/env bash
# The whole test suite from a fresh Debian 12 machine: installs what it needs,
# builds with -Werror, installs, starts a throwaway cluster (as a non-root
# user) and the mock Amplitude server, runs the mock's own tests, the C++ unit
# tests and the pg_regress suite, stops what it started, and exits non-zero
# on any failure.
set -uo pipefail
source "$(dirname "$0")/harness.sh"
cd "$HARNESS_REPO"
trap harness_cleanup EXIT
failed=0

harness_install_packages || exit 1
harness_build_and_install || exit 1

log "mock server tests"
/usr/bin/python3 -m unittest test/test_mock_amplitude.py || failed=1

log "C++ core unit tests"
make -s unittest || failed=1

harness_start_cluster || exit 1
harness_start_mock || exit 1

log "pg_regress suite (make installcheck)"
rm -f regression.diffs
if ! make -s installcheck; then
    failed=1
    [ -f regression.diffs ] && cat regression.diffs
fi

if [ "$failed" = 0 ]; then log "all tests passed"; else log "TESTS FAILED"; fi
exit "$failed"
