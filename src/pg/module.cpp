// Module entry: the magic block and one-time libcurl set-up.
#include <curl/curl.h>

#include "pg_headers.hpp"

extern "C" {

PG_MODULE_MAGIC;

void _PG_init(void);

void _PG_init(void) {
    // Once per backend, before any thread or handle exists.
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR), errmsg("could not initialise libcurl")));
#if PG_VERSION_NUM >= 150000
    MarkGUCPrefixReserved("amplitude_sync");
#else
    EmitWarningsOnPlaceholders("amplitude_sync");
#endif
}

}  // extern "C"
