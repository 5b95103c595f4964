#include "source_query.hpp"

#include <cstring>

namespace {

[[noreturn]] void not_read_only(const char *detail) {
    ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                    errmsg("the query must be a single read-only SELECT, VALUES or TABLE statement"),
                    errdetail("%s", detail),
                    errhint("Select the rows to send; a source never changes data.")));
    pg_unreachable();
}

// A syntax error points into the query, not into the caller's statement.
void source_error_position(void *arg) {
    int position = geterrposition();
    if (position <= 0) return;
    errposition(0);
    internalerrposition(position);
    internalerrquery(static_cast<const char *>(arg));
}

}  // namespace

char *checked_source_query(const char *query) {
    ErrorContextCallback callback;
    callback.callback = source_error_position;
    callback.arg = const_cast<char *>(query);
    callback.previous = error_context_stack;
    error_context_stack = &callback;
    List *statements = pg_parse_query(query);
    error_context_stack = callback.previous;
    if (list_length(statements) != 1)
        not_read_only(list_length(statements) == 0 ? "The query is empty." : "The query holds several statements.");
    RawStmt *raw = linitial_node(RawStmt, statements);
    if (!IsA(raw->stmt, SelectStmt))
        not_read_only(psprintf("Its command is %s.", GetCommandTagName(CreateCommandTag(raw->stmt))));
    SelectStmt *select = reinterpret_cast<SelectStmt *>(raw->stmt);
    if (select->intoClause) not_read_only("SELECT INTO creates a table.");
    // PostgreSQL allows data-modifying WITH only at the top level.
    if (select->withClause) {
        ListCell *cell;
        foreach (cell, select->withClause->ctes) {
            CommonTableExpr *cte = lfirst_node(CommonTableExpr, cell);
            if (!IsA(cte->ctequery, SelectStmt))
                not_read_only(psprintf("Its WITH query \"%s\" runs %s.", cte->ctename,
                                       GetCommandTagName(CreateCommandTag(cte->ctequery))));
        }
    }
    int length = raw->stmt_len > 0 ? raw->stmt_len : static_cast<int>(strlen(query + raw->stmt_location));
    return pnstrdup(query + raw->stmt_location, length);
}

bool source_names_relation(const char *source) {
    // Only a plain (possibly qualified, possibly quoted) name can be one.
    for (const char *c = source; *c; ++c)
        if (!isalnum(static_cast<unsigned char>(*c)) && !strchr("_.\"$", *c) && !IS_HIGHBIT_SET(*c))
            return false;
    return *source != '\0';
}

Oid source_relation(const char *source) {
    if (!source_names_relation(source)) return InvalidOid;
#if PG_VERSION_NUM >= 160000
    List *names = stringToQualifiedNameList(source, nullptr);
#else
    List *names = stringToQualifiedNameList(source);
#endif
    return RangeVarGetRelid(makeRangeVarFromNameList(names), NoLock, true);
}
