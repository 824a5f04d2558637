/*
 * aggregate — helpers shared by every aggregate type: emitting packed events,
 * rejections, descriptor lookup and aggregate id validation. The registry
 * table itself lives with the types, in worker/aggregates/registry.c.
 */
#include "aggregate.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum agg_verdict agg_emit(struct agg_decision *d, const ProtobufCMessage *event)
{
    if (d->n_events >= AGG_MAX_EVENTS)
        return agg_reject(d, "command would produce more than %d events", AGG_MAX_EVENTS);
    size_t len = protobuf_c_message_get_packed_size(event);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return agg_reject(d, "out of memory while building an event");
    protobuf_c_message_pack(event, buf);
    d->events[d->n_events++] = (struct agg_event){ event->descriptor, buf, len };
    return AGG_ACCEPT;
}

enum agg_verdict agg_reject(struct agg_decision *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->error, sizeof d->error, fmt, ap);
    va_end(ap);
    for (size_t i = 0; i < d->n_events; i++)
        free(d->events[i].data);
    d->n_events = 0;
    return AGG_REJECT;
}

void agg_decision_clear(struct agg_decision *d)
{
    for (size_t i = 0; i < d->n_events; i++)
        free(d->events[i].data);
    d->n_events = 0;
    d->error[0] = '\0';
}

const ProtobufCMessageDescriptor *
agg_find_desc(const ProtobufCMessageDescriptor *const *list, const char *name)
{
    for (; list && *list; list++)
        if (strcmp((*list)->short_name, name) == 0)
            return *list;
    return NULL;
}

int agg_id_valid(const char *id, size_t len)
{
    if (len == 0 || len > AGG_ID_MAX)
        return -1;
    if ((len == 1 && id[0] == '.') || (len == 2 && id[0] == '.' && id[1] == '.'))
        return -1;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return -1;
    }
    return 0;
}

const struct agg_query *agg_find_query(const struct aggregate_type *t, const char *name)
{
    if (!t->projection || !name)
        return NULL;
    for (const struct agg_query *q = t->projection->queries; q->request; q++)
        if (strcmp(q->request->short_name, name) == 0)
            return q;
    return NULL;
}
