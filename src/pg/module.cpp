// Module entry: the magic block and one-time libcurl set-up.
#include <curl/curl.h>

#include "outbox.hpp"
#include "pg_headers.hpp"
#include "progress.hpp"

extern "C" {

PG_MODULE_MAGIC;

void _PG_init(void);

// Days of run history kept; older runs (and their rejected rows) are pruned
// at the start of each run. 0 keeps everything.
int amplitude_sync_history_days = 90;

// Seconds between the NOTICEs that tell an interactive caller how a long run
// is going; 0: none.
int amplitude_sync_progress_notice_interval = 10;

void _PG_init(void) {
    // Once per backend, before any thread or handle exists.
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR), errmsg("could not initialise libcurl")));
    DefineCustomIntVariable("amplitude_sync.history_days",
                            "Days of run history (sync_runs, rejected_records) to keep.",
                            "Older runs are deleted when a run starts; 0 keeps everything.",
                            &amplitude_sync_history_days, 90, 0, 36500, PGC_SUSET, 0,
                            nullptr, nullptr, nullptr);
    DefineCustomIntVariable("amplitude_sync.progress_notice_interval",
                            "Time between progress NOTICEs of a long run (rows read, sent, rejected, requests in "
                            "flight).",
                            "0 turns them off.", &amplitude_sync_progress_notice_interval, 10, 0, 86400,
                            PGC_USERSET, GUC_UNIT_S, nullptr, nullptr, nullptr);
    if (process_shared_preload_libraries_in_progress) progress_request_shared_memory();
    // The outbox worker, when preloaded (before the prefix is reserved:
    // it defines amplitude_sync.outbox_* settings).
    outbox_worker_init();
#if PG_VERSION_NUM >= 150000
    MarkGUCPrefixReserved("amplitude_sync");
#else
    EmitWarningsOnPlaceholders("amplitude_sync");
#endif
}

}  // extern "C"
