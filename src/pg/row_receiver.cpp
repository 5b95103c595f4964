#include "row_receiver.hpp"

namespace {

bool receive_slot(TupleTableSlot *slot, DestReceiver *self) {
    RowReceiver *receiver = reinterpret_cast<RowReceiver *>(self);
    return receiver->receive(slot, receiver);
}

void startup(DestReceiver *, int, TupleDesc) {}
void shutdown(DestReceiver *) {}
void destroy(DestReceiver *) {}

}  // namespace

void init_row_receiver(RowReceiver *receiver, ReceiveRow receive) {
    receiver->dest.receiveSlot = receive_slot;
    receiver->dest.rStartup = startup;
    receiver->dest.rShutdown = shutdown;
    receiver->dest.rDestroy = destroy;
    receiver->dest.mydest = DestNone;
    receiver->receive = receive;
}

uint64 fetch_rows(Portal portal, long count, RowReceiver *receiver) {
    // What FETCH does (PerformPortalFetch): the portal sets up its own
    // snapshot, resource owner and memory, and marks itself failed on error.
    return PortalRunFetch(portal, FETCH_FORWARD, count, &receiver->dest);
}
