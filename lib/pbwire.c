/* pbwire — see pbwire.h. Wire types: 0 varint, 1 fixed64, 2 length-delimited,
 * 5 fixed32; groups (3, 4) are refused. */
#include "pbwire.h"

#include <string.h>

#define PBWIRE_MAX_DEPTH 16

static int pbwire_varint(const uint8_t **p, const uint8_t *end, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* Reads one field at *p: its key, and for a varint its value, for a
 * length-delimited field its bytes (*data, *value = length). -1 when the
 * bytes are not well-formed (a field number 0 or above 2^29 - 1 included). */
static int pbwire_field(const uint8_t **p, const uint8_t *end, uint64_t *key, uint64_t *value,
                        const uint8_t **data)
{
    if (pbwire_varint(p, end, key) < 0)
        return -1;
    if ((*key >> 3) == 0 || (*key >> 3) > 0x1fffffff)
        return -1;   /* no field has number 0 or above 2^29 - 1 */
    switch (*key & 7) {
    case 0:
        return pbwire_varint(p, end, value);
    case 1:
        if (end - *p < 8)
            return -1;
        *p += 8;
        return 0;
    case 5:
        if (end - *p < 4)
            return -1;
        *p += 4;
        return 0;
    case 2:
        if (pbwire_varint(p, end, value) < 0 || *value > (uint64_t)(end - *p))
            return -1;
        *data = *p;
        *p += *value;
        return 0;
    default:
        return -1;
    }
}

static int pbwire_walk(const ProtobufCMessageDescriptor *desc, const uint8_t *p, const uint8_t *end,
                       int depth)
{
    if (depth > PBWIRE_MAX_DEPTH)
        return -1;
    while (p < end) {
        uint64_t key, n;
        const uint8_t *data;
        if (pbwire_field(&p, end, &key, &n, &data) < 0)
            return -1;
        if ((key & 7) != 2)
            continue;
        const ProtobufCFieldDescriptor *f =
            desc ? protobuf_c_message_descriptor_get_field(desc, (unsigned)(key >> 3)) : NULL;
        if (f && f->type == PROTOBUF_C_TYPE_STRING && memchr(data, 0, (size_t)n))
            return -1;
        if (f && f->type == PROTOBUF_C_TYPE_MESSAGE &&
            pbwire_walk(f->descriptor, data, data + n, depth + 1) < 0)
            return -1;
    }
    return 0;
}

int pbwire_check_strings(const ProtobufCMessageDescriptor *desc, const uint8_t *buf, size_t len)
{
    return pbwire_walk(desc, buf, buf + len, 0);
}

int pbwire_varint_field(const uint8_t *buf, size_t len, unsigned field, uint64_t *value)
{
    const uint8_t *p = buf, *end = buf + len, *data;
    int found = 0;
    while (p < end) {
        uint64_t key, n;
        if (pbwire_field(&p, end, &key, &n, &data) < 0)
            return -1;
        if ((key & 7) == 0 && (key >> 3) == field) {   /* the last one counts, as decoding does */
            *value = n;
            found = 1;
        }
    }
    return found;
}
