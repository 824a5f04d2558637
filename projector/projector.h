/*
 * projector — the query side of cqrsd, as one process (cqrs-projector):
 * the read model kept up to date, its queries answered, and subscriptions
 * fed, for every aggregate type with a projection.
 *
 * Input, from cqrsd (tagged frames, lib/frame.h):
 *   - FRAME_TAG_COMMIT: a cqrs.Commit, a batch a worker committed (or just
 *     the position its type has reached). `head` is what is known to be
 *     committed; nothing past it is ever read from disk.
 *   - any other tag: a cqrs.Request (READ_MODEL, SUBSCRIBE or ALL_EVENTS
 *     query, or REBUILD); an empty body cancels the subscription with that
 *     tag (cqrsd gave up on it: its client left or was too slow).
 *
 * Applying: a commit whose first event follows the type's applied position
 * is applied at once; anything else (the projector was down, a commit was
 * dropped, a rebuild) is caught up from disk (projector/allstream.h), in
 * chunks of one transaction each between which the loop serves requests
 * and heartbeats. Each type's applied position is in the same transaction
 * as its rows (projector/readmodel.h): killed at any moment, the read model
 * never misses or doubles an event. Commits arriving one by one share a
 * transaction, committed within PJ_COMMIT_MS (5 ms).
 *
 * Queries with a min_position wait until the type has applied it, or
 * answer UNAVAILABLE after their timeout. Subscriptions get events in
 * position order from their start: from disk up to the head, then live.
 */
#ifndef CQRS_PROJECTOR_H
#define CQRS_PROJECTOR_H

#include <stddef.h>
#include <stdint.h>
#include <event2/buffer.h>
#include <event2/event.h>

#include "cqrs.pb-c.h"

struct projector;

/* A projector keeping `<data_dir>/readmodel.db`, writing its tagged replies
 * to `out`. NULL (logged) on failure. */
struct projector *projector_new(struct event_base *base, const char *data_dir,
                                struct evbuffer *out);
void projector_free(struct projector *p);

/* Handles one frame body tagged `tag` (see above). */
void projector_frame(struct projector *p, uint64_t tag, const uint8_t *body, size_t len);
/* Ends a batch of frames: answers the queries that can be answered, and
 * makes sure what was applied is committed within a few milliseconds (one
 * SQLite transaction for many commits; queries read it before). */
void projector_flush(struct projector *p);
/* Ends every subscription (UNAVAILABLE, "the projector is stopping"). */
void projector_stop(struct projector *p);

/* Counters for the heartbeat answer: events applied, transactions, lag. */
void projector_stats(const struct projector *p, Cqrs__WorkerStats *out);

#endif
