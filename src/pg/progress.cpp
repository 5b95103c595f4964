// See progress.hpp. Writers follow PostgreSQL's st_changecount protocol
// (backend_status.h): the count is odd while the slot is being written, and
// a reader copies the slot until it sees the same even count before and after.
#include <cstring>

#include "progress.hpp"

extern "C" {
#if PG_VERSION_NUM >= 170000
#include "storage/dsm_registry.h"
#endif
#include "access/twophase.h"
#include "catalog/pg_authid.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "storage/shmem.h"
}

namespace {

struct ProgressSlot {
    pg_atomic_uint32 changecount;
    int pid;  // 0: no run
    Oid database;  // runs are shown in their own database only (run_id, text encoding)
    Oid role;
    int64 run_id;
    TimestampTz started_at;
    int64 rows_read, sent, rejected, in_flight;
    char what[NAMEDATALEN * 2];
};

struct ProgressTable {
    int slots;
    ProgressSlot slot[FLEXIBLE_ARRAY_MEMBER];
};

ProgressTable *table = nullptr;
bool attach_tried = false;
int init_slots = 0;  // for the initialiser
shmem_request_hook_type prev_shmem_request_hook = nullptr;
shmem_startup_hook_type prev_shmem_startup_hook = nullptr;

// Every PGPROC a backend may use (as ProcGlobal counts them).
int total_procs() { return MaxBackends + NUM_AUXILIARY_PROCS + max_prepared_xacts; }

Size table_size(int slots) { return add_size(offsetof(ProgressTable, slot), mul_size(slots, sizeof(ProgressSlot))); }

void init_table(void *memory) {
    ProgressTable *t = static_cast<ProgressTable *>(memory);
    memset(t, 0, table_size(init_slots));
    t->slots = init_slots;
    for (int i = 0; i < init_slots; ++i) pg_atomic_init_u32(&t->slot[i].changecount, 0);
}

void request_hook() {
    if (prev_shmem_request_hook) prev_shmem_request_hook();
    RequestAddinShmemSpace(table_size(total_procs()));
}

void startup_hook() {
    if (prev_shmem_startup_hook) prev_shmem_startup_hook();
    LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
    bool found;
    void *memory = ShmemInitStruct("amplitude_sync run progress", table_size(total_procs()), &found);
    if (!found) {
        init_slots = total_procs();
        init_table(memory);
    }
    table = static_cast<ProgressTable *>(memory);
    LWLockRelease(AddinShmemInitLock);
}

ProgressTable *attached() {
    if (table || attach_tried) return table;
    attach_tried = true;
#if PG_VERSION_NUM >= 170000
    bool found;
    init_slots = static_cast<int>(ProcGlobal->allProcCount);
    table = static_cast<ProgressTable *>(
        GetNamedDSMSegment("amplitude_sync run progress", table_size(init_slots), init_table, &found));
#endif
    return table;
}

ProgressSlot *my_slot() {
    ProgressTable *t = attached();
    if (!t || !MyProc) return nullptr;
#if PG_VERSION_NUM >= 170000
    int index = MyProcNumber;
#else
    int index = MyProc->pgprocno;
#endif
    return index >= 0 && index < t->slots ? &t->slot[index] : nullptr;
}

void begin_write(ProgressSlot *s) {
    pg_atomic_fetch_add_u32(&s->changecount, 1);
    pg_write_barrier();
}

void end_write(ProgressSlot *s) {
    pg_write_barrier();
    pg_atomic_fetch_add_u32(&s->changecount, 1);
}

}  // namespace

void progress_request_shared_memory() {
    prev_shmem_request_hook = shmem_request_hook;
    shmem_request_hook = request_hook;
    prev_shmem_startup_hook = shmem_startup_hook;
    shmem_startup_hook = startup_hook;
}

void progress_begin(int64 run_id, const char *what) {
    ProgressSlot *s = my_slot();
    if (!s) return;
    begin_write(s);
    s->pid = MyProcPid;
    s->database = MyDatabaseId;
    s->role = GetUserId();
    s->run_id = run_id;
    s->started_at = GetCurrentTimestamp();
    s->rows_read = s->sent = s->rejected = s->in_flight = 0;
    // Cut on a character boundary, in the database's encoding.
    int length = pg_mbcliplen(what, static_cast<int>(strlen(what)), static_cast<int>(sizeof(s->what)) - 1);
    memcpy(s->what, what, length);
    s->what[length] = '\0';
    end_write(s);
}

void progress_update(int64 rows_read, int64 sent, int64 rejected, int64 in_flight) {
    ProgressSlot *s = my_slot();
    if (!s || s->pid != MyProcPid) return;
    begin_write(s);
    s->rows_read = rows_read;
    s->sent = sent;
    s->rejected = rejected;
    s->in_flight = in_flight;
    end_write(s);
}

void progress_end() {
    ProgressSlot *s = my_slot();
    if (!s || s->pid != MyProcPid) return;
    begin_write(s);
    s->pid = 0;
    end_write(s);
}

extern "C" {

PG_FUNCTION_INFO_V1(amplitude_sync_run_progress);

// _run_progress() RETURNS SETOF (pid, run_id, what, started_at, rows_read,
// sent, rejected, requests_in_flight): the runs under way in this database
// of the roles the caller has the privileges of (all of them with
// pg_read_all_stats).
Datum amplitude_sync_run_progress(PG_FUNCTION_ARGS) {
    InitMaterializedSRF(fcinfo, 0);
    ReturnSetInfo *rsinfo = reinterpret_cast<ReturnSetInfo *>(fcinfo->resultinfo);
    ProgressTable *t = attached();
    if (!t) PG_RETURN_VOID();
    bool all = has_privs_of_role(GetUserId(), ROLE_PG_READ_ALL_STATS);
    for (int i = 0; i < t->slots; ++i) {
        ProgressSlot copy;
        for (;;) {
            uint32 before = pg_atomic_read_u32(&t->slot[i].changecount);
            pg_read_barrier();
            memcpy(&copy, &t->slot[i], sizeof(copy));
            pg_read_barrier();
            if (before % 2 == 0 && before == pg_atomic_read_u32(&t->slot[i].changecount)) break;
            CHECK_FOR_INTERRUPTS();
        }
        // A slot left by a backend that died mid-run names a process that is gone.
        if (copy.pid == 0 || copy.database != MyDatabaseId || BackendPidGetProc(copy.pid) == nullptr) continue;
        if (!all && !has_privs_of_role(GetUserId(), copy.role)) continue;
        copy.what[sizeof(copy.what) - 1] = '\0';
        Datum values[8] = {Int32GetDatum(copy.pid), Int64GetDatum(copy.run_id), CStringGetTextDatum(copy.what),
                           TimestampTzGetDatum(copy.started_at), Int64GetDatum(copy.rows_read),
                           Int64GetDatum(copy.sent), Int64GetDatum(copy.rejected), Int64GetDatum(copy.in_flight)};
        bool nulls[8] = {false, copy.run_id == 0, false, false, false, false, false, false};
        tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
    }
    PG_RETURN_VOID();
}

}  // extern "C"
