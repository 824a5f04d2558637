/* flush — see flush.h. */
#include "flush.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>

#include <event2/buffer.h>
#include <utlist.h>

#include "frame.h"

struct flush_out {
    struct flusher *f;
    struct bufferevent *bev;
    struct evbuffer_cb_entry *cb;
    int dirty;
    struct flush_out *prev, *next;   /* in f->dirty while dirty */
};

struct flusher {
    struct flush_out *dirty;
};

struct flusher *flusher_new(void)
{
    return calloc(1, sizeof(struct flusher));
}

void flusher_free(struct flusher *f)
{
    free(f);   /* its outputs are unwatched by their owners */
}

static void flush_on_output(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    (void)buf;
    struct flush_out *o = arg;
    if (info->n_added && !o->dirty) {
        o->dirty = 1;
        DL_APPEND(o->f->dirty, o);
    }
}

struct flush_out *flusher_watch(struct flusher *f, struct bufferevent *bev)
{
    struct flush_out *o = calloc(1, sizeof *o);
    if (!o)
        return NULL;
    o->f = f;
    o->bev = bev;
    struct evbuffer *out = bufferevent_get_output(bev);
    if (!(o->cb = evbuffer_add_cb(out, flush_on_output, o))) {
        free(o);
        return NULL;
    }
    bufferevent_disable(bev, EV_WRITE);
    if (evbuffer_get_length(out) > 0) {
        o->dirty = 1;
        DL_APPEND(f->dirty, o);
    }
    return o;
}

void flusher_unwatch(struct flush_out *o)
{
    if (!o)
        return;
    if (o->dirty)
        DL_DELETE(o->f->dirty, o);
    evbuffer_remove_cb_entry(bufferevent_get_output(o->bev), o->cb);
    free(o);
}

/* One output: written now; what the socket does not take, or an error, is
 * left to the bufferevent. Its write callback may free it (and unwatch o). */
static void flush_one(struct flush_out *o)
{
    struct bufferevent *bev = o->bev;
    struct evbuffer *out = bufferevent_get_output(bev);
    int wrote = 0;
    if (evbuffer_get_length(out) > 0) {
        evbuffer_unfreeze(out, 1);   /* a bufferevent freezes its output's start */
        int n = evbuffer_write(out, bufferevent_getfd(bev));
        evbuffer_freeze(out, 1);
        wrote = n > 0;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            bufferevent_enable(bev, EV_WRITE);   /* it meets the error and reports it */
            return;
        }
    }
    if (evbuffer_get_length(out) > 0)
        bufferevent_enable(bev, EV_WRITE);
    else if (bufferevent_get_enabled(bev) & EV_WRITE)
        bufferevent_disable(bev, EV_WRITE);
    if (wrote)
        bufferevent_trigger(bev, EV_WRITE, 0);
}

int flusher_finish(struct flush_out *o)
{
    struct evbuffer *out = bufferevent_get_output(o->bev);
    if (evbuffer_get_length(out) == 0)
        return 0;
    int fd = bufferevent_getfd(o->bev);
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0)
        return -1;
    evbuffer_unfreeze(out, 1);
    int rc = frame_flush(out, fd);
    evbuffer_freeze(out, 1);
    return rc;
}

void flusher_run(struct flusher *f)
{
    struct flush_out *o;
    while ((o = f->dirty)) {
        DL_DELETE(f->dirty, o);
        o->dirty = 0;
        flush_one(o);
    }
}

/* A write callback run by flusher_run may break the loop (a connection
 * closed, the last one of a drain): event_base_loop clears that flag when it
 * starts, so it is looked at after each run. */
int flusher_loop(struct flusher *f, struct event_base *base)
{
    int broken = event_base_got_break(base);   /* by an earlier loop, not ours */
    flusher_run(f);                            /* what was written before the loop began */
    if (!broken && event_base_got_break(base))
        return 0;
    for (;;) {
        int rc = event_base_loop(base, EVLOOP_ONCE);
        flusher_run(f);
        if (rc != 0 || event_base_got_exit(base) || event_base_got_break(base))
            return rc < 0 ? -1 : 0;
    }
}
