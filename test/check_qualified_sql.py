#!/usr/bin/env python3
"""Every SQL statement the extension runs names pg_catalog's operators and
functions explicitly, so that no search_path, whoever's, can change what they
mean (see README, "Security"). This check reads the SQL text in the C++ glue
(string literals that start a statement) and in the install scripts, and
fails on an operator not written OPERATOR(pg_catalog.x) and on a function
call whose name is not schema-qualified. It is a lint: it complements, and
does not replace, the pinned search_path and the trap test (sql/security.sql).
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATEMENT = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE|ALTER|DROP|COMMENT)\b")
# Words that may be followed by "(" without being a function call.
NOT_CALLS = {
    "in", "exists", "any", "all", "array", "row", "rows", "values", "coalesce", "nullif", "greatest", "least",
    "cast", "from", "using", "on", "over", "filter", "join", "where", "and", "or", "not", "select", "key", "check",
    "unique", "table", "returns", "operator", "with", "lateral", "into", "when", "then", "else", "if", "elsif",
    "return", "by", "set", "references", "as", "is", "case", "distinct", "exists", "do", "loop", "index", "view",
    "function", "procedure", "qualified_operator", "trigger", "execute", "perform", "raise", "begin", "end", "declare", "for", "while",
}
ASSIGNMENT_OPTIONS = re.compile(r"\b(ERRCODE|HINT|DETAIL|MESSAGE)\s*=", re.I)


def cxx_statements(path):
    """Adjacent C++ string literals joined, those that start a statement."""
    text = path.read_text()
    text = re.sub(r"//[^\n]*", "", text)
    literal = re.compile(r'"((?:[^"\\\n]|\\.)*)"')
    statements, current, last_end = [], [], None
    for m in literal.finditer(text):
        if last_end is not None and text[last_end:m.start()].strip() == "":
            current.append(m.group(1))
        else:
            if current:
                statements.append("".join(current))
            current = [m.group(1)]
        last_end = m.end()
    if current:
        statements.append("".join(current))
    out = []
    for s in statements:
        s = s.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
        if STATEMENT.match(s):
            out.append(s)
    return out


def strip(sql):
    """Comments, string literals and quoted identifiers out; dollar-quoted
    bodies kept (they are SQL too); format placeholders made identifiers."""
    sql = re.sub(r"--[^\n]*", " ", sql)
    sql = re.sub(r"/\*.*?\*/", " ", sql, flags=re.S)
    sql = re.sub(r"\$(\w*)\$", " ", sql)  # dollar quotes: keep the body
    sql = re.sub(r"[Ee]?'(?:[^']|'')*'", " 'lit' ", sql)
    sql = re.sub(r'"(?:[^"]|"")*"', " qid ", sql)
    sql = re.sub(r"%\d*\$?[sdILu]|%lld|%llu", " placeholder ", sql)
    return sql


def problems(sql):
    found = []
    s = strip(sql)
    s = re.sub(r"OPERATOR\s*\(\s*pg_catalog\.[^)\s]+\s*\)", " qualified_operator ", s, flags=re.I)
    s = ASSIGNMENT_OPTIONS.sub(" opt ", s)
    s = re.sub(r"\bSET\s+\w+\s*=", " set ", s, flags=re.I)
    s = re.sub(r"\b(WITH|SET)\s*\(\s*\w+\s*=", " with_options ", s, flags=re.I)  # CREATE VIEW ... WITH (option = ...), ALTER TABLE ... SET (option = ...)  # SET search_path = ..., UPDATE .. SET col =
    s = re.sub(r",\s*\w+\s*=(?!>)", " , ", s)  # further assignments of an UPDATE's SET list
    s = re.sub(r"=>|:=|::", " ", s)
    s = re.sub(r"\.\*|\(\*\)|SELECT\s+\*", " ", s, flags=re.I)
    for m in re.finditer(r"[-+*/<>=~!@#%^&|]+", s):
        found.append("unqualified operator %r near: %s" % (m.group(0), s[max(0, m.start() - 40):m.end() + 20].strip()))
    for m in re.finditer(r"(?<![.\w])([A-Za-z_]\w*)\s*\(", s):
        word = m.group(1)
        before = s[:m.start()].rstrip()
        if word.lower() in NOT_CALLS or re.search(r"\bAS$", before, re.I):
            continue
        # Names of the extension's own tables and relations with column lists.
        if re.search(r"\b(INTO|TABLE|ON|REFERENCES|VIEW|INDEX)\s+$", before + " ", re.I):
            continue
        found.append("unqualified function %r near: %s" % (word, s[max(0, m.start() - 40):m.end() + 20].strip()))
    return found


def main():
    failures = []
    for path in sorted((ROOT / "src" / "pg").glob("*.cpp")):
        for statement in cxx_statements(path):
            for p in problems(statement):
                failures.append("%s: %s" % (path.relative_to(ROOT), p))
    for path in sorted((ROOT / "sql").glob("amplitude_sync--*.sql")):
        if path.name == "amplitude_sync--1.0.sql":
            continue  # released, not run any more
        text = re.sub(r"^\\echo.*$", "", path.read_text(), flags=re.M)
        for p in problems(text):
            failures.append("%s: %s" % (path.relative_to(ROOT), p))
    for f in failures:
        print(f)
    print("%d unqualified operators or functions in the extension's SQL" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
