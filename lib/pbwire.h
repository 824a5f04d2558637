/*
 * pbwire — checks on raw protobuf bytes that decoding cannot make.
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

#endif
