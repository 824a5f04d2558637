/* host — see host.h. */
#include "host.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <uthash.h>

#include "cqrs.pb-c.h"
#include "durable.h"
#include "frame.h"
#include "idtable.h"
#include "log.h"
#include "pbarena.h"
#include "pbwire.h"
#include "layout.h"
#include "store.h"
#include "stream.h"
#include "verify.h"

#define HOST_EVENTS_REPLY_MAX (900u << 10)   /* bytes of events in one reply */
#define HOST_RAW_EVENTS 16   /* a command's reply with up to this many events copies their bytes */

struct host_reply {
    uint64_t tag;
    uint64_t id;                /* the client's request id */
    struct stream *stream;      /* its outcome depends on this stream's commit */
    size_t off, len;            /* packed cqrs.Reply: h->rbuf[off .. off + len) */
};

struct host {
    const struct aggregate_type *type;
    char *dir;
    struct store *store;
    unsigned snapshot_every;
    unsigned open_files, max_aggregates, idle_timeout_s;
    size_t n_loaded;            /* streams in memory (in_lru) */
    int64_t batch_s;            /* monotonic seconds when the batch began (0: between batches) */
    size_t lru_hand;            /* the eviction clock: a slot of `streams` */
    struct stream **open;       /* streams whose log file is open (open_slot: their index) */
    size_t n_open, open_hand;   /* open_files + 1 places; the clock closing them */
    struct event *idle_timer;
    struct idtable streams;     /* by id */
    struct stream **dirty;      /* streams with pending records, this batch */
    size_t n_dirty, cap_dirty;
    struct stream **drops;      /* streams that may be dropped after the batch */
    size_t n_drops, cap_drops;
    struct host_reply *replies;
    uint8_t *rbuf;              /* the batch's packed replies, one after another */
    size_t rbuf_len, rbuf_cap;
    size_t n_replies, cap_replies;
};


/* `dir` (inside data_dir) exists as a directory: made, and its entry
 * synced, if it was not there. */
static int host_make_dir(const char *data_dir, const char *dir)
{
    struct stat st;
    if (stat(dir, &st) == 0) {
        if (S_ISDIR(st.st_mode))
            return 0;
        errno = ENOTDIR;
        return -1;
    }
    if ((mkdir(data_dir, 0700) < 0 && errno != EEXIST) || mkdir(dir, 0700) < 0)
        return -1;
    return durable_sync_dir(data_dir);   /* the type folder's entry */
}

/* ---- memory and open files: LRU ---------------------------------------------------- */

static int64_t host_mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

static void host_open_add(struct host *h, struct stream *s)
{
    s->open_slot = (uint32_t)h->n_open;
    h->open[h->n_open++] = s;
    s->in_open = 1;
}

static void host_open_del(struct host *h, struct stream *s)
{
    struct stream *last = h->open[--h->n_open];
    h->open[s->open_slot] = last;
    last->open_slot = s->open_slot;
    s->in_open = 0;
}

/* Closes log files until at most `max` are open, never `keep`'s
 * (stream_detach: only the size is kept), by a clock: one used since the
 * hand last passed gets a second chance. A detached log opens again when
 * next used, even within a batch. */
static void host_park(struct host *h, size_t max, const struct stream *keep)
{
    while (h->n_open > max && !(h->n_open == 1 && h->open[0] == keep)) {
        if (h->open_hand >= h->n_open)
            h->open_hand = 0;
        struct stream *s = h->open[h->open_hand];
        if (s == keep || s->used_open) {
            s->used_open = 0;
            h->open_hand++;
            continue;
        }
        stream_detach(s);
        host_open_del(h, s);   /* the last one moved into the hand's place */
    }
}

/* `s` was just used: marked for both clocks, its open log counted. */
static void host_touch(struct host *h, struct stream *s)
{
    if (!s->in_lru) {
        s->in_lru = 1;
        h->n_loaded++;
    }
    s->used = 1;
    s->last_used_s = (uint32_t)(h->batch_s ? h->batch_s : host_mono_s());   /* one read a batch */
    if (s->log) {
        s->used_open = 1;
        if (!s->in_open)
            host_open_add(h, s);
    } else if (s->in_open) {
        host_open_del(h, s);
    }
    host_park(h, h->open_files, s);
}

/* Before a log file opens: one place free under open_files. */
static void host_make_room(struct host *h, const struct stream *s)
{
    if (!(s && s->log))   /* else nothing will open */
        host_park(h, h->open_files - 1, NULL);
}

/* Removes `s` from memory (its files are untouched: the next use reloads). */
static void host_forget(struct host *h, struct stream *s)
{
    if (s->in_lru)
        h->n_loaded--;
    if (s->in_open)
        host_open_del(h, s);
    idtable_del(&h->streams, s);
    stream_free(s);
}

/* Between batches: at most max_aggregates streams in memory, by a clock
 * over the table (a stream used since the hand last passed gets a second
 * chance; no list through every stream, which would cost each 16 bytes).
 * Open files are bounded as they open, in host_touch. Nothing is lost:
 * everything a stream holds is in its files (and the journal). */
static void host_enforce_limits(struct host *h)
{
    while (h->n_loaded > h->max_aggregates && h->streams.n) {
        if (h->lru_hand >= h->streams.cap)
            h->lru_hand = 0;
        struct stream *s = idtable_slot(&h->streams, h->lru_hand);
        if (s && !s->used) {
            host_forget(h, s);   /* another may move into the slot: look again */
            continue;
        }
        if (s)
            s->used = 0;
        h->lru_hand++;
    }
}

/* OTP's hibernate, at the scale of a whole aggregate: one unused for
 * idle_timeout_s is evicted (a pass over the table every idle_timeout_s / 4). */
static void host_on_idle_timer(evutil_socket_t fd, short what, void *arg)
{
    struct host *h = arg;
    (void)fd;
    (void)what;
    int64_t limit = host_mono_s() - (int64_t)h->idle_timeout_s;
    for (size_t i = 0; i < h->streams.cap;) {
        struct stream *s = idtable_slot(&h->streams, i);
        if (s && (int64_t)s->last_used_s <= limit)
            host_forget(h, s);   /* another may move into the slot: look again */
        else
            i++;
    }
}

struct host *host_new(struct event_base *base, const struct aggregate_type *type,
                      const char *data_dir, const struct store_options *opt)
{
    struct host *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    idtable_init(&h->streams, offsetof(struct stream, id));
    h->type = type;
    h->snapshot_every = opt->snapshot_every;
    h->open_files = opt->open_files ? opt->open_files : 1;
    if (!(h->open = malloc(((size_t)h->open_files + 1) * sizeof *h->open))) {
        free(h);
        errno = ENOMEM;
        return NULL;
    }
    h->max_aggregates = opt->max_aggregates ? opt->max_aggregates : 1;
    h->idle_timeout_s = opt->idle_timeout_s;
    if (asprintf(&h->dir, "%s/%s", data_dir, type->name) < 0) {
        free(h->open);
        free(h);
        errno = ENOMEM;
        return NULL;
    }
    if (host_make_dir(data_dir, h->dir) < 0) {
        log_error("cannot use data directory %s: %s", h->dir, strerror(errno));
        host_free(h);
        return NULL;
    }
    char err[400];
    h->store = store_open(base, h->dir, opt, err, sizeof err);
    if (!h->store) {
        log_error("%s", err);
        host_free(h);
        return NULL;
    }
    if (h->idle_timeout_s) {
        h->idle_timer = event_new(base, -1, EV_PERSIST, host_on_idle_timer, h);
        unsigned every = h->idle_timeout_s < 4 ? 1 : h->idle_timeout_s / 4;
        struct timeval tv = { every, 0 };
        if (!h->idle_timer || event_add(h->idle_timer, &tv) < 0) {
            host_free(h);
            return NULL;
        }
    }
    return h;
}

void host_free(struct host *h)
{
    if (!h)
        return;
    size_t n = 0, i = 0;
    struct stream **all = malloc((h->streams.n ? h->streams.n : 1) * sizeof *all);
    for (struct stream *s; all && (s = idtable_next(&h->streams, &i)) != NULL;)
        all[n++] = s;
    for (size_t k = 0; k < n; k++)
        host_forget(h, all[k]);
    free(all);
    idtable_free(&h->streams);
    if (h->idle_timer)
        event_free(h->idle_timer);
    free(h->replies);
    free(h->rbuf);
    free(h->dirty);
    free(h->drops);
    free(h->open);
    store_free(h->store);
    free(h->dir);
    free(h);
}

static void host_path(const struct host *h, const char *id, char *buf, size_t len)
{
    layout_stream_file(buf, len, h->dir, id, ".log");
}

static int64_t host_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Packs `r` as the reply to request (tag, id). Out of memory while packing
 * a reply leaves no way to answer: the worker dies and is restarted. */
static int host_grow_replies(struct host *h)
{
    size_t ncap = h->cap_replies ? h->cap_replies * 2 : 64;
    struct host_reply *n = realloc(h->replies, ncap * sizeof *n);
    if (!n)
        return -1;
    h->replies = n;
    h->cap_replies = ncap;
    return 0;
}

/* Room for a reply of `len` bytes at the end of the batch's replies (valid
 * until the next call). Out of memory, the batch cannot be answered as
 * decided: the worker dies and is restarted. */
static uint8_t *host_reply_room(struct host *h, uint64_t tag, uint64_t id, struct stream *s,
                                size_t len)
{
    if (h->n_replies == h->cap_replies && host_grow_replies(h) < 0)
        goto oom;
    if (len > h->rbuf_cap - h->rbuf_len) {
        size_t ncap = h->rbuf_cap ? h->rbuf_cap : 64 << 10;
        while (ncap - h->rbuf_len < len)
            ncap *= 2;
        uint8_t *n = realloc(h->rbuf, ncap);
        if (!n)
            goto oom;
        h->rbuf = n;
        h->rbuf_cap = ncap;
    }
    h->replies[h->n_replies++] = (struct host_reply){ tag, id, s, h->rbuf_len, len };
    h->rbuf_len += len;
    return h->rbuf + h->rbuf_len - len;
oom:
    log_error("out of memory queueing a reply");
    abort();
}

static void host_queue(struct host *h, uint64_t tag, uint64_t id, struct stream *s, Cqrs__Reply *r)
{
    r->id = id;
    size_t len = cqrs__reply__get_packed_size(r);
    cqrs__reply__pack(r, host_reply_room(h, tag, id, s, len));
}

static size_t host_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    do {
        p[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    return n;
}

/* A command's reply: `r` packed, then its n events as they were encoded
 * into the stream (Reply.events, field 5), not decoded and packed again. */
static void host_queue_records(struct host *h, uint64_t tag, uint64_t id, struct stream *s,
                               Cqrs__Reply *r, const uint8_t *const *recs, const size_t *lens,
                               size_t n)
{
    r->id = id;
    uint8_t hdr[11];
    size_t len = cqrs__reply__get_packed_size(r);
    for (size_t i = 0; i < n; i++)
        len += 1 + host_varint(hdr, lens[i]) + lens[i];
    uint8_t *bytes = host_reply_room(h, tag, id, s, len);
    size_t at = cqrs__reply__pack(r, bytes);
    for (size_t i = 0; i < n; i++) {
        bytes[at++] = (5 << 3) | 2;   /* field 5, length-delimited */
        at += host_varint(bytes + at, lens[i]);
        memcpy(bytes + at, recs[i], lens[i]);
        at += lens[i];
    }
}

__attribute__((format(printf, 5, 6)))
static void host_fail(struct host *h, uint64_t tag, uint64_t id, Cqrs__Status status,
                      const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    Cqrs__Reply r = CQRS__REPLY__INIT;
    r.status = status;
    r.error = msg;
    host_queue(h, tag, id, NULL, &r);
}

/* Appends `s` to one of the batch's lists. Out of memory there, the batch
 * cannot be carried out as decided: the worker dies and is restarted. */
static void host_push(struct stream ***list, size_t *n, size_t *cap, struct stream *s)
{
    if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 64;
        struct stream **g = realloc(*list, ncap * sizeof *g);
        if (!g) {
            log_error("out of memory listing the batch's streams");
            abort();
        }
        *list = g;
        *cap = ncap;
    }
    (*list)[(*n)++] = s;
}

/* After the batch, `s` is dropped from memory if it is then empty or failed:
 * such streams cost memory and say nothing. */
static void host_maybe_drop(struct host *h, struct stream *s)
{
    if (!s->drop_candidate) {
        s->drop_candidate = 1;
        host_push(&h->drops, &h->n_drops, &h->cap_drops, s);
    }
}

/* The stream `id`, loaded on first use. NULL only when out of memory. */
static struct stream *host_stream(struct host *h, const char *id)
{
    struct stream *s = idtable_find(&h->streams, id);
    if (s) {
        host_touch(h, s);
        return s;
    }
    char path[PATH_MAX];
    host_path(h, id, path, sizeof path);
    char why[300];
    if (store_ensure_repaired(h->store, why, sizeof why) < 0) {
        /* a stream file may lack journaled events: loading it now would
         * show an older state */
        s = stream_new(h->type, id);
        if (!s)
            return NULL;
        s->corrupt = -1;
        stream_set_detail(s, "storage is being repaired: %.160s", why);
        if (idtable_add(&h->streams, s) < 0) {
            stream_free(s);
            return NULL;
        }
        host_touch(h, s);
        host_maybe_drop(h, s);
        return s;
    }
    off_t truncated;
    host_make_room(h, NULL);
    char snap_path[PATH_MAX], note[300];
    layout_stream_file(snap_path, sizeof snap_path, h->dir, id, ".snap");
    s = stream_load(h->type, id, path, snap_path, &truncated, note, sizeof note);
    if (!s)
        return NULL;
    if (note[0])
        log_warn("%s %s: %s", h->type->name, id, note);
    if (truncated)
        log_warn("%s %s: cut a torn tail of %lld bytes from its log", h->type->name, id,
                 (long long)truncated);
    if (s->corrupt > 0)
        log_error("%s %s: log is corrupt and quarantined: %s", h->type->name, id,
                  stream_detail(s));
    else if (s->corrupt < 0)
        log_error("%s %s: %s", h->type->name, id, stream_detail(s));
    if (idtable_add(&h->streams, s) < 0) {
        stream_free(s);
        return NULL;
    }
    host_touch(h, s);
    if (s->version == 0 || s->corrupt < 0)
        host_maybe_drop(h, s);
    return s;
}

/* Replies with the events first..last of `s` (an idempotent retry or an
 * EVENTS query), stopping early when the reply would grow too large. */
static void host_reply_events(struct host *h, uint64_t tag, uint64_t id, struct stream *s,
                              uint64_t first, uint64_t last, uint64_t version, int cap_size)
{
    Cqrs__Reply r = CQRS__REPLY__INIT;
    r.status = CQRS__STATUS__OK;
    r.version = version;
    if (!s->log && first <= s->durable && s->detached_size) {   /* its file is read */
        char path[PATH_MAX];
        host_make_room(h, s);
        host_path(h, s->id, path, sizeof path);
        if (stream_attach(s, path) < 0) {
            host_fail(h, tag, id, CQRS__STATUS__INTERNAL, "cannot open the log of %s %s: %s",
                      h->type->name, s->id, strerror(errno));
            return;
        }
    }
    size_t n = last >= first ? (size_t)(last - first + 1) : 0;
    if (!cap_size && n && n <= HOST_RAW_EVENTS) {
        /* a command's own events, still in the batch: their bytes as they are */
        const uint8_t *recs[HOST_RAW_EVENTS];
        size_t lens[HOST_RAW_EVENTS], k = 0;
        while (k < n && stream_pending_record(s, first + k, &recs[k], &lens[k]) == 0)
            k++;
        if (k == n && pbwire_varint_field(recs[n - 1], lens[n - 1], 7, &r.position) > 0) {
            host_queue_records(h, tag, id, s, &r, recs, lens, n);
            host_touch(h, s);
            return;
        }
        r.position = 0;
    }
    Cqrs__EventRecord *one, **evs = n == 1 ? &one : n ? calloc(n, sizeof *evs) : NULL;
    if (n && !evs) {
        host_fail(h, tag, id, CQRS__STATUS__INTERNAL, "out of memory reading events");
        return;
    }
    _Alignas(16) uint8_t mem[4096];   /* the events are decoded here (a command's, mostly) */
    struct pbarena arena;
    pbarena_init(&arena, mem, sizeof mem);
    size_t got = 0, bytes = 0;
    for (uint64_t v = first; v <= last && got < n; v++) {
        if (stream_read(s, v, &arena.alloc, &evs[got]) < 0) {
            log_error("%s %s: cannot read event %llu: %s", h->type->name, s->id,
                      (unsigned long long)v, strerror(errno));
            pbarena_reset(&arena);
            if (evs != &one)
                free(evs);
            host_fail(h, tag, id, CQRS__STATUS__INTERNAL, "cannot read event %llu of %s %s",
                      (unsigned long long)v, h->type->name, s->id);
            return;
        }
        bytes += cqrs__event_record__get_packed_size(evs[got]);
        got++;
        if (cap_size && bytes > HOST_EVENTS_REPLY_MAX)
            break;   /* the client asks again from the next version */
    }
    r.n_events = got;
    r.events = evs;
    if (got)
        r.position = evs[got - 1]->position;
    host_queue(h, tag, id, s, &r);
    host_touch(h, s);   /* reading may have reopened its file */
    pbarena_reset(&arena);
    if (evs != &one)
        free(evs);
}

static void host_mark_dirty(struct host *h, struct stream *s)
{
    if (!s->dirty) {
        s->dirty = 1;
        host_push(&h->dirty, &h->n_dirty, &h->cap_dirty, s);
    }
}

static void host_command(struct host *h, uint64_t tag, uint64_t id, const Cqrs__Command *cmd,
                         ProtobufCAllocator *alloc)
{
    const struct aggregate_type *t = h->type;
    struct stream *s = host_stream(h, cmd->aggregate_id);
    if (!s) {
        host_fail(h, tag, id, CQRS__STATUS__INTERNAL, "out of memory loading %s %s", t->name,
                  cmd->aggregate_id);
        return;
    }
    if (s->corrupt) {
        host_fail(h, tag, id, s->corrupt > 0 ? CQRS__STATUS__CORRUPT : CQRS__STATUS__INTERNAL,
                  "%s %s: %s", t->name, s->id, stream_detail(s));
        return;
    }
    /* Idempotency first: a retry gets the first outcome, whatever it carries. */
    if (cmd->command_id[0]) {
        struct stream_cmd *c = stream_find_cmd(s, cmd->command_id);
        if (c) {
            uint64_t last = c->first + c->count - 1;
            host_reply_events(h, tag, id, s, c->first, last, last, 0);
            return;
        }
    }
    if (cmd->expected_case == CQRS__COMMAND__EXPECTED_EXPECTED_VERSION &&
        cmd->expected_version != s->version) {
        Cqrs__Reply r = CQRS__REPLY__INIT;
        char msg[300];
        snprintf(msg, sizeof msg, "%s %s is at version %llu, not the expected %llu", t->name,
                 s->id, (unsigned long long)s->version, (unsigned long long)cmd->expected_version);
        r.status = CQRS__STATUS__CONFLICT;
        r.error = msg;
        r.version = s->version;
        host_queue(h, tag, id, s, &r);
        return;
    }
    const ProtobufCMessageDescriptor *d = agg_find_desc(t->commands, cmd->name);
    if (!d) {
        host_fail(h, tag, id, CQRS__STATUS__INVALID, "%s has no command \"%s\"", t->name, cmd->name);
        return;
    }
    ProtobufCMessage *msg = protobuf_c_message_unpack(d, alloc, cmd->payload.len, cmd->payload.data);
    if (!msg) {
        host_fail(h, tag, id, CQRS__STATUS__INVALID, "payload does not decode as %s", d->name);
        return;
    }
    char err[AGG_ERROR_MAX];
    struct agg_decision dec = { .n_events = 0 };
    if (pbwire_check_strings(d, cmd->payload.data, cmd->payload.len) < 0) {
        host_fail(h, tag, id, CQRS__STATUS__INVALID, "payload of %s has a string with a NUL byte",
                  d->name);
    } else if (t->validate(msg, err, sizeof err) < 0) {
        host_fail(h, tag, id, CQRS__STATUS__INVALID, "%s", err);
    } else if (t->decide(s->state, msg, &dec) == AGG_REJECT) {
        host_fail(h, tag, id, CQRS__STATUS__REJECTED, "%s", dec.error);
    } else {
        uint64_t first = s->version + 1;
        int64_t now = dec.n_events ? host_now_us() : 0;   /* one clock read a command */
        for (size_t i = 0; i < dec.n_events; i++) {
            const uint8_t *rec;
            size_t len;
            if (stream_add(s, &dec.events[i], now, cmd,
                           store_next_position(h->store), &rec, &len) < 0 ||
                store_stage(h->store, rec, len) < 0) {
                /* the decider emitted an event its own evolve refuses, or
                 * memory ran out mid-command: the state is no longer
                 * trustworthy, and only a restart gets it back */
                log_error("%s %s: cannot apply %s event: %s", t->name, s->id,
                          dec.events[i].desc->short_name, strerror(errno));
                abort();
            }
        }
        if (dec.n_events) {
            if (cmd->command_id[0])
                stream_remember(s, cmd->command_id, first, (uint32_t)dec.n_events);
            host_mark_dirty(h, s);
            host_reply_events(h, tag, id, s, first, s->version, s->version, 0);
        } else {
            Cqrs__Reply r = CQRS__REPLY__INIT;
            r.status = CQRS__STATUS__OK;
            r.version = s->version;
            host_queue(h, tag, id, s, &r);
        }
    }
    agg_decision_clear(&dec);
    protobuf_c_message_free_unpacked(msg, alloc);
}

static void host_query(struct host *h, uint64_t tag, uint64_t id, const Cqrs__Query *q)
{
    const struct aggregate_type *t = h->type;
    struct stream *s = host_stream(h, q->aggregate_id);
    if (!s) {
        host_fail(h, tag, id, CQRS__STATUS__INTERNAL, "out of memory loading %s %s", t->name,
                  q->aggregate_id);
        return;
    }
    if (s->corrupt) {
        host_fail(h, tag, id, s->corrupt > 0 ? CQRS__STATUS__CORRUPT : CQRS__STATUS__INTERNAL,
                  "%s %s: %s", t->name, s->id, stream_detail(s));
        return;
    }
    if (s->version == 0) {
        host_fail(h, tag, id, CQRS__STATUS__NOT_FOUND, "%s %s does not exist", t->name, s->id);
        return;
    }
    if (q->kind == CQRS__QUERY__KIND__STATE) {
        uint8_t scratch[512];
        ProtobufCBufferSimple buf = PROTOBUF_C_BUFFER_SIMPLE_INIT(scratch);
        t->state_pack(s->state, &buf.base);
        Cqrs__Reply r = CQRS__REPLY__INIT;
        r.status = CQRS__STATUS__OK;
        r.version = s->version;
        r.state_type = (char *)t->state_desc->short_name;
        r.state.data = buf.data;
        r.state.len = buf.len;
        host_queue(h, tag, id, s, &r);
        PROTOBUF_C_BUFFER_SIMPLE_CLEAR(&buf);
    } else if (q->kind == CQRS__QUERY__KIND__EVENTS) {
        uint64_t from = q->from_version ? q->from_version : 1;
        uint64_t last = s->version;
        if (q->max_count && from <= last && last - from >= q->max_count)
            last = from + q->max_count - 1;
        host_reply_events(h, tag, id, s, from, last, s->version, 1);
    } else {
        host_fail(h, tag, id, CQRS__STATUS__INVALID, "unknown query kind %d", (int)q->kind);
    }
}

struct host_problems {
    char **lines;
    size_t n, cap;
};

static void host_on_problem(void *arg, const char *path, const char *problem)
{
    struct host_problems *p = arg;
    if (p->n == p->cap) {
        size_t ncap = p->cap ? p->cap * 2 : 16;
        char **n = realloc(p->lines, ncap * sizeof *n);
        if (!n)
            return;
        p->lines = n;
        p->cap = ncap;
    }
    if (asprintf(&p->lines[p->n], "%s: %s", path, problem) >= 0)
        p->n++;
}

/* VERIFY: checks one stream's log, or (empty id) every log of the type,
 * read-only, between batches: every record it reads is whole. */
static void host_verify(struct host *h, uint64_t tag, uint64_t id, const char *stream_id)
{
    if (stream_id[0] && agg_id_valid(stream_id, strlen(stream_id)) < 0) {
        host_fail(h, tag, id, CQRS__STATUS__INVALID,
                  "aggregate id must be 1 to 128 of A-Z a-z 0-9 . _ - and not . or ..");
        return;
    }
    struct host_problems p = { 0 };
    int rc = verify_type(h->type, h->dir, stream_id[0] ? stream_id : NULL, host_on_problem, &p);
    Cqrs__Reply r = CQRS__REPLY__INIT;
    r.status = CQRS__STATUS__OK;
    r.n_problems = p.n;
    r.problems = p.lines;
    if (rc < 0) {
        r.status = CQRS__STATUS__INTERNAL;
        r.error = "could not read every log (see problems)";
    }
    host_queue(h, tag, id, NULL, &r);
    for (size_t i = 0; i < p.n; i++)
        free(p.lines[i]);
    free(p.lines);
}

void host_request(struct host *h, uint64_t tag, const uint8_t *body, size_t len)
{
    if (!h->batch_s)
        h->batch_s = host_mono_s();
    _Alignas(16) uint8_t mem[4096];   /* the request and its payload are decoded here */
    struct pbarena arena;
    pbarena_init(&arena, mem, sizeof mem);
    Cqrs__Request *req = cqrs__request__unpack(&arena.alloc, len, body);
    if (!req) {
        pbarena_reset(&arena);
        host_fail(h, tag, 0, CQRS__STATUS__INVALID, "request does not decode");
        return;
    }
    const char *type = NULL, *id = NULL;
    if (req->body_case == CQRS__REQUEST__BODY_COMMAND) {
        type = req->command->aggregate_type;
        id = req->command->aggregate_id;
    } else if (req->body_case == CQRS__REQUEST__BODY_QUERY) {
        type = req->query->aggregate_type;
        id = req->query->aggregate_id;
    }
    if (!type) {
        host_fail(h, tag, req->id, CQRS__STATUS__INVALID, "a worker serves commands and queries only");
    } else if (pbwire_check_strings(&cqrs__request__descriptor, body, len) < 0) {
        host_fail(h, tag, req->id, CQRS__STATUS__INVALID, "request has a string with a NUL byte");
    } else if (strcmp(type, h->type->name) != 0) {
        host_fail(h, tag, req->id, CQRS__STATUS__INVALID, "this worker serves %s, not %s",
                  h->type->name, type);
    } else if (req->body_case == CQRS__REQUEST__BODY_QUERY &&
               req->query->kind == CQRS__QUERY__KIND__VERIFY) {
        host_verify(h, tag, req->id, id);
    } else if (agg_id_valid(id, strlen(id)) < 0) {
        host_fail(h, tag, req->id, CQRS__STATUS__INVALID,
                  "aggregate id must be 1 to 128 of A-Z a-z 0-9 . _ - and not . or ..");
    } else if (req->body_case == CQRS__REQUEST__BODY_COMMAND) {
        host_command(h, tag, req->id, req->command, &arena.alloc);
    } else {
        host_query(h, tag, req->id, req->query);
    }
    pbarena_reset(&arena);
}

/* A snapshot every snapshot_every events: loading then replays only the
 * events after it. A failure costs only load time: it is logged. */
static void host_snapshot(struct host *h, struct stream *s)
{
    char path[PATH_MAX];
    layout_stream_file(path, sizeof path, h->dir, s->id, ".snap");
    if (stream_snapshot(s, path) < 0)
        log_warn("%s %s: cannot write a snapshot: %s", h->type->name, s->id, strerror(errno));
}

void host_stats(const struct host *h, Cqrs__WorkerStats *out)
{
    struct store_stats st;
    store_get_stats(h->store, &st);
    out->batches = st.batches;
    out->events = st.events;
    out->journal_syncs = st.journal_syncs;
    out->position = st.position;
    out->checkpoint = st.checkpoint;
    out->aggregates = h->n_loaded;
    out->open_files = (uint32_t)h->n_open;
}

/* Publishes the batch just committed (or, with no records, the position
 * reached) to cqrsd as a cqrs.Commit tagged FRAME_TAG_COMMIT: position
 * first (cqrsd reads it without decoding the rest), then the type, then
 * each record's EventRecord bytes as they are, without re-encoding. */
static void host_publish(struct host *h, struct evbuffer *out, const uint8_t *recs, size_t len)
{
    uint8_t hdr[32];
    size_t tlen = strlen(h->type->name), n = 0;
    hdr[n++] = 0x08;
    n += host_varint(hdr + n, store_position(h->store));
    hdr[n++] = 0x12;
    n += host_varint(hdr + n, tlen);
    size_t body = n + tlen;
    for (size_t off = 0; off + EVLOG_HEADER_LEN <= len;) {
        uint32_t plen = frame_get32(recs + off);
        uint8_t v[10];
        body += 1 + host_varint(v, plen) + plen;
        off += EVLOG_HEADER_LEN + plen;
    }
    if (body + FRAME_TAG_LEN > UINT32_MAX)
        return;   /* cannot be: a batch is far smaller; the projector would catch up anyway */
    uint8_t frame[FRAME_HEADER_LEN + FRAME_TAG_LEN];
    frame_set32(frame, (uint32_t)(body + FRAME_TAG_LEN));
    frame_set64(frame + FRAME_HEADER_LEN, FRAME_TAG_COMMIT);
    if (evbuffer_add(out, frame, sizeof frame) < 0 || evbuffer_add(out, hdr, n) < 0 ||
        evbuffer_add(out, h->type->name, tlen) < 0)
        goto nomem;
    for (size_t off = 0; off + EVLOG_HEADER_LEN <= len;) {
        uint32_t plen = frame_get32(recs + off);
        uint8_t v[11];
        v[0] = 0x1a;
        size_t vn = 1 + host_varint(v + 1, plen);
        if (evbuffer_add(out, v, vn) < 0 ||
            evbuffer_add(out, recs + off + EVLOG_HEADER_LEN, plen) < 0)
            goto nomem;
        off += EVLOG_HEADER_LEN + plen;
    }
    return;
nomem:
    log_error("out of memory publishing a batch");
    abort();   /* the frame is half written: only a restart gets the channel back */
}

void host_publish_position(struct host *h, struct evbuffer *out)
{
    host_publish(h, out, NULL, 0);
}

void host_commit(struct host *h, struct evbuffer *out)
{
    /* TEST ONLY: CQRS_TEST_WORKER_GARBAGE=<aggregate id> makes the batch that
     * touches that id answer with a malformed frame instead of its replies,
     * so the tests can show that cqrsd kills and replaces a confused worker. */
    const char *garbage = getenv("CQRS_TEST_WORKER_GARBAGE");
    for (size_t i = 0; garbage && garbage[0] && i < h->n_replies; i++) {
        if (h->replies[i].stream && strcmp(h->replies[i].stream->id, garbage) == 0) {
            evbuffer_add(out, "\0\0\0\2xx", 6);   /* a frame too short to hold a tag */
            break;
        }
    }
    char path[PATH_MAX];
    /* journal first: one write, one sync, for every stream of the batch */
    int journal_failed = 0;
    const char *why = "";
    if (h->n_dirty && store_commit(h->store) < 0) {
        journal_failed = errno ? errno : EIO;
        why = strerror(journal_failed);
        log_error("%s: cannot write the journal: %s; the batch's commands fail and nothing of "
                  "them is kept", h->type->name, why);
    } else if (h->n_dirty) {
        /* committed: published before any reply, so cqrsd knows the new
         * position by the time a client learns of its command */
        size_t blen;
        const uint8_t *batch = store_committed(h->store, &blen);
        host_publish(h, out, batch, blen);
    }
    for (size_t i = 0; i < h->n_dirty; i++) {
        struct stream *s = h->dirty[i];
        s->dirty = 0;
        if (journal_failed) {
            s->corrupt = -1;      /* its state holds unwritten events: dropped below */
            s->batch_failed = 1;
            host_maybe_drop(h, s);
            continue;
        }
        /* the path is needed to create the file, or to list it once per
         * checkpoint for syncing; not for every batch */
        uint32_t epoch = (uint32_t)store_epoch(h->store);
        if (!s->log || s->written_epoch != epoch)   /* to attach, create, or list it */
            host_path(h, s->id, path, sizeof path);
        int created;
        host_make_room(h, s);
        if (stream_commit(s, path, &created) < 0) {
            /* durable in the journal, acknowledged; the file is mended from it */
            log_error("%s %s: cannot write its log (%s); it is written again from the journal "
                      "before it is loaded", h->type->name, s->id, strerror(errno));
            store_write_failed(h->store);
            s->corrupt = -1;
            host_maybe_drop(h, s);
        } else {
            if (created || s->written_epoch != epoch) {
                store_written(h->store, path, created);
                s->written_epoch = epoch;
            }
            host_touch(h, s);
            if (h->snapshot_every && s->version - s->snap_version >= h->snapshot_every)
                host_snapshot(h, s);
        }
    }
    h->n_dirty = 0;

    for (size_t i = 0; i < h->n_replies; i++) {
        struct host_reply *r = &h->replies[i];
        const uint8_t *bytes = h->rbuf + r->off;
        size_t len = r->len;
        uint8_t failed[400];
        if (r->stream && r->stream->batch_failed) {
            char msg[300];
            snprintf(msg, sizeof msg, "could not write the journal (%s); nothing was appended",
                     why);
            Cqrs__Reply rep = CQRS__REPLY__INIT;
            rep.id = r->id;
            rep.status = CQRS__STATUS__INTERNAL;
            rep.error = msg;
            len = cqrs__reply__pack(&rep, failed);   /* at most 300 + 2 + 2 x 11 bytes */
            bytes = failed;
        }
        if (frame_put_bytes(out, &r->tag, bytes, len) < 0) {
            log_error("out of memory sending replies");
            abort();
        }
    }
    h->n_replies = 0;
    h->rbuf_len = 0;
    if (h->rbuf_cap > (4u << 20)) {   /* a batch of huge replies: not kept for the next */
        free(h->rbuf);
        h->rbuf = NULL;
        h->rbuf_cap = 0;
    }

    for (size_t i = 0; i < h->n_drops; i++) {
        struct stream *s = h->drops[i];
        s->drop_candidate = 0;
        if ((s->version == 0 && !s->corrupt) || s->corrupt < 0)
            host_forget(h, s);
    }
    h->n_drops = 0;
    host_enforce_limits(h);
    h->batch_s = 0;
}
