/*
 * pbwire — checks and lookups on raw protobuf bytes, where decoding would
 * not do (or would cost more than the answer is worth).
 *
 * protobuf-c ends a decoded string at its first NUL byte, so "w1\0x" would
 * silently become "w1". pbwire walks the wire format with the message's
 * descriptor and looks inside every string field, sub-message and map
 * entry, before anything acts on the decoded message.
 */
#ifndef CQRS_PBWIRE_H
#define CQRS_PBWIRE_H

#include <stddef.h>
#include <stdint.h>
#include <protobuf-c/protobuf-c.h>

/* 0 if no string field of `desc` (at any depth) holds a NUL byte; -1 if one
 * does, or if the bytes are not well-formed protobuf (a field number 0 or
 * above 2^29 - 1 included, which protobuf-c 1.4 lets through). */
int pbwire_check_strings(const ProtobufCMessageDescriptor *desc, const uint8_t *buf, size_t len);

/* The value of the top-level varint field number `field` (an integer, a
 * bool or an enum) in a message's bytes, without decoding the rest: 1 with
 * *value set (the last occurrence, as decoding would take), 0 when absent
 * (its default, 0), -1 when the bytes are not well-formed protobuf. cqrsd
 * reads a Commit's position and a Reply's `more` this way. */
int pbwire_varint_field(const uint8_t *buf, size_t len, unsigned field, uint64_t *value);

#endif
