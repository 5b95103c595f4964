// The transactional outbox (outbox.cpp): entries written in the caller's
// transaction, delivered after commit by flush_outbox.
#pragma once

#include "call_options.hpp"

#include "pg_headers.hpp"

// One member of a record: a name and a typed value, like a query's column.
struct OutboxField {
    const char *name;
    Oid type;
    Datum value;
    bool is_null;
};

// Validates and encodes one record with the field mapper of the one-shot
// functions and writes it to the outbox, to be sent with role's user
// mapping on the server (its USAGE and mapping are checked now). canonical:
// a text of the record, from which (with the entry's number) an event's
// insert_id is derived when it has none. Raises the mapper's errors, and
// the reason Amplitude would refuse the record. check_mapping: refuse the
// entry when role has no USAGE or mapping (track, identify); a capture's
// trigger queues anyway, and flush_outbox reports the entries it cannot
// send. Returns the entry_id.
int64 queue_outbox_entry(const char *server_name, Oid role, amplitude_sync::Target target,
                         const OutboxField *fields, int nfields, const char *canonical, bool check_mapping);

// The background worker (outbox_worker.cpp): registered by _PG_init when
// the library is preloaded; outbox_note_queued() makes the commit of the
// current transaction wake it (nothing without preload).
void outbox_worker_init();
void outbox_note_queued();
