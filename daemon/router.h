/*
 * router — the client side of cqrsd: the listening Unix socket, one
 * connection per client, and the table that maps each request in a worker
 * back to its connection.
 *
 * For each request frame the router decodes the envelope only (type, id,
 * body kind), refuses what is malformed with INVALID, answers control
 * requests itself, and forwards the frame, unchanged, to the worker of the
 * aggregate type under a fresh tag. A worker's reply already carries the
 * client's request id, so it goes back to the connection unchanged.
 * Requests in a worker that dies are answered UNAVAILABLE.
 *
 * Poison commands: a request (same command_id, or same content without
 * one) that was inside a worker at two consecutive crashes of that worker
 * is refused with REJECTED from then on instead of being delivered again,
 * so one request that kills its worker cannot use up the restart intensity
 * and take the whole daemon down.
 */
#ifndef CQRS_ROUTER_H
#define CQRS_ROUTER_H

#include <stdint.h>
#include <event2/event.h>

#include "config.h"
#include "request.h"
#include "sup.h"

struct router_config {
    const char *socket_path;
    struct flusher *flusher;        /* writes the connections' replies once a turn */
    uint32_t max_frame;
    struct request_limits limits;
    struct server_config server;    /* access control and limits ([server]) */
};

struct router;

/* Starts a reload; calls done(done_arg, ok, error) when it is applied (ok
 * 1) or refused (0: the file is invalid; -1: busy now), `error` saying why.
 * Set by main. */
typedef void (*router_reload_done_fn)(void *done_arg, int ok, const char *error);
typedef void (*router_reload_fn)(void *arg, router_reload_done_fn done, void *done_arg);

/* Binds the socket (not yet accepting), or takes the one systemd passed
 * (socket activation: LISTEN_PID/LISTEN_FDS). NULL with a logged reason. */
struct router *router_new(struct event_base *base, const struct router_config *cfg);
void router_free(struct router *r);
void router_set_sup(struct router *r, struct sup *sup);
void router_set_reload(struct router *r, router_reload_fn fn, void *arg);
/* The hooks to give the supervisor. */
struct sup_hooks router_sup_hooks(struct router *r);
/* Starts accepting (once every child runs). */
void router_accept(struct router *r);
/* Replies delivered so far. */
uint64_t router_served(const struct router *r);
/* Stops accepting new connections (shutdown). */
void router_close_listener(struct router *r);
/* Shutdown, after the workers are stopped: closes every connection once
 * its output is written. Returns how many are still writing; the event loop
 * is broken when the last one goes. */
int router_drain(struct router *r);

#endif
