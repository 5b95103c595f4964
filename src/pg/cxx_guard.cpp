#include "cxx_guard.hpp"

#include <cstring>
#include <new>
#include <stdexcept>

#include "event_encoder.hpp"
#include "pg_headers.hpp"

namespace {

// Copies at most size - 1 bytes and always terminates. Not strlcpy: the
// PostgreSQL 17/18 headers built for newer glibc declare it as glibc's, which
// Debian 12's glibc 2.36 lacks (test/pg_versions.sh builds against them).
void copy_text(char *dst, size_t size, const char *src) noexcept {
    if (size == 0) return;
    const char *text = src ? src : "";
    const size_t len = strnlen(text, size - 1);
    memcpy(dst, text, len);
    dst[len] = '\0';
}

}  // namespace

void capture_cxx_exception(CxxError *error) noexcept {
    error->set = true;
    copy_text(error->sqlstate, sizeof error->sqlstate, "XX000");
    error->detail[0] = error->hint[0] = '\0';
    try {
        throw;
    } catch (const amplitude_sync::PlanError &e) {
        copy_text(error->sqlstate, sizeof error->sqlstate, e.sqlstate);
        copy_text(error->message, sizeof error->message, e.what());
        copy_text(error->detail, sizeof error->detail, e.detail.c_str());
        copy_text(error->hint, sizeof error->hint, e.hint.c_str());
    } catch (const std::bad_alloc &) {
        copy_text(error->sqlstate, sizeof error->sqlstate, "53200");
        copy_text(error->message, sizeof error->message, "out of memory");
    } catch (const std::exception &e) {
        copy_text(error->message, sizeof error->message, e.what());
    } catch (...) {
        copy_text(error->message, sizeof error->message, "unknown C++ exception");
    }
}

void raise_cxx_error(const CxxError *error) {
    const char *s = error->sqlstate;
    ereport(ERROR, (errcode(MAKE_SQLSTATE(s[0], s[1], s[2], s[3], s[4])),
                    errmsg("%s", error->message),
                    error->detail[0] ? errdetail("%s", error->detail) : 0,
                    error->hint[0] ? errhint("%s", error->hint) : 0));
    pg_unreachable();
}
