# Shared by test/run_tests.sh and demo.sh: packages, a throwaway PostgreSQL
# cluster run by a non-root user, and the mock Amplitude server. Source it;
# call harness_cleanup on exit (the callers install a trap).

HARNESS_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HARNESS_PACKAGES="build-essential postgresql-15 postgresql-server-dev-15 postgresql-15-cron
  libcurl4-openssl-dev nlohmann-json3-dev libxxhash-dev libgtest-dev python3 curl ca-certificates"
HARNESS_OS_USER=amplitude_sync_test
HARNESS_DIR=""
HARNESS_MOCK_PID=""

log() { printf '\n==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# Runs a command as the user that owns the cluster (never root: postgres refuses).
as_cluster_user() {
    if [ "$(id -u)" = 0 ]; then runuser -u "$HARNESS_OS_USER" -- "$@"; else "$@"; fi
}

harness_install_packages() {
    local missing=""
    for p in $HARNESS_PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        log "installing packages:$missing"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    fi
}

# Builds and installs with the pg_config found first on PATH, named
# explicitly: sudo may reset PATH, and the install must go to the same
# PostgreSQL as the build (test/pg_versions.sh puts an isolated tree's first).
harness_build_and_install() {
    local pgc
    pgc=$(command -v pg_config) || { echo "pg_config is not on PATH"; return 1; }
    log "building (warnings are errors) and installing the extension for $($pgc --version) ($pgc)"
    make -C "$HARNESS_REPO" -s PG_CONFIG="$pgc" clean >/dev/null
    make -C "$HARNESS_REPO" -s PG_CONFIG="$pgc"
    as_root make -C "$HARNESS_REPO" -s PG_CONFIG="$pgc" install >/dev/null
}

harness_free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Starts a throwaway cluster; exports PGHOST, PGPORT, PGUSER, PGDATABASE.
# Extra postgresql.conf lines may be passed as arguments (@DIR@ stands for
# the cluster's directory, which is also its socket directory).
harness_start_cluster() {
    local bindir
    bindir=$(pg_config --bindir)
    if [ "$(id -u)" = 0 ] && ! id "$HARNESS_OS_USER" >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin "$HARNESS_OS_USER"
    fi
    HARNESS_DIR=$(mktemp -d /tmp/amplitude_sync.XXXXXX)
    chmod 755 "$HARNESS_DIR"
    [ "$(id -u)" = 0 ] && chown "$HARNESS_OS_USER" "$HARNESS_DIR"
    log "starting a throwaway cluster in $HARNESS_DIR"
    as_cluster_user "$bindir/initdb" -D "$HARNESS_DIR/data" -U postgres -A trust -E UTF8 \
        --locale=C.UTF-8 >"$HARNESS_DIR/initdb.log" 2>&1 || { cat "$HARNESS_DIR/initdb.log"; return 1; }
    PGPORT=$(harness_free_port)
    {
        echo "port = $PGPORT"
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$HARNESS_DIR'"
        echo "fsync = off"
        for line in "$@"; do echo "${line//@DIR@/$HARNESS_DIR}"; done
    } >>"$HARNESS_DIR/data/postgresql.conf"
    as_cluster_user "$bindir/pg_ctl" -D "$HARNESS_DIR/data" -l "$HARNESS_DIR/server.log" -w start >/dev/null
    export PGHOST=$HARNESS_DIR PGPORT PGUSER=postgres PGDATABASE=postgres
}

# Starts the mock Amplitude server; exports AMPLITUDE_MOCK_PORT and AMPLITUDE_MOCK_URL.
harness_start_mock() {
    local port_file="$HARNESS_DIR/mock.port"
    /usr/bin/python3 "$HARNESS_REPO/test/mock_amplitude.py" --port 0 --port-file "$port_file" "$@" \
        >"$HARNESS_DIR/mock.log" 2>&1 &
    HARNESS_MOCK_PID=$!
    for _ in $(seq 1 100); do
        [ -s "$port_file" ] && break
        sleep 0.1
    done
    [ -s "$port_file" ] || { echo "mock server did not start:"; cat "$HARNESS_DIR/mock.log"; return 1; }
    AMPLITUDE_MOCK_PORT=$(cat "$port_file")
    AMPLITUDE_MOCK_URL="http://127.0.0.1:$AMPLITUDE_MOCK_PORT"
    export AMPLITUDE_MOCK_PORT AMPLITUDE_MOCK_URL
}

# The benchmarks' local sink (bench/sink.py; extra arguments go to it, and
# so does the environment, e.g. SINK_LATENCY=1): sets SINK_PID and SINK.
harness_start_sink() {
    rm -f "$HARNESS_DIR/sink.port"
    /usr/bin/python3 "$HARNESS_REPO/bench/sink.py" "$HARNESS_DIR/sink.port" "$@" &
    SINK_PID=$!
    for _ in $(seq 1 50); do [ -s "$HARNESS_DIR/sink.port" ] && break; sleep 0.1; done
    [ -s "$HARNESS_DIR/sink.port" ] || { echo "the sink did not start"; return 1; }
    SINK="http://127.0.0.1:$(cat "$HARNESS_DIR/sink.port")"
}

harness_cleanup() {
    if [ -n "$HARNESS_MOCK_PID" ]; then
        kill "$HARNESS_MOCK_PID" 2>/dev/null
        wait "$HARNESS_MOCK_PID" 2>/dev/null
        HARNESS_MOCK_PID=""
    fi
    if [ -n "$HARNESS_DIR" ] && [ -d "$HARNESS_DIR" ]; then
        as_cluster_user "$(pg_config --bindir)/pg_ctl" -D "$HARNESS_DIR/data" -m immediate stop >/dev/null 2>&1
        rm -rf "$HARNESS_DIR"
        HARNESS_DIR=""
    fi
}
