#include "call_options.hpp"

#include <cctype>
#include <initializer_list>

#include "field_mapping.hpp"

namespace amplitude_sync {

// Amplitude's contract (see the README's "Amplitude's answers"): at most
// 2,000 events and < 1 MB per /2/httpapi request, 20 MB on /batch; 1,024
// identifications per form request; throttled IDs wait 30 s on /2/httpapi
// and 15 s elsewhere; one user_id or device_id may send 30 events/s on
// /2/httpapi and 1,000 on /batch, averaged over about 30 s (the identify
// APIs document no per-ID rate). Group identify: "at most 1024
// identifications, 1024 properties and 1 MB per request".
const Endpoint kHttpApiEndpoint = {"/2/httpapi", 2000, 1000000 - 1, 30000, false, 0, 30, 30000};
const Endpoint kBatchEndpoint = {"/batch", 2000, 20000000, 15000, false, 0, 1000, 30000};
const Endpoint kIdentifyEndpoint = {"/identify", 1024, 1000000 - 1, 15000, true, 0, 0, 30000};
const Endpoint kGroupIdentifyEndpoint = {"/groupidentify", 1024, 1000000 - 1, 15000, true, 1024, 0, 30000};

namespace {

std::string lower(const char *text) {
    std::string s(text);
    for (char &c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

[[noreturn]] void invalid(const std::string &argument, const std::string &value, const std::string &hint) {
    throw PlanError("22023", "invalid value for argument \"" + argument + "\": \"" + value + "\"", "", hint);
}

// The choice the value names (case-insensitive); else an error listing them.
const char *one_of(const char *argument, const char *value, std::initializer_list<const char *> choices) {
    std::string given = lower(value);
    std::string list;
    for (const char *c : choices) {
        if (given == c) return c;
        list += list.empty() ? "" : ", ";
        list += c;
    }
    invalid(argument, value, "Supported values: " + list + ".");
}

void check_range(const char *argument, int value, int min, int max) {
    if (value < min || value > max)
        throw PlanError("22023", std::string("argument \"") + argument + "\" must be between " + std::to_string(min) +
                                     " and " + std::to_string(max),
                        "The value given was " + std::to_string(value) + ".", "");
}

// Parses a lookback: a bare non-negative integer (kind 'n') or one or more
// "<number> <unit>" pairs (kind 't', in microseconds). Returns false if it
// is neither.
bool parse_lookback(const std::string &text, char &kind, long long &value) {
    static const struct {
        const char *name;
        long long usec;
    } units[] = {{"microseconds", 1},          {"microsecond", 1},         {"us", 1},
                 {"milliseconds", 1000},       {"millisecond", 1000},      {"ms", 1000},
                 {"seconds", 1000000},         {"second", 1000000},        {"secs", 1000000},
                 {"sec", 1000000},             {"s", 1000000},             {"minutes", 60000000LL},
                 {"minute", 60000000LL},       {"mins", 60000000LL},       {"min", 60000000LL},
                 {"hours", 3600000000LL},      {"hour", 3600000000LL},     {"h", 3600000000LL},
                 {"days", 86400000000LL},      {"day", 86400000000LL},     {"d", 86400000000LL},
                 {"weeks", 604800000000LL},    {"week", 604800000000LL},   {"w", 604800000000LL}};
    size_t i = 0, n = text.size();
    auto skip = [&] { while (i < n && std::isspace(static_cast<unsigned char>(text[i]))) ++i; };
    long long total = 0;
    int pairs = 0;
    skip();
    while (i < n) {
        size_t start = i;
        long long number = 0;
        while (i < n && std::isdigit(static_cast<unsigned char>(text[i]))) {
            if (number > (9223372036854775807LL - 9) / 10) return false;
            number = number * 10 + (text[i++] - '0');
        }
        if (i == start) return false;
        skip();
        if (i == n && pairs == 0) {
            kind = 'n';
            value = number;
            return true;
        }
        size_t unit_start = i;
        while (i < n && std::isalpha(static_cast<unsigned char>(text[i]))) ++i;
        std::string unit = lower(text.substr(unit_start, i - unit_start).c_str());
        long long usec = 0;
        for (const auto &u : units)
            if (unit == u.name) usec = u.usec;
        if (usec == 0 || number > 9223372036854775807LL / usec || total > 9223372036854775807LL - number * usec)
            return false;
        total += number * usec;
        ++pairs;
        skip();
    }
    if (pairs == 0) return false;
    kind = 't';
    value = total;
    return true;
}

}  // namespace

long long lookback_units(const char *lookback, bool time_cursor) {
    if (!lookback) return 0;
    char kind = 0;
    long long value = 0;
    if (!parse_lookback(lookback, kind, value))
        invalid("lookback", lookback, "Give a duration such as '1 hour' or '90 minutes' for a time or date cursor, "
                                      "or a number of ids such as '1000' for an integer cursor.");
    if (time_cursor && kind != 't')
        throw PlanError("22023", "lookback \"" + std::string(lookback) + "\" needs a unit for a time or date cursor", "",
                        "Give a duration such as '1 hour' or '90 minutes'.");
    if (!time_cursor && kind != 'n')
        throw PlanError("22023", "lookback \"" + std::string(lookback) + "\" must be a number of ids for an integer cursor",
                        "", "Give how far below the watermark to read again, such as '1000'.");
    return value;
}

CallOptions check_call_arguments(const CallArguments &a) {
    CallOptions o;
    o.object = one_of("object", a.object ? a.object : "", {"event", "user", "device", "group"});
    std::string object = o.object;
    o.target = object == "event"  ? Target::kEvents
               : object == "user" ? Target::kUser
               : object == "device" ? Target::kDevice
                                    : Target::kGroup;
    bool events = o.target == Target::kEvents;
    const char *natural = events ? "append" : "update_or_create";
    o.behaviour = a.behaviour ? one_of("behaviour", a.behaviour, {"append", "update_or_create"}) : natural;
    if (std::string(o.behaviour) != natural)
        throw PlanError("22023", "behaviour \"" + std::string(o.behaviour) + "\" is not supported for object \"" + object + "\"",
                        "", "Supported: update_or_create for user, device and group; append for event.");
    o.api = one_of("api", a.api ? a.api : "httpapi", {"httpapi", "batch"});
    bool batch = std::string(o.api) == "batch";
    if (batch && !events)
        throw PlanError("22023", "api \"batch\" applies to events only",
                        "Users, devices and groups are sent to /identify and /groupidentify.",
                        "Leave api out (or use httpapi) for object \"" + object + "\".");
    o.nulls = one_of("nulls", a.nulls ? a.nulls : "skip", {"skip", "unset"});
    o.nulls_unset = std::string(o.nulls) == "unset";
    if (o.nulls_unset && events)
        throw PlanError("22023", "nulls \"unset\" applies to users, devices and groups only",
                        "Events have no properties to remove; NULL columns are left out.", "");
    if (a.properties_event) {
        if (o.target != Target::kUser && o.target != Target::kDevice)
            throw PlanError("22023", "properties_event applies to user and device syncs only", "",
                            "Leave properties_event out for object \"" + object + "\".");
        if (!*a.properties_event)
            throw PlanError("22023", "argument \"properties_event\" must not be empty", "",
                            "Give an event type such as 'Properties Updated', or NULL for none.");
        if (is_reserved_event_type(a.properties_event))
            throw PlanError("22023", "properties_event " + quoted_for_message(a.properties_event) +
                                         " is reserved for Amplitude, which refuses it", "",
                            "Give an event type of your own such as 'Properties Updated'.");
        o.properties_event = a.properties_event;
    }
    o.endpoint = events ? (batch ? &kBatchEndpoint : &kHttpApiEndpoint)
                        : (o.target == Target::kGroup ? &kGroupIdentifyEndpoint : &kIdentifyEndpoint);
    if (a.batch_size != kNotGiven) check_range("batch_size", a.batch_size, 1, o.endpoint->max_records);
    o.batch_size = a.batch_size;
    o.max_records = a.batch_size != kNotGiven ? a.batch_size : o.endpoint->max_records;
    check_range("min_id_length", a.min_id_length, 1, 1000);
    // Only the event endpoints take options: /identify refuses IDs shorter
    // than 5 whatever the call says (a longer minimum is checked locally),
    // and group identifications carry no user or device ID.
    if (o.target == Target::kGroup && a.min_id_length != 5)
        throw PlanError("22023", "min_id_length does not apply to groups",
                        "Group identifications carry no user or device ID.", "Leave min_id_length out for groups.");
    if (!events && a.min_id_length < 5)
        throw PlanError("22023", "min_id_length below 5 applies to events only",
                        "Amplitude's /identify endpoint takes no options and refuses user and device IDs shorter "
                        "than 5 characters.",
                        "Leave min_id_length out (or give 5 or more) for object \"" + object +
                            "\"; to set properties of users with shorter IDs, send events that carry them in "
                            "a user_properties column with amplitude_send_events(..., min_id_length => N).");
    o.min_id_length = a.min_id_length;
    if (a.cursor_column) {
        if (!events)
            throw PlanError("22023", "cursor_column applies to event syncs only",
                            "Users, devices and groups are compared with what Amplitude holds on every run.",
                            "Leave cursor_column out for object \"" + object + "\".");
        if (!*a.cursor_column)
            throw PlanError("22023", "argument \"cursor_column\" must not be empty", "",
                            "Name a column of the source that grows with new rows, such as created_at or a serial id.");
        o.cursor_column = a.cursor_column;
    }
    if (a.lookback) {
        if (!a.cursor_column)
            throw PlanError("22023", "lookback applies to watermark syncs only", "",
                            "Give cursor_column too, or leave lookback out.");
        char kind;
        long long value;
        if (!parse_lookback(a.lookback, kind, value))
            invalid("lookback", a.lookback, "Give a duration such as '1 hour' or '90 minutes' for a time or date "
                                            "cursor, or a number of ids such as '1000' for an integer cursor.");
        o.lookback = a.lookback;
    }
    return o;
}

}  // namespace amplitude_sync
