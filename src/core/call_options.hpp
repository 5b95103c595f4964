// The arguments of every sending call, one-shot or saved sync, checked in
// one place; and Amplitude's endpoint contract (paths, per-request limits,
// per-ID rates, pauses) that they select. Core file: no postgres.h. Errors are PlanError
// (SQLSTATE 22023) with a hint listing the supported values.
#pragma once

#include <cstddef>

namespace amplitude_sync {

// What a call fills in Amplitude.
enum class Target { kEvents, kUser, kDevice, kGroup };

// One Amplitude endpoint and the limits it enforces.
struct Endpoint {
    const char *path;
    int max_records;         // per request
    long max_bytes;          // per request body
    long throttle_pause_ms;  // how long throttled IDs wait after a 429
    bool form_encoded;       // api_key=..&identification=.. (plain-text errors) vs JSON
    size_t max_properties;   // per request, summed over its records; 0: no limit
    // Events of one user_id or device_id Amplitude accepts per second,
    // averaged over the window (0: not documented, no pacing).
    double per_id_events_per_second;
    long per_id_window_ms;
};

extern const Endpoint kHttpApiEndpoint;        // /2/httpapi
extern const Endpoint kBatchEndpoint;          // /batch
extern const Endpoint kIdentifyEndpoint;       // /identify
extern const Endpoint kGroupIdentifyEndpoint;  // /groupidentify

// The arguments as the SQL functions take them. Text is as given (NULL
// pointers: not given); the check fills the derived fields.
constexpr int kNotGiven = -2147483647 - 1;  // no SQL int4 argument can be it but NULL

struct CallArguments {
    const char *object = nullptr;      // event | user | device | group
    const char *behaviour = nullptr;   // saved syncs: append | update_or_create
    const char *api = nullptr;         // httpapi | batch (events only)
    const char *nulls = nullptr;       // skip | unset (identify)
    const char *properties_event = nullptr;
    int batch_size = kNotGiven;        // not given: the endpoint's maximum
    int min_id_length = 5;
    // Saved event syncs: watermark mode (a run reads rows whose cursor is at
    // or above the watermark minus the lookback).
    const char *cursor_column = nullptr;
    const char *lookback = nullptr;    // '1 hour' (times, dates) or '1000' (integers)
};

// Plain data (the glue keeps it in frames that PostgreSQL errors may unwind):
// the names are static strings in their canonical spelling, as stored.
struct CallOptions {
    Target target = Target::kEvents;
    const char *object = "event";
    const char *behaviour = "append";  // append for events, update_or_create otherwise
    const char *api = "httpapi";       // httpapi or batch
    const char *nulls = "skip";        // skip or unset
    bool nulls_unset = false;
    const char *properties_event = nullptr;  // the argument's text, or nullptr
    int batch_size = kNotGiven;  // as given
    int min_id_length = 5;
    const Endpoint *endpoint = &kHttpApiEndpoint;
    int max_records = 0;    // per request: batch_size, or the endpoint's maximum
    const char *cursor_column = nullptr;  // as given, or nullptr
    const char *lookback = nullptr;       // as given (checked), or nullptr
};

// Checks the arguments and returns the options they mean. Enumerated
// values are case-insensitive. Throws PlanError.
CallOptions check_call_arguments(const CallArguments &arguments);

// A watermark sync's lookback in its cursor's units: microseconds for a
// time or date cursor ('90 minutes', '1 hour 30 minutes', '2 days'; units
// microseconds to weeks), a count for an integer cursor ('1000'). NULL: 0.
// Throws PlanError (22023) when the text does not fit the cursor.
long long lookback_units(const char *lookback, bool time_cursor);

}  // namespace amplitude_sync
