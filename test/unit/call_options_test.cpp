// The one place that checks the arguments of one-shot calls and saved syncs.
#include <gtest/gtest.h>

#include "call_options.hpp"
#include "field_mapping.hpp"

using namespace amplitude_sync;

namespace {

CallArguments args(const char *object) {
    CallArguments a;
    a.object = object;
    return a;
}

std::string error_of(const CallArguments &a) {
    try {
        check_call_arguments(a);
    } catch (const PlanError &e) {
        return std::string(e.sqlstate) + " " + e.what() + " | " + e.hint;
    }
    return "";
}

}  // namespace

TEST(CallOptions, DefaultsFollowTheObject) {
    CallOptions events = check_call_arguments(args("event"));
    EXPECT_STREQ(events.behaviour, "append");
    EXPECT_EQ(events.endpoint, &kHttpApiEndpoint);
    EXPECT_EQ(events.max_records, 2000);
    CallOptions users = check_call_arguments(args("user"));
    EXPECT_STREQ(users.behaviour, "update_or_create");
    EXPECT_EQ(users.endpoint, &kIdentifyEndpoint);
    EXPECT_EQ(users.max_records, 1024);
    EXPECT_EQ(check_call_arguments(args("group")).endpoint, &kGroupIdentifyEndpoint);
}

TEST(CallOptions, EnumeratedValuesAreCaseInsensitive) {
    CallArguments a = args("EVENT");
    a.api = "Batch";
    CallOptions o = check_call_arguments(a);
    EXPECT_STREQ(o.object, "event");
    EXPECT_STREQ(o.api, "batch");
    EXPECT_EQ(o.endpoint, &kBatchEndpoint);
}

TEST(CallOptions, UnknownValuesListTheSupportedOnes) {
    EXPECT_EQ(error_of(args("account")),
              "22023 invalid value for argument \"object\": \"account\" | Supported values: event, user, device, group.");
    CallArguments a = args("user");
    a.nulls = "drop";
    EXPECT_EQ(error_of(a), "22023 invalid value for argument \"nulls\": \"drop\" | Supported values: skip, unset.");
    a = args("event");
    a.behaviour = "mirror";
    EXPECT_NE(error_of(a).find("Supported values: append, update_or_create."), std::string::npos);
}

TEST(CallOptions, CombinationsAmplitudeCannotTake) {
    CallArguments a = args("user");
    a.behaviour = "append";
    EXPECT_NE(error_of(a).find("not supported for object \"user\""), std::string::npos);
    a = args("group");
    a.api = "batch";
    EXPECT_NE(error_of(a).find("api \"batch\" applies to events only"), std::string::npos);
    a = args("group");
    a.properties_event = "Updated";
    EXPECT_NE(error_of(a).find("properties_event applies to user and device"), std::string::npos);
    a = args("user");
    a.properties_event = "";
    EXPECT_NE(error_of(a).find("must not be empty"), std::string::npos);
    a = args("user");
    a.properties_event = "[Amplitude] Revenue";
    EXPECT_NE(error_of(a).find("properties_event \"[Amplitude] Revenue\" is reserved for Amplitude"), std::string::npos);
    // The form endpoints take no options: a minimum below Amplitude's 5
    // cannot be honoured there; a longer one is checked locally.
    for (const char *object : {"user", "device"}) {
        a = args(object);
        a.min_id_length = 3;
        EXPECT_NE(error_of(a).find("min_id_length below 5 applies to events only"), std::string::npos) << object;
        a.min_id_length = 5;  // what /identify enforces anyway
        EXPECT_EQ(check_call_arguments(a).min_id_length, 5) << object;
        a.min_id_length = 10;
        EXPECT_EQ(check_call_arguments(a).min_id_length, 10) << object;
    }
    a = args("group");
    a.min_id_length = 10;
    EXPECT_NE(error_of(a).find("min_id_length does not apply to groups"), std::string::npos);
    a = args("event");
    a.min_id_length = 3;
    EXPECT_EQ(check_call_arguments(a).min_id_length, 3);
}

TEST(CallOptions, GroupIdentifyCountsPropertiesPerRequest) {
    EXPECT_EQ(kGroupIdentifyEndpoint.max_properties, 1024u);
    for (const Endpoint *e : {&kHttpApiEndpoint, &kBatchEndpoint, &kIdentifyEndpoint})
        EXPECT_EQ(e->max_properties, 0u) << e->path;
}

// Regression (issue 10.9): saved syncs stored min_id_length => -1 and
// ignored a negative batch_size.
TEST(CallOptions, BatchSizeAndMinIdLengthAreBounded) {
    CallArguments a = args("user");
    a.batch_size = -5;
    EXPECT_NE(error_of(a).find("\"batch_size\" must be between 1 and 1024"), std::string::npos);
    a.batch_size = 1025;
    EXPECT_NE(error_of(a).find("between 1 and 1024"), std::string::npos);
    a.batch_size = -1;
    EXPECT_NE(error_of(a).find("between 1 and 1024"), std::string::npos);
    a.batch_size = 0;
    EXPECT_NE(error_of(a).find("between 1 and 1024"), std::string::npos);
    a.batch_size = 100;
    EXPECT_EQ(check_call_arguments(a).max_records, 100);
    a.min_id_length = -1;
    EXPECT_NE(error_of(a).find("\"min_id_length\" must be between 1 and 1000"), std::string::npos);
    a = args("event");
    a.batch_size = 2000;
    EXPECT_EQ(check_call_arguments(a).max_records, 2000);
}

TEST(CallOptionsWatermark, CursorColumnIsForEventsOnly) {
    CallArguments a;
    a.object = "event";
    a.cursor_column = "created_at";
    a.lookback = "1 hour";
    CallOptions o = check_call_arguments(a);
    EXPECT_STREQ(o.cursor_column, "created_at");
    EXPECT_STREQ(o.lookback, "1 hour");
    a.object = "user";
    EXPECT_THROW(check_call_arguments(a), PlanError);
}

TEST(CallOptionsWatermark, LookbackNeedsACursorAndAValidValue) {
    CallArguments a;
    a.object = "event";
    a.lookback = "1 hour";
    EXPECT_THROW(check_call_arguments(a), PlanError);
    a.cursor_column = "";
    EXPECT_THROW(check_call_arguments(a), PlanError);
    a.cursor_column = "id";
    a.lookback = "soon";
    EXPECT_THROW(check_call_arguments(a), PlanError);
    a.lookback = "-5";
    EXPECT_THROW(check_call_arguments(a), PlanError);
    a.lookback = "1000";
    EXPECT_NO_THROW(check_call_arguments(a));
}

TEST(CallOptionsWatermark, LookbackUnits) {
    EXPECT_EQ(lookback_units(nullptr, true), 0);
    EXPECT_EQ(lookback_units("1 hour", true), 3600000000LL);
    EXPECT_EQ(lookback_units("1 hour 30 minutes", true), 5400000000LL);
    EXPECT_EQ(lookback_units(" 2 Days ", true), 172800000000LL);
    EXPECT_EQ(lookback_units("1000", false), 1000);
    EXPECT_THROW(lookback_units("1000", true), PlanError);
    EXPECT_THROW(lookback_units("1 hour", false), PlanError);
    EXPECT_THROW(lookback_units("1 fortnight", true), PlanError);
    EXPECT_THROW(lookback_units("99999999999999999999 hours", true), PlanError);
}
