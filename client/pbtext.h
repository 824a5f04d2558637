/*
 * pbtext — protobuf messages to and from text for cqrsctl, generically,
 * through nothing but their protobuf-c descriptors: an aggregate type added
 * to the registry is handled without a change here.
 *
 * In:  a builder turns `field=value` arguments into a message of a given
 *      descriptor. Values are parsed per field type: integers in decimal
 *      (range-checked), bool true/false/1/0, float/double, string and bytes
 *      taken as given, enum by value name or number. A repeated scalar field
 *      may be set several times (each adds an element); any other field
 *      only once. Message fields cannot be set from text.
 *
 * Out: the fields that are present, in descriptor (field number) order.
 *      Present means: every proto3 (label none), required and repeated field
 *      (so defaults show and the shape is stable); a proto2 optional field
 *      when set; a oneof member when it is the set case.
 *  - JSON (jansson), keys the .proto field names: 64-bit integers as JSON
 *    integers (a uint64 above INT64_MAX, which jansson cannot hold, as a
 *    decimal string), bytes as base64, enums by name (number when unknown),
 *    NaN/Infinity as strings, an absent sub-message as null. Strings that
 *    are not valid UTF-8 get U+FFFD for each bad byte.
 *  - Human text: `name=value ...` on one line, or `name: value` one per
 *    line. Strings and bytes quoted with C escapes, messages as
 *    `{name: value, ...}`, repeated fields as `[v, v]`.
 */
#ifndef CQRS_PBTEXT_H
#define CQRS_PBTEXT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <jansson.h>
#include <protobuf-c/protobuf-c.h>

struct pbtext_builder;

/* A builder for a message of `desc`, all fields at their defaults.
 * NULL on ENOMEM. */
struct pbtext_builder *pbtext_builder_new(const ProtobufCMessageDescriptor *desc);
void pbtext_builder_free(struct pbtext_builder *b);

/* Sets field `name` from `value`. 0, or -1 with errno EINVAL and one
 * sentence in `err` (unknown field, unparseable value, message field, field
 * given twice), or -1 with errno ENOMEM. */
int pbtext_builder_set(struct pbtext_builder *b, const char *name, const char *value,
                       char *err, size_t errlen);

/* The message as built (owned by the builder). */
const ProtobufCMessage *pbtext_builder_message(const struct pbtext_builder *b);

/* Packs the message into a malloc'd buffer (*out, never NULL on success;
 * the caller frees it). 0, or -1 with errno ENOMEM. */
int pbtext_builder_pack(const struct pbtext_builder *b, uint8_t **out, size_t *len);

/* The message as a JSON object; NULL on ENOMEM. */
json_t *pbtext_to_json(const ProtobufCMessage *m);

/* A JSON string of untrusted text (invalid UTF-8 repaired); NULL on ENOMEM.
 * A NULL `s` gives "". */
json_t *pbtext_json_string(const char *s);
/* A JSON string holding `data` in base64; NULL on ENOMEM. */
json_t *pbtext_json_bytes(const uint8_t *data, size_t len);

/* `name=value name=value ...` (no newline). */
void pbtext_print_inline(FILE *out, const ProtobufCMessage *m);
/* One `<indent>name: value\n` per field. */
void pbtext_print_lines(FILE *out, const ProtobufCMessage *m, const char *indent);
/* The same, leaving out the field named `skip` (NULL: none). */
void pbtext_print_lines_except(FILE *out, const ProtobufCMessage *m, const char *indent,
                               const char *skip);
/* `s` quoted, with C escapes for '"', '\\' and control bytes. */
void pbtext_print_quoted(FILE *out, const uint8_t *s, size_t len);

#endif
