#include "datum_values.hpp"

#include <cstring>

using amplitude_sync::TypeCategory;
using amplitude_sync::Value;

namespace {

TypeCategory category_of(Oid base_type) {
    switch (base_type) {
        case BOOLOID: return TypeCategory::kBool;
        case INT2OID:
        case INT4OID:
        case INT8OID: return TypeCategory::kInteger;
        case FLOAT4OID:
        case FLOAT8OID: return TypeCategory::kFloat;
        case NUMERICOID: return TypeCategory::kNumeric;
        case TEXTOID:
        case VARCHAROID:
        case BPCHAROID: return TypeCategory::kText;
        case JSONOID: return TypeCategory::kJson;
        case JSONBOID: return TypeCategory::kJsonb;
        case TIMESTAMPTZOID: return TypeCategory::kTimestampTz;
        case TIMESTAMPOID: return TypeCategory::kTimestamp;
        case DATEOID: return TypeCategory::kDate;
        default: return OidIsValid(get_element_type(base_type)) ? TypeCategory::kArray : TypeCategory::kOther;
    }
}

bool needs_output_function(TypeCategory c) {
    return c == TypeCategory::kNumeric || c == TypeCategory::kJsonb || c == TypeCategory::kOther;
}

void set_output_function(Oid type_oid, FmgrInfo *out) {
    Oid func;
    bool varlena;
    getTypeOutputInfo(type_oid, &func, &varlena);
    fmgr_info(func, out);
}

// Text in the database encoding, as UTF-8 for Amplitude.
void set_text(Value *v, const char *s, size_t len) {
    int enc = GetDatabaseEncoding();
    if (enc != PG_UTF8 && enc != PG_SQL_ASCII) {
        char *converted = pg_server_to_any(s, static_cast<int>(len), PG_UTF8);
        if (converted != s) len = strlen(converted);
        s = converted;
    }
    v->text = s;
    v->text_len = len;
}

// Reads a scalar of a known category (not an array).
void read_scalar(TypeCategory category, Oid type_oid, const FmgrInfo *output, Datum d, Value *v) {
    v->category = category;
    v->is_null = false;
    switch (category) {
        case TypeCategory::kBool:
            v->b = DatumGetBool(d);
            break;
        case TypeCategory::kInteger:
            v->i = type_oid == INT2OID ? DatumGetInt16(d)
                   : type_oid == INT4OID ? DatumGetInt32(d)
                                         : DatumGetInt64(d);
            break;
        case TypeCategory::kFloat:
            v->d = type_oid == FLOAT4OID ? DatumGetFloat4(d) : DatumGetFloat8(d);
            break;
        case TypeCategory::kTimestampTz:
        case TypeCategory::kTimestamp:
            v->i = DatumGetTimestamp(d);
            v->infinite = TIMESTAMP_NOT_FINITE(v->i);
            break;
        case TypeCategory::kDate: {
            DateADT date = DatumGetDateADT(d);
            v->i = date;
            v->infinite = DATE_NOT_FINITE(date);
            break;
        }
        case TypeCategory::kText:
        case TypeCategory::kJson: {
            text *t = DatumGetTextPP(d);
            set_text(v, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
            break;
        }
        case TypeCategory::kNumeric:
        case TypeCategory::kJsonb:
        case TypeCategory::kOther: {
            char *s = OutputFunctionCall(const_cast<FmgrInfo *>(output), d);
            set_text(v, s, strlen(s));
            break;
        }
        case TypeCategory::kArray:
            break;  // handled by the caller
    }
}

}  // namespace

void init_column_reader(ColumnReader *reader, Oid type_oid) {
    memset(reader, 0, sizeof *reader);
    reader->type_oid = getBaseType(type_oid);
    reader->category = category_of(reader->type_oid);
    if (reader->category == TypeCategory::kArray) {
        Oid elem = getBaseType(get_element_type(reader->type_oid));
        reader->elem_type = elem;
        reader->elem_category = category_of(elem);
        get_typlenbyvalalign(elem, &reader->elem_len, &reader->elem_byval, &reader->elem_align);
        if (needs_output_function(reader->elem_category)) set_output_function(elem, &reader->output);
    } else if (needs_output_function(reader->category)) {
        set_output_function(reader->type_oid, &reader->output);
    }
}

void read_column_value(const ColumnReader *reader, Datum datum, bool is_null, Value *value) {
    // Only the fields the category uses are set (this runs for every column
    // of every row; a whole-struct reset showed in profiles).
    value->category = reader->category;
    value->is_null = is_null;
    value->infinite = false;
    if (is_null) return;
    if (reader->category != TypeCategory::kArray) {
        read_scalar(reader->category, reader->type_oid, &reader->output, datum, value);
        return;
    }
    ArrayType *array = DatumGetArrayTypeP(datum);
    int ndims = ARR_NDIM(array);
    if (ndims > 6) ndims = 6;  // PostgreSQL's MAXDIM
    Datum *elems;
    bool *nulls;
    int count;
    deconstruct_array(array, reader->elem_type, reader->elem_len, reader->elem_byval,
                      reader->elem_align, &elems, &nulls, &count);
    Value *elements = static_cast<Value *>(palloc0(sizeof(Value) * (count > 0 ? count : 1)));
    for (int k = 0; k < count; ++k) {
        elements[k] = Value{};
        elements[k].category = reader->elem_category;
        if (!nulls[k])
            read_scalar(reader->elem_category, reader->elem_type, &reader->output, elems[k], &elements[k]);
    }
    value->is_null = false;
    value->elements = elements;
    value->ndims = count > 0 ? ndims : 0;
    for (int k = 0; k < value->ndims; ++k) value->dims[k] = ARR_DIMS(array)[k];
}

Datum utf8_text_datum(const std::string &s) {
    char *server = pg_any_to_server(s.data(), static_cast<int>(s.size()), PG_UTF8);
    return PointerGetDatum(server == s.data() ? cstring_to_text_with_len(s.data(), static_cast<int>(s.size()))
                                              : cstring_to_text(server));
}
