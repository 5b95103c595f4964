#include "connection.hpp"

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "pg_headers.hpp"

namespace {

enum class OptionKind { kRegion, kUrl, kBool, kInt, kSecret };

struct OptionSpec {
    const char *name;
    Oid catalog;  // ForeignServerRelationId or UserMappingRelationId
    OptionKind kind;
    bool superuser_only;
    int min, max;  // kInt only
};

const OptionSpec kOptions[] = {
    {"region", ForeignServerRelationId, OptionKind::kRegion, false, 0, 0},
    {"endpoint", ForeignServerRelationId, OptionKind::kUrl, true, 0, 0},
    {"verify_tls", ForeignServerRelationId, OptionKind::kBool, true, 0, 0},
    {"connect_timeout_ms", ForeignServerRelationId, OptionKind::kInt, false, 1, 600000},
    {"request_timeout_ms", ForeignServerRelationId, OptionKind::kInt, false, 1, 3600000},
    {"max_concurrency", ForeignServerRelationId, OptionKind::kInt, false, 1, 32},
    {"max_attempts", ForeignServerRelationId, OptionKind::kInt, false, 1, 100},
    {"max_retry_seconds", ForeignServerRelationId, OptionKind::kInt, false, 0, 86400},
    {"retry_backoff_ms", ForeignServerRelationId, OptionKind::kInt, false, 1, 600000},
    {"throttle_pause_ms", ForeignServerRelationId, OptionKind::kInt, false, 1, 3600000},
    {"max_events_per_second", ForeignServerRelationId, OptionKind::kInt, false, 1, 1000000},
    {"rate_window_ms", ForeignServerRelationId, OptionKind::kInt, false, 1000, 600000},
    {"api_key", UserMappingRelationId, OptionKind::kSecret, false, 0, 0},
};

const char *catalog_noun(Oid catalog) {
    if (catalog == ForeignServerRelationId) return "a server";
    if (catalog == UserMappingRelationId) return "a user mapping";
    if (catalog == ForeignDataWrapperRelationId) return "the foreign-data wrapper";
    return "a foreign table";
}

char *valid_option_names(Oid catalog) {
    StringInfoData buf;
    initStringInfo(&buf);
    for (const OptionSpec &o : kOptions) {
        if (o.catalog != catalog) continue;
        appendStringInfo(&buf, "%s%s", buf.len ? ", " : "", o.name);
    }
    return buf.data;
}

const OptionSpec *find_option(const char *name) {
    for (const OptionSpec &o : kOptions)
        if (strcmp(o.name, name) == 0) return &o;
    return nullptr;
}

bool parse_int_option(const char *value, int min, int max, int *out) {
    char *end = nullptr;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (errno != 0 || end == value || *end != '\0' || v < min || v > max) return false;
    *out = static_cast<int>(v);
    return true;
}

void check_option(DefElem *def, Oid catalog) {
    const char *value = defGetString(def);
    const OptionSpec *spec = find_option(def->defname);
    if (spec && spec->kind == OptionKind::kSecret && catalog != UserMappingRelationId) {
        ereport(ERROR, (errcode(ERRCODE_FDW_INVALID_OPTION_NAME),
                        errmsg("option \"%s\" is not allowed on %s", def->defname, catalog_noun(catalog)),
                        errdetail("Server options are readable by every role; the API key belongs in a user mapping."),
                        errhint("Use CREATE USER MAPPING FOR CURRENT_USER SERVER name OPTIONS (api_key '...').")));
    }
    if (!spec || spec->catalog != catalog) {
        char *valid = valid_option_names(catalog);
        ereport(ERROR, (errcode(ERRCODE_FDW_INVALID_OPTION_NAME),
                        errmsg("invalid option \"%s\" for %s", def->defname, catalog_noun(catalog)),
                        valid[0] ? errhint("Valid options in this context are: %s.", valid)
                                 : errhint("There are no valid options in this context.")));
    }
    if (spec->superuser_only && !superuser()) {
        ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                        errmsg("only superusers may set option \"%s\"", spec->name),
                        errdetail("It decides where the API key is sent and how it is protected.")));
    }
    switch (spec->kind) {
        case OptionKind::kRegion:
            if (pg_strcasecmp(value, "us") != 0 && pg_strcasecmp(value, "eu") != 0)
                ereport(ERROR, (errcode(ERRCODE_FDW_INVALID_ATTRIBUTE_VALUE),
                                errmsg("invalid value for option \"region\": \"%s\"", value),
                                errhint("Valid values are \"us\" and \"eu\".")));
            break;
        case OptionKind::kUrl:
            if ((strncmp(value, "https://", 8) != 0 && strncmp(value, "http://", 7) != 0) ||
                strpbrk(value, " \t\r\n?#") != nullptr)
                ereport(ERROR, (errcode(ERRCODE_FDW_INVALID_ATTRIBUTE_VALUE),
                                errmsg("invalid value for option \"endpoint\": \"%s\"", value),
                                errhint("Give a base URL such as https://proxy.example.com, without a path to an API.")));
            break;
        case OptionKind::kBool: {
            bool ignored;
            if (!parse_bool(value, &ignored))
                ereport(ERROR, (errcode(ERRCODE_FDW_INVALID_ATTRIBUTE_VALUE),
                                errmsg("invalid value for option \"%s\": \"%s\"", spec->name, value),
                                errhint("Use true or false.")));
            break;
        }
        case OptionKind::kInt: {
            int ignored;
            if (!parse_int_option(value, spec->min, spec->max, &ignored))
                ereport(ERROR, (errcode(ERRCODE_FDW_INVALID_ATTRIBUTE_VALUE),
                                errmsg("invalid value for option \"%s\": \"%s\"", spec->name, value),
                                errhint("Use an integer from %d to %d.", spec->min, spec->max)));
            break;
        }
        case OptionKind::kSecret: {
            // Plain printable ASCII only: a key that Amplitude could echo
            // back escaped (JSON, URL encoding) could escape redaction.
            bool plain = value[0] != '\0';
            for (const char *c = value; *c; ++c)
                plain &= *c > ' ' && *c < 0x7f && *c != '"' && *c != '\\';
            if (!plain)
                // The value is never echoed: it is a secret.
                ereport(ERROR, (errcode(ERRCODE_FDW_INVALID_ATTRIBUTE_VALUE),
                                errmsg("invalid value for option \"api_key\""),
                                errdetail("An Amplitude API key is plain printable ASCII: not empty, without spaces, "
                                          "quotes, backslashes or other characters.")));
            break;
        }
    }
}

HeapTuple find_user_mapping(Oid userid, Oid serverid) {
    HeapTuple tp = SearchSysCache2(USERMAPPINGUSERSERVER, ObjectIdGetDatum(userid),
                                   ObjectIdGetDatum(serverid));
    if (HeapTupleIsValid(tp)) return tp;
    return SearchSysCache2(USERMAPPINGUSERSERVER, ObjectIdGetDatum(InvalidOid),
                           ObjectIdGetDatum(serverid));
}

}  // namespace

extern "C" {

PG_FUNCTION_INFO_V1(amplitude_sync_fdw_validator);

// Validates options of the wrapper, its servers and user mappings at DDL time.
Datum amplitude_sync_fdw_validator(PG_FUNCTION_ARGS) {
    List *options = untransformRelOptions(PG_GETARG_DATUM(0));
    Oid catalog = PG_GETARG_OID(1);
    bool has_api_key = false;
    ListCell *cell;
    foreach (cell, options) {
        DefElem *def = static_cast<DefElem *>(lfirst(cell));
        check_option(def, catalog);
        has_api_key |= strcmp(def->defname, "api_key") == 0;
    }
    if (catalog == UserMappingRelationId && !has_api_key) {
        ereport(ERROR, (errcode(ERRCODE_FDW_OPTION_NAME_NOT_FOUND),
                        errmsg("user mapping needs option \"api_key\""),
                        errhint("Use OPTIONS (api_key '...') with the API key of the Amplitude project.")));
    }
    PG_RETURN_VOID();
}

}  // extern "C"

ForeignServer *amplitude_server(const char *server_name) {
    ForeignServer *server = GetForeignServerByName(server_name, false);
    ForeignDataWrapper *fdw = GetForeignDataWrapper(server->fdwid);
    if (strcmp(fdw->fdwname, "amplitude_sync") != 0) {
        ereport(ERROR, (errcode(ERRCODE_WRONG_OBJECT_TYPE),
                        errmsg("server \"%s\" does not use the amplitude_sync foreign-data wrapper",
                               server_name)));
    }
    return server;
}

bool has_server_usage(const ForeignServer *server, Oid role) {
#if PG_VERSION_NUM >= 160000
    return object_aclcheck(ForeignServerRelationId, server->serverid, role, ACL_USAGE) == ACLCHECK_OK;
#else
    return pg_foreign_server_aclcheck(server->serverid, role, ACL_USAGE) == ACLCHECK_OK;
#endif
}

void load_connection(const char *server_name, AmpConnection *conn) {
    ForeignServer *server = amplitude_server(server_name);
    load_connection_as(server, GetUserId(), conn, false);
}

bool load_connection_as(const ForeignServer *server, Oid role, AmpConnection *conn, bool missing_ok) {
    if (!has_server_usage(server, role)) {
        if (missing_ok) return false;
        if (role == GetUserId()) aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_FOREIGN_SERVER, server->servername);
        ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                        errmsg("role \"%s\" has no USAGE on server \"%s\"", GetUserNameFromId(role, false),
                               server->servername)));
    }
    *conn = AmpConnection{};
    conn->server_name = pstrdup(server->servername);
    conn->base_url = "https://api2.amplitude.com";
    conn->verify_tls = true;
    conn->connect_timeout_ms = 10000;
    conn->request_timeout_ms = 30000;
    conn->max_concurrency = 4;
    conn->max_attempts = 8;
    conn->max_retry_seconds = 300;
    conn->retry_backoff_ms = 500;
    conn->throttle_pause_ms = -1;

    const char *endpoint = nullptr;
    ListCell *cell;
    foreach (cell, server->options) {
        DefElem *def = static_cast<DefElem *>(lfirst(cell));
        const char *value = defGetString(def);
        const char *name = def->defname;
        if (strcmp(name, "region") == 0) {
            if (pg_strcasecmp(value, "eu") == 0) conn->base_url = "https://api.eu.amplitude.com";
        } else if (strcmp(name, "endpoint") == 0) {
            endpoint = value;
        } else if (strcmp(name, "verify_tls") == 0) {
            parse_bool(value, &conn->verify_tls);
        } else {
            const OptionSpec *spec = find_option(name);
            int v = 0;
            if (!spec || spec->kind != OptionKind::kInt || !parse_int_option(value, spec->min, spec->max, &v))
                continue;  // the validator let it in, so it is from an older version: ignore
            if (strcmp(name, "connect_timeout_ms") == 0) conn->connect_timeout_ms = v;
            else if (strcmp(name, "request_timeout_ms") == 0) conn->request_timeout_ms = v;
            else if (strcmp(name, "max_concurrency") == 0) conn->max_concurrency = v;
            else if (strcmp(name, "max_attempts") == 0) conn->max_attempts = v;
            else if (strcmp(name, "max_retry_seconds") == 0) conn->max_retry_seconds = v;
            else if (strcmp(name, "retry_backoff_ms") == 0) conn->retry_backoff_ms = v;
            else if (strcmp(name, "throttle_pause_ms") == 0) conn->throttle_pause_ms = v;
            else if (strcmp(name, "max_events_per_second") == 0) conn->max_events_per_second = v;
            else if (strcmp(name, "rate_window_ms") == 0) conn->rate_window_ms = v;
        }
    }
    if (endpoint) {
        char *url = pstrdup(endpoint);
        size_t len = strlen(url);
        while (len > 0 && url[len - 1] == '/') url[--len] = '\0';
        conn->base_url = url;
        conn->allow_plain_http = strncmp(url, "http://", 7) == 0;
    }

    HeapTuple tp = find_user_mapping(role, server->serverid);
    if (!HeapTupleIsValid(tp)) {
        if (missing_ok) return false;
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT),
                        errmsg("no user mapping for role \"%s\" on server \"%s\"",
                               GetUserNameFromId(role, false), server->servername),
                        errdetail("The Amplitude API key is kept in a user mapping."),
                        errhint("Create one: CREATE USER MAPPING FOR CURRENT_USER SERVER %s OPTIONS (api_key '...');",
                                quote_identifier(server->servername))));
    }
    bool isnull;
    Datum datum = SysCacheGetAttr(USERMAPPINGUSERSERVER, tp, Anum_pg_user_mapping_umoptions, &isnull);
    List *um_options = isnull ? NIL : untransformRelOptions(datum);
    ReleaseSysCache(tp);
    foreach (cell, um_options) {
        DefElem *def = static_cast<DefElem *>(lfirst(cell));
        if (strcmp(def->defname, "api_key") == 0) conn->api_key = pstrdup(defGetString(def));
    }
    if (!conn->api_key) {
        if (missing_ok) return false;
        ereport(ERROR, (errcode(ERRCODE_FDW_OPTION_NAME_NOT_FOUND),
                        errmsg("user mapping for server \"%s\" has no \"api_key\"", server->servername),
                        errhint("Use ALTER USER MAPPING FOR CURRENT_USER SERVER %s OPTIONS (ADD api_key '...');",
                                quote_identifier(server->servername))));
    }
    return true;
}
