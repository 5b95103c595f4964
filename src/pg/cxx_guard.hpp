// Crossing from PostgreSQL into C++ code that may throw.
//
// A C++ exception must never reach PostgreSQL, and ereport(ERROR) must never
// unwind (longjmp) through a frame holding C++ objects with destructors. So
// every call into throwing C++ code goes through AMP_CXX: the exception is
// caught and copied into plain storage, the C++ frames are gone, and only then
// is the PostgreSQL error raised. Functions that use AMP_CXX keep no C++
// objects with destructors in their own frame.
#pragma once

#include <cstddef>

struct CxxError {
    bool set;
    char sqlstate[6];
    char message[512];
    char detail[1024];
    char hint[512];
};

// Call only from inside a catch block: classifies the current exception.
void capture_cxx_exception(CxxError *error) noexcept;
// Raises the captured error as a PostgreSQL ERROR (does not return).
[[noreturn]] void raise_cxx_error(const CxxError *error);

#define AMP_CXX(...)                                  \
    do {                                              \
        CxxError amp_cxx_error_;                      \
        amp_cxx_error_.set = false;                   \
        try {                                         \
            __VA_ARGS__;                              \
        } catch (...) {                               \
            capture_cxx_exception(&amp_cxx_error_);   \
        }                                             \
        if (amp_cxx_error_.set) raise_cxx_error(&amp_cxx_error_); \
    } while (0)
