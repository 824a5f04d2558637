/* request — see request.h. */
#include "request.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "aggregate.h"
#include "pbwire.h"

void request_limits_default(struct request_limits *lim)
{
    lim->max_string_bytes = 1024;
    lim->max_metadata_entries = 32;
    lim->max_metadata_bytes = 4096;
}

__attribute__((format(printf, 3, 4)))
static Cqrs__Status request_invalid(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return CQRS__STATUS__INVALID;
}

static int request_too_long(const char *s, const struct request_limits *lim)
{
    return strlen(s) > lim->max_string_bytes;
}

static Cqrs__Status request_check_body(const Cqrs__Request *req, const struct request_limits *lim,
                                       char *err, size_t errlen)
{
    const char *type = NULL, *id = NULL;
    int whole_type = 0;
    switch (req->body_case) {
    case CQRS__REQUEST__BODY_COMMAND: {
        const Cqrs__Command *c = req->command;
        if (!c->name[0])
            return request_invalid(err, errlen, "command has no name");
        if (request_too_long(c->name, lim) || request_too_long(c->command_id, lim))
            return request_invalid(err, errlen, "command name or command_id longer than %zu bytes",
                                   lim->max_string_bytes);
        if (c->n_metadata > lim->max_metadata_entries)
            return request_invalid(err, errlen, "more than %zu metadata entries",
                                   lim->max_metadata_entries);
        size_t bytes = 0;
        for (size_t i = 0; i < c->n_metadata; i++)
            bytes += strlen(c->metadata[i]->key) + strlen(c->metadata[i]->value);
        if (bytes > lim->max_metadata_bytes)
            return request_invalid(err, errlen, "metadata of more than %zu bytes",
                                   lim->max_metadata_bytes);
        type = c->aggregate_type;
        id = c->aggregate_id;
        break;
    }
    case CQRS__REQUEST__BODY_QUERY:
        type = req->query->aggregate_type;
        id = req->query->aggregate_id;
        /* the read model's queries name a type, not an aggregate */
        whole_type = (req->query->kind == CQRS__QUERY__KIND__VERIFY && !id[0]) ||
                     req->query->kind == CQRS__QUERY__KIND__READ_MODEL ||
                     req->query->kind == CQRS__QUERY__KIND__SUBSCRIBE ||
                     req->query->kind == CQRS__QUERY__KIND__ALL_EVENTS;
        if (req->query->kind == CQRS__QUERY__KIND__READ_MODEL &&
            (!req->query->name[0] || request_too_long(req->query->name, lim)))
            return request_invalid(err, errlen, "a read-model query needs a name of at most %zu "
                                   "bytes", lim->max_string_bytes);
        break;
    case CQRS__REQUEST__BODY_CONTROL:
        if (request_too_long(req->control->child, lim))
            return request_invalid(err, errlen, "child name longer than %zu bytes",
                                   lim->max_string_bytes);
        return CQRS__STATUS__OK;
    default:
        return request_invalid(err, errlen, "request has no command, query or control");
    }
    if (request_too_long(type, lim))
        return request_invalid(err, errlen, "aggregate type longer than %zu bytes",
                               lim->max_string_bytes);
    if (!whole_type && agg_id_valid(id, strlen(id)) < 0)
        return request_invalid(err, errlen,
                               "aggregate id must be 1 to 128 of A-Z a-z 0-9 . _ - and not . or ..");
    return CQRS__STATUS__OK;
}

Cqrs__Status request_check(const uint8_t *body, size_t len, ProtobufCAllocator *alloc,
                           const struct request_limits *lim, Cqrs__Request **out, uint64_t *id,
                           char *err, size_t errlen)
{
    *out = NULL;
    *id = 0;
    Cqrs__Request *req = cqrs__request__unpack(alloc, len, body);
    if (!req)
        return request_invalid(err, errlen, "request does not decode as cqrs.Request");
    *id = req->id;
    Cqrs__Status st;
    if (pbwire_check_strings(&cqrs__request__descriptor, body, len) < 0)
        /* protobuf-c ends strings at a NUL: "w1\0x" would become "w1" */
        st = request_invalid(err, errlen,
                             "request has a string with a NUL byte, or is not well-formed protobuf");
    else
        st = request_check_body(req, lim, err, errlen);
    if (st != CQRS__STATUS__OK) {
        cqrs__request__free_unpacked(req, alloc);
        return st;
    }
    *out = req;
    return CQRS__STATUS__OK;
}
