// Progress of the runs under way, in shared memory, for other sessions
// (the view amplitude_sync.run_progress). Each backend writes only its own
// slot. The memory comes from shared_preload_libraries when the library is
// preloaded; otherwise, on PostgreSQL 17+, from the DSM registry; on 15 and
// 16 without preloading there is none and the view is empty.
#pragma once

#include "pg_headers.hpp"

// At _PG_init while shared_preload_libraries is processed.
void progress_request_shared_memory();

// The calling backend's slot: a run starts, advances, ends. All do nothing
// when there is no shared memory for them.
void progress_begin(int64 run_id, const char *what);
void progress_update(int64 rows_read, int64 sent, int64 rejected, int64 in_flight);
void progress_end();
