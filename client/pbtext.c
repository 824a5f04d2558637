/*
 * pbtext — see pbtext.h for the text forms.
 *
 * Everything goes through the protobuf-c descriptors: a field lives at
 * `offset` in the message struct; `quantifier_offset` points at the element
 * count (size_t) of a repeated field, the case (an int-sized enum) of a oneof
 * member, or the has_ flag (protobuf_c_boolean) of a proto2 optional scalar.
 * A repeated field is a pointer to an array of elements of the field type.
 *
 * The builder owns everything it allocates: the message, its strings, bytes
 * and repeated arrays. It frees exactly the fields it set (recorded in
 * `seen`), so defaults that point into the descriptors are never freed.
 * Decoded messages (protobuf_c_message_unpack) are read only.
 */
#include "pbtext.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

struct pbtext_builder {
    ProtobufCMessage *msg;
    unsigned char *seen;          /* per field of the descriptor: set by us */
};

/* --- field access ------------------------------------------------------- */

static void *field_at(const ProtobufCMessage *m, unsigned offset)
{
    return (char *)m + offset;
}

static size_t field_elem_size(ProtobufCType type)
{
    switch (type) {
    case PROTOBUF_C_TYPE_INT32: case PROTOBUF_C_TYPE_SINT32: case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32: case PROTOBUF_C_TYPE_FIXED32:
        return sizeof(int32_t);
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64:
        return sizeof(int64_t);
    case PROTOBUF_C_TYPE_FLOAT:   return sizeof(float);
    case PROTOBUF_C_TYPE_DOUBLE:  return sizeof(double);
    case PROTOBUF_C_TYPE_BOOL:    return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_ENUM:    return sizeof(int);
    case PROTOBUF_C_TYPE_STRING:  return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:   return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE: return sizeof(ProtobufCMessage *);
    }
    return 0;
}

static const char *field_type_name(ProtobufCType type)
{
    switch (type) {
    case PROTOBUF_C_TYPE_INT32:    return "int32";
    case PROTOBUF_C_TYPE_SINT32:   return "sint32";
    case PROTOBUF_C_TYPE_SFIXED32: return "sfixed32";
    case PROTOBUF_C_TYPE_INT64:    return "int64";
    case PROTOBUF_C_TYPE_SINT64:   return "sint64";
    case PROTOBUF_C_TYPE_SFIXED64: return "sfixed64";
    case PROTOBUF_C_TYPE_UINT32:   return "uint32";
    case PROTOBUF_C_TYPE_FIXED32:  return "fixed32";
    case PROTOBUF_C_TYPE_UINT64:   return "uint64";
    case PROTOBUF_C_TYPE_FIXED64:  return "fixed64";
    case PROTOBUF_C_TYPE_FLOAT:    return "float";
    case PROTOBUF_C_TYPE_DOUBLE:   return "double";
    case PROTOBUF_C_TYPE_BOOL:     return "bool";
    case PROTOBUF_C_TYPE_ENUM:     return "enum";
    case PROTOBUF_C_TYPE_STRING:   return "string";
    case PROTOBUF_C_TYPE_BYTES:    return "bytes";
    case PROTOBUF_C_TYPE_MESSAGE:  return "message";
    }
    return "unknown";
}

static int field_is_oneof(const ProtobufCFieldDescriptor *f)
{
    return (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0;
}

/* Whether the field shows in output (see pbtext.h). */
static int field_present(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    if (field_is_oneof(f))
        return *(const uint32_t *)field_at(m, f->quantifier_offset) == f->id;
    if (f->label != PROTOBUF_C_LABEL_OPTIONAL)
        return 1;
    if (f->type == PROTOBUF_C_TYPE_MESSAGE || f->type == PROTOBUF_C_TYPE_STRING) {
        /* Absent: NULL, or (proto2 string) the descriptor's default. */
        const void *p = *(void *const *)field_at(m, f->offset);
        return p != NULL && p != f->default_value;
    }
    return *(const protobuf_c_boolean *)field_at(m, f->quantifier_offset) != 0;
}

/* The values of a present field: the array and count of a repeated one, or
 * the field itself and 1. */
static const void *field_values(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
                                size_t *n)
{
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
        *n = *(const size_t *)field_at(m, f->quantifier_offset);
        return *(void *const *)field_at(m, f->offset);
    }
    *n = 1;
    return field_at(m, f->offset);
}

/* --- the builder -------------------------------------------------------- */

union pbtext_value {
    int32_t i32;
    int64_t i64;
    uint32_t u32;
    uint64_t u64;
    float f;
    double d;
    protobuf_c_boolean b;
    int e;
    char *s;
    ProtobufCBinaryData bin;
};

struct pbtext_builder *pbtext_builder_new(const ProtobufCMessageDescriptor *desc)
{
    struct pbtext_builder *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->msg = malloc(desc->sizeof_message);
    b->seen = calloc(desc->n_fields ? desc->n_fields : 1, 1);
    if (!b->msg || !b->seen) {
        free(b->msg);
        free(b->seen);
        free(b);
        errno = ENOMEM;
        return NULL;
    }
    protobuf_c_message_init(desc, b->msg);
    return b;
}

static void value_free(ProtobufCType type, void *v)
{
    if (type == PROTOBUF_C_TYPE_STRING)
        free(*(char **)v);
    else if (type == PROTOBUF_C_TYPE_BYTES)
        free(((ProtobufCBinaryData *)v)->data);
}

void pbtext_builder_free(struct pbtext_builder *b)
{
    if (!b)
        return;
    const ProtobufCMessageDescriptor *desc = b->msg->descriptor;
    for (unsigned i = 0; i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &desc->fields[i];
        if (!b->seen[i])
            continue;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n;
            char *arr = (char *)field_values(b->msg, f, &n);
            for (size_t k = 0; k < n; k++)
                value_free(f->type, arr + k * field_elem_size(f->type));
            free(arr);
        } else {
            value_free(f->type, field_at(b->msg, f->offset));
        }
    }
    free(b->seen);
    free(b->msg);
    free(b);
}

const ProtobufCMessage *pbtext_builder_message(const struct pbtext_builder *b)
{
    return b->msg;
}

static int set_error(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int set_error(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    errno = EINVAL;
    return -1;
}

/* Decimal integer, optional sign, nothing else (strto* would skip leading
 * blanks and wrap "-1" into an unsigned). */
static int parse_int(const char *s, int is_signed, int64_t min, int64_t max,
                     uint64_t umax, union pbtext_value *v)
{
    const char *digits = (is_signed && (*s == '-' || *s == '+')) ? s + 1 : s;
    if (*digits < '0' || *digits > '9')
        return -1;
    char *end;
    errno = 0;
    if (is_signed) {
        long long x = strtoll(s, &end, 10);
        if (errno || *end || x < min || x > max)
            return -1;
        v->i64 = x;
    } else {
        unsigned long long x = strtoull(s, &end, 10);
        if (errno || *end || x > umax)
            return -1;
        v->u64 = x;
    }
    return 0;
}

static int parse_real(const char *s, int is_float, union pbtext_value *v)
{
    if (*s == '\0' || *s == ' ' || (*s >= '\t' && *s <= '\r'))
        return -1;
    char *end;
    errno = 0;
    if (is_float) {
        float x = strtof(s, &end);
        if (*end || (errno == ERANGE && isinf(x)))
            return -1;
        v->f = x;
    } else {
        double x = strtod(s, &end);
        if (*end || (errno == ERANGE && isinf(x)))
            return -1;
        v->d = x;
    }
    return 0;
}

/* The names of an enum's values, "A, B, C", into buf. */
static const char *enum_names(const ProtobufCEnumDescriptor *ed, char *buf, size_t len)
{
    size_t at = 0;
    buf[0] = '\0';
    for (unsigned i = 0; i < ed->n_values && at < len; i++) {
        int n = snprintf(buf + at, len - at, "%s%s", i ? ", " : "", ed->values[i].name);
        if (n < 0)
            break;
        at += (size_t)n;
    }
    return buf;
}

/* Parses `s` as a value of field f into v (strings and bytes malloc'd). */
static int parse_value(const ProtobufCFieldDescriptor *f, const char *s,
                       union pbtext_value *v, char *err, size_t errlen)
{
    int bad = 0;
    memset(v, 0, sizeof *v);
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32: case PROTOBUF_C_TYPE_SINT32: case PROTOBUF_C_TYPE_SFIXED32:
        bad = parse_int(s, 1, INT32_MIN, INT32_MAX, 0, v);
        if (!bad)
            v->i32 = (int32_t)v->i64;
        break;
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
        bad = parse_int(s, 1, INT64_MIN, INT64_MAX, 0, v);
        break;
    case PROTOBUF_C_TYPE_UINT32: case PROTOBUF_C_TYPE_FIXED32:
        bad = parse_int(s, 0, 0, 0, UINT32_MAX, v);
        if (!bad)
            v->u32 = (uint32_t)v->u64;
        break;
    case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64:
        bad = parse_int(s, 0, 0, 0, UINT64_MAX, v);
        break;
    case PROTOBUF_C_TYPE_FLOAT:
        bad = parse_real(s, 1, v);
        break;
    case PROTOBUF_C_TYPE_DOUBLE:
        bad = parse_real(s, 0, v);
        break;
    case PROTOBUF_C_TYPE_BOOL:
        if (strcmp(s, "true") == 0 || strcmp(s, "1") == 0)
            v->b = 1;
        else if (strcmp(s, "false") == 0 || strcmp(s, "0") == 0)
            v->b = 0;
        else
            return set_error(err, errlen, "invalid value \"%s\" for field %s: "
                             "a bool is true, false, 1 or 0", s, f->name);
        break;
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumDescriptor *ed = f->descriptor;
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value_by_name(ed, s);
        if (!ev && parse_int(s, 1, INT32_MIN, INT32_MAX, 0, v) == 0)
            ev = protobuf_c_enum_descriptor_get_value(ed, (int)v->i64);
        if (!ev) {
            char names[512];
            return set_error(err, errlen, "invalid value \"%s\" for field %s: "
                             "enum %s has %s", s, f->name, ed->short_name,
                             enum_names(ed, names, sizeof names));
        }
        v->e = ev->value;
        break;
    }
    case PROTOBUF_C_TYPE_STRING:
        if (!(v->s = strdup(s)))
            return -1;
        break;
    case PROTOBUF_C_TYPE_BYTES:
        v->bin.len = strlen(s);
        if (!(v->bin.data = malloc(v->bin.len ? v->bin.len : 1)))
            return -1;
        memcpy(v->bin.data, s, v->bin.len);
        break;
    case PROTOBUF_C_TYPE_MESSAGE:
        return set_error(err, errlen, "field %s is a message (%s), which cannot be "
                         "set from the command line", f->name,
                         ((const ProtobufCMessageDescriptor *)f->descriptor)->short_name);
    }
    if (bad)
        return set_error(err, errlen, "invalid value \"%s\" for field %s (%s)",
                         s, f->name, field_type_name(f->type));
    return 0;
}

/* The field names of desc, "a, b, c", into buf. */
static const char *field_names(const ProtobufCMessageDescriptor *desc, char *buf, size_t len)
{
    size_t at = 0;
    buf[0] = '\0';
    if (desc->n_fields == 0)
        snprintf(buf, len, "none");
    for (unsigned i = 0; i < desc->n_fields && at < len; i++) {
        int n = snprintf(buf + at, len - at, "%s%s", i ? ", " : "", desc->fields[i].name);
        if (n < 0)
            break;
        at += (size_t)n;
    }
    return buf;
}

int pbtext_builder_set(struct pbtext_builder *b, const char *name, const char *value,
                       char *err, size_t errlen)
{
    const ProtobufCMessageDescriptor *desc = b->msg->descriptor;
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(desc, name);
    if (!f) {
        char names[512];
        return set_error(err, errlen, "%s has no field \"%s\" (its fields: %s)",
                         desc->short_name, name, field_names(desc, names, sizeof names));
    }
    size_t idx = (size_t)(f - desc->fields);
    int repeated = f->label == PROTOBUF_C_LABEL_REPEATED;
    if (b->seen[idx] && !repeated)
        return set_error(err, errlen, "field %s is given more than once", f->name);
    if (field_is_oneof(f)) {
        for (unsigned i = 0; i < desc->n_fields; i++)
            if (b->seen[i] && field_is_oneof(&desc->fields[i]) &&
                desc->fields[i].quantifier_offset == f->quantifier_offset)
                return set_error(err, errlen, "fields %s and %s are alternatives "
                                 "(one oneof): give only one", desc->fields[i].name, f->name);
    }

    union pbtext_value v;
    if (parse_value(f, value, &v, err, errlen) < 0)
        return -1;
    size_t size = field_elem_size(f->type);
    if (repeated) {
        size_t *n = field_at(b->msg, f->quantifier_offset);
        void **arr = field_at(b->msg, f->offset);
        char *grown = realloc(b->seen[idx] ? *arr : NULL, (*n + 1) * size);
        if (!grown) {
            value_free(f->type, &v);
            errno = ENOMEM;
            return -1;
        }
        memcpy(grown + *n * size, &v, size);
        *arr = grown;
        (*n)++;
    } else {
        memcpy(field_at(b->msg, f->offset), &v, size);
        if (field_is_oneof(f))
            *(uint32_t *)field_at(b->msg, f->quantifier_offset) = f->id;
        else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_STRING)
            *(protobuf_c_boolean *)field_at(b->msg, f->quantifier_offset) = 1;
    }
    b->seen[idx] = 1;
    return 0;
}

int pbtext_builder_pack(const struct pbtext_builder *b, uint8_t **out, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(b->msg);
    *out = malloc(*len ? *len : 1);
    if (!*out) {
        errno = ENOMEM;
        return -1;
    }
    protobuf_c_message_pack(b->msg, *out);
    return 0;
}

/* --- JSON --------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (RFC 3629: no overlongs, no
 * surrogates, at most U+10FFFF), or 0. */
static size_t utf8_valid_len(const unsigned char *s, size_t left)
{
    unsigned char c = s[0];
    size_t n;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    else if ((c & 0xe0) == 0xc0) { n = 2; cp = c & 0x1f; }
    else if ((c & 0xf0) == 0xe0) { n = 3; cp = c & 0x0f; }
    else if ((c & 0xf8) == 0xf0) { n = 4; cp = c & 0x07; }
    else
        return 0;
    if (left < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

json_t *pbtext_json_string(const char *s)
{
    if (!s)
        s = "";
    size_t len = strlen(s);
    json_t *j = json_stringn(s, len);
    if (j)
        return j;
    /* Not UTF-8: each bad byte becomes U+FFFD (3 bytes). */
    char *fixed = malloc(len * 3 + 1);
    if (!fixed)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_valid_len((const unsigned char *)s + i, len - i);
        if (n) {
            memcpy(fixed + o, s + i, n);
            o += n;
            i += n;
        } else {
            memcpy(fixed + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    j = json_stringn(fixed, o);
    free(fixed);
    return j;
}

json_t *pbtext_json_bytes(const uint8_t *data, size_t len)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((len + 2) / 3 * 4 + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t w = (uint32_t)data[i] << 16;
        if (i + 1 < len)
            w |= (uint32_t)data[i + 1] << 8;
        if (i + 2 < len)
            w |= data[i + 2];
        out[o++] = b64[w >> 18 & 63];
        out[o++] = b64[w >> 12 & 63];
        out[o++] = i + 1 < len ? b64[w >> 6 & 63] : '=';
        out[o++] = i + 2 < len ? b64[w & 63] : '=';
    }
    json_t *j = json_stringn(out, o);
    free(out);
    return j;
}

static json_t *json_real_or_name(double d)
{
    if (isnan(d))
        return json_string("NaN");
    if (isinf(d))
        return json_string(d > 0 ? "Infinity" : "-Infinity");
    return json_real(d);
}

/* One value of field f at v. */
static json_t *value_to_json(const ProtobufCFieldDescriptor *f, const void *v)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32: case PROTOBUF_C_TYPE_SINT32: case PROTOBUF_C_TYPE_SFIXED32:
        return json_integer(*(const int32_t *)v);
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
        return json_integer(*(const int64_t *)v);
    case PROTOBUF_C_TYPE_UINT32: case PROTOBUF_C_TYPE_FIXED32:
        return json_integer(*(const uint32_t *)v);
    case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64: {
        uint64_t u = *(const uint64_t *)v;
        if (u <= INT64_MAX)
            return json_integer((json_int_t)u);
        char buf[24];
        snprintf(buf, sizeof buf, "%" PRIu64, u);
        return json_string(buf);
    }
    case PROTOBUF_C_TYPE_FLOAT:
        return json_real_or_name(*(const float *)v);
    case PROTOBUF_C_TYPE_DOUBLE:
        return json_real_or_name(*(const double *)v);
    case PROTOBUF_C_TYPE_BOOL:
        return json_boolean(*(const protobuf_c_boolean *)v);
    case PROTOBUF_C_TYPE_ENUM: {
        int e = *(const int *)v;
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, e);
        return ev ? json_string(ev->name) : json_integer(e);
    }
    case PROTOBUF_C_TYPE_STRING:
        return pbtext_json_string(*(char *const *)v);
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *bin = v;
        return pbtext_json_bytes(bin->data, bin->len);
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)v;
        return sub ? pbtext_to_json(sub) : json_null();
    }
    }
    return json_null();
}

json_t *pbtext_to_json(const ProtobufCMessage *m)
{
    const ProtobufCMessageDescriptor *desc = m->descriptor;
    json_t *obj = json_object();
    if (!obj)
        return NULL;
    for (unsigned i = 0; i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &desc->fields[i];
        if (!field_present(m, f))
            continue;
        size_t n;
        const char *vals = field_values(m, f, &n);
        json_t *j;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            j = json_array();
            for (size_t k = 0; j && k < n; k++)
                if (json_array_append_new(j, value_to_json(f, vals + k * field_elem_size(f->type))) < 0) {
                    json_decref(j);
                    j = NULL;
                }
        } else {
            j = value_to_json(f, vals);
        }
        if (json_object_set_new(obj, f->name, j) < 0) {
            json_decref(obj);
            return NULL;
        }
    }
    return obj;
}

/* --- human text --------------------------------------------------------- */

void pbtext_print_quoted(FILE *out, const uint8_t *s, size_t len)
{
    fputc('"', out);
    for (size_t i = 0; i < len; i++) {
        uint8_t c = s[i];
        switch (c) {
        case '"':  fputs("\\\"", out); break;
        case '\\': fputs("\\\\", out); break;
        case '\n': fputs("\\n", out); break;
        case '\r': fputs("\\r", out); break;
        case '\t': fputs("\\t", out); break;
        default:
            if (c < 0x20 || c == 0x7f)
                fprintf(out, "\\x%02x", c);
            else
                fputc(c, out);
        }
    }
    fputc('"', out);
}

/* Bytes: like a string, but every byte outside printable ASCII escaped. */
static void print_bytes(FILE *out, const ProtobufCBinaryData *bin)
{
    fputc('"', out);
    for (size_t i = 0; i < bin->len; i++) {
        uint8_t c = bin->data[i];
        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            fprintf(out, "\\x%02x", c);
        else
            fputc(c, out);
    }
    fputc('"', out);
}

/* The shortest %g form that reads back as the same value. */
static void print_real(FILE *out, double d, int is_float)
{
    if (isnan(d)) {
        fputs("nan", out);
        return;
    }
    if (isinf(d)) {
        fputs(d > 0 ? "inf" : "-inf", out);
        return;
    }
    char buf[48];
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, d);
        double back = strtod(buf, NULL);
        if (is_float ? (float)back == (float)d : back == d)
            break;
    }
    fputs(buf, out);
}

static void print_message_compact(FILE *out, const ProtobufCMessage *m);

static void print_value(FILE *out, const ProtobufCFieldDescriptor *f, const void *v)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32: case PROTOBUF_C_TYPE_SINT32: case PROTOBUF_C_TYPE_SFIXED32:
        fprintf(out, "%" PRId32, *(const int32_t *)v);
        break;
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
        fprintf(out, "%" PRId64, *(const int64_t *)v);
        break;
    case PROTOBUF_C_TYPE_UINT32: case PROTOBUF_C_TYPE_FIXED32:
        fprintf(out, "%" PRIu32, *(const uint32_t *)v);
        break;
    case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64:
        fprintf(out, "%" PRIu64, *(const uint64_t *)v);
        break;
    case PROTOBUF_C_TYPE_FLOAT:
        print_real(out, *(const float *)v, 1);
        break;
    case PROTOBUF_C_TYPE_DOUBLE:
        print_real(out, *(const double *)v, 0);
        break;
    case PROTOBUF_C_TYPE_BOOL:
        fputs(*(const protobuf_c_boolean *)v ? "true" : "false", out);
        break;
    case PROTOBUF_C_TYPE_ENUM: {
        int e = *(const int *)v;
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, e);
        if (ev)
            fputs(ev->name, out);
        else
            fprintf(out, "%d", e);
        break;
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)v;
        if (!s)
            s = "";
        pbtext_print_quoted(out, (const uint8_t *)s, strlen(s));
        break;
    }
    case PROTOBUF_C_TYPE_BYTES:
        print_bytes(out, v);
        break;
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)v;
        if (sub)
            print_message_compact(out, sub);
        else
            fputs("null", out);
        break;
    }
    }
}

/* The whole field: its value, or [v, v] when repeated. */
static void print_field(FILE *out, const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    size_t n;
    const char *vals = field_values(m, f, &n);
    if (f->label != PROTOBUF_C_LABEL_REPEATED) {
        print_value(out, f, vals);
        return;
    }
    fputc('[', out);
    for (size_t k = 0; k < n; k++) {
        if (k)
            fputs(", ", out);
        print_value(out, f, vals + k * field_elem_size(f->type));
    }
    fputc(']', out);
}

/* {name: value, name: value} */
static void print_message_compact(FILE *out, const ProtobufCMessage *m)
{
    const ProtobufCMessageDescriptor *desc = m->descriptor;
    int first = 1;
    fputc('{', out);
    for (unsigned i = 0; i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &desc->fields[i];
        if (!field_present(m, f))
            continue;
        fprintf(out, "%s%s: ", first ? "" : ", ", f->name);
        print_field(out, m, f);
        first = 0;
    }
    fputc('}', out);
}

void pbtext_print_inline(FILE *out, const ProtobufCMessage *m)
{
    const ProtobufCMessageDescriptor *desc = m->descriptor;
    int first = 1;
    for (unsigned i = 0; i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &desc->fields[i];
        if (!field_present(m, f))
            continue;
        fprintf(out, "%s%s=", first ? "" : " ", f->name);
        print_field(out, m, f);
        first = 0;
    }
}

void pbtext_print_lines(FILE *out, const ProtobufCMessage *m, const char *indent)
{
    pbtext_print_lines_except(out, m, indent, NULL);
}

void pbtext_print_lines_except(FILE *out, const ProtobufCMessage *m, const char *indent,
                               const char *skip)
{
    const ProtobufCMessageDescriptor *desc = m->descriptor;
    for (unsigned i = 0; i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &desc->fields[i];
        if (!field_present(m, f) || (skip && strcmp(f->name, skip) == 0))
            continue;
        fprintf(out, "%s%s: ", indent, f->name);
        print_field(out, m, f);
        fputc('\n', out);
    }
}
