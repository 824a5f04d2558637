/*
 * request — what cqrsd checks in a client's request before acting on it,
 * as a pure function of its bytes (no sockets, no processes: fuzzed as is).
 *
 * A request must decode as a cqrs.Request; no string in it may hold a NUL
 * byte (protobuf-c would cut it short); it must carry a command, a query or
 * a control; strings stay within max_string_bytes, metadata within its
 * entry and byte limits; a command has a name; an aggregate id is valid
 * (lib/aggregate.h) — except the empty id of a whole-type VERIFY query and
 * the read model's queries (READ_MODEL, SUBSCRIBE, ALL_EVENTS), which name a
 * type only; a READ_MODEL query has a name.
 * Whether the aggregate type exists is the router's question.
 */
#ifndef CQRS_REQUEST_H
#define CQRS_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "cqrs.pb-c.h"

struct request_limits {
    size_t max_string_bytes;       /* type, id, name, command_id, child, each */
    size_t max_metadata_entries;
    size_t max_metadata_bytes;     /* keys and values together */
};

void request_limits_default(struct request_limits *lim);

/* CQRS__STATUS__OK with *out the request decoded with `alloc` (NULL:
 * malloc; cqrs__request__free_unpacked it with the same), or
 * CQRS__STATUS__INVALID with *out NULL and one sentence in `err`; *id is
 * the request's id when it decoded (0 otherwise), for the reply. */
Cqrs__Status request_check(const uint8_t *body, size_t len, ProtobufCAllocator *alloc,
                           const struct request_limits *lim, Cqrs__Request **out, uint64_t *id,
                           char *err, size_t errlen);

#endif
