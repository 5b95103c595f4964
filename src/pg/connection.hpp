// The Amplitude connection, the postgres_fdw way: non-secret settings are
// options of a foreign server of the amplitude_sync wrapper, the API key is
// an option of a user mapping (hidden from other roles by pg_user_mappings).
#pragma once

#include "pg_headers.hpp"

struct AmpConnection {
    const char *server_name;
    const char *base_url;  // no trailing slash
    const char *api_key;
    bool allow_plain_http;  // only with an endpoint, which only superusers set
    bool verify_tls;
    int connect_timeout_ms;
    int request_timeout_ms;
    int max_concurrency;
    int max_attempts;
    int max_retry_seconds;
    int retry_backoff_ms;
    int throttle_pause_ms;  // -1: Amplitude's documented pause for the endpoint
    int max_events_per_second;  // the project's cap (Starter plans: about 1,000); 0: none
    int rate_window_ms;  // window of the per-ID rates; 0: the endpoint's (about 30 s)
};

// Looks up the server and the current user's (or PUBLIC's) mapping, checking
// USAGE on the server. Raises PostgreSQL errors; strings are palloc'd.
void load_connection(const char *server_name, AmpConnection *conn);

// The server of that name, checked to be of the amplitude_sync wrapper.
ForeignServer *amplitude_server(const char *server_name);
// Whether role has USAGE on the server.
bool has_server_usage(const ForeignServer *server, Oid role);
// The connection as role: its USAGE on the server and its own (or PUBLIC's)
// mapping, never another role's. missing_ok: false instead of an error when
// role lacks USAGE, a mapping or its api_key.
bool load_connection_as(const ForeignServer *server, Oid role, AmpConnection *conn, bool missing_ok);
