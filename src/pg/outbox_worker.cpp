// The outbox's background worker, started only when amplitude_sync is in
// shared_preload_libraries: it connects to amplitude_sync.outbox_database
// and calls flush_outbox() for every server with entries, woken by the
// commit of a transaction that queued entries (a latch in shared memory),
// else every amplitude_sync.outbox_naptime_ms. A flush that failed
// (Amplitude out of reach) is retried after a growing pause, up to a
// minute; the entries wait in the outbox. An ERROR ends the worker, which
// the postmaster starts again 5 seconds later; what it had sent but not
// removed is sent again with the same insert_ids.
#include "outbox.hpp"
#include "pg_headers.hpp"

extern "C" {
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/snapmgr.h"
#include "utils/wait_event.h"
}

namespace {

constexpr long kMinPassMs = 100;

struct OutboxShared {
    Latch *latch;  // the worker's, while it runs
};

OutboxShared *outbox_shared = nullptr;
shmem_request_hook_type prev_shmem_request_hook = nullptr;
shmem_startup_hook_type prev_shmem_startup_hook = nullptr;
char *outbox_database = nullptr;
int outbox_naptime_ms = 1000;
bool wake_pending = false;
bool xact_callback_registered = false;

void outbox_shmem_request() {
    if (prev_shmem_request_hook) prev_shmem_request_hook();
    RequestAddinShmemSpace(MAXALIGN(sizeof(OutboxShared)));
}

void outbox_shmem_startup() {
    if (prev_shmem_startup_hook) prev_shmem_startup_hook();
    LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
    bool found;
    outbox_shared = static_cast<OutboxShared *>(ShmemInitStruct("amplitude_sync outbox", sizeof(OutboxShared), &found));
    if (!found) outbox_shared->latch = nullptr;
    LWLockRelease(AddinShmemInitLock);
}

void outbox_xact_callback(XactEvent event, void *) {
    if (event == XACT_EVENT_COMMIT && wake_pending && outbox_shared) {
        Latch *latch = outbox_shared->latch;
        if (latch) SetLatch(latch);
    }
    if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_COMMIT ||
        event == XACT_EVENT_PARALLEL_ABORT || event == XACT_EVENT_PREPARE)
        wake_pending = false;
}

void forget_latch(int, Datum) {
    if (outbox_shared) outbox_shared->latch = nullptr;
}

// Runs one statement in its own transaction; returns the first column of
// each row (text), palloc'd in the caller's context.
List *run_in_transaction(const char *sql) {
    MemoryContext caller = CurrentMemoryContext;
    SetCurrentStatementStartTimestamp();
    StartTransactionCommand();
    PushActiveSnapshot(GetTransactionSnapshot());
    pgstat_report_activity(STATE_RUNNING, sql);
    if (SPI_connect() != SPI_OK_CONNECT) elog(ERROR, "amplitude_sync: SPI_connect failed");
    if (SPI_execute(sql, false, 0) != SPI_OK_SELECT) elog(ERROR, "amplitude_sync: could not run: %s", sql);
    List *values = NIL;
    for (uint64 i = 0; i < SPI_processed; ++i) {
        char *value = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
        MemoryContext spi = MemoryContextSwitchTo(caller);
        values = lappend(values, value ? pstrdup(value) : pstrdup(""));
        MemoryContextSwitchTo(spi);
    }
    SPI_finish();
    PopActiveSnapshot();
    CommitTransactionCommand();
    pgstat_report_activity(STATE_IDLE, nullptr);
    return values;
}

// One pass: every server with entries, one transaction each. Returns
// whether a flush failed.
bool flush_everything(MemoryContext pass) {
    MemoryContext outer = MemoryContextSwitchTo(pass);
    List *installed = run_in_transaction(
        "SELECT 1 FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'amplitude_sync'");
    bool failed = false;
    if (installed != NIL) {
        // Entries of a server that no longer exists wait (and are not sent).
        List *servers = run_in_transaction(
            "SELECT DISTINCT o.server FROM amplitude_sync.outbox o JOIN pg_catalog.pg_foreign_server s "
            "ON s.srvname OPERATOR(pg_catalog.=) o.server ORDER BY 1");
        ListCell *cell;
        foreach (cell, servers) {
            const char *server = static_cast<const char *>(lfirst(cell));
            List *result = run_in_transaction(
                psprintf("SELECT pg_catalog.count(*) FROM amplitude_sync.flush_outbox(%s) r "
                         "WHERE r.status OPERATOR(pg_catalog.=) 'failed'",
                         quote_literal_cstr(server)));
            failed |= result != NIL && strcmp(static_cast<const char *>(linitial(result)), "0") != 0;
        }
    }
    MemoryContextSwitchTo(outer);
    MemoryContextReset(pass);
    return failed;
}

}  // namespace

void outbox_note_queued() {
    if (!outbox_shared) return;  // not preloaded: no worker to wake
    if (!xact_callback_registered) {
        RegisterXactCallback(outbox_xact_callback, nullptr);
        xact_callback_registered = true;
    }
    wake_pending = true;
}

void outbox_worker_init() {
    if (!process_shared_preload_libraries_in_progress) return;
    DefineCustomStringVariable("amplitude_sync.outbox_database",
                               "Database whose outbox the background worker delivers.",
                               "Only when amplitude_sync is in shared_preload_libraries.", &outbox_database,
                               "postgres", PGC_POSTMASTER, 0, nullptr, nullptr, nullptr);
    DefineCustomIntVariable("amplitude_sync.outbox_naptime_ms",
                            "How often the outbox worker looks for entries when no commit woke it.", nullptr,
                            &outbox_naptime_ms, 1000, 10, 3600000, PGC_SIGHUP, GUC_UNIT_MS, nullptr, nullptr,
                            nullptr);
    prev_shmem_request_hook = shmem_request_hook;
    shmem_request_hook = outbox_shmem_request;
    prev_shmem_startup_hook = shmem_startup_hook;
    shmem_startup_hook = outbox_shmem_startup;

    BackgroundWorker worker;
    memset(&worker, 0, sizeof(worker));
    worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
    worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
    worker.bgw_restart_time = 5;
    snprintf(worker.bgw_library_name, BGW_MAXLEN, "amplitude_sync");
    snprintf(worker.bgw_function_name, BGW_MAXLEN, "amplitude_sync_outbox_worker_main");
    snprintf(worker.bgw_name, BGW_MAXLEN, "amplitude_sync outbox worker");
    snprintf(worker.bgw_type, BGW_MAXLEN, "amplitude_sync outbox");
    RegisterBackgroundWorker(&worker);
}

extern "C" {

PGDLLEXPORT void amplitude_sync_outbox_worker_main(Datum);

void amplitude_sync_outbox_worker_main(Datum) {
    pqsignal(SIGHUP, SignalHandlerForConfigReload);
    pqsignal(SIGTERM, die);
    BackgroundWorkerUnblockSignals();
    BackgroundWorkerInitializeConnection(outbox_database, nullptr, 0);
    pgstat_report_appname("amplitude_sync outbox worker");
    outbox_shared->latch = MyLatch;
    on_shmem_exit(forget_latch, (Datum)0);
    MemoryContext pass = AllocSetContextCreate(TopMemoryContext, "amplitude_sync outbox pass", ALLOCSET_DEFAULT_SIZES);
    long pause_ms = 0;  // after failures: 1 s, doubling, at most 60 s
    for (;;) {
        // First what is there (entries committed while no worker ran).
        TimestampTz pass_started = GetCurrentTimestamp();
        bool failed = flush_everything(pass);
        pause_ms = failed ? (pause_ms == 0 ? 1000 : pause_ms * 2 > 60000 ? 60000 : pause_ms * 2) : 0;
        // Until the timeout, or a commit that queued entries (not while
        // pausing after a failure); cancel and terminate end the wait.
        // Passes start at least kMinPassMs apart: under a steady stream of
        // commits a pass takes what a tenth of a second brought (one run per
        // role and endpoint), instead of one run per commit.
        TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
                                                        pause_ms > 0 ? pause_ms : outbox_naptime_ms);
        for (;;) {
            long remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), until);
            if (remaining <= 0) break;
            int rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, remaining,
                               PG_WAIT_EXTENSION);
            ResetLatch(MyLatch);
            CHECK_FOR_INTERRUPTS();
            if (ConfigReloadPending) {
                ConfigReloadPending = false;
                ProcessConfigFile(PGC_SIGHUP);
            }
            if ((rc & WL_LATCH_SET) && pause_ms == 0) {
                long since = TimestampDifferenceMilliseconds(pass_started, GetCurrentTimestamp());
                if (since < kMinPassMs) pg_usleep((kMinPassMs - since) * 1000L);
                break;
            }
        }
    }
}

}  // extern "C"
