/*
 * host — the aggregate host of one worker: the table id → stream of its
 * aggregate type, the command life cycle, and the group commit.
 *
 * A batch is every request that arrived together. host_request handles each
 * in arrival order — load the stream on first use (replay), then for a
 * command: idempotency lookup → expected_version → payload decode and
 * validate → decide → encode the events and evolve the state — and keeps
 * its packed reply. host_commit then makes the batch durable in the type's
 * journal (one write, one sync, whatever the number of streams — see
 * store.h), writes each touched stream file without a sync, and only then
 * queues the replies. When the journal write fails, the streams touched are
 * dropped from memory and every reply that depended on them becomes
 * INTERNAL: no event that was not acknowledged can appear later as state.
 */
#ifndef CQRS_HOST_H
#define CQRS_HOST_H

#include <stddef.h>
#include <stdint.h>
#include <event2/buffer.h>

#include "aggregate.h"
#include "store.h"
#include "cqrs.pb-c.h"

struct host;

/* The host of `type`, keeping its streams in `<data_dir>/<type>/` (created,
 * mode 0700) with the storage options `opt`; opening recovers the stream
 * files from the journal. NULL (logged) on failure. */
struct host *host_new(struct event_base *base, const struct aggregate_type *type,
                      const char *data_dir, const struct store_options *opt);
void host_free(struct host *h);

/* Handles one request frame body (a cqrs.Request) tagged `tag`. */
void host_request(struct host *h, uint64_t tag, const uint8_t *body, size_t len);
/* Makes the batch durable and appends its tagged replies to `out`. */
void host_commit(struct host *h, struct evbuffer *out);

/* Tells cqrsd the position the type has reached (a cqrs.Commit without
 * events, tagged FRAME_TAG_COMMIT): sent once the worker is ready. Each
 * batch committed by host_commit is published the same way, events and all,
 * before its replies. */
void host_publish_position(struct host *h, struct evbuffer *out);

/* Counters for the heartbeat answer. */
void host_stats(const struct host *h, Cqrs__WorkerStats *out);

#endif
