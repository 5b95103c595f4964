// Unit tests for src/core/identify_encoder: the operations argument, column
// planning for users, devices and groups (roles, type checks, PlanError
// SQLSTATEs), and the exact identification text IdentifyEncoder writes for a
// row (or why it refuses the row), with the Record fields the delivery uses.
#include "identify_encoder.hpp"
#include "field_mapping_support.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <deque>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

using namespace amplitude_sync;
using namespace amplitude_sync::test;
using TC = TypeCategory;

namespace {

using Ops = std::vector<std::pair<std::string, std::string>>;
using Columns = std::vector<ColumnInput>;

IdentifyOptions Opts(ProfileObject object, Ops operations = {}, bool nulls_unset = false,
                     int min_id_length = 5) {
    IdentifyOptions o;
    o.object = object;
    o.operations = std::move(operations);
    o.nulls_unset = nulls_unset;
    o.min_id_length = min_id_length;
    return o;
}

const IdentifyOptions kUser = Opts(ProfileObject::kUser);
const IdentifyOptions kDevice = Opts(ProfileObject::kDevice);
const IdentifyOptions kGroup = Opts(ProfileObject::kGroup);

PlanFailure PlanFails(const Columns &columns, const IdentifyOptions &options) {
    return FailureOf([&] { plan_identify_columns(columns, options); });
}

PlanFailure ParseFails(std::string_view text, ProfileObject object) {
    return FailureOf([&] { parse_operations(text, object); });
}

Ops Sorted(Ops ops) {
    std::sort(ops.begin(), ops.end());
    return ops;
}

// 2024-05-01T10:00:00Z in PostgreSQL microseconds (from 2000-01-01).
constexpr int64_t kMay1st10h = (1714557600LL - 946684800LL) * 1000000LL;

const char *const kUserOpList =
    "$set, $setOnce, $add, $append, $prepend, $preInsert, $postInsert, $remove, $unset";
const char *const kGroupOpList = "$set, $setOnce, $add, $append, $prepend, $unset";

// Column values; text values point into storage that lives as long as the
// fixture.
class IdentifyTest : public testing::Test, protected ValueBuilder {
protected:
    struct Encoded {
        bool ok = false;
        Record record;
        Rejection rejection;
        std::string properties;  // last_properties() after the row
    };

    static Encoded EncodeWith(IdentifyEncoder &encoder, const std::vector<Value> &values,
                              uint64_t row_number = 7) {
        Encoded e;
        e.ok = encoder.encode_row(row_number, values.data(), e.record, e.rejection);
        e.properties = encoder.last_properties();
        return e;
    }
    static Encoded Encode(const Columns &columns, const std::vector<Value> &values,
                          const IdentifyOptions &options = kUser) {
        IdentifyEncoder encoder(plan_identify_columns(columns, options), options);
        return EncodeWith(encoder, values);
    }
    // The identification text, or "<rejected field: reason>".
    static std::string IdJson(const Columns &columns, const std::vector<Value> &values,
                              const IdentifyOptions &options = kUser) {
        Encoded e = Encode(columns, values, options);
        return e.ok ? e.record.json
                    : "<rejected " + e.rejection.field + ": " + e.rejection.reason + ">";
    }
};

}  // namespace

// ======================================================== parse_operations

TEST(IdentifyParseOperations, EmptyTextMeansNoOperations) {
    EXPECT_TRUE(parse_operations("", ProfileObject::kUser).empty());
    EXPECT_TRUE(parse_operations("", ProfileObject::kGroup).empty());
    EXPECT_TRUE(parse_operations("{}", ProfileObject::kUser).empty());
}

TEST(IdentifyParseOperations, ReadsAnObjectOfColumnToOperation) {
    Ops ops = parse_operations(R"({"visits": "$add", "tags": "$append", "first_seen": "$setOnce"})",
                               ProfileObject::kUser);
    EXPECT_EQ(Sorted(ops), (Ops{{"first_seen", "$setOnce"}, {"tags", "$append"}, {"visits", "$add"}}));
}

TEST(IdentifyParseOperations, EveryUserOperationIsAcceptedForUsersAndDevices) {
    const char *text = R"({"a":"$set","b":"$setOnce","c":"$add","d":"$append","e":"$prepend",
                           "f":"$preInsert","g":"$postInsert","h":"$remove","i":"$unset"})";
    Ops expected = {{"a", "$set"},       {"b", "$setOnce"},    {"c", "$add"},
                    {"d", "$append"},    {"e", "$prepend"},    {"f", "$preInsert"},
                    {"g", "$postInsert"}, {"h", "$remove"},    {"i", "$unset"}};
    EXPECT_EQ(Sorted(parse_operations(text, ProfileObject::kUser)), expected);
    EXPECT_EQ(Sorted(parse_operations(text, ProfileObject::kDevice)), expected);
}

TEST(IdentifyParseOperations, GroupOperations) {
    Ops ops = parse_operations(
        R"({"a":"$set","b":"$setOnce","c":"$add","d":"$append","e":"$prepend","f":"$unset"})",
        ProfileObject::kGroup);
    EXPECT_EQ(Sorted(ops), (Ops{{"a", "$set"}, {"b", "$setOnce"}, {"c", "$add"}, {"d", "$append"},
                                {"e", "$prepend"}, {"f", "$unset"}}));
}

TEST(IdentifyParseOperations, NotAnObjectIs22023) {
    for (const char *text : {R"(["plan"])", R"("$set")", "42", "null", "not json", "{\"a\":"}) {
        PlanFailure f = ParseFails(text, ProfileObject::kUser);
        EXPECT_EQ(f.sqlstate, "22023") << text;
        EXPECT_EQ(f.message, "operations must be a JSON object") << text;
        EXPECT_EQ(f.hint,
                  "Pass a jsonb object of column name to operation, for example "
                  "'{\"logins\": \"$add\", \"tags\": \"$append\"}'.");
    }
}

TEST(IdentifyParseOperations, NonStringOperationIs22023) {
    for (const char *text : {R"({"plan": 1})", R"({"plan": null})", R"({"plan": ["$set"]})",
                             R"({"plan": {"op": "$set"}})"}) {
        PlanFailure f = ParseFails(text, ProfileObject::kUser);
        EXPECT_EQ(f.sqlstate, "22023") << text;
        EXPECT_EQ(f.message, "operation for column \"plan\" must be a string") << text;
    }
}

TEST(IdentifyParseOperations, UnknownOperationIs22023AndListsTheValidOnes) {
    PlanFailure f = ParseFails(R"({"plan": "$increment"})", ProfileObject::kUser);
    EXPECT_EQ(f.sqlstate, "22023");
    EXPECT_EQ(f.message, "unknown operation \"$increment\" for column \"plan\"");
    EXPECT_EQ(f.detail, std::string("Operations for a user are: ") + kUserOpList + ".");

    f = ParseFails(R"({"plan": "set"})", ProfileObject::kDevice);
    EXPECT_EQ(f.sqlstate, "22023");
    EXPECT_EQ(f.message, "unknown operation \"set\" for column \"plan\"");
    EXPECT_EQ(f.detail, std::string("Operations for a device are: ") + kUserOpList + ".");

    // Operation names are case-sensitive; $clearAll is not a per-column operation.
    EXPECT_EQ(ParseFails(R"({"plan": "$SET"})", ProfileObject::kUser).sqlstate, "22023");
    EXPECT_EQ(ParseFails(R"({"plan": "$clearAll"})", ProfileObject::kUser).sqlstate, "22023");
}

TEST(IdentifyParseOperations, GroupsRefuseListOperations) {
    for (const char *op : {"$preInsert", "$postInsert", "$remove"}) {
        std::string text = std::string(R"({"tags": ")") + op + "\"}";
        PlanFailure f = ParseFails(text, ProfileObject::kGroup);
        EXPECT_EQ(f.sqlstate, "22023") << op;
        EXPECT_EQ(f.message, std::string("unknown operation \"") + op + "\" for column \"tags\"");
        EXPECT_EQ(f.detail, std::string("Operations for a group are: ") + kGroupOpList + ".");
        // The same operation is fine for a user.
        EXPECT_EQ(parse_operations(text, ProfileObject::kUser), (Ops{{"tags", op}}));
    }
}

// ==================================================== plan_identify_columns

TEST(IdentifyPlan, UserRolesKeysAndDefaultOperation) {
    const char *fields[] = {"app_version", "platform", "os_name", "os_version", "device_brand",
                            "device_manufacturer", "device_model", "carrier", "country", "region",
                            "city", "dma", "language", "paying", "start_version"};
    Columns columns = {Col("user_id", TC::kText), Col("device_id", TC::kOther),
                       Col("groups", TC::kJsonb), Col("user_properties", TC::kJson)};
    for (const char *f : fields) columns.push_back(Col(std::string("amplitude_") + f, TC::kText));
    columns.push_back(Col("plan", TC::kText));
    columns.push_back(Col("group_type", TC::kText));  // only a property for users
    columns.push_back(Col("say \"hi\"", TC::kInteger));

    std::vector<ColumnPlan> plan = plan_identify_columns(columns, kUser);
    ASSERT_EQ(plan.size(), columns.size());
    EXPECT_EQ(plan[0].role, FieldRole::kUserId);
    EXPECT_EQ(plan[1].role, FieldRole::kDeviceId);
    EXPECT_EQ(plan[2].role, FieldRole::kObject);
    EXPECT_EQ(plan[3].role, FieldRole::kUserProperties);
    for (size_t i = 0; i < std::size(fields); ++i) {
        EXPECT_EQ(plan[4 + i].role, FieldRole::kString) << fields[i];
        EXPECT_EQ(plan[4 + i].json_key, "\"" + std::string(fields[i]) + "\"");
    }
    for (size_t i = 0; i < 4 + std::size(fields); ++i)
        EXPECT_EQ(plan[i].operation, "") << plan[i].column_name;
    size_t p = 4 + std::size(fields);
    EXPECT_EQ(plan[p].role, FieldRole::kProperty);
    EXPECT_EQ(plan[p].operation, "$set");
    EXPECT_EQ(plan[p].json_key, "\"plan\"");
    EXPECT_EQ(plan[p + 1].role, FieldRole::kProperty);
    EXPECT_EQ(plan[p + 2].role, FieldRole::kProperty);
    EXPECT_EQ(plan[p + 2].json_key, R"("say \"hi\"")");
    EXPECT_EQ(plan[p + 2].category, TC::kInteger);
    EXPECT_EQ(plan[4].column_name, "amplitude_app_version");
    EXPECT_EQ(plan[0].json_key, "\"user_id\"");
    EXPECT_EQ(plan[3].json_key, "\"user_properties\"");
}

TEST(IdentifyPlan, OperationsAreAppliedToTheirColumns) {
    std::vector<ColumnPlan> plan = plan_identify_columns(
        {Col("user_id", TC::kText), Col("visits", TC::kInteger), Col("ltv", TC::kNumeric),
         Col("score", TC::kFloat), Col("tags", TC::kArray), Col("plan", TC::kText)},
        Opts(ProfileObject::kUser, {{"visits", "$add"}, {"ltv", "$add"}, {"score", "$add"},
                                    {"tags", "$append"}}));
    std::vector<std::string> ops;
    for (const ColumnPlan &p : plan) ops.push_back(p.operation);
    EXPECT_EQ(ops, (std::vector<std::string>{"", "$add", "$add", "$add", "$append", "$set"}));
}

TEST(IdentifyPlan, DeviceNeedsDeviceIdAndUserIdIsOptional) {
    std::vector<ColumnPlan> plan =
        plan_identify_columns({Col("device_id", TC::kText), Col("model", TC::kText)}, kDevice);
    EXPECT_EQ(plan[0].role, FieldRole::kDeviceId);
    EXPECT_EQ(plan[1].role, FieldRole::kProperty);
    plan = plan_identify_columns({Col("device_id", TC::kText), Col("user_id", TC::kInteger)}, kDevice);
    EXPECT_EQ(plan[1].role, FieldRole::kUserId);
}

TEST(IdentifyPlan, GroupRoles) {
    std::vector<ColumnPlan> plan = plan_identify_columns(
        {Col("group_type", TC::kText), Col("group_value", TC::kJsonb),
         Col("group_properties", TC::kJsonb), Col("user_id", TC::kText), Col("groups", TC::kText),
         Col("user_properties", TC::kText), Col("seats", TC::kInteger)},
        kGroup);
    ASSERT_EQ(plan.size(), 7u);
    EXPECT_EQ(plan[0].role, FieldRole::kGroupType);
    EXPECT_EQ(plan[1].role, FieldRole::kGroupValue);
    EXPECT_EQ(plan[2].role, FieldRole::kUserProperties);
    // The user-level names are plain properties of a group.
    for (size_t i = 3; i < 7; ++i) {
        EXPECT_EQ(plan[i].role, FieldRole::kProperty) << plan[i].column_name;
        EXPECT_EQ(plan[i].operation, "$set");
    }
    EXPECT_EQ(plan[0].json_key, "\"group_type\"");
    EXPECT_EQ(plan[2].json_key, "\"group_properties\"");
}

TEST(IdentifyPlan, UserWithoutUserIdIs42703) {
    PlanFailure f = PlanFails({Col("device_id", TC::kText), Col("plan", TC::kText)}, kUser);
    EXPECT_EQ(f.sqlstate, "42703");
    EXPECT_EQ(f.message, "query has no column named \"user_id\"");
    EXPECT_EQ(f.detail,
              "A user is identified by its user_id (use object => 'device' to update devices).");
    EXPECT_EQ(f.hint, "Alias the query's columns, for example: SELECT id AS user_id, plan, "
                      "lifetime_value FROM users.");
    EXPECT_EQ(PlanFails({Col("User_Id", TC::kText)}, kUser).sqlstate, "42703");  // case-sensitive
}

TEST(IdentifyPlan, DeviceWithoutDeviceIdIs42703) {
    PlanFailure f = PlanFails({Col("user_id", TC::kText), Col("model", TC::kText)}, kDevice);
    EXPECT_EQ(f.sqlstate, "42703");
    EXPECT_EQ(f.message, "query has no column named \"device_id\"");
    EXPECT_EQ(f.detail, "A device is identified by its device_id.");
}

TEST(IdentifyPlan, GroupWithoutBothKeysIs42703) {
    for (const Columns &columns :
         {Columns{Col("group_type", TC::kText)}, Columns{Col("group_value", TC::kText)},
          Columns{Col("user_id", TC::kText), Col("plan", TC::kText)}}) {
        PlanFailure f = PlanFails(columns, kGroup);
        EXPECT_EQ(f.sqlstate, "42703");
        EXPECT_EQ(f.message, "query has no columns named \"group_type\" and \"group_value\"");
        EXPECT_EQ(f.detail, "A group is identified by its type and value.");
    }
}

TEST(IdentifyPlan, DuplicateColumnIs42701) {
    PlanFailure f = PlanFails(
        {Col("user_id", TC::kText), Col("plan", TC::kText), Col("plan", TC::kInteger)}, kUser);
    EXPECT_EQ(f.sqlstate, "42701");
    EXPECT_EQ(f.message, "column \"plan\" appears more than once");
    EXPECT_EQ(f.hint, "Give the columns distinct aliases in the query.");
    EXPECT_EQ(PlanFails({Col("user_id", TC::kText), Col("user_id", TC::kText)}, kUser).sqlstate,
              "42701");
    EXPECT_EQ(PlanFails({Col("group_type", TC::kText), Col("group_value", TC::kText),
                         Col("group_value", TC::kText)},
                        kGroup)
                  .sqlstate,
              "42701");
}

TEST(IdentifyPlan, OperationOnAnUnknownColumnIs42703) {
    PlanFailure f = PlanFails({Col("user_id", TC::kText), Col("plan", TC::kText)},
                              Opts(ProfileObject::kUser, {{"planet", "$set"}}));
    EXPECT_EQ(f.sqlstate, "42703");
    EXPECT_EQ(f.message, "operations name column \"planet\", which the query does not have");
    EXPECT_EQ(f.hint, "Operations apply to the query's property columns.");
}

TEST(IdentifyPlan, OperationOnANonPropertyColumnIs22023) {
    for (const char *column : {"user_id", "device_id", "amplitude_platform", "groups", "user_properties"}) {
        PlanFailure f = PlanFails({Col("user_id", TC::kText), Col("device_id", TC::kText),
                                   Col("amplitude_platform", TC::kText), Col("groups", TC::kJsonb),
                                   Col("user_properties", TC::kJsonb)},
                                  Opts(ProfileObject::kUser, {{column, "$set"}}));
        EXPECT_EQ(f.sqlstate, "22023") << column;
        EXPECT_EQ(f.message, "column \"" + std::string(column) + "\" is not a property");
        EXPECT_EQ(f.detail,
                  "It is one of Amplitude's identification fields; operations apply to properties.");
    }
    PlanFailure f = PlanFails({Col("group_type", TC::kText), Col("group_value", TC::kText)},
                              Opts(ProfileObject::kGroup, {{"group_value", "$setOnce"}}));
    EXPECT_EQ(f.sqlstate, "22023");
    EXPECT_EQ(f.message, "column \"group_value\" is not a property");
}

TEST(IdentifyPlan, AddNeedsANumberColumn) {
    for (TC c : {TC::kText, TC::kBool, TC::kJsonb, TC::kArray, TC::kTimestampTz, TC::kOther}) {
        PlanFailure f = PlanFails({Col("user_id", TC::kText), Col("plan", c)},
                                  Opts(ProfileObject::kUser, {{"plan", "$add"}}));
        EXPECT_EQ(f.sqlstate, "42804");
        EXPECT_EQ(f.message, "column \"plan\" uses $add, which needs a number");
        EXPECT_EQ(f.hint, "Cast the column to a numeric type in the query.");
    }
    for (TC c : {TC::kInteger, TC::kFloat, TC::kNumeric})
        EXPECT_EQ(PlanFails({Col("user_id", TC::kText), Col("n", c)},
                            Opts(ProfileObject::kUser, {{"n", "$add"}}))
                      .sqlstate,
                  "none");
    // Other operations take any type.
    EXPECT_EQ(PlanFails({Col("user_id", TC::kText), Col("plan", TC::kText)},
                        Opts(ProfileObject::kUser, {{"plan", "$append"}}))
                  .sqlstate,
              "none");
}

TEST(IdentifyPlan, GroupsColumnMustBeJson) {
    PlanFailure f = PlanFails({Col("user_id", TC::kText), Col("groups", TC::kText)}, kUser);
    EXPECT_EQ(f.sqlstate, "42804");
    EXPECT_EQ(f.message, "column \"groups\" must be json or jsonb");
    EXPECT_EQ(f.detail, "Column \"groups\" maps to Amplitude's \"groups\" field.");
    EXPECT_EQ(f.hint, "Cast the column in the query, or alias it to another name to send it as a "
                      "property.");
    EXPECT_EQ(PlanFails({Col("user_id", TC::kText), Col("groups", TC::kJson)}, kUser).sqlstate, "none");
}

TEST(IdentifyPlan, PropertiesColumnMustBeJson) {
    PlanFailure f = PlanFails({Col("user_id", TC::kText), Col("user_properties", TC::kText)}, kUser);
    EXPECT_EQ(f.sqlstate, "42804");
    EXPECT_EQ(f.message, "column \"user_properties\" must be json or jsonb");
    f = PlanFails({Col("group_type", TC::kText), Col("group_value", TC::kText),
                   Col("group_properties", TC::kArray)},
                  kGroup);
    EXPECT_EQ(f.sqlstate, "42804");
    EXPECT_EQ(f.message, "column \"group_properties\" must be json or jsonb");
}

TEST(IdentifyPlan, IdsMustBeScalars) {
    PlanFailure f = PlanFails({Col("user_id", TC::kJsonb)}, kUser);
    EXPECT_EQ(f.sqlstate, "42804");
    EXPECT_EQ(f.message, "column \"user_id\" must be a scalar (text, number, uuid, ...)");
    PlanFailure field = PlanFails({Col("user_id", TC::kText), Col("amplitude_platform", TC::kArray)}, kUser);
    EXPECT_EQ(field.sqlstate, "42804");
    EXPECT_EQ(field.detail, "Column \"amplitude_platform\" maps to Amplitude's \"platform\" field.");
    EXPECT_EQ(PlanFails({Col("user_id", TC::kInteger)}, kUser).sqlstate, "none");
}

TEST(IdentifyPlan, GroupKeysMustBeTextOrJson) {
    for (TC c : {TC::kInteger, TC::kNumeric, TC::kFloat, TC::kBool, TC::kOther, TC::kArray}) {
        PlanFailure f = PlanFails({Col("group_type", TC::kText), Col("group_value", c)}, kGroup);
        EXPECT_EQ(f.sqlstate, "42804");
        EXPECT_EQ(f.message,
                  "column \"group_value\" must be text (Amplitude wants group names as strings)");
        EXPECT_EQ(f.detail, "Column \"group_value\" maps to Amplitude's \"group_value\" field.");
    }
    PlanFailure f = PlanFails({Col("group_type", TC::kInteger), Col("group_value", TC::kText)}, kGroup);
    EXPECT_EQ(f.sqlstate, "42804");
    EXPECT_EQ(f.message, "column \"group_type\" must be text (Amplitude wants group names as strings)");
    for (TC c : {TC::kText, TC::kJson, TC::kJsonb})
        EXPECT_EQ(PlanFails({Col("group_type", c), Col("group_value", c)}, kGroup).sqlstate, "none");
}

// The name is quoted in every rejection of its column, which must be storable.
TEST(IdentifyPlan, ColumnNameThatIsNotUtf8Is22021) {
    PlanFailure f = PlanFails({Col("user_id", TC::kText), Col("pl\xe4n", TC::kText)}, kUser);
    EXPECT_EQ(f.sqlstate, "22021");
    EXPECT_EQ(f.message, "column name is not valid UTF-8");
}

// ================================================================ encoding

TEST_F(IdentifyTest, UserRowPlainPropertiesAreSetAndFieldsGoTopLevel) {
    Columns columns = {Col("user_id", TC::kText),     Col("plan", TC::kText),
                       Col("ltv", TC::kNumeric),      Col("tags", TC::kArray),
                       Col("signed_up_at", TC::kTimestampTz), Col("amplitude_country", TC::kText),
                       Col("amplitude_platform", TC::kText),    Col("groups", TC::kJsonb)};
    Encoded e = Encode(columns, {Text("user-00001"), Text("pro"), Numeric("120.50"),
                                 TextArray({"beta", "admin"}), TimestampTz(kMay1st10h), Text("FR"),
                                 Text("iOS"), Jsonb(R"({"company": "acme-corp"})")});
    ASSERT_TRUE(e.ok) << e.rejection.reason;
    EXPECT_EQ(e.record.json,
              R"({"user_id":"user-00001","country":"FR","platform":"iOS","groups":{"company": "acme-corp"},)"
              R"("user_properties":{"$set":{"plan":"pro","ltv":120.50,"tags":["beta","admin"],)"
              R"("signed_up_at":"2024-05-01T10:00:00Z"}}})");
    EXPECT_EQ(e.properties,
              R"({"$set":{"plan":"pro","ltv":120.50,"tags":["beta","admin"],"signed_up_at":"2024-05-01T10:00:00Z"}})");
    EXPECT_EQ(e.record.row_number, 7u);
    EXPECT_EQ(e.record.user_id, "user-00001");
    EXPECT_EQ(e.record.device_id, "");
    EXPECT_EQ(e.record.insert_id, "");
    EXPECT_EQ(e.record.event_type, "");
    EXPECT_EQ(e.record.group_type, "");
    EXPECT_EQ(e.record.group_value, "");
    EXPECT_EQ(e.record.group_key, "\x1f");
    EXPECT_EQ(e.record.ordering_key(), "user-00001");
    EXPECT_NO_THROW(nlohmann::json::parse(e.record.json));
}

TEST_F(IdentifyTest, EveryIdentifyLevelFieldIsAStringAtTopLevel) {
    const char *fields[] = {"app_version", "platform", "os_name", "os_version", "device_brand",
                            "device_manufacturer", "device_model", "carrier", "country", "region",
                            "city", "language", "start_version"};
    Columns columns = {Col("user_id", TC::kInteger)};
    std::vector<Value> values = {Int(1234567)};
    std::string expected = R"({"user_id":"1234567")";
    for (const char *f : fields) {
        columns.push_back(Col(std::string("amplitude_") + f, TC::kText));
        values.push_back(Text(std::string("v-") + f));
        expected += ",\"" + std::string(f) + "\":\"v-" + f + "\"";
    }
    // Non-text columns are sent as their text.
    columns.push_back(Col("amplitude_paying", TC::kBool));
    values.push_back(Bool(true));
    columns.push_back(Col("amplitude_dma", TC::kInteger));
    values.push_back(Int(807));
    expected += R"(,"paying":"true","dma":"807"})";

    Encoded e = Encode(columns, values);
    ASSERT_TRUE(e.ok) << e.rejection.reason;
    EXPECT_EQ(e.record.json, expected);
    EXPECT_EQ(e.properties, "");  // no property: no user_properties at all
    EXPECT_EQ(e.record.user_id, "1234567");
}

TEST_F(IdentifyTest, OperationsAreWrittenInTheirFixedOrder) {
    // Columns deliberately in the reverse order of the operations.
    Columns columns = {Col("user_id", TC::kText),  Col("nickname", TC::kText),
                       Col("removed", TC::kArray), Col("post", TC::kArray),
                       Col("pre", TC::kArray),     Col("queue", TC::kArray),
                       Col("tags", TC::kArray),    Col("visits", TC::kInteger),
                       Col("first_seen", TC::kText), Col("zeta", TC::kText),
                       Col("plan", TC::kText),     Col("score", TC::kFloat)};
    IdentifyOptions options = Opts(ProfileObject::kUser,
                                   {{"nickname", "$unset"},  {"removed", "$remove"},
                                    {"post", "$postInsert"}, {"pre", "$preInsert"},
                                    {"queue", "$prepend"},   {"tags", "$append"},
                                    {"visits", "$add"},      {"first_seen", "$setOnce"},
                                    {"score", "$add"}});
    Encoded e = Encode(columns,
                       {Text("user-ops01"), Text("gone soon"), TextArray({"r"}), TextArray({"q", "z"}),
                        TextArray({"p", "o"}), TextArray({"w"}), TextArray({"b"}), Int(2),
                        Text("second"), Text("last"), Text("pro"), Float(-1.5)},
                       options);
    ASSERT_TRUE(e.ok) << e.rejection.reason;
    const std::string properties =
        R"({"$set":{"zeta":"last","plan":"pro"},"$setOnce":{"first_seen":"second"},)"
        R"("$add":{"visits":2,"score":-1.5},"$append":{"tags":["b"]},"$prepend":{"queue":["w"]},)"
        R"("$preInsert":{"pre":["p","o"]},"$postInsert":{"post":["q","z"]},"$remove":{"removed":["r"]},)"
        R"("$unset":{"nickname":"-"}})";
    EXPECT_EQ(e.record.json, R"({"user_id":"user-ops01","user_properties":)" + properties + "}");
    // The properties event carries only what can be applied twice.
    EXPECT_EQ(e.properties,
              R"({"$set":{"zeta":"last","plan":"pro"},"$setOnce":{"first_seen":"second"},"$unset":{"nickname":"-"}})");
}

TEST_F(IdentifyTest, UnsetOperationIgnoresTheValue) {
    Encoded e = Encode({Col("user_id", TC::kText), Col("doc", TC::kJsonb)},
                       {Text("user-00001"), Jsonb(R"({"big": [1, 2, 3]})")},
                       Opts(ProfileObject::kUser, {{"doc", "$unset"}}));
    ASSERT_TRUE(e.ok);
    EXPECT_EQ(e.record.json, R"({"user_id":"user-00001","user_properties":{"$unset":{"doc":"-"}}})");
}

TEST_F(IdentifyTest, NullColumnsAreLeftOutByDefault) {
    Columns columns = {Col("user_id", TC::kText), Col("nickname", TC::kText),
                       Col("visits", TC::kInteger), Col("plan", TC::kText),
                       Col("amplitude_country", TC::kText), Col("groups", TC::kJsonb),
                       Col("user_properties", TC::kJsonb), Col("device_id", TC::kText)};
    IdentifyOptions options = Opts(ProfileObject::kUser, {{"visits", "$add"}});
    EXPECT_EQ(IdJson(columns, {Text("user-ops01"), Null(), Null(), Text("pro"), Null(), Null(), Null(),
                               Null()},
                     options),
              R"({"user_id":"user-ops01","user_properties":{"$set":{"plan":"pro"}}})");
    // Every property NULL: no user_properties key at all.
    Encoded e = Encode(columns, {Text("user-ops01"), Null(), Null(), Null(), Text("FR"), Null(), Null(),
                                 Null()},
                       options);
    ASSERT_TRUE(e.ok);
    EXPECT_EQ(e.record.json, R"({"user_id":"user-ops01","country":"FR"})");
    EXPECT_EQ(e.properties, "");
}

TEST_F(IdentifyTest, NullsUnsetUnsetsNullPropertiesWhateverTheirOperation) {
    Columns columns = {Col("user_id", TC::kText), Col("nickname", TC::kText),
                       Col("visits", TC::kInteger), Col("plan", TC::kText),
                       Col("amplitude_country", TC::kText), Col("groups", TC::kJsonb),
                       Col("user_properties", TC::kJsonb)};
    IdentifyOptions options = Opts(ProfileObject::kUser, {{"visits", "$add"}}, /*nulls_unset=*/true);
    Encoded e = Encode(columns, {Text("user-ops01"), Null(), Null(), Text("pro"), Null(), Null(), Null()},
                       options);
    ASSERT_TRUE(e.ok) << e.rejection.reason;
    // Identify-level fields, groups and the jsonb column are not properties: left out.
    EXPECT_EQ(e.record.json,
              R"({"user_id":"user-ops01","user_properties":{"$set":{"plan":"pro"},"$unset":{"nickname":"-","visits":"-"}}})");
    EXPECT_EQ(e.properties, R"({"$set":{"plan":"pro"},"$unset":{"nickname":"-","visits":"-"}})");
}

TEST_F(IdentifyTest, NullsUnsetForGroups) {
    IdentifyOptions options = Opts(ProfileObject::kGroup, {}, /*nulls_unset=*/true);
    EXPECT_EQ(IdJson({Col("group_type", TC::kText), Col("group_value", TC::kText), Col("plan", TC::kText)},
                     {Text("company"), Text("acme-corp"), Null()}, options),
              R"({"group_type":"company","group_value":"acme-corp","group_properties":{"$unset":{"plan":"-"}}})");
}

TEST_F(IdentifyTest, PropertiesColumnIsMergedIn) {
    Columns columns = {Col("user_id", TC::kText), Col("source", TC::kText),
                       Col("user_properties", TC::kJsonb)};
    Encoded e = Encode(columns, {Text("user-merge1"), Text("column"),
                                 Jsonb(R"({"color": "blue", "source": "jsonb", "$add": {"score": 5}})")});
    ASSERT_TRUE(e.ok) << e.rejection.reason;
    // Plain keys are $set (after the columns), "$add" keeps its operation, and
    // the non-NULL column wins over the jsonb's "source".
    EXPECT_EQ(e.record.json,
              R"({"user_id":"user-merge1","user_properties":{"$set":{"source":"column","color":"blue"},"$add":{"score":5}}})");
    EXPECT_EQ(e.properties, R"({"$set":{"source":"column","color":"blue"}})");

    // A NULL column does not win: the jsonb value is sent.
    EXPECT_EQ(IdJson(columns, {Text("user-merge1"), Null(),
                               Jsonb(R"({"color": "blue", "source": "jsonb"})")}),
              R"({"user_id":"user-merge1","user_properties":{"$set":{"color":"blue","source":"jsonb"}}})");
}

TEST_F(IdentifyTest, PropertiesColumnOperationsMergeWithColumnOperations) {
    Columns columns = {Col("user_id", TC::kText), Col("visits", TC::kInteger),
                       Col("user_properties", TC::kJson)};
    IdentifyOptions options = Opts(ProfileObject::kUser, {{"visits", "$add"}});
    EXPECT_EQ(IdJson(columns, {Text("user-00001"), Int(1),
                               Json(R"({ "$unset" : {"old": "-"}, "$add" : {"logins": 2, "visits": 9},
                                         "$setOnce": {"first": "2024"}, "$set": {"plan": "pro"} })")},
                     options),
              R"({"user_id":"user-00001","user_properties":{"$set":{"plan":"pro"},"$setOnce":{"first":"2024"},)"
              R"("$add":{"visits":1,"logins":2},"$unset":{"old":"-"}}})");
    // A key is sent once: a later operation on a key already written is dropped.
    EXPECT_EQ(IdJson(columns, {Text("user-00001"), Null(),
                               Jsonb(R"({"plan": "pro", "$setOnce": {"plan": "free", "tier": 1}})")},
                     options),
              R"({"user_id":"user-00001","user_properties":{"$set":{"plan":"pro"},"$setOnce":{"tier":1}}})");
}

TEST_F(IdentifyTest, EmptyPropertiesColumnAddsNothing) {
    Encoded e = Encode({Col("user_id", TC::kText), Col("user_properties", TC::kJsonb)},
                       {Text("user-00001"), Jsonb("{}")});
    ASSERT_TRUE(e.ok);
    EXPECT_EQ(e.record.json, R"({"user_id":"user-00001"})");
    EXPECT_EQ(e.properties, "");
}

TEST_F(IdentifyTest, UnknownOperationInPropertiesColumnRejectsTheRow) {
    Columns columns = {Col("user_id", TC::kText), Col("plan", TC::kText),
                       Col("user_properties", TC::kJsonb)};
    const std::string supported = std::string(" (supported: ") + kUserOpList + ", each with an object)";
    const std::pair<const char *, const char *> cases[] = {
        {R"({"$increment": {"a": 1}})", "$increment"},
        {R"({"$clearAll": "-"})", "$clearAll"},
        {R"({"color": "blue", "$SET": {"a": 1}})", "$SET"},
    };
    for (const auto &[jsonb, name] : cases) {
        Encoded e = Encode(columns, {Text("user-00001"), Text("pro"), Jsonb(jsonb)});
        ASSERT_FALSE(e.ok) << jsonb;
        EXPECT_EQ(e.rejection.outcome, Outcome::kRejected);
        EXPECT_EQ(e.rejection.field, "user_properties");
        EXPECT_EQ(e.rejection.reason,
                  "column \"user_properties\": unsupported operation " + std::string(name) + supported);
        EXPECT_EQ(e.rejection.record.user_id, "user-00001");
        EXPECT_EQ(e.rejection.record.json, "");
        EXPECT_EQ(e.rejection.record.row_number, 7u);
    }
    // A known operation whose value is not an object.
    Encoded e = Encode(columns, {Text("user-00001"), Text("pro"), Jsonb(R"({"$add": 5})")});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.reason, "column \"user_properties\": unsupported operation $add" + supported);
}

TEST_F(IdentifyTest, GroupPropertiesColumnRefusesUserOnlyOperations) {
    Columns columns = {Col("group_type", TC::kText), Col("group_value", TC::kText),
                       Col("group_properties", TC::kJsonb)};
    Encoded e = Encode(columns, {Text("company"), Text("acme-corp"), Jsonb(R"({"$remove": {"tags": ["a"]}})")},
                       kGroup);
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "group_properties");
    EXPECT_EQ(e.rejection.reason, std::string("column \"group_properties\": unsupported operation $remove (supported: ") +
                                      kGroupOpList + ", each with an object)");
    EXPECT_EQ(e.rejection.record.group_type, "company");
    EXPECT_EQ(e.rejection.record.group_value, "acme-corp");
}

TEST_F(IdentifyTest, PropertiesColumnMustBeAnObject) {
    Encoded e = Encode({Col("user_id", TC::kText), Col("user_properties", TC::kJsonb)},
                       {Text("user-00001"), Jsonb("[1, 2]")});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "user_properties");
    EXPECT_EQ(e.rejection.reason, "column \"user_properties\": value must be a JSON object");
    e = Encode({Col("user_id", TC::kText), Col("groups", TC::kJsonb)}, {Text("user-00001"), Jsonb("\"acme\"")});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "groups");
    EXPECT_EQ(e.rejection.reason, "column \"groups\": value must be a JSON object");
}

TEST_F(IdentifyTest, DeviceRowsWithAndWithoutUserId) {
    Columns columns = {Col("device_id", TC::kText), Col("user_id", TC::kText), Col("model_name", TC::kText)};
    IdentifyEncoder encoder(plan_identify_columns(columns, kDevice), kDevice);

    Encoded linked = EncodeWith(encoder, {Text("device-00001"), Text("user-00001"), Text("iPhone 15")}, 1);
    ASSERT_TRUE(linked.ok) << linked.rejection.reason;
    EXPECT_EQ(linked.record.json,
              R"({"device_id":"device-00001","user_id":"user-00001","user_properties":{"$set":{"model_name":"iPhone 15"}}})");
    EXPECT_EQ(linked.record.row_number, 1u);
    EXPECT_EQ(linked.record.device_id, "device-00001");
    EXPECT_EQ(linked.record.user_id, "user-00001");
    EXPECT_EQ(linked.record.ordering_key(), "device-00001");

    // Same encoder, next row: nothing carried over from the previous one.
    Encoded alone = EncodeWith(encoder, {Text("device-00002"), Null(), Text("Pixel 8")}, 2);
    ASSERT_TRUE(alone.ok) << alone.rejection.reason;
    EXPECT_EQ(alone.record.json,
              R"({"device_id":"device-00002","user_properties":{"$set":{"model_name":"Pixel 8"}}})");
    EXPECT_EQ(alone.record.row_number, 2u);
    EXPECT_EQ(alone.record.user_id, "");
    EXPECT_EQ(alone.record.ordering_key(), "device-00002");
    EXPECT_EQ(alone.properties, R"({"$set":{"model_name":"Pixel 8"}})");

    Encoded missing = EncodeWith(encoder, {Null(), Text("user-00001"), Text("x")}, 3);
    ASSERT_FALSE(missing.ok);
    EXPECT_EQ(missing.rejection.field, "device_id");
    EXPECT_EQ(missing.rejection.reason, "device_id is missing");
    EXPECT_EQ(missing.rejection.record.user_id, "user-00001");
    EXPECT_EQ(missing.rejection.record.row_number, 3u);

    Encoded short_user = EncodeWith(encoder, {Text("device-00003"), Text("abc"), Null()}, 4);
    ASSERT_FALSE(short_user.ok);
    EXPECT_EQ(short_user.rejection.field, "user_id");
    EXPECT_EQ(short_user.rejection.reason, "user_id \"abc\" is shorter than 5 characters");
    EXPECT_EQ(short_user.rejection.record.device_id, "device-00003");
}

TEST_F(IdentifyTest, UserRowWithADeviceIdChecksBoth) {
    Columns columns = {Col("user_id", TC::kText), Col("device_id", TC::kText)};
    Encoded e = Encode(columns, {Text("user-00001"), Text("device-00001")});
    ASSERT_TRUE(e.ok);
    EXPECT_EQ(e.record.json, R"({"user_id":"user-00001","device_id":"device-00001"})");
    EXPECT_EQ(e.record.ordering_key(), "device-00001");
    e = Encode(columns, {Text("user-00001"), Text("none")});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "device_id");
    EXPECT_EQ(e.rejection.reason, "device_id \"none\" is a placeholder value that Amplitude refuses");
    // A user row keyed by a device alone is not enough.
    e = Encode(columns, {Null(), Text("device-00001")});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "user_id");
    EXPECT_EQ(e.rejection.reason, "user_id is missing");
    EXPECT_EQ(e.rejection.record.device_id, "device-00001");
}

TEST_F(IdentifyTest, UserIdRejections) {
    Columns columns = {Col("user_id", TC::kText), Col("score", TC::kInteger)};
    IdentifyEncoder encoder(plan_identify_columns(columns, kUser), kUser);
    struct Case {
        Value user_id;
        const char *reason;
        const char *recorded_user_id;
    } cases[] = {
        {Null(), "user_id is missing", ""},
        {Text("abc"), "user_id \"abc\" is shorter than 5 characters", "abc"},
        {Text("null"), "user_id \"null\" is a placeholder value that Amplitude refuses", "null"},
        {Text("Undefined"), "user_id \"Undefined\" is a placeholder value that Amplitude refuses", "Undefined"},
        {Text(""), "user_id \"\" is a placeholder value that Amplitude refuses", ""},
        {Text("00000000-0000-0000-0000-000000000000"),
         "user_id \"00000000-0000-0000-0000-000000000000\" is a placeholder value that Amplitude refuses",
         "00000000-0000-0000-0000-000000000000"},
        {Text("-1"), "user_id \"-1\" is a placeholder value that Amplitude refuses", "-1"},
    };
    uint64_t row = 0;
    for (const Case &c : cases) {
        Encoded e = EncodeWith(encoder, {c.user_id, Int(1)}, ++row);
        ASSERT_FALSE(e.ok) << c.reason;
        EXPECT_EQ(e.rejection.outcome, Outcome::kRejected);
        EXPECT_EQ(e.rejection.field, "user_id");
        EXPECT_EQ(e.rejection.reason, c.reason);
        EXPECT_EQ(e.rejection.record.user_id, c.recorded_user_id);
        EXPECT_EQ(e.rejection.record.row_number, row);
        EXPECT_EQ(e.rejection.record.json, "");
    }
    // A good row after the rejected ones.
    Encoded ok = EncodeWith(encoder, {Text("user-00001"), Int(3)}, 99);
    ASSERT_TRUE(ok.ok);
    EXPECT_EQ(ok.record.json, R"({"user_id":"user-00001","user_properties":{"$set":{"score":3}}})");
    // Multi-byte characters count once each.
    EXPECT_TRUE(Encode(columns, {Text("\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9"), Null()}).ok);
    EXPECT_FALSE(Encode(columns, {Text("\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9"), Null()}).ok);
}

TEST_F(IdentifyTest, MinIdLengthIsConfigurable) {
    Columns columns = {Col("user_id", TC::kText)};
    IdentifyOptions three = Opts(ProfileObject::kUser, {}, false, 3);
    EXPECT_EQ(IdJson(columns, {Text("abc")}, three), R"({"user_id":"abc"})");
    EXPECT_EQ(IdJson(columns, {Text("ab")}, three),
              "<rejected user_id: user_id \"ab\" is shorter than 3 characters>");
    EXPECT_EQ(IdJson(columns, {Text("nil")}, three),
              "<rejected user_id: user_id \"nil\" is a placeholder value that Amplitude refuses>");
}

TEST_F(IdentifyTest, InvalidUtf8RejectsTheRow) {
    Columns columns = {Col("user_id", TC::kText), Col("platform", TC::kText), Col("nick", TC::kText)};
    EXPECT_EQ(IdJson(columns, {Text("user-\xff-1"), Null(), Null()}),
              "<rejected user_id: column \"user_id\": text is not valid UTF-8>");
    EXPECT_EQ(IdJson(columns, {Text("user-00001"), Text("i\xC3OS"), Null()}),
              "<rejected platform: column \"platform\": text is not valid UTF-8>");
    EXPECT_EQ(IdJson(columns, {Text("user-00001"), Null(), Text("\xED\xA0\x80")}),
              "<rejected nick: column \"nick\": text is not valid UTF-8>");
    EXPECT_EQ(IdJson({Col("group_type", TC::kText), Col("group_value", TC::kText)},
                     {Text("company"), Text("acme\xC0\xAF")}, kGroup),
              "<rejected group_value: column \"group_value\": text is not valid UTF-8>");
}

// A SQL_ASCII database stores any bytes inside json; one such value would
// make Amplitude refuse the whole request.
TEST_F(IdentifyTest, JsonThatIsNotValidUtf8RejectsTheRow) {
    Columns columns = {Col("user_id", TC::kText), Col("groups", TC::kJsonb),
                       Col("user_properties", TC::kJsonb), Col("prefs", TC::kJson)};
    EXPECT_EQ(IdJson(columns, {Text("user-00001"), Jsonb("{\"team\": \"caf\xc3\"}"), Null(), Null()}),
              "<rejected groups: column \"groups\": json is not valid UTF-8>");
    EXPECT_EQ(IdJson(columns, {Text("user-00001"), Null(), Jsonb("{\"k\xff\": 1}"), Null()}),
              "<rejected user_properties: column \"user_properties\": json is not valid UTF-8>");
    EXPECT_EQ(IdJson(columns, {Text("user-00001"), Null(), Jsonb("{\"$add\": {\"n\xfe\": 1}}"), Null()}),
              "<rejected user_properties: column \"user_properties\": json is not valid UTF-8>");
    EXPECT_EQ(IdJson(columns, {Text("user-00001"), Null(), Null(), Json("{\"theme\": \"d\xe9\"}")}),
              "<rejected prefs: column \"prefs\": json is not valid UTF-8>");
    EXPECT_EQ(IdJson({Col("group_type", TC::kText), Col("group_value", TC::kJsonb)},
                     {Text("company"), Jsonb("\"acme\xff\"")}, kGroup),
              "<rejected group_value: column \"group_value\": json is not valid UTF-8>");
}

TEST_F(IdentifyTest, NaNAndInfinityRejectTheRow) {
    Columns columns = {Col("user_id", TC::kText), Col("score", TC::kFloat), Col("ltv", TC::kNumeric),
                       Col("amplitude_dma", TC::kFloat)};
    EXPECT_EQ(IdJson(columns, {Text("user-00001"), Float(std::nan("")), Null(), Null()}),
              "<rejected score: column \"score\": NaN and infinite numbers cannot be sent as JSON>");
    EXPECT_EQ(IdJson(columns, {Text("user-00001"), Float(HUGE_VAL), Null(), Null()}),
              "<rejected score: column \"score\": NaN and infinite numbers cannot be sent as JSON>");
    EXPECT_EQ(IdJson(columns, {Text("user-00001"), Null(), Numeric("NaN"), Null()}),
              "<rejected ltv: column \"ltv\": NaN and infinite numbers cannot be sent as JSON>");
    // An identify-level string field too.
    EXPECT_EQ(IdJson(columns, {Text("user-00001"), Null(), Null(), Float(std::nan(""))}),
              "<rejected amplitude_dma: column \"amplitude_dma\": NaN and infinite numbers cannot be sent as JSON>");
    EXPECT_EQ(IdJson(columns, {Text("user-00001"), Float(0.25), Numeric("-3.10"), Float(807)}),
              R"({"user_id":"user-00001","dma":"807","user_properties":{"$set":{"score":0.25,"ltv":-3.10}}})");
}

TEST_F(IdentifyTest, EscapedPropertyNamesAndValues) {
    EXPECT_EQ(IdJson({Col("user_id", TC::kText), Col("say \"hi\"", TC::kText), Col("amplitude_city", TC::kText)},
                     {Text("user \"q\"\n"), Text("a\\b"), Text("Z\xC3\xBCrich")}),
              R"({"user_id":"user \"q\"\n","city":"Zürich","user_properties":{"$set":{"say \"hi\"":"a\\b"}}})");
}

TEST_F(IdentifyTest, PropertyDepthCountsTheOperationLevel) {
    Columns columns = {Col("user_id", TC::kText), Col("doc", TC::kJsonb)};
    // user_properties -> $set -> a depth-38 value ends at level 40.
    Encoded ok = Encode(columns, {Text("user-00001"), Jsonb(NestedObject(38))});
    ASSERT_TRUE(ok.ok) << ok.rejection.reason;
    EXPECT_EQ(json_max_depth(ok.properties), 40);
    EXPECT_EQ(IdJson(columns, {Text("user-00001"), Jsonb(NestedObject(39))}),
              "<rejected doc: column \"doc\": nesting deeper than Amplitude's limit of 40 levels>");
}

TEST_F(IdentifyTest, PropertiesColumnPlainKeyDepth) {
    Columns columns = {Col("user_id", TC::kText), Col("user_properties", TC::kJsonb)};
    // {"k": depth 38} is depth 39; under $set its user_properties is depth 40.
    Encoded ok = Encode(columns, {Text("user-00001"), Jsonb("{\"k\":" + NestedObject(38) + "}")});
    ASSERT_TRUE(ok.ok) << ok.rejection.reason;
    EXPECT_EQ(json_max_depth(ok.properties), 40);
    EXPECT_EQ(IdJson(columns, {Text("user-00001"), Jsonb("{\"k\":" + NestedObject(39) + "}")}),
              "<rejected user_properties: column \"user_properties\": nesting deeper than Amplitude's limit of 40 levels>");
}

TEST_F(IdentifyTest, PropertiesColumnOperationKeyDepthIsNotCountedTwice) {
    Columns columns = {Col("user_id", TC::kText), Col("user_properties", TC::kJsonb)};
    // {"$set":{"k": depth 38}} produces the same depth-40 properties as {"k": depth 38}.
    Encoded ok = Encode(columns, {Text("user-00001"), Jsonb("{\"$set\":{\"k\":" + NestedObject(38) + "}}")});
    ASSERT_TRUE(ok.ok) << ok.rejection.reason;
    EXPECT_EQ(json_max_depth(ok.properties), 40);
}

TEST_F(IdentifyTest, GroupsColumnDepthLimit) {
    Columns columns = {Col("user_id", TC::kText), Col("groups", TC::kJsonb)};
    EXPECT_TRUE(Encode(columns, {Text("user-00001"), Jsonb(NestedObject(40))}).ok);
    EXPECT_EQ(IdJson(columns, {Text("user-00001"), Jsonb(NestedObject(41))}),
              "<rejected groups: column \"groups\": nesting deeper than Amplitude's limit of 40 levels>");
}

TEST_F(IdentifyTest, LastPropertiesFollowsEachRow) {
    Columns columns = {Col("user_id", TC::kText), Col("plan", TC::kText), Col("visits", TC::kInteger)};
    IdentifyOptions options = Opts(ProfileObject::kUser, {{"visits", "$add"}});
    IdentifyEncoder encoder(plan_identify_columns(columns, options), options);
    Encoded a = EncodeWith(encoder, {Text("user-00001"), Text("pro"), Int(1)}, 1);
    ASSERT_TRUE(a.ok);
    EXPECT_EQ(a.properties, R"({"$set":{"plan":"pro"}})");
    EXPECT_EQ(a.record.json, R"({"user_id":"user-00001","user_properties":{"$set":{"plan":"pro"},"$add":{"visits":1}}})");

    Encoded b = EncodeWith(encoder, {Text("user-00002"), Null(), Null()}, 2);
    ASSERT_TRUE(b.ok);
    EXPECT_EQ(b.properties, "");
    EXPECT_EQ(b.record.json, R"({"user_id":"user-00002"})");
    EXPECT_FALSE(nlohmann::json::parse(b.record.json).contains("user_properties"));

    Encoded c = EncodeWith(encoder, {Text("user-00003"), Null(), Int(-4)}, 3);
    ASSERT_TRUE(c.ok);
    EXPECT_EQ(c.properties, "");  // $add goes to /identify only: no properties event
    EXPECT_EQ(c.record.json, R"({"user_id":"user-00003","user_properties":{"$add":{"visits":-4}}})");
}

// ================================================================== groups

TEST_F(IdentifyTest, GroupRowAndItsRecordFields) {
    Columns columns = {Col("group_type", TC::kText), Col("group_value", TC::kText),
                       Col("plan", TC::kText), Col("seats", TC::kInteger), Col("user_id", TC::kText)};
    IdentifyOptions options = Opts(ProfileObject::kGroup, {{"seats", "$add"}});
    Encoded e = Encode(columns, {Text("company"), Text("acme-corp"), Text("enterprise"), Int(50),
                                 Text("owner-001")},
                       options);
    ASSERT_TRUE(e.ok) << e.rejection.reason;
    EXPECT_EQ(e.record.json,
              R"({"group_type":"company","group_value":"acme-corp","group_properties":)"
              R"({"$set":{"plan":"enterprise","user_id":"owner-001"},"$add":{"seats":50}}})");
    EXPECT_EQ(e.properties, R"({"$set":{"plan":"enterprise","user_id":"owner-001"}})");
    EXPECT_EQ(e.record.group_type, "company");
    EXPECT_EQ(e.record.group_value, "acme-corp");
    EXPECT_EQ(e.record.group_key, std::string("company\x1f") + "acme-corp");
    EXPECT_EQ(e.record.user_id, "");  // a property of the group, not its key
    EXPECT_EQ(e.record.device_id, "");
    EXPECT_EQ(e.record.ordering_key(), std::string("company\x1f") + "acme-corp");
}

TEST_F(IdentifyTest, GroupWithoutPropertiesAndIdsOfAnyLength) {
    // Group names are not user or device IDs: no length or placeholder rule.
    EXPECT_EQ(IdJson({Col("group_type", TC::kText), Col("group_value", TC::kText)},
                     {Text("org"), Text("x")}, kGroup),
              R"({"group_type":"org","group_value":"x"})");
}

TEST_F(IdentifyTest, GroupPropertiesColumnMerge) {
    Columns columns = {Col("group_type", TC::kText), Col("group_value", TC::kJsonb),
                       Col("tier", TC::kText), Col("group_properties", TC::kJsonb)};
    Encoded e = Encode(columns, {Text("company"), Jsonb(R"("acme \"corp\"")"), Text("gold"),
                                 Jsonb(R"({"tier": "silver", "region": "EU", "$setOnce": {"founded": 1999}})")},
                       kGroup);
    ASSERT_TRUE(e.ok) << e.rejection.reason;
    EXPECT_EQ(e.record.json,
              R"({"group_type":"company","group_value":"acme \"corp\"","group_properties":)"
              R"({"$set":{"tier":"gold","region":"EU"},"$setOnce":{"founded":1999}}})");
    EXPECT_EQ(e.record.group_value, "acme \"corp\"");
    EXPECT_EQ(e.record.group_key, "company\x1f" "acme \"corp\"");
}

TEST_F(IdentifyTest, GroupKeyRejections) {
    Columns columns = {Col("group_type", TC::kText), Col("group_value", TC::kJsonb), Col("n", TC::kInteger)};
    IdentifyEncoder encoder(plan_identify_columns(columns, kGroup), kGroup);
    struct Case {
        Value type, value;
        const char *field, *reason;
    } cases[] = {
        {Text("company"), Jsonb("42"), "group_value", "group_value must be a string"},
        {Text("company"), Jsonb(R"(["a"])"), "group_value", "group_value must be a string"},
        {Text(""), Jsonb(R"("acme")"), "group_type", "group_type is missing or empty"},
        {Null(), Jsonb(R"("acme")"), "group_type", "group_type is missing or empty"},
        {Text("company"), Null(), "group_value", "group_value is missing or empty"},
        {Text("company"), Jsonb(R"("")"), "group_value", "group_value is missing or empty"},
    };
    for (const Case &c : cases) {
        Encoded e = EncodeWith(encoder, {c.type, c.value, Int(1)});
        ASSERT_FALSE(e.ok) << c.reason;
        EXPECT_EQ(e.rejection.outcome, Outcome::kRejected);
        EXPECT_EQ(e.rejection.field, c.field);
        EXPECT_EQ(e.rejection.reason, c.reason);
        EXPECT_EQ(e.rejection.record.json, "");
    }
    Encoded ok = EncodeWith(encoder, {Text("company"), Jsonb(R"("acme")"), Int(1)});
    ASSERT_TRUE(ok.ok);
    EXPECT_EQ(ok.record.json,
              R"({"group_type":"company","group_value":"acme","group_properties":{"$set":{"n":1}}})");
    // json keys are read as JSON strings; text keys are taken as they are.
    EXPECT_EQ(IdJson({Col("group_type", TC::kJson), Col("group_value", TC::kText)},
                     {Json(R"("company")"), Text("42")}, kGroup),
              R"({"group_type":"company","group_value":"42"})");
}

TEST_F(IdentifyTest, GroupPropertiesAreLimitedTo1024) {
    auto object_of = [](int count) {
        std::string s = "{";
        for (int k = 1; k <= count; ++k) s += (k > 1 ? ", \"p" : "\"p") + std::to_string(k) + "\": " + std::to_string(k);
        return s + "}";
    };
    Columns columns = {Col("group_type", TC::kText), Col("group_value", TC::kText),
                       Col("group_properties", TC::kJsonb)};
    Encoded ok = Encode(columns, {Text("company"), Text("wide-co"), Jsonb(object_of(1024))}, kGroup);
    ASSERT_TRUE(ok.ok) << ok.rejection.reason;
    EXPECT_EQ(nlohmann::json::parse(ok.record.json)["group_properties"]["$set"].size(), 1024u);

    Encoded wide = Encode(columns, {Text("company"), Text("wide-co"), Jsonb(object_of(1025))}, kGroup);
    ASSERT_FALSE(wide.ok);
    EXPECT_EQ(wide.rejection.field, "group_properties");
    EXPECT_EQ(wide.rejection.reason, "1025 properties, more than the 1024 a group identification may carry");
    EXPECT_EQ(wide.rejection.record.group_type, "company");
    EXPECT_EQ(wide.rejection.record.group_value, "wide-co");

    // Columns and the jsonb count together; $unset counts too.
    Columns more = {Col("group_type", TC::kText), Col("group_value", TC::kText), Col("a", TC::kText),
                    Col("b", TC::kText), Col("group_properties", TC::kJsonb)};
    IdentifyOptions unset = Opts(ProfileObject::kGroup, {}, /*nulls_unset=*/true);
    Encoded mixed = Encode(more, {Text("company"), Text("wide-co"), Text("x"), Null(), Jsonb(object_of(1023))},
                           unset);
    ASSERT_FALSE(mixed.ok);
    EXPECT_EQ(mixed.rejection.reason, "1025 properties, more than the 1024 a group identification may carry");
    EXPECT_TRUE(Encode(more, {Text("company"), Text("wide-co"), Text("x"), Null(), Jsonb(object_of(1023))},
                       kGroup)
                    .ok);

    // Users have no such limit.
    Encoded user = Encode({Col("user_id", TC::kText), Col("user_properties", TC::kJsonb)},
                          {Text("user-00001"), Jsonb(object_of(1500))});
    EXPECT_TRUE(user.ok) << user.rejection.reason;
}

TEST_F(IdentifyTest, GroupsMembershipOnAUser) {
    EXPECT_EQ(IdJson({Col("user_id", TC::kText), Col("groups", TC::kJson)},
                     {Text("user-00001"), Json(R"({"company": ["acme", "globex"], "team": "core"})")}),
              R"({"user_id":"user-00001","groups":{"company": ["acme", "globex"], "team": "core"}})");
}

// ==================================================== issue 11: what Amplitude holds

TEST(IdentifyIdempotence, OnlySetSetOnceAndUnsetAreIdempotent) {
    for (const char *op : {"$set", "$setOnce", "$unset"}) EXPECT_TRUE(is_idempotent_operation(op)) << op;
    for (const char *op : {"$add", "$append", "$prepend", "$preInsert", "$postInsert", "$remove",
                           "$clearAll", "set", ""})
        EXPECT_FALSE(is_idempotent_operation(op)) << op;
}

TEST_F(IdentifyTest, PropertiesEventLeavesOutOperationsOfTheJsonbColumnToo) {
    Encoded e = Encode({Col("user_id", TC::kText), Col("user_properties", TC::kJsonb)},
                       {Text("user-00001"), Jsonb(R"({"$append": {"tags": "x"}, "$setOnce": {"first": 1}})")});
    ASSERT_TRUE(e.ok) << e.rejection.reason;
    EXPECT_EQ(e.record.json,
              R"({"user_id":"user-00001","user_properties":{"$setOnce":{"first":1},"$append":{"tags":"x"}}})");
    EXPECT_EQ(e.properties, R"({"$setOnce":{"first":1}})");
}

TEST(IdentifyIdempotence, SavedSyncsRefuseOtherOperationsAtPlanTime) {
    IdentifyOptions options = Opts(ProfileObject::kUser, {{"logins", "$add"}});
    options.idempotent_only = true;
    PlanFailure f = PlanFails({Col("user_id", TC::kText), Col("logins", TC::kInteger)}, options);
    EXPECT_EQ(f.sqlstate, "22023");
    EXPECT_EQ(f.message, "operation \"$add\" for column \"logins\" is not allowed in a saved sync");
    EXPECT_EQ(f.detail, "A saved sync sends a row only when it changed, and again after a failed run, so "
                        "$add would be skipped or applied twice.");
    EXPECT_EQ(f.hint, "Compute the value in the query and use $set, or send the operation with a one-shot call.");
    for (const char *op : {"$set", "$setOnce", "$unset"}) {
        options.operations = {{"logins", op}};
        EXPECT_EQ(PlanFails({Col("user_id", TC::kText), Col("logins", TC::kInteger)}, options).sqlstate, "none");
    }
}

TEST_F(IdentifyTest, SavedSyncsRejectRowsWhoseJsonbCarriesOtherOperations) {
    IdentifyOptions options = kUser;
    options.idempotent_only = true;
    Columns columns = {Col("user_id", TC::kText), Col("user_properties", TC::kJsonb)};
    EXPECT_EQ(IdJson(columns, {Text("user-00001"), Jsonb(R"({"$add": {"logins": 3}})")}, options),
              "<rejected user_properties: column \"user_properties\": operation $add is not allowed in a "
              "saved sync (only $set, $setOnce and $unset are)>");
    EXPECT_EQ(IdJson(columns, {Text("user-00001"), Jsonb(R"({"plan": "pro", "$unset": {"x": "-"}})")}, options),
              R"({"user_id":"user-00001","user_properties":{"$set":{"plan":"pro"},"$unset":{"x":"-"}}})");
}

TEST_F(IdentifyTest, PlainDefaultFieldNamesAreUserProperties) {
    // A model column called country must not wipe the user's city, region and DMA.
    const char *names[] = {"country", "region", "city", "dma", "platform", "os_name", "carrier",
                           "language", "app_version", "paying", "start_version"};
    Columns columns = {Col("user_id", TC::kText)};
    std::vector<Value> values = {Text("user-00001")};
    for (const char *n : names) {
        columns.push_back(Col(n, TC::kText));
        values.push_back(Text("v"));
    }
    Encoded e = Encode(columns, values);
    ASSERT_TRUE(e.ok) << e.rejection.reason;
    nlohmann::json sent = nlohmann::json::parse(e.record.json);
    EXPECT_EQ(sent.size(), 2u) << e.record.json;  // user_id and user_properties only
    for (const char *n : names) EXPECT_EQ(sent["user_properties"]["$set"][n], "v") << n;
}

TEST(IdentifyPlan, UnknownAmplitudePrefixedColumnIs42703) {
    PlanFailure f = PlanFails({Col("user_id", TC::kText), Col("amplitude_county", TC::kText)}, kUser);
    EXPECT_EQ(f.sqlstate, "42703");
    EXPECT_EQ(f.message, "column \"amplitude_county\" names no Amplitude field");
    EXPECT_EQ(f.detail,
              "Columns named amplitude_... select Amplitude's fields of an identification: amplitude_app_version, "
              "amplitude_platform, amplitude_os_name, amplitude_os_version, amplitude_device_brand, "
              "amplitude_device_manufacturer, amplitude_device_model, amplitude_carrier, amplitude_country, "
              "amplitude_region, amplitude_city, amplitude_dma, amplitude_language, amplitude_paying, "
              "amplitude_start_version.");
    EXPECT_EQ(f.hint, "Alias the column to another name to send it as a user property.");
    // Groups have no such fields: the name is a property.
    std::vector<ColumnPlan> plan = plan_identify_columns(
        {Col("group_type", TC::kText), Col("group_value", TC::kText), Col("amplitude_country", TC::kText)}, kGroup);
    EXPECT_EQ(plan[2].role, FieldRole::kProperty);
    EXPECT_EQ(plan[2].json_key, "\"amplitude_country\"");
    // Sent once only, whatever the name that selects it.
    EXPECT_EQ(PlanFails({Col("user_id", TC::kText), Col("amplitude_user_id", TC::kText)}, kUser).sqlstate, "42703");
}

TEST(IdentifyPlanWarnings, PartOfAGroupWarnsOfTheFieldsAmplitudeResets) {
    auto warnings = [](const Columns &extra) {
        Columns columns = {Col("user_id", TC::kText), Col("country", TC::kText)};  // a property: no warning
        columns.insert(columns.end(), extra.begin(), extra.end());
        return identify_plan_warnings(plan_identify_columns(columns, kUser));
    };
    EXPECT_TRUE(warnings({}).empty());
    std::vector<PlanWarning> w = warnings({Col("amplitude_country", TC::kText)});
    ASSERT_EQ(w.size(), 1u);
    EXPECT_EQ(w[0].message, "Amplitude will reset the location fields region, city and dma of every identified profile");
    EXPECT_EQ(w[0].detail, "The query sends country; Amplitude updates the location fields as one group and "
                           "resets those an identification leaves out.");
    EXPECT_EQ(w[0].hint, "Add the columns amplitude_region, amplitude_city and amplitude_dma, or leave out "
                         "the location fields.");
    EXPECT_TRUE(warnings({Col("amplitude_country", TC::kText), Col("amplitude_region", TC::kText),
                          Col("amplitude_city", TC::kText), Col("amplitude_dma", TC::kText),
                          Col("amplitude_language", TC::kText), Col("amplitude_app_version", TC::kText)})
                    .empty());
    w = warnings({Col("amplitude_os_name", TC::kText), Col("amplitude_os_version", TC::kText),
                  Col("amplitude_city", TC::kText)});
    ASSERT_EQ(w.size(), 2u);
    EXPECT_EQ(w[0].message, "Amplitude will reset the location fields country, region and dma of every identified profile");
    EXPECT_EQ(w[1].message,
              "Amplitude will reset the device fields platform, device_brand, device_manufacturer, device_model "
              "and carrier of every identified profile");
    EXPECT_EQ(w[1].detail, "The query sends os_name and os_version; Amplitude updates the device fields as one "
                           "group and resets those an identification leaves out.");
}

TEST_F(IdentifyTest, SilentChangesAreCountedPerAcceptedRecord) {
    Columns columns = {Col("user_id", TC::kText), Col("bio", TC::kText), Col("groups", TC::kJsonb),
                       Col("amplitude_country", TC::kText), Col("amplitude_city", TC::kText),
                       Col("user_properties", TC::kJsonb)};
    IdentifyEncoder encoder(plan_identify_columns(columns, kUser), kUser);
    std::string long_text(1025, 'a'), limit_text(1024, 'a');
    std::string many_types = R"({"a":"1","b":"1","c":"1","d":"1","e":"1","f":"1"})";
    std::string many_values = R"({"team":["1","2","3","4","5","6","7","8","9","10","11"]})";
    // At the limits: nothing counted.
    EXPECT_TRUE(EncodeWith(encoder, {Text("user-00001"), Text(limit_text), Jsonb(R"({"a":"1","b":"1","c":"1","d":"1","e":"1"})"),
                                     Text("FR"), Text("Paris"), Null()}).ok);
    EXPECT_TRUE(encoder.silent_changes().warnings().empty());
    // Over them, each once per record.
    EXPECT_TRUE(EncodeWith(encoder, {Text("user-00002"), Text(long_text), Jsonb(many_types), Text("FR"),
                                     Null(), Jsonb("{\"note\":\"" + long_text + "\"}")}).ok);
    EXPECT_TRUE(EncodeWith(encoder, {Text("user-00003"), Null(), Jsonb(many_values), Null(), Null(),
                                     Jsonb("{\"note\":\"" + long_text + "\"}")}).ok);
    // A rejected row changes nothing in Amplitude.
    EXPECT_FALSE(EncodeWith(encoder, {Text("null"), Text(long_text), Jsonb(many_types), Text("FR"), Null(), Null()}).ok);
    const SilentChanges &s = encoder.silent_changes();
    EXPECT_EQ(s.records(SilentChange::kTruncatedString), 2u);
    EXPECT_EQ(s.example_column(SilentChange::kTruncatedString), "bio");
    EXPECT_EQ(s.records(SilentChange::kDroppedGroupTypes), 1u);
    EXPECT_EQ(s.records(SilentChange::kDroppedGroupValues), 1u);
    EXPECT_EQ(s.example_column(SilentChange::kDroppedGroupValues), "groups");
    EXPECT_EQ(s.records(SilentChange::kResetGroupedField), 1u);
    EXPECT_EQ(s.example_column(SilentChange::kResetGroupedField), "amplitude_city");
    EXPECT_EQ(s.warnings(),
              (std::vector<std::string>{
                  "2 records carry strings longer than 1,024 characters, which Amplitude truncates (for "
                  "example column \"bio\")",
                  "1 record carries more than 5 group types, of which Amplitude keeps the first 5 (for "
                  "example column \"groups\")",
                  "1 record carries more than 10 values for a group type, of which Amplitude keeps the "
                  "first 10 (for example column \"groups\")",
                  "1 record carries a NULL location or device field while another field of its group is "
                  "sent, so Amplitude resets it (for example column \"amplitude_city\")"}));
}

TEST_F(IdentifyTest, RecordsCarryTheirPropertyCount) {
    Encoded e = Encode({Col("group_type", TC::kText), Col("group_value", TC::kText), Col("plan", TC::kText),
                        Col("group_properties", TC::kJsonb)},
                       {Text("company"), Text("acme"), Text("pro"), Jsonb(R"({"a": 1, "$add": {"seats": 2}})")},
                       kGroup);
    ASSERT_TRUE(e.ok) << e.rejection.reason;
    EXPECT_EQ(e.record.property_count, 3u);
}
