/*
 * client — the blocking client library of cqrsd, used by cqrsctl,
 * cqrs-bench and the tests.
 *
 * One struct cqrs_client is one connection to the daemon's Unix socket.
 * Requests may be pipelined: cqrs_client_send assigns each a fresh id and
 * writes it at once (cqrs_client_queue keeps it for one write with those
 * after it: the next send, flush or receive); cqrs_client_recv returns the reply for one id, keeping
 * replies that arrive for other ids until they are asked for (all of them,
 * in arrival order per id). Replies are protobuf-c messages (free with
 * cqrs__reply__free_unpacked(r, NULL)).
 *
 * A SUBSCRIBE request is answered by a stream of replies with its id:
 * call cqrs_client_recv with that id again for each, until one has `more`
 * false (the end: BUSY when the subscriber was too slow, UNAVAILABLE when
 * the projector restarted) or the connection closes. Replies of a stream
 * that is not read while other calls are made on the same connection are
 * kept in memory until read.
 *
 * Functions return 0 on success, -1 with errno set on failure (EPROTO: the
 * daemon sent something that is not a valid reply; ECONNRESET: it closed
 * the connection).
 */
#ifndef CQRS_CLIENT_H
#define CQRS_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include "cqrs.pb-c.h"

struct cqrs_client;

/* Connects to the daemon's socket at `path`. NULL with errno on failure. */
struct cqrs_client *cqrs_client_connect(const char *path);
void cqrs_client_free(struct cqrs_client *c);
int cqrs_client_fd(const struct cqrs_client *c);

/* Sends `req` with a fresh id (written into req->id and *id_out). */
int cqrs_client_send(struct cqrs_client *c, Cqrs__Request *req, uint64_t *id_out);
/* Waits for the reply to request `id`. */
int cqrs_client_recv(struct cqrs_client *c, uint64_t id, Cqrs__Reply **out);
/* Waits for the next reply, whatever its id (for pipelined clients). */
int cqrs_client_recv_any(struct cqrs_client *c, Cqrs__Reply **out);
/* Like cqrs_client_send, without writing yet: requests queued together go
 * out in one write, at the next send, flush or receive. */
int cqrs_client_queue(struct cqrs_client *c, Cqrs__Request *req, uint64_t *id_out);
/* Writes the queued requests. */
int cqrs_client_flush(struct cqrs_client *c);
/* The next reply if one has already arrived (1, *out set), else 0 at once
 * (nothing is read from the socket, nothing written), or -1. A pipelined
 * client takes every reply that is there before it queues more. */
int cqrs_client_recv_ready(struct cqrs_client *c, Cqrs__Reply **out);
/* send + recv. */
int cqrs_client_call(struct cqrs_client *c, Cqrs__Request *req, Cqrs__Reply **out);

#define CQRS_CLIENT_RETRIES 6      /* default retries of an UNAVAILABLE command */
#define CQRS_COMMAND_ID_LEN 32     /* hex digits of a generated command id */

/* Helpers that build and call the common requests. `payload` is the packed
 * command message; `expected_version` < 0 means "no expectation".
 *
 * cqrs_client_command retries a command answered UNAVAILABLE (its worker
 * died or is restarting: it may or may not have been applied) with the
 * same command_id, waiting 10 ms, then twice as long each time, up to the
 * client's retries (CQRS_CLIENT_RETRIES by default). A NULL or empty
 * `command_id` gets a fresh random one, so the retry is always safe: with
 * idempotency the command takes effect exactly once. The pipelined calls
 * (send/recv) never retry. */
int cqrs_client_command(struct cqrs_client *c, const char *type, const char *id,
                        const char *name, const uint8_t *payload, size_t len,
                        const char *command_id, int64_t expected_version,
                        Cqrs__Reply **out);
int cqrs_client_state(struct cqrs_client *c, const char *type, const char *id,
                      Cqrs__Reply **out);
int cqrs_client_events(struct cqrs_client *c, const char *type, const char *id,
                       uint64_t from_version, uint32_t max_count, Cqrs__Reply **out);
int cqrs_client_control(struct cqrs_client *c, Cqrs__Control__Op op,
                        const char *child, Cqrs__Reply **out);

/* A query of the read model (READ_MODEL): `name` is the query message's
 * short name ("GetWallet"), `payload` that message packed. The answer comes
 * once the read model has applied position `min_position` of `type`, and,
 * with `latest` non-zero, every event acknowledged before the query was
 * sent (read-your-writes); UNAVAILABLE after `timeout_ms` (0: the daemon's
 * default, 5 s). Reply: state_type (the result message's short name), state
 * (it, packed), position (the position of `type` the read model had
 * applied when it answered). */
int cqrs_client_read_model(struct cqrs_client *c, const char *type, const char *name,
                           const uint8_t *payload, size_t len, uint64_t min_position,
                           int latest, uint32_t timeout_ms, Cqrs__Reply **out);
/* One page of the type's events in position order (ALL_EVENTS), from
 * `from_position` (0: 1), at most `max_count` (0: the daemon's page, 1,000).
 * Reply.position is the type's last committed position: paging is caught
 * up when a page is empty or its last event is at or past it. */
int cqrs_client_all_events(struct cqrs_client *c, const char *type, uint64_t from_position,
                           uint32_t max_count, Cqrs__Reply **out);
/* Sends a SUBSCRIBE to the type's events from `from_position` on (0: 1);
 * *id_out is the id to pass to cqrs_client_recv for each reply of the
 * stream (see above). Delivery is at least once across subscriptions: a
 * client resuming from its last position + 1 skips what it has seen. */
int cqrs_client_subscribe_start(struct cqrs_client *c, const char *type,
                                uint64_t from_position, uint64_t *id_out);

/* Sets how many times cqrs_client_command retries (0: never). */
void cqrs_client_set_retries(struct cqrs_client *c, unsigned retries);
/* Writes a fresh random command id (hex). 0, or -1 with errno. */
int cqrs_client_new_command_id(char out[CQRS_COMMAND_ID_LEN + 1]);

/* The Status enum value's name ("OK", "REJECTED", ...). */
const char *cqrs_status_name(Cqrs__Status s);

#endif
