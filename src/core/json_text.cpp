#include "json_text.hpp"

#include <charconv>
#include <cmath>
#include <cstring>

namespace amplitude_sync {

namespace {

const char kHex[] = "0123456789abcdef";

// Length of the UTF-8 sequence starting at s[i], or 0 when it is malformed.
size_t utf8_sequence_length(std::string_view s, size_t i) {
    auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
    unsigned char c = byte(i);
    size_t left = s.size() - i;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        return (left >= 2 && (byte(i + 1) & 0xC0) == 0x80) ? 2 : 0;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        if (left < 3) return 0;
        unsigned char c1 = byte(i + 1);
        if ((c1 & 0xC0) != 0x80 || (byte(i + 2) & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && c1 < 0xA0) return 0;  // overlong
        if (c == 0xED && c1 > 0x9F) return 0;  // UTF-16 surrogate
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (left < 4) return 0;
        unsigned char c1 = byte(i + 1);
        if ((c1 & 0xC0) != 0x80 || (byte(i + 2) & 0xC0) != 0x80 || (byte(i + 3) & 0xC0) != 0x80)
            return 0;
        if (c == 0xF0 && c1 < 0x90) return 0;  // overlong
        if (c == 0xF4 && c1 > 0x8F) return 0;  // above U+10FFFF
        return 4;
    }
    return 0;
}

void append_two_digits(std::string &out, int v) {
    out.push_back(static_cast<char>('0' + v / 10));
    out.push_back(static_cast<char>('0' + v % 10));
}

// Gregorian date from days since 1970-01-01 (H. Hinnant's civil_from_days).
void civil_from_days(int64_t z, int64_t &y, int &m, int &d) {
    z += 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const int64_t doe = z - era * 146097;
    const int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    y = yoe + era * 400;
    const int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const int64_t mp = (5 * doy + 2) / 153;
    d = static_cast<int>(doy - (153 * mp + 2) / 5 + 1);
    m = static_cast<int>(mp < 10 ? mp + 3 : mp - 9);
    if (m <= 2) ++y;
}

constexpr int64_t kPgEpochToUnixDays = 10957;
constexpr int64_t kMicrosPerDay = 86400LL * 1000000LL;

int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
    return q;
}

void append_year_month_day(std::string &out, int64_t unix_days) {
    int64_t y;
    int m, d;
    civil_from_days(unix_days, y, m, d);
    if (y < 0 || y > 9999) {
        // ISO 8601 expanded years carry a sign; rare but must stay valid text.
        out.push_back(y < 0 ? '-' : '+');
        y = y < 0 ? -y : y;
    }
    char buf[24];
    auto res = std::to_chars(buf, buf + sizeof buf, y);
    size_t len = static_cast<size_t>(res.ptr - buf);
    for (size_t pad = len; pad < 4; ++pad) out.push_back('0');
    out.append(buf, len);
    out.push_back('-');
    append_two_digits(out, m);
    out.push_back('-');
    append_two_digits(out, d);
}

// Index just past the JSON string starting at json[i] (which is '"').
size_t skip_string(std::string_view json, size_t i) {
    for (++i; i < json.size(); ++i) {
        if (json[i] == '\\') {
            ++i;
        } else if (json[i] == '"') {
            return i + 1;
        }
    }
    return json.size();
}

// Index just past the JSON value starting at json[i].
size_t skip_value(std::string_view json, size_t i) {
    if (i >= json.size()) return i;
    char c = json[i];
    if (c == '"') return skip_string(json, i);
    if (c == '{' || c == '[') {
        int depth = 0;
        for (; i < json.size(); ++i) {
            char k = json[i];
            if (k == '"') {
                i = skip_string(json, i) - 1;
            } else if (k == '{' || k == '[') {
                ++depth;
            } else if (k == '}' || k == ']') {
                if (--depth == 0) return i + 1;
            }
        }
        return json.size();
    }
    while (i < json.size() && json[i] != ',' && json[i] != '}' && json[i] != ']' &&
           json[i] != ' ' && json[i] != '\n' && json[i] != '\t' && json[i] != '\r')
        ++i;
    return i;
}

size_t skip_blank(std::string_view json, size_t i) {
    while (i < json.size() &&
           (json[i] == ' ' || json[i] == '\n' || json[i] == '\t' || json[i] == '\r'))
        ++i;
    return i;
}

}  // namespace

bool is_valid_utf8(std::string_view s) {
    for (size_t i = 0; i < s.size();) {
        size_t n = utf8_sequence_length(s, i);
        if (n == 0) return false;
        i += n;
    }
    return true;
}

std::string storable_text(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
        size_t n = s[i] == '\0' ? 0 : utf8_sequence_length(s, i);
        if (n == 0) {
            unsigned char c = static_cast<unsigned char>(s[i++]);
            out += "\\x";
            out.push_back(kHex[c >> 4]);
            out.push_back(kHex[c & 0xF]);
            continue;
        }
        out.append(s, i, n);
        i += n;
    }
    return out;
}

bool append_json_string(std::string &out, std::string_view s) {
    out.push_back('"');
    size_t run_start = 0;
    for (size_t i = 0; i < s.size();) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        if (c >= 0x80) {
            size_t n = utf8_sequence_length(s, i);
            if (n == 0) return false;
            i += n;
            continue;
        }
        if (c >= 0x20 && c != '"' && c != '\\') {
            ++i;
            continue;
        }
        out.append(s.data() + run_start, i - run_start);
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\b': out += "\\b"; break;
            case '\f': out += "\\f"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                out += "\\u00";
                out.push_back(kHex[c >> 4]);
                out.push_back(kHex[c & 0xF]);
        }
        ++i;
        run_start = i;
    }
    out.append(s.data() + run_start, s.size() - run_start);
    out.push_back('"');
    return true;
}

void append_json_int(std::string &out, int64_t v) {
    char buf[24];
    auto res = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, static_cast<size_t>(res.ptr - buf));
}

bool append_json_double(std::string &out, double v) {
    if (!std::isfinite(v)) return false;
    char buf[32];
    auto res = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, static_cast<size_t>(res.ptr - buf));
    return true;
}

bool append_json_numeric_text(std::string &out, std::string_view text) {
    if (text == "NaN" || text == "Infinity" || text == "-Infinity") return false;
    out.append(text);
    return true;
}

int64_t pg_timestamp_to_unix_millis(int64_t pg_micros) {
    return floor_div(pg_micros, 1000) + kPgEpochToUnixMicros / 1000;
}

void append_iso_timestamp(std::string &out, int64_t pg_micros, bool utc_suffix) {
    int64_t pg_days = floor_div(pg_micros, kMicrosPerDay);
    int64_t micros_of_day = pg_micros - pg_days * kMicrosPerDay;
    out.push_back('"');
    append_year_month_day(out, pg_days + kPgEpochToUnixDays);
    int64_t secs = micros_of_day / 1000000;
    int64_t frac = micros_of_day % 1000000;
    out.push_back('T');
    append_two_digits(out, static_cast<int>(secs / 3600));
    out.push_back(':');
    append_two_digits(out, static_cast<int>(secs / 60 % 60));
    out.push_back(':');
    append_two_digits(out, static_cast<int>(secs % 60));
    if (frac != 0) {
        char digits[7];
        for (int k = 5; k >= 0; --k) {
            digits[k] = static_cast<char>('0' + frac % 10);
            frac /= 10;
        }
        out.push_back('.');
        bool micro_precision = digits[3] != '0' || digits[4] != '0' || digits[5] != '0';
        out.append(digits, micro_precision ? 6 : 3);
    }
    if (utc_suffix) out.push_back('Z');
    out.push_back('"');
}

void append_iso_date(std::string &out, int32_t pg_days) {
    out.push_back('"');
    append_year_month_day(out, static_cast<int64_t>(pg_days) + kPgEpochToUnixDays);
    out.push_back('"');
}

size_t utf8_char_count(std::string_view s) {
    size_t n = 0;
    for (char c : s)
        if ((static_cast<unsigned char>(c) & 0xC0) != 0x80) ++n;
    return n;
}

bool json_has_string_longer_than(std::string_view json, size_t max_chars) {
    if (json.size() <= max_chars + 2) return false;  // a character takes a byte at least
    for (size_t i = 0; i < json.size(); ++i) {
        if (json[i] != '"') continue;
        size_t end = skip_string(json, i), chars = 0;
        for (size_t k = i + 1; k + 1 < end; ++k) {
            unsigned char c = static_cast<unsigned char>(json[k]);
            if (c == '\\') {
                k += json[k + 1] == 'u' ? 5 : 1;
                ++chars;
            } else if ((c & 0xC0) != 0x80) {
                ++chars;
            }
        }
        if (chars > max_chars) return true;
        i = end - 1;
    }
    return false;
}

int json_max_depth(std::string_view json) {
    int depth = 0, max_depth = 0;
    for (size_t i = 0; i < json.size(); ++i) {
        char c = json[i];
        if (c == '"') {
            i = skip_string(json, i) - 1;
        } else if (c == '{' || c == '[') {
            if (++depth > max_depth) max_depth = depth;
        } else if (c == '}' || c == ']') {
            --depth;
        }
    }
    return max_depth;
}

bool json_is_object(std::string_view json) {
    size_t i = skip_blank(json, 0);
    return i < json.size() && json[i] == '{';
}

bool json_object_members(std::string_view json, std::vector<JsonMember> &members) {
    members.clear();
    size_t i = skip_blank(json, 0);
    if (i >= json.size() || json[i] != '{') return false;
    i = skip_blank(json, i + 1);
    while (i < json.size() && json[i] == '"') {
        size_t key_end = skip_string(json, i);
        std::string_view key = json.substr(i, key_end - i);
        i = skip_blank(json, key_end);
        if (i >= json.size() || json[i] != ':') return false;
        i = skip_blank(json, i + 1);
        size_t value_end = skip_value(json, i);
        members.push_back({key, json.substr(i, value_end - i)});
        i = skip_blank(json, value_end);
        if (i < json.size() && json[i] == ',') i = skip_blank(json, i + 1);
    }
    return i < json.size() && json[i] == '}';
}

namespace {

bool is_unreserved(unsigned char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~';
}

}  // namespace

void append_url_encoded(std::string &out, std::string_view s) {
    static const char hex[] = "0123456789ABCDEF";
    for (char ch : s) {
        unsigned char c = static_cast<unsigned char>(ch);
        if (is_unreserved(c)) {
            out.push_back(ch);
        } else {
            out.push_back('%');
            out.push_back(hex[c >> 4]);
            out.push_back(hex[c & 0xF]);
        }
    }
}

size_t url_encoded_size(std::string_view s) {
    size_t n = 0;
    for (char ch : s) n += is_unreserved(static_cast<unsigned char>(ch)) ? 1 : 3;
    return n;
}

}  // namespace amplitude_sync
