#include "sql_arguments.hpp"

void require_arg(FunctionCallInfo fcinfo, int arg, const char *name) {
    if (PG_ARGISNULL(arg))
        ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("argument \"%s\" must not be null", name)));
}

const char *text_arg(FunctionCallInfo fcinfo, int arg, const char *name) {
    require_arg(fcinfo, arg, name);
    return text_to_cstring(PG_GETARG_TEXT_PP(arg));
}

const char *optional_text_arg(FunctionCallInfo fcinfo, int arg) {
    return PG_ARGISNULL(arg) ? nullptr : text_to_cstring(PG_GETARG_TEXT_PP(arg));
}

const char *name_arg(FunctionCallInfo fcinfo, int arg, const char *name) {
    require_arg(fcinfo, arg, name);
    return NameStr(*PG_GETARG_NAME(arg));
}
