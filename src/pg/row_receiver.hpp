// Reading a cursor's rows straight from the executor, one slot at a time,
// instead of through SPI_cursor_fetch (which copies every row into a tuple
// table first): a saved sync looks most of its rows up and drops them, so
// the copy was most of the cost of a run with nothing to send.
#pragma once

#include "pg_headers.hpp"

struct RowReceiver;

// Called for each row in the executor's memory context: switch to your own
// for anything that must outlive the row. Returns false to stop the fetch.
using ReceiveRow = bool (*)(TupleTableSlot *slot, RowReceiver *receiver);

// Embed as the first member of a struct that carries the callback's state.
struct RowReceiver {
    DestReceiver dest;
    ReceiveRow receive;
};

void init_row_receiver(RowReceiver *receiver, ReceiveRow receive);

// Fetches up to count rows (FETCH_ALL: to the end) of an open cursor into
// the receiver; returns how many were fetched.
uint64 fetch_rows(Portal portal, long count, RowReceiver *receiver);
