#!/usr/bin/env bash
# End-to-end demo: a throwaway PostgreSQL cluster with sample product data,
# amplitude_sync installed, and a real sync of events to the local mock
# Amplitude server, or to real Amplitude when AMPLITUDE_API_KEY is exported
# (AMPLITUDE_REGION=eu for EU projects). Stops everything it started.
set -uo pipefail
source "$(dirname "$0")/test/harness.sh"
cd "$HARNESS_REPO"
trap harness_cleanup EXIT

harness_install_packages || exit 1
harness_build_and_install || exit 1
harness_start_cluster || exit 1

psql_demo() { psql -X -q -v ON_ERROR_STOP=1 -d demo "$@" || exit 1; }
createdb demo

if [ -n "${AMPLITUDE_API_KEY:-}" ]; then
    log "using real Amplitude (region ${AMPLITUDE_REGION:-us})"
    SERVER_OPTIONS="OPTIONS (region '${AMPLITUDE_REGION:-us}')"
    API_KEY=$AMPLITUDE_API_KEY
else
    API_KEY="demo-key-$(date +%s)-$$"
    harness_start_mock --api-key "$API_KEY" || exit 1
    log "using the local mock Amplitude server at $AMPLITUDE_MOCK_URL"
    SERVER_OPTIONS="OPTIONS (endpoint '$AMPLITUDE_MOCK_URL')"
fi

log "creating sample product data"
psql_demo <<'SQL'
CREATE TABLE users (
    id         bigint PRIMARY KEY,
    email      text NOT NULL,
    plan       text NOT NULL,
    country    text,
    created_at timestamptz NOT NULL
);
CREATE TABLE orders (
    id         bigint PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users,
    amount     numeric(10,2) NOT NULL,
    items      text[] NOT NULL,
    created_at timestamptz NOT NULL
);
INSERT INTO users
SELECT g, 'user' || g || '@example.com', (ARRAY['free', 'pro', 'team'])[1 + g % 3],
       (ARRAY['US', 'FR', 'DE', 'JP'])[1 + g % 4], now() - ((g - 100000) || ' days')::interval
FROM generate_series(100001, 100500) g;
INSERT INTO orders
SELECT g, 100001 + g % 500, round((5 + g % 200 + (g % 7) * 0.25)::numeric, 2),
       ARRAY['sku-' || (g % 13), 'sku-' || (g % 5)], now() - (g % 90 || ' days')::interval
FROM generate_series(1, 4500) g;
SQL

log "connecting: CREATE EXTENSION, a server, and a user mapping holding the API key"
psql_demo -v key="$API_KEY" <<SQL
CREATE EXTENSION amplitude_sync;
CREATE SERVER amplitude FOREIGN DATA WRAPPER amplitude_sync $SERVER_OPTIONS;
CREATE USER MAPPING FOR CURRENT_USER SERVER amplitude OPTIONS (api_key :'key');
SQL

log "the set-up test event (Amplitude asks a new HTTP API source for one)"
psql_demo -c "SELECT * FROM amplitude_sync.send_test_event('amplitude');"

SIGNUPS="SELECT 'Signed Up' AS event_type, id AS user_id, created_at AS time, country, plan,
                 jsonb_build_object('email', email) AS user_properties FROM users"
log "sending every user's sign-up as an event"
psql_demo -v q="$SIGNUPS" <<'SQL'
\x on
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude', :'q');
\x off
SQL
log "the same call again: the same insert_ids, so Amplitude keeps no duplicates"
psql_demo -v q="$SIGNUPS" <<'SQL'
SELECT run_id, status, rows_read, sent FROM amplitude_sync.amplitude_send_events('amplitude', :'q');
SQL

log "every order, with its amount and items, through /batch (for backfills)"
psql_demo -c "SELECT run_id, status, rows_read, sent, requests FROM amplitude_sync.amplitude_send_events('amplitude', \$\$
    SELECT 'Order Paid' AS event_type, user_id, created_at AS time, 'order-' || id AS insert_id,
           amount AS revenue, amount, items FROM orders\$\$, api => 'batch');"

log "users: their plan, country and lifetime value as user properties (/identify)"
psql_demo -c "SELECT run_id, status, rows_read, sent, requests FROM amplitude_sync.amplitude_identify('amplitude', \$\$
    SELECT u.id AS user_id, u.plan, u.country, coalesce(sum(o.amount), 0) AS lifetime_value,
           count(o.id) AS orders
    FROM users u LEFT JOIN orders o ON o.user_id = u.id GROUP BY u.id\$\$);"

log "a saved sync: the first run sends every user, later runs only what changed"
psql_demo <<'SQL'
SELECT name, object, behaviour FROM amplitude_sync.create_sync('users-plan', 'amplitude', 'user',
    $$SELECT id AS user_id, plan, country FROM users$$);
CALL amplitude_sync.run_sync('users-plan');
UPDATE users SET plan = 'team' WHERE id % 100 = 0;
SELECT action, count(*) AS records FROM amplitude_sync.preview_sync('users-plan') GROUP BY 1;
CALL amplitude_sync.run_sync('users-plan');
SQL

log "run history"
psql_demo -c "SELECT run_id, function_name, endpoint, status, rows_read, sent, rejected, requests FROM amplitude_sync.sync_runs ORDER BY run_id;"

if [ -z "${AMPLITUDE_API_KEY:-}" ]; then
    log "what the mock Amplitude server stored"
    curl -s "$AMPLITUDE_MOCK_URL/_mock/stats"; echo
    psql_demo <<SQL
CREATE TEMP TABLE arrived (line text);
COPY arrived FROM PROGRAM 'curl -s $AMPLITUDE_MOCK_URL/_mock/events' WITH (FORMAT csv, QUOTE e'\x01', DELIMITER e'\x02');
SELECT line::jsonb->>'event_type' AS event_type, count(*) AS events, count(DISTINCT line::jsonb->>'user_id') AS users
FROM arrived GROUP BY 1 ORDER BY 1;
SELECT jsonb_pretty(line::jsonb - '\$seq' - '\$path') AS one_event FROM arrived
WHERE line::jsonb->>'event_type' = 'Order Paid' LIMIT 1;
CREATE TEMP TABLE profiles (line text);
COPY profiles FROM PROGRAM 'curl -s $AMPLITUDE_MOCK_URL/_mock/users' WITH (FORMAT csv, QUOTE e'\x01', DELIMITER e'\x02');
SELECT count(*) AS user_profiles FROM profiles;
SELECT line::jsonb->>'user_id' AS user_id, line::jsonb->'user_properties' AS user_properties
FROM profiles ORDER BY 1 LIMIT 3;
SQL
else
    log "check the events in Amplitude: User Look-Up, or Events in the project's data settings"
fi
log "demo finished; the cluster and the mock are stopped now"
