/* flush — a connection's output written once per turn of the event loop.
 *
 * A bufferevent writes its output when epoll says the socket is writable:
 * each reply costs an epoll_ctl to ask, a turn of the loop to hear, the
 * write, and an epoll_ctl to stop asking. A flusher instead notes every
 * watched output that grew while the loop's callbacks ran, and once they
 * have all run (flusher_loop) writes each one with a single writev — the
 * replies of a whole batch, to every connection, one system call each.
 * Only what a socket does not take is left to its bufferevent (EV_WRITE
 * enabled until the output is empty again), so backpressure, write errors
 * and write callbacks (run, as the bufferevent would, after a write that
 * leaves the output at or under its low watermark) behave as before. */
#ifndef CQRS_FLUSH_H
#define CQRS_FLUSH_H

#include <event2/bufferevent.h>
#include <event2/event.h>

struct flusher;
struct flush_out;

struct flusher *flusher_new(void);
void flusher_free(struct flusher *f);

/* Watches bev's output (and stops its bufferevent from asking for writes
 * itself). NULL when out of memory. Unwatch before bufferevent_free. */
struct flush_out *flusher_watch(struct flusher *f, struct bufferevent *bev);
void flusher_unwatch(struct flush_out *o);

/* Writes every output that grew since the last call. */
void flusher_run(struct flusher *f);
/* At exit, once the loop is over: writes what is left of o's output,
 * waiting for the socket (made blocking). 0 (nothing left), or -1. */
int flusher_finish(struct flush_out *o);

/* event_base_dispatch, with flusher_run after each turn of the loop: 0 when
 * the loop was told to exit or had no events left, -1 on error. */
int flusher_loop(struct flusher *f, struct event_base *base);

#endif
