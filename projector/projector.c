/* projector — see projector.h. */
#include "projector.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aggregate.h"
#include "allstream.h"
#include "frame.h"
#include "log.h"
#include "readmodel.h"

#define PJ_CHUNK 20000                 /* events per catch-up transaction */
#define PJ_PAGE_EVENTS 1000            /* events per ALL_EVENTS page (default) or feed reply */
#define PJ_REPLY_BYTES (900u << 10)    /* event bytes per reply */
#define PJ_FEED_REPLIES 4              /* disk replies per subscription per round */
#define PJ_TIMEOUT_MS 5000             /* a query's wait for its min_position, by default */
#define PJ_TICK_MS 50
#define PJ_COMMIT_MS 5                 /* applied events wait this long for their commit */

struct ptype {
    const struct aggregate_type *t;
    char dir[PATH_MAX];
    uint64_t head;                     /* committed, as the worker said */
    struct allstream *catchup;         /* the read model's reader */
    struct allstream *pages;           /* ALL_EVENTS' reader */
};

struct waiter {                        /* a READ_MODEL query, answered after a commit */
    uint64_t tag;
    Cqrs__Request *req;
    struct ptype *pt;
    int64_t deadline_us;
    struct waiter *next;
};

struct sub {                           /* a subscription */
    uint64_t tag, id;
    struct ptype *pt;
    uint64_t next;                     /* the first position not sent yet */
    struct allstream *as;
    struct sub *next_sub;
};

struct rebuild {                       /* a REBUILD waiting for the read model to catch up */
    uint64_t tag, id;
    struct rebuild *next;
};

struct projector {
    struct event_base *base;
    struct evbuffer *out;
    struct readmodel *rm;
    struct ptype *types;
    size_t n_types;
    struct waiter *waiters;
    struct sub *subs;
    struct rebuild *rebuilds;
    uint64_t rebuild_applied;          /* events applied since the last reset */
    struct event *work;                /* catch-up and feeding, one round at a time */
    struct event *tick;                /* timeouts, and retries after a failure */
    struct event *commit_timer;        /* the open transaction's commit */
    int in_tx;
    int failing;                       /* the last transaction failed: retry on the tick */
    char last_error[512];
    uint64_t applied_total, transactions;
};

static int64_t pj_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void pj_reply(struct projector *p, uint64_t tag, const Cqrs__Reply *r)
{
    if (frame_put(p->out, &tag, &r->base) < 0) {
        log_error("out of memory sending a reply");
        abort();   /* a reply lost: only a restart makes it right (cqrsd answers for us) */
    }
}

__attribute__((format(printf, 5, 6)))
static void pj_error(struct projector *p, uint64_t tag, uint64_t id, Cqrs__Status st,
                     const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    Cqrs__Reply r = CQRS__REPLY__INIT;
    r.id = id;
    r.status = st;
    r.error = msg;
    pj_reply(p, tag, &r);
}

static struct ptype *pj_type(struct projector *p, const char *name)
{
    for (size_t i = 0; i < p->n_types; i++)
        if (strcmp(p->types[i].t->name, name) == 0)
            return &p->types[i];
    return NULL;
}

static uint64_t pj_applied(const struct projector *p, const struct ptype *pt)
{
    return readmodel_position(p->rm, pt->t);
}

static void pj_fail(struct projector *p, const char *what, const char *err)
{
    char msg[sizeof p->last_error];
    snprintf(msg, sizeof msg, "%s: %s", what, err);
    if (strcmp(msg, p->last_error) != 0)   /* once per distinct failure, not per retry */
        log_error("%s; retrying", msg);
    snprintf(p->last_error, sizeof p->last_error, "%s", msg);
    p->failing = 1;
}

static int pj_begin(struct projector *p)
{
    char err[512];
    if (p->in_tx)
        return 0;
    if (readmodel_begin(p->rm, err, sizeof err) < 0) {
        pj_fail(p, "cannot begin a transaction", err);
        return -1;
    }
    p->in_tx = 1;
    return 0;
}

static void pj_commit(struct projector *p)
{
    char err[512];
    if (!p->in_tx)
        return;
    p->in_tx = 0;
    if (readmodel_commit(p->rm, err, sizeof err) < 0) {
        pj_fail(p, "cannot commit the read model", err);
        return;
    }
    p->transactions++;
}

/* Applies one event: 1 when applied, 0 when skipped or a gap (caught up
 * from disk later), -1 on failure (the transaction is rolled back). */
static int pj_apply(struct projector *p, struct ptype *pt, const Cqrs__EventRecord *rec)
{
    char err[512];
    int rc = readmodel_apply(p->rm, pt->t, rec, err, sizeof err);
    if (rc < 0) {
        readmodel_rollback(p->rm);
        p->in_tx = 0;
        pj_fail(p, "cannot apply an event to the read model", err);
        return -1;
    }
    if (rc != READMODEL_APPLIED)
        return 0;
    p->applied_total++;
    p->rebuild_applied++;
    return 1;
}

static void pj_schedule(struct projector *p)
{
    if (!p->failing && !event_pending(p->work, EV_TIMEOUT, NULL))
        event_active(p->work, EV_TIMEOUT, 0);
}

/* ---- reading from disk ---------------------------------------------------- */

struct pj_collect {                    /* events read for one reply */
    Cqrs__EventRecord **evs;
    size_t n, cap, bytes, max;
};

static int pj_collect_fn(void *arg, const Cqrs__EventRecord *rec, const uint8_t *raw, size_t len)
{
    struct pj_collect *c = arg;
    (void)rec;
    if (c->n == c->cap) {
        size_t ncap = c->cap ? c->cap * 2 : 64;
        Cqrs__EventRecord **g = realloc(c->evs, ncap * sizeof *g);
        if (!g)
            return ENOMEM;
        c->evs = g;
        c->cap = ncap;
    }
    if (!(c->evs[c->n] = cqrs__event_record__unpack(NULL, len, raw)))
        return ENOMEM;
    c->n++;
    c->bytes += len;
    return c->n >= c->max || c->bytes >= PJ_REPLY_BYTES;   /* 1: enough for one reply */
}

static void pj_collect_free(struct pj_collect *c)
{
    for (size_t i = 0; i < c->n; i++)
        cqrs__event_record__free_unpacked(c->evs[i], NULL);
    free(c->evs);
    *c = (struct pj_collect){ 0 };
}

/* Reads events from..to of `pt` with `as` into `c`. 0, or -1 (logged). */
static int pj_read(struct ptype *pt, struct allstream *as, uint64_t from, uint64_t to,
                   struct pj_collect *c)
{
    char err[512];
    int fallback = 0;
    int rc = allstream_read(as, from, to, pj_collect_fn, c, &fallback, err, sizeof err);
    if (fallback)
        log_info("%s: positions %llu..%llu read from the stream files: the journal no longer "
                 "holds them (slower)", pt->t->name, (unsigned long long)from,
                 (unsigned long long)to);
    if (rc < 0 || rc == ENOMEM) {
        log_error("%s: cannot read positions %llu..%llu: %s", pt->t->name,
                  (unsigned long long)from, (unsigned long long)to,
                  rc == ENOMEM ? "out of memory" : rc == -1 ? strerror(errno) : err);
        return -1;
    }
    return 0;
}

struct pj_catchup {
    struct projector *p;
    struct ptype *pt;
    int failed;
};

static int pj_catchup_fn(void *arg, const Cqrs__EventRecord *rec, const uint8_t *raw, size_t len)
{
    struct pj_catchup *c = arg;
    (void)raw;
    (void)len;
    if (pj_apply(c->p, c->pt, rec) < 0) {
        c->failed = 1;
        return 1;
    }
    return 0;
}

/* One chunk of catch-up for `pt`, in its own transaction. 1 if more is left. */
static int pj_catch_up(struct projector *p, struct ptype *pt)
{
    uint64_t applied = pj_applied(p, pt);
    if (applied >= pt->head)
        return 0;
    uint64_t to = pt->head - applied > PJ_CHUNK ? applied + PJ_CHUNK : pt->head;
    if (pj_begin(p) < 0)
        return 0;
    struct pj_catchup c = { p, pt, 0 };
    char err[512];
    int fallback = 0;
    int rc = allstream_read(pt->catchup, applied + 1, to, pj_catchup_fn, &c, &fallback, err,
                            sizeof err);
    if (fallback)
        log_info("%s: catching up positions %llu..%llu from the stream files: the journal no "
                 "longer holds them (slower)", pt->t->name, (unsigned long long)applied + 1,
                 (unsigned long long)to);
    if (c.failed)
        return 0;
    if (rc != 0) {
        readmodel_rollback(p->rm);
        p->in_tx = 0;
        pj_fail(p, "cannot read the events to catch up", rc == -1 ? strerror(errno) : err);
        return 0;
    }
    pj_commit(p);
    return pj_applied(p, pt) < pt->head;
}

/* ---- subscriptions -------------------------------------------------------- */

static void pj_send_events(struct projector *p, struct sub *s, Cqrs__EventRecord **evs, size_t n)
{
    Cqrs__Reply r = CQRS__REPLY__INIT;
    r.id = s->id;
    r.status = CQRS__STATUS__OK;
    r.more = 1;
    r.n_events = n;
    r.events = evs;
    r.position = evs[n - 1]->position;
    pj_reply(p, s->tag, &r);
    s->next = evs[n - 1]->position + 1;
}

/* Up to PJ_FEED_REPLIES replies from disk for `s`. 1 if more is left. */
static int pj_feed(struct projector *p, struct sub *s)
{
    for (int i = 0; i < PJ_FEED_REPLIES && s->next <= s->pt->head; i++) {
        struct pj_collect c = { .max = PJ_PAGE_EVENTS };
        if (pj_read(s->pt, s->as, s->next, s->pt->head, &c) < 0 || c.n == 0) {
            pj_collect_free(&c);
            return 0;   /* logged; tried again when the next commit comes */
        }
        pj_send_events(p, s, c.evs, c.n);
        pj_collect_free(&c);
    }
    return s->next <= s->pt->head;
}

static void pj_sub_end(struct projector *p, struct sub *s, Cqrs__Status st, const char *why)
{
    Cqrs__Reply r = CQRS__REPLY__INIT;
    r.id = s->id;
    r.status = st;
    r.error = (char *)why;
    pj_reply(p, s->tag, &r);
    struct sub **pp = &p->subs;
    while (*pp != s)
        pp = &(*pp)->next_sub;
    *pp = s->next_sub;
    allstream_free(s->as);
    free(s);
}

static void pj_subscribe(struct projector *p, uint64_t tag, const Cqrs__Request *req,
                         struct ptype *pt)
{
    struct sub *s = calloc(1, sizeof *s);
    if (!s || !(s->as = allstream_open(pt->dir))) {
        free(s);
        pj_error(p, tag, req->id, CQRS__STATUS__INTERNAL, "cannot open %s's events: %s",
                 pt->t->name, strerror(errno));
        return;
    }
    s->tag = tag;
    s->id = req->id;
    s->pt = pt;
    s->next = req->query->from_position ? req->query->from_position : 1;
    s->next_sub = p->subs;
    p->subs = s;
    pj_schedule(p);
}

static void pj_cancel(struct projector *p, uint64_t tag)
{
    for (struct sub *s = p->subs; s; s = s->next_sub)
        if (s->tag == tag) {
            pj_sub_end(p, s, CQRS__STATUS__OK, "");
            return;
        }
}

/* ---- requests ------------------------------------------------------------- */

static void pj_all_events(struct projector *p, uint64_t tag, const Cqrs__Request *req,
                          struct ptype *pt)
{
    const Cqrs__Query *q = req->query;
    uint64_t from = q->from_position ? q->from_position : 1;
    struct pj_collect c = { .max = q->max_count ? q->max_count : PJ_PAGE_EVENTS };
    if (from <= pt->head && pj_read(pt, pt->pages, from, pt->head, &c) < 0) {
        pj_collect_free(&c);
        pj_error(p, tag, req->id, CQRS__STATUS__INTERNAL,
                 "cannot read the events of %s from position %llu", pt->t->name,
                 (unsigned long long)from);
        return;
    }
    Cqrs__Reply r = CQRS__REPLY__INIT;
    r.id = req->id;
    r.status = CQRS__STATUS__OK;
    r.position = pt->head;
    r.n_events = c.n;
    r.events = c.evs;
    pj_reply(p, tag, &r);
    pj_collect_free(&c);
}

static void pj_answer(struct projector *p, struct waiter *w)
{
    const Cqrs__Query *q = w->req->query;
    uint8_t *res = NULL;
    size_t res_len = 0;
    const char *res_type = NULL;
    char err[512];
    Cqrs__Status st = readmodel_query(p->rm, w->pt->t, q->name, q->payload.data, q->payload.len,
                                      &res, &res_len, &res_type, err, sizeof err);
    Cqrs__Reply r = CQRS__REPLY__INIT;
    r.id = w->req->id;
    r.status = st;
    r.position = pj_applied(p, w->pt);
    if (st == CQRS__STATUS__OK) {
        r.state_type = (char *)res_type;
        r.state.data = res;
        r.state.len = res_len;
    } else {
        r.error = err;
    }
    pj_reply(p, w->tag, &r);
    free(res);
}

static void pj_query(struct projector *p, uint64_t tag, Cqrs__Request *req, struct ptype *pt)
{
    struct waiter *w = calloc(1, sizeof *w);
    if (!w) {
        pj_error(p, tag, req->id, CQRS__STATUS__BUSY, "the projector is out of memory");
        cqrs__request__free_unpacked(req, NULL);
        return;
    }
    unsigned ms = req->query->timeout_ms ? req->query->timeout_ms : PJ_TIMEOUT_MS;
    *w = (struct waiter){ tag, req, pt, pj_now_us() + (int64_t)ms * 1000, p->waiters };
    p->waiters = w;
}

/* Answers the waiting queries whose position is applied, and those past
 * their deadline (UNAVAILABLE). */
static void pj_answer_waiters(struct projector *p, int64_t now)
{
    for (struct waiter **pp = &p->waiters; *pp;) {
        struct waiter *w = *pp;
        const Cqrs__Query *q = w->req->query;
        uint64_t applied = pj_applied(p, w->pt);
        if (applied >= q->min_position) {   /* the open transaction included */
            pj_answer(p, w);
        } else if (now >= w->deadline_us) {
            pj_error(p, w->tag, w->req->id, CQRS__STATUS__UNAVAILABLE,
                     "the read model has applied %s up to position %llu, not yet %llu, within "
                     "%u ms; try again", w->pt->t->name, (unsigned long long)applied,
                     (unsigned long long)q->min_position,
                     q->timeout_ms ? q->timeout_ms : PJ_TIMEOUT_MS);
        } else {
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        cqrs__request__free_unpacked(w->req, NULL);
        free(w);
    }
}

static int pj_caught_up(const struct projector *p)
{
    for (size_t i = 0; i < p->n_types; i++)
        if (pj_applied(p, &p->types[i]) < p->types[i].head)
            return 0;
    return 1;
}

static void pj_answer_rebuilds(struct projector *p)
{
    if (!p->rebuilds || !pj_caught_up(p) || p->in_tx)
        return;
    log_info("read model rebuilt: %llu events applied", (unsigned long long)p->rebuild_applied);
    while (p->rebuilds) {
        struct rebuild *rb = p->rebuilds;
        Cqrs__Reply r = CQRS__REPLY__INIT;
        r.id = rb->id;
        r.status = CQRS__STATUS__OK;
        r.version = p->rebuild_applied;
        pj_reply(p, rb->tag, &r);
        p->rebuilds = rb->next;
        free(rb);
    }
}

static void pj_rebuild(struct projector *p, uint64_t tag, uint64_t id)
{
    char err[512];
    struct rebuild *rb = malloc(sizeof *rb);
    if (!rb) {
        pj_error(p, tag, id, CQRS__STATUS__BUSY, "the projector is out of memory");
        return;
    }
    if (p->in_tx)
        pj_commit(p);
    if (readmodel_reset(p->rm, err, sizeof err) < 0) {
        free(rb);
        pj_error(p, tag, id, CQRS__STATUS__INTERNAL, "cannot empty the read model: %s", err);
        return;
    }
    log_info("read model emptied: rebuilding it from every event");
    p->rebuild_applied = 0;
    *rb = (struct rebuild){ tag, id, p->rebuilds };
    p->rebuilds = rb;
    pj_schedule(p);
}

static void pj_request(struct projector *p, uint64_t tag, const uint8_t *body, size_t len)
{
    Cqrs__Request *req = cqrs__request__unpack(NULL, len, body);
    if (!req) {
        pj_error(p, tag, 0, CQRS__STATUS__INVALID, "request does not decode as cqrs.Request");
        return;
    }
    if (req->body_case == CQRS__REQUEST__BODY_CONTROL &&
        req->control->op == CQRS__CONTROL__OP__REBUILD) {
        pj_rebuild(p, tag, req->id);
        cqrs__request__free_unpacked(req, NULL);
        return;
    }
    struct ptype *pt = req->body_case == CQRS__REQUEST__BODY_QUERY
                           ? pj_type(p, req->query->aggregate_type) : NULL;
    if (!pt) {
        pj_error(p, tag, req->id, CQRS__STATUS__INVALID,
                 "the read model has no aggregate type \"%.64s\"",
                 req->body_case == CQRS__REQUEST__BODY_QUERY ? req->query->aggregate_type : "");
        cqrs__request__free_unpacked(req, NULL);
        return;
    }
    switch (req->query->kind) {
    case CQRS__QUERY__KIND__READ_MODEL:
        pj_query(p, tag, req, pt);   /* keeps req */
        return;
    case CQRS__QUERY__KIND__SUBSCRIBE:
        pj_subscribe(p, tag, req, pt);
        break;
    case CQRS__QUERY__KIND__ALL_EVENTS:
        pj_all_events(p, tag, req, pt);
        break;
    default:
        pj_error(p, tag, req->id, CQRS__STATUS__INVALID, "the read model does not answer "
                 "query kind %d", (int)req->query->kind);
    }
    cqrs__request__free_unpacked(req, NULL);
}

/* A worker's committed batch: applied at once when it follows what is
 * applied, sent to the subscriptions that are up to date. */
static void pj_on_commit(struct projector *p, const uint8_t *body, size_t len)
{
    Cqrs__Commit *cm = cqrs__commit__unpack(NULL, len, body);
    if (!cm) {
        log_error("cqrsd passed on a commit that does not decode; ignored (caught up from disk)");
        return;
    }
    struct ptype *pt = pj_type(p, cm->aggregate_type);
    if (!pt) {
        cqrs__commit__free_unpacked(cm, NULL);
        return;
    }
    pt->head = cm->position;
    if (cm->n_events) {
        uint64_t first = cm->events[0]->position, last = cm->events[cm->n_events - 1]->position;
        if (!p->failing && pj_applied(p, pt) + 1 == first && pj_begin(p) == 0)
            for (size_t i = 0; i < cm->n_events && pj_apply(p, pt, cm->events[i]) >= 0; i++)
                ;
        for (struct sub *s = p->subs; s; s = s->next_sub)
            if (s->pt == pt && s->next >= first && s->next <= last)
                pj_send_events(p, s, cm->events + (s->next - first),
                               (size_t)(last - s->next + 1));
    }
    if (pj_applied(p, pt) < pt->head)
        pj_schedule(p);
    for (struct sub *s = p->subs; s; s = s->next_sub)
        if (s->pt == pt && s->next <= pt->head)
            pj_schedule(p);
    cqrs__commit__free_unpacked(cm, NULL);
}

void projector_frame(struct projector *p, uint64_t tag, const uint8_t *body, size_t len)
{
    if (tag == FRAME_TAG_COMMIT)
        pj_on_commit(p, body, len);
    else if (len == 0)
        pj_cancel(p, tag);
    else
        pj_request(p, tag, body, len);
}

/* Applied events are committed within PJ_COMMIT_MS, many commits of the
 * workers in one SQLite transaction; queries read the open transaction in
 * the meantime (the same connection sees it). Losing it in a crash loses
 * nothing: the positions go back with the rows, and catch-up applies those
 * events again. */
void projector_flush(struct projector *p)
{
    if (p->in_tx && !event_pending(p->commit_timer, EV_TIMEOUT, NULL)) {
        struct timeval tv = { 0, PJ_COMMIT_MS * 1000 };
        event_add(p->commit_timer, &tv);
    }
    pj_answer_waiters(p, pj_now_us());
    pj_answer_rebuilds(p);
}

/* Commits now (before a heartbeat answer, and when stopping). */
static void pj_commit_now(struct projector *p)
{
    event_del(p->commit_timer);
    pj_commit(p);
    pj_answer_waiters(p, pj_now_us());
    pj_answer_rebuilds(p);
}

static void pj_on_commit_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pj_commit_now(arg);
}

/* One round of work: a chunk of catch-up per type, a few replies per
 * lagging subscription; then the loop serves what came in meanwhile. */
static void pj_on_work(evutil_socket_t fd, short what, void *arg)
{
    struct projector *p = arg;
    (void)fd;
    (void)what;
    int more = 0;
    for (size_t i = 0; i < p->n_types && !p->failing; i++)
        more |= pj_catch_up(p, &p->types[i]);
    for (struct sub *s = p->subs; s; s = s->next_sub)
        more |= pj_feed(p, s);
    projector_flush(p);
    if (more)
        pj_schedule(p);
}

static void pj_on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct projector *p = arg;
    (void)fd;
    (void)what;
    if (p->failing) {   /* try again */
        p->failing = 0;
        pj_schedule(p);
    }
    pj_answer_waiters(p, pj_now_us());
}

struct projector *projector_new(struct event_base *base, const char *data_dir,
                                struct evbuffer *out)
{
    struct projector *p = calloc(1, sizeof *p);
    char path[PATH_MAX], err[512];
    if (!p)
        return NULL;
    p->base = base;
    p->out = out;
    snprintf(path, sizeof path, "%s/readmodel.db", data_dir);
    if (!(p->rm = readmodel_open(path, err, sizeof err))) {
        log_error("%s", err);
        goto fail;
    }
    if (readmodel_note(p->rm)[0])
        log_warn("%s", readmodel_note(p->rm));
    size_t n = 0;
    for (const struct aggregate_type *const *t = aggregate_registry; *t; t++)
        n += (*t)->projection != NULL;
    if (!(p->types = calloc(n ? n : 1, sizeof *p->types)))
        goto nomem;
    for (const struct aggregate_type *const *t = aggregate_registry; *t; t++) {
        if (!(*t)->projection)
            continue;
        struct ptype *pt = &p->types[p->n_types++];
        pt->t = *t;
        snprintf(pt->dir, sizeof pt->dir, "%s/%s", data_dir, (*t)->name);
        if (!(pt->catchup = allstream_open(pt->dir)) || !(pt->pages = allstream_open(pt->dir))) {
            log_error("cannot read %s: %s", pt->dir, strerror(errno));
            goto fail;
        }
        pt->head = pj_applied(p, pt);   /* until cqrsd says more */
        log_info("%s: read model at position %llu", pt->t->name,
                 (unsigned long long)pt->head);
    }
    struct timeval tick = { 0, PJ_TICK_MS * 1000 };
    if (!(p->work = event_new(base, -1, 0, pj_on_work, p)) ||
        !(p->tick = event_new(base, -1, EV_PERSIST, pj_on_tick, p)) || event_add(p->tick, &tick) ||
        !(p->commit_timer = evtimer_new(base, pj_on_commit_timer, p)))
        goto nomem;
    return p;
nomem:
    log_error("out of memory starting the projector");
fail:
    projector_free(p);
    return NULL;
}

void projector_stop(struct projector *p)
{
    pj_commit_now(p);
    while (p->subs)
        pj_sub_end(p, p->subs, CQRS__STATUS__UNAVAILABLE,
                   "the projector is stopping; subscribe again from the last position received");
    while (p->waiters) {
        struct waiter *w = p->waiters;
        pj_error(p, w->tag, w->req->id, CQRS__STATUS__UNAVAILABLE, "the projector is stopping");
        p->waiters = w->next;
        cqrs__request__free_unpacked(w->req, NULL);
        free(w);
    }
    while (p->rebuilds) {
        struct rebuild *rb = p->rebuilds;
        pj_error(p, rb->tag, rb->id, CQRS__STATUS__UNAVAILABLE,
                 "the projector stopped before the rebuild was done; it goes on when it starts");
        p->rebuilds = rb->next;
        free(rb);
    }
}

void projector_free(struct projector *p)
{
    if (!p)
        return;
    while (p->subs) {
        struct sub *s = p->subs;
        p->subs = s->next_sub;
        allstream_free(s->as);
        free(s);
    }
    while (p->waiters) {
        struct waiter *w = p->waiters;
        p->waiters = w->next;
        cqrs__request__free_unpacked(w->req, NULL);
        free(w);
    }
    while (p->rebuilds) {
        struct rebuild *rb = p->rebuilds;
        p->rebuilds = rb->next;
        free(rb);
    }
    for (size_t i = 0; i < p->n_types; i++) {
        allstream_free(p->types[i].catchup);
        allstream_free(p->types[i].pages);
    }
    free(p->types);
    if (p->work)
        event_free(p->work);
    if (p->tick)
        event_free(p->tick);
    if (p->commit_timer)
        event_free(p->commit_timer);
    readmodel_close(p->rm);
    free(p);
}

void projector_stats(const struct projector *p, Cqrs__WorkerStats *out)
{
    out->events = p->applied_total;
    out->batches = p->transactions;
    uint64_t lag = 0, position = 0;
    for (size_t i = 0; i < p->n_types; i++) {
        uint64_t applied = pj_applied(p, &p->types[i]);
        position += applied;
        if (p->types[i].head > applied)
            lag += p->types[i].head - applied;
    }
    out->position = position;
    out->lag = lag;
    for (const struct sub *s = p->subs; s; s = s->next_sub)
        out->subscriptions++;
}
