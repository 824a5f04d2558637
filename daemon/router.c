/* router — see router.h. */
#include "router.h"

#include <errno.h>
#include <grp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <uthash.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>

#include "aggregate.h"
#include "control.h"
#include "cqrs.pb-c.h"
#include "frame.h"
#include "flush.h"
#include "log.h"
#include "pbarena.h"
#include "pbwire.h"
#include "request.h"

struct conn {
    uint64_t id;
    struct bufferevent *bev;
    struct flush_out *flush;   /* bev's output, watched by cfg.flusher */
    struct router *router;
    int closing;              /* flush what is queued, then close */
    int eof;                  /* the client shut down its side: close once answered */
    int paused;               /* max_inflight_per_conn reached: not read until answered */
    int paused_out;           /* its unread replies piled up: not read until they drain */
    size_t inflight;          /* requests of this connection inside workers */
    size_t subs;              /* of which subscriptions */
    uid_t uid;                /* the peer, from SO_PEERCRED */
    pid_t pid;
    struct event *partial;    /* a frame begun must complete in read_timeout_ms */
    UT_hash_handle hh;
};

struct pending {              /* a request inside (or held for) a worker */
    uint64_t tag;
    uint64_t conn_id;
    uint64_t req_id;
    uint64_t key;             /* what it is, for poison detection */
    struct child *child;
    int sub;                  /* a subscription: answered many times, until a final reply */
    int cancelled;            /* a subscription given up: its final reply is swallowed */
    UT_hash_handle hh;
};

struct keyset {               /* a set of request keys */
    uint64_t key;
    UT_hash_handle hh;
};

/* Poison commands: the keys in flight in a child at its last crash, and
 * those that were in flight at two consecutive crashes (never delivered
 * again). */
struct poison {
    char child[64];           /* the child's name: children come and go on reload */
    struct keyset *last_crash;
    struct keyset *parked;
    size_t n_parked;
    UT_hash_handle hh;
};

#define ROUTER_MAX_PARKED 1024

struct router {
    struct event_base *base;
    struct router_config cfg;
    char *path;
    struct evconnlistener *listener;
    struct sup *sup;
    struct conn *conns;
    struct pending *pending;
    struct poison *poison;    /* by child name */
    uint64_t next_conn, next_tag;
    uint64_t served;          /* replies delivered */
    int draining;             /* shut down: leave the loop once every client is answered */
    int activated;            /* the socket came from systemd: it is not ours to unlink */
    router_reload_fn reload;
    void *reload_arg;
};

struct router_reload {        /* a RELOAD request waiting for the reload to be done */
    struct router *r;
    uint64_t conn_id, req_id;
};

static struct poison *router_poison(struct router *r, const struct child *ch, int create)
{
    struct poison *p;
    HASH_FIND_STR(r->poison, ch->name, p);
    if (!p && create && (p = calloc(1, sizeof *p)) != NULL) {
        snprintf(p->child, sizeof p->child, "%s", ch->name);
        HASH_ADD_STR(r->poison, child, p);
    }
    return p;
}

static int router_id_in(unsigned id, const unsigned *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] == id)
            return 1;
    return 0;
}

/* cqrsd's own user and group, and root, are always let in. */
static int router_peer_allowed(const struct router *r, const struct ucred *cred)
{
    const struct server_config *sv = &r->cfg.server;
    return cred->uid == 0 || cred->uid == geteuid() || cred->gid == getegid() ||
           router_id_in(cred->uid, sv->allow_uids, sv->n_allow_uids) ||
           router_id_in(cred->gid, sv->allow_gids, sv->n_allow_gids);
}

static void router_cancel_sub(struct router *r, struct pending *p, struct conn *c);

/* `c` is gone or has said it sends nothing more: its subscriptions end now,
 * not at their type's next event. They no longer count in its inflight. */
static void router_end_subs(struct router *r, struct conn *c)
{
    struct pending *p, *tmp;
    HASH_ITER(hh, r->pending, p, tmp)
        if (p->conn_id == c->id && p->sub && !p->cancelled) {
            router_cancel_sub(r, p, NULL);
            c->inflight--;
        }
    c->subs = 0;
}

static void router_conn_free(struct conn *c)
{
    struct router *r = c->router;
    if (c->subs)
        router_end_subs(r, c);
    HASH_DEL(r->conns, c);
    if (c->partial)
        event_free(c->partial);
    flusher_unwatch(c->flush);
    bufferevent_free(c->bev);
    free(c);
    if (r->draining && !r->conns)
        event_base_loopbreak(r->base);
}

/* ---- poison commands ------------------------------------------------------ */

static uint64_t router_fnv(uint64_t h, const void *data, size_t len)
{
    const uint8_t *p = data;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    return (h ^ 0xff) * 0x100000001b3ULL;   /* a separator between parts */
}

/* The identity of a request across retries: its command_id, or else its
 * content (never its request id). */
static uint64_t router_key(const Cqrs__Request *req)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    if (req->body_case == CQRS__REQUEST__BODY_COMMAND) {
        const Cqrs__Command *c = req->command;
        h = router_fnv(h, c->aggregate_type, strlen(c->aggregate_type));
        h = router_fnv(h, c->aggregate_id, strlen(c->aggregate_id));
        if (c->command_id[0])
            return router_fnv(h, c->command_id, strlen(c->command_id));
        h = router_fnv(h, c->name, strlen(c->name));
        return router_fnv(h, c->payload.data, c->payload.len);
    }
    if (req->body_case == CQRS__REQUEST__BODY_CONTROL) {   /* REBUILD */
        uint64_t op = (uint64_t)req->control->op;
        h = router_fnv(h, "control", 7);
        return router_fnv(h, &op, sizeof op);
    }
    const Cqrs__Query *q = req->query;
    h = router_fnv(h, "query", 5);
    h = router_fnv(h, q->aggregate_type, strlen(q->aggregate_type));
    h = router_fnv(h, q->aggregate_id, strlen(q->aggregate_id));
    h = router_fnv(h, q->name, strlen(q->name));
    h = router_fnv(h, q->payload.data, q->payload.len);
    uint64_t parts[4] = { (uint64_t)q->kind, q->from_version, q->max_count, q->from_position };
    return router_fnv(h, parts, sizeof parts);
}

static int keyset_has(struct keyset *set, uint64_t key)
{
    struct keyset *k;
    HASH_FIND(hh, set, &key, sizeof key, k);
    return k != NULL;
}

static void keyset_add(struct keyset **set, uint64_t key)
{
    if (keyset_has(*set, key))
        return;
    struct keyset *k = malloc(sizeof *k);
    if (!k)
        return;   /* poison detection is best effort */
    k->key = key;
    HASH_ADD(hh, *set, key, sizeof k->key, k);
}

static void keyset_clear(struct keyset **set)
{
    struct keyset *k, *tmp;
    HASH_ITER(hh, *set, k, tmp) {
        HASH_DEL(*set, k);
        free(k);
    }
}

/* `ch` died with the keys of `crash` in flight: park those that were also
 * in flight at its previous crash. */
static void router_note_crash(struct router *r, struct child *ch, struct keyset *crash)
{
    struct poison *p = router_poison(r, ch, 1);
    if (!p) {
        keyset_clear(&crash);
        return;   /* poison detection is best effort */
    }
    struct keyset *k, *tmp;
    HASH_ITER(hh, crash, k, tmp) {
        if (keyset_has(p->last_crash, k->key) && !keyset_has(p->parked, k->key)) {
            if (p->n_parked == ROUTER_MAX_PARKED) {   /* the oldest goes */
                struct keyset *old = p->parked;
                HASH_DEL(p->parked, old);
                free(old);
                p->n_parked--;
            }
            keyset_add(&p->parked, k->key);
            p->n_parked++;
            log_warn("a request to %s was in flight at two consecutive crashes of its worker: "
                     "parked, it will be refused", ch->name);
        }
    }
    keyset_clear(&p->last_crash);
    p->last_crash = crash;
}

__attribute__((format(printf, 4, 5)))
static void router_error(struct conn *c, uint64_t req_id, Cqrs__Status st, const char *fmt, ...)
{
    char msg[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    Cqrs__Reply r = CQRS__REPLY__INIT;
    r.id = req_id;
    r.status = st;
    r.error = msg;
    if (frame_put(bufferevent_get_output(c->bev), NULL, &r.base) < 0)
        c->closing = 1;
}

static void router_on_write(struct bufferevent *bev, void *arg);

/* One request of `c` is answered: a half-closed connection closes once
 * every request it sent has its reply. */
static void router_conn_answered(struct conn *c)
{
    c->inflight--;
    if (c->eof && c->inflight == 0 && !c->closing) {
        c->closing = 1;
        router_on_write(c->bev, c);
    } else if (c->paused && c->inflight < c->router->cfg.server.max_inflight_per_conn) {
        /* backpressure lifted: what waits in its buffer goes on (deferred,
         * so a worker's reply callback does not route new requests) */
        c->paused = 0;
        if (c->paused_out)
            return;
        bufferevent_enable(c->bev, EV_READ);
        bufferevent_trigger(c->bev, EV_READ, BEV_TRIG_DEFER_CALLBACKS | BEV_TRIG_IGNORE_WATERMARKS);
    }
}

/* Answers request `p` with `st` and forgets it. */
static void router_answer(struct router *r, struct pending *p, Cqrs__Status st, const char *why)
{
    struct conn *c = NULL;
    if (!p->cancelled)   /* a cancelled subscription has had its last word */
        HASH_FIND(hh, r->conns, &p->conn_id, sizeof p->conn_id, c);
    if (c && !c->closing)
        router_error(c, p->req_id, st, "%s", why);
    if (c)
        c->subs -= p->sub != 0;
    HASH_DEL(r->pending, p);
    free(p);
    if (c)
        router_conn_answered(c);
}

/* Sends request `req` (encoded as body/len) to child `ch`. */
static void router_route_to(struct router *r, struct conn *c, const Cqrs__Request *req,
                            struct child *ch, const uint8_t *body, size_t len, int sub)
{
    uint64_t req_id = req->id;
    uint64_t key = router_key(req);
    struct poison *poison = router_poison(r, ch, 0);
    if (poison && keyset_has(poison->parked, key)) {
        router_error(c, req_id, CQRS__STATUS__REJECTED,
                     "this command crashed the worker twice; it is not delivered again");
        return;
    }
    struct pending *p = malloc(sizeof *p);
    if (!p) {
        router_error(c, req_id, CQRS__STATUS__BUSY, "cqrsd is out of memory");
        return;
    }
    *p = (struct pending){ .tag = ++r->next_tag, .conn_id = c->id, .req_id = req_id, .key = key,
                           .child = ch, .sub = sub };
    if (sup_send(ch, p->tag, body, len) < 0) {
        free(p);
        if (errno == ESRCH)
            router_error(c, req_id, CQRS__STATUS__UNAVAILABLE, "the %s %s is stopped", ch->name,
                         sup_noun(ch));
        else
            router_error(c, req_id, CQRS__STATUS__BUSY,
                         "the %s %s has too many requests waiting", ch->name, sup_noun(ch));
        return;
    }
    HASH_ADD(hh, r->pending, tag, sizeof p->tag, p);
    c->inflight++;
    c->subs += sub != 0;
}

static void router_route(struct router *r, struct conn *c, const Cqrs__Request *req,
                         const char *type, const uint8_t *body, uint32_t len)
{
    struct child *ch = sup_find(r->sup, type);
    if (!ch || ch->cfg.kind != CHILD_WORKER) {
        router_error(c, req->id, CQRS__STATUS__INVALID, "unknown aggregate type \"%.64s\"", type);
        return;
    }
    router_route_to(r, c, req, ch, body, len, 0);
}

/* The projector child (at most one is configured); NULL if none. */
static struct child *router_projector(struct router *r)
{
    for (size_t i = 0; i < sup_count(r->sup); i++) {
        struct child *ch = sup_child(r->sup, i);
        if (ch->cfg.kind == CHILD_PROJECTOR && !ch->removing)
            return ch;
    }
    return NULL;
}

/* The last position the worker of `type` has committed (0: none known). */
static uint64_t router_head(struct router *r, const char *type)
{
    struct child *ch = sup_find(r->sup, type);
    return ch && ch->cfg.kind == CHILD_WORKER ? ch->committed : 0;
}

/* A query of the read model (READ_MODEL, SUBSCRIBE, ALL_EVENTS) or REBUILD:
 * to the projector. A READ_MODEL query with `latest` waits for every event
 * acknowledged so far: its min_position is raised to the type's head. */
static void router_route_projector(struct router *r, struct conn *c, Cqrs__Request *req,
                                   const uint8_t *body, uint32_t len)
{
    struct child *ch = router_projector(r);
    if (!ch) {
        router_error(c, req->id, CQRS__STATUS__UNAVAILABLE,
                     "no read model is configured (a [child] with kind = projector)");
        return;
    }
    Cqrs__Query *q = req->body_case == CQRS__REQUEST__BODY_QUERY ? req->query : NULL;
    if (q) {
        const struct aggregate_type *t = aggregate_lookup(q->aggregate_type);
        if (!t || !t->projection) {
            router_error(c, req->id, CQRS__STATUS__INVALID,
                         "no aggregate type \"%.64s\" with a read model", q->aggregate_type);
            return;
        }
    }
    if (q && q->kind == CQRS__QUERY__KIND__READ_MODEL && q->latest) {
        uint64_t head = router_head(r, q->aggregate_type);
        if (head > q->min_position) {
            q->min_position = head;
            size_t n = cqrs__request__get_packed_size(req);
            uint8_t *buf = malloc(n ? n : 1);
            if (!buf) {
                router_error(c, req->id, CQRS__STATUS__BUSY, "cqrsd is out of memory");
                return;
            }
            cqrs__request__pack(req, buf);
            router_route_to(r, c, req, ch, buf, n, 0);
            free(buf);
            return;
        }
    }
    router_route_to(r, c, req, ch, body, len, q && q->kind == CQRS__QUERY__KIND__SUBSCRIBE);
}

static void router_reload_done(void *arg, int ok, const char *error)
{
    struct router_reload *rl = arg;
    struct conn *c;
    HASH_FIND(hh, rl->r->conns, &rl->conn_id, sizeof rl->conn_id, c);
    if (c && !c->closing)
        router_error(c, rl->req_id,
                     ok > 0 ? CQRS__STATUS__OK : ok < 0 ? CQRS__STATUS__BUSY : CQRS__STATUS__INVALID,
                     "%s", ok > 0 ? "" : error);
    free(rl);
}

/* RELOAD is answered once the new configuration is applied (or refused),
 * so `cqrsctl reload` — systemd's ExecReload — is synchronous. */
static void router_start_reload(struct router *r, struct conn *c, uint64_t req_id)
{
    struct router_reload *rl = malloc(sizeof *rl);
    if (!r->reload || !rl) {
        free(rl);
        router_error(c, req_id, CQRS__STATUS__INTERNAL, "reload is not available");
        return;
    }
    *rl = (struct router_reload){ r, c->id, req_id };
    r->reload(r->reload_arg, router_reload_done, rl);
}

static void router_on_frame(struct router *r, struct conn *c, const uint8_t *body, uint32_t len)
{
    Cqrs__Request *req;
    uint64_t id;
    char err[300];
    _Alignas(16) uint8_t mem[2048];   /* the request is decoded here, then forgotten */
    struct pbarena arena;
    pbarena_init(&arena, mem, sizeof mem);
    if (request_check(body, len, &arena.alloc, &r->cfg.limits, &req, &id, err, sizeof err) !=
        CQRS__STATUS__OK) {
        pbarena_reset(&arena);
        router_error(c, id, CQRS__STATUS__INVALID, "%s", err);
        return;
    }
    switch (req->body_case) {
    case CQRS__REQUEST__BODY_COMMAND:
        router_route(r, c, req, req->command->aggregate_type, body, len);
        break;
    case CQRS__REQUEST__BODY_QUERY:
        if (req->query->kind == CQRS__QUERY__KIND__READ_MODEL ||
            req->query->kind == CQRS__QUERY__KIND__SUBSCRIBE ||
            req->query->kind == CQRS__QUERY__KIND__ALL_EVENTS)
            router_route_projector(r, c, req, body, len);
        else
            router_route(r, c, req, req->query->aggregate_type, body, len);
        break;
    default:   /* control: request_check let nothing else through */
        if (req->control->op != CQRS__CONTROL__OP__STATUS && r->cfg.server.n_admin_uids &&
            !router_id_in(c->uid, r->cfg.server.admin_uids, r->cfg.server.n_admin_uids))
            router_error(c, req->id, CQRS__STATUS__REJECTED,
                         "permission denied: uid %d is not in admin_uids", (int)c->uid);
        else if (req->control->op == CQRS__CONTROL__OP__RELOAD)
            router_start_reload(r, c, req->id);
        else if (req->control->op == CQRS__CONTROL__OP__REBUILD)
            router_route_projector(r, c, req, body, len);
        else if (control_reply(r->sup, req->id, req->control, bufferevent_get_output(c->bev)) < 0)
            c->closing = 1;
    }
    pbarena_reset(&arena);
}

/* Replies waiting for a client that does not read them: past this, cqrsd
 * stops reading its requests until the replies drain (to a quarter). */
#define ROUTER_MAX_UNREAD_REPLIES (4u << 20)

static void router_on_write(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    size_t out = evbuffer_get_length(bufferevent_get_output(bev));
    if (c->closing && out == 0) {
        router_conn_free(c);
        return;
    }
    if (c->paused_out && out <= ROUTER_MAX_UNREAD_REPLIES / 4) {
        c->paused_out = 0;
        if (!c->paused) {
            bufferevent_enable(bev, EV_READ);
            bufferevent_trigger(bev, EV_READ, BEV_TRIG_DEFER_CALLBACKS | BEV_TRIG_IGNORE_WATERMARKS);
        }
    }
}

static void router_on_read(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct router *r = c->router;
    struct evbuffer *in = bufferevent_get_input(bev);
    struct frame f;
    enum frame_status st = FRAME_NEED_MORE;
    while (!c->closing) {
        if (evbuffer_get_length(bufferevent_get_output(bev)) > ROUTER_MAX_UNREAD_REPLIES) {
            /* it does not read its replies: neither do we read its requests */
            c->paused_out = 1;
            bufferevent_disable(bev, EV_READ);
            bufferevent_setwatermark(bev, EV_WRITE, ROUTER_MAX_UNREAD_REPLIES / 4, 0);
            break;
        }
        if (c->inflight >= r->cfg.server.max_inflight_per_conn) {
            /* backpressure through the socket: the client's writes block */
            c->paused = 1;
            bufferevent_disable(bev, EV_READ);
            break;
        }
        if ((st = frame_next(in, r->cfg.max_frame, &f)) != FRAME_OK)
            break;
        router_on_frame(r, c, f.body, f.len);
        frame_consume(in, &f);
    }
    /* slowloris: a frame begun must be whole within read_timeout_ms */
    if (!c->closing && !c->paused && !c->paused_out && evbuffer_get_length(in) > 0) {
        if (!evtimer_pending(c->partial, NULL)) {
            unsigned ms = r->cfg.server.read_timeout_ms;
            struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
            evtimer_add(c->partial, &tv);
        }
    } else {
        evtimer_del(c->partial);
    }
    if (!c->closing && st == FRAME_TOO_BIG) {
        router_error(c, 0, CQRS__STATUS__INVALID, "frame of %u bytes is over the limit of %u bytes",
                     f.len, r->cfg.max_frame);
        c->closing = 1;
    }
    if (c->closing) {
        bufferevent_disable(bev, EV_READ);
        evbuffer_drain(in, evbuffer_get_length(in));
        router_on_write(bev, c);
    }
}

static void router_on_partial_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    (void)fd;
    (void)what;
    log_warn("connection %llu (uid %d, pid %d): a frame begun %u ms ago is still incomplete; "
             "closing it", (unsigned long long)c->id, (int)c->uid, (int)c->pid,
             c->router->cfg.server.read_timeout_ms);
    router_conn_free(c);
}

static void router_on_event(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    if (what & BEV_EVENT_ERROR) {
        router_conn_free(c);   /* its pending replies are dropped on arrival */
    } else if (what & BEV_EVENT_EOF) {
        /* half-closed: what it sent is still answered, then we close; a
         * subscription, which never ends by itself, ends here */
        c->eof = 1;
        bufferevent_disable(bev, EV_READ);
        if (c->subs)
            router_end_subs(c->router, c);
        if (c->inflight == 0 && !c->closing) {
            c->closing = 1;
            router_on_write(bev, c);
        }
    }
}

static void router_on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                             int salen, void *arg)
{
    struct router *r = arg;
    (void)l;
    (void)sa;
    (void)salen;
    const struct server_config *sv = &r->cfg.server;
    struct ucred cred;
    socklen_t clen = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0) {
        log_error("cannot read a new connection's credentials: %s; closing it", strerror(errno));
        close(fd);
        return;
    }
    if (!router_peer_allowed(r, &cred)) {
        log_warn("refused a connection from uid %d (pid %d): not in allow_uids or allow_gids",
                 (int)cred.uid, (int)cred.pid);
        close(fd);
        return;
    }
    if (HASH_COUNT(r->conns) >= sv->max_connections) {
        log_warn("refused a connection from uid %d (pid %d): max_connections (%u) reached",
                 (int)cred.uid, (int)cred.pid, sv->max_connections);
        close(fd);
        return;
    }
    struct conn *c = calloc(1, sizeof *c);
    if (!c || !(c->bev = bufferevent_socket_new(r->base, fd, BEV_OPT_CLOSE_ON_FREE)) ||
        !(c->partial = evtimer_new(r->base, router_on_partial_timeout, c))) {
        log_error("out of memory accepting a connection");
        if (c && c->bev)
            bufferevent_free(c->bev);
        else
            close(fd);
        free(c);
        return;
    }
    c->id = ++r->next_conn;
    c->router = r;
    c->uid = cred.uid;
    c->pid = cred.pid;
    bufferevent_set_max_single_read(c->bev, 256 << 10);
    /* memory per connection: what is read but not yet handled stays under
     * one whole frame and a read's worth */
    bufferevent_setwatermark(c->bev, EV_READ, 0, (size_t)r->cfg.max_frame + (256 << 10));
    bufferevent_setcb(c->bev, router_on_read, router_on_write, router_on_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    if (r->cfg.flusher)
        c->flush = flusher_watch(r->cfg.flusher, c->bev);   /* NULL: it writes by itself */
    HASH_ADD(hh, r->conns, id, sizeof c->id, c);
}

static void router_on_listen_error(struct evconnlistener *l, void *arg)
{
    (void)l;
    (void)arg;
    log_error("accept: %s", strerror(errno));   /* e.g. EMFILE: libevent retries */
}

/* ---- supervisor hooks ---------------------------------------------------- */

/* Gives up subscription `p`: the projector is told (an empty frame with its
 * tag) and answers with a final reply, swallowed then. */
static void router_cancel_sub(struct router *r, struct pending *p, struct conn *c)
{
    p->cancelled = 1;
    sup_send(p->child, p->tag, NULL, 0);
    if (c) {
        c->subs--;
        router_conn_answered(c);
    }
    (void)r;
}

/* A reply to subscription `p`. Returns 1 when it was handled here (more
 * replies follow: `p` stays), 0 when it is the final one. */
static int router_on_sub_reply(struct router *r, struct child *ch, struct pending *p,
                               struct conn *c, const uint8_t *body, size_t len)
{
    (void)ch;
    uint64_t more = 0;   /* Reply.more, field 11: the events are not decoded */
    if (pbwire_varint_field(body, len, 11, &more) <= 0 || !more)
        return 0;
    if (p->cancelled)
        return 1;
    if (!c || c->closing) {
        router_cancel_sub(r, p, c);   /* its client has gone */
        return 1;
    }
    size_t unread = evbuffer_get_length(bufferevent_get_output(c->bev));
    if (unread > ROUTER_MAX_UNREAD_REPLIES) {
        log_warn("connection %llu (uid %d, pid %d): subscriber too slow, %zu bytes of events "
                 "unread: dropped", (unsigned long long)c->id, (int)c->uid, (int)c->pid, unread);
        router_error(c, p->req_id, CQRS__STATUS__BUSY,
                     "subscriber too slow: dropped with %zu bytes of events unread; subscribe "
                     "again from the last position received", unread);
        router_cancel_sub(r, p, c);
        return 1;
    }
    if (frame_put_bytes(bufferevent_get_output(c->bev), NULL, body, len) < 0)
        c->closing = 1;
    return 1;
}

/* Commits forwarded to a projector that does not read them: past this they
 * are dropped, and it catches up from the journal instead. */
#define ROUTER_MAX_PROJECTOR_BACKLOG (16u << 20)

/* Sends Commit{position, type} (no events) to the projector `pr`. */
static void router_send_head(struct child *pr, const char *type, uint64_t position)
{
    Cqrs__Commit cm = CQRS__COMMIT__INIT;
    cm.position = position;
    cm.aggregate_type = (char *)type;
    uint64_t tag = FRAME_TAG_COMMIT;
    frame_put(bufferevent_get_output(pr->bev), &tag, &cm.base);
}

/* A worker committed a batch (sup noted its position in ch->committed):
 * pass it on to the projector when it runs (one that misses it catches up
 * from the journal). */
static void router_on_commit(void *arg, struct child *ch, const uint8_t *body, size_t len)
{
    struct router *r = arg;
    struct child *pr = router_projector(r);
    if (!pr || pr->state != CHILD_RUNNING || !pr->bev)
        return;
    struct evbuffer *out = bufferevent_get_output(pr->bev);
    if (evbuffer_get_length(out) > ROUTER_MAX_PROJECTOR_BACKLOG)
        router_send_head(pr, ch->name, ch->committed);   /* it reads the events from disk */
    else
        frame_put_bytes(out, &(uint64_t){ FRAME_TAG_COMMIT }, body, len);
}

/* A child is up: a projector learns every type's head, to catch up to. */
static void router_on_up(void *arg, struct child *ch)
{
    struct router *r = arg;
    if (ch->cfg.kind != CHILD_PROJECTOR)
        return;
    for (size_t i = 0; i < sup_count(r->sup); i++) {
        struct child *w = sup_child(r->sup, i);
        if (w->cfg.kind == CHILD_WORKER && w->started)
            router_send_head(ch, w->name, w->committed);
    }
}

static int router_on_reply(void *arg, struct child *ch, uint64_t tag, const uint8_t *body, size_t len)
{
    struct router *r = arg;
    struct pending *p;
    HASH_FIND(hh, r->pending, &tag, sizeof tag, p);
    if (!p || p->child != ch) {
        log_error("child %s answered request %llu, which it was never given", ch->name,
                  (unsigned long long)tag);
        return -1;
    }
    struct conn *c = NULL;
    if (!p->cancelled)
        HASH_FIND(hh, r->conns, &p->conn_id, sizeof p->conn_id, c);
    if (p->sub && router_on_sub_reply(r, ch, p, c, body, len))
        return 0;
    HASH_DEL(r->pending, p);
    int cancelled = p->cancelled, sub = p->sub;
    free(p);
    if (cancelled)
        return 0;   /* the end of a subscription already answered */
    r->served++;
    if (c) {
        c->subs -= sub != 0;
        if (!c->closing && frame_put_bytes(bufferevent_get_output(c->bev), NULL, body, len) < 0)
            c->closing = 1;
        router_conn_answered(c);
    }
    return 0;
}

uint64_t router_served(const struct router *r)
{
    return r->served;
}

static void router_add_held(void *arg, uint64_t tag)
{
    keyset_add(arg, tag);
}

/* Answers UNAVAILABLE every pending request of `ch` but those in `skip`,
 * adding their keys to *keys when keys is not NULL. */
static void router_answer_child(struct router *r, struct child *ch, struct keyset *skip,
                                struct keyset **keys, const char *why)
{
    struct pending *p, *tmp;
    HASH_ITER(hh, r->pending, p, tmp) {
        if (p->child != ch || keyset_has(skip, p->tag))
            continue;
        if (keys)
            keyset_add(keys, p->key);
        router_answer(r, p, CQRS__STATUS__UNAVAILABLE, why);
    }
}

/* `ch` died: every request it had is answered UNAVAILABLE, and remembered
 * for poison detection; those held for its successor wait on. */
static void router_fail_child(void *arg, struct child *ch, const char *reason)
{
    struct router *r = arg;
    struct keyset *crash = NULL, *held = NULL;
    sup_held_tags(ch, router_add_held, &held);
    char why[300];
    if (ch->cfg.kind == CHILD_PROJECTOR)
        snprintf(why, sizeof why, "%s; ask again (a subscription: from the position after the "
                 "last one received)", reason);
    else
        snprintf(why, sizeof why, "%s; the command may or may not have been applied: retry it "
                 "with the same command_id", reason);
    /* queries cannot poison anything: a projector that dies on one is
     * bounded by the restart intensity, and one waiting for a position,
     * or a rebuild, is in flight at every crash */
    int poison = ch->cfg.kind == CHILD_WORKER;
    router_answer_child(r, ch, held, poison ? &crash : NULL, why);
    if (poison)
        router_note_crash(r, ch, crash);
    keyset_clear(&held);
}

static void router_on_expire(void *arg, struct child *ch, const char *reason)
{
    router_answer_child(arg, ch, NULL, NULL, reason);
}

void router_accept(struct router *r)
{
    evconnlistener_enable(r->listener);
    log_info("listening on %s%s", r->path, r->activated ? " (socket from systemd)" : "");
}

struct sup_hooks router_sup_hooks(struct router *r)
{
    return (struct sup_hooks){ .arg = r, .reply = router_on_reply, .down = router_fail_child,
                               .expire = router_on_expire, .up = router_on_up,
                               .commit = router_on_commit };
}

void router_set_sup(struct router *r, struct sup *sup)
{
    r->sup = sup;
}

void router_set_reload(struct router *r, router_reload_fn fn, void *arg)
{
    r->reload = fn;
    r->reload_arg = arg;
}

/* ---- the socket ----------------------------------------------------------- */

/* A socket file left by a dead cqrsd is removed; a live one is refused. */
static int router_bind(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sa.sun_path) {
        log_error("socket path %s is too long", path);
        return -1;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        log_error("socket: %s", strerror(errno));
        return -1;
    }
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    if (rc < 0 && errno == EADDRINUSE) {
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int live = probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0;
        if (probe >= 0)
            close(probe);
        if (live) {
            log_error("another cqrsd is already listening on %s", path);
            close(fd);
            return -1;
        }
        unlink(path);
        rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    }
    if (rc < 0 || listen(fd, 128) < 0) {
        log_error("cannot listen on %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* Socket activation: systemd passes listening sockets from fd 3 on, with
 * LISTEN_PID (ours) and LISTEN_FDS; they are unset so no worker inherits
 * them. -1 when there is none. */
static int router_activated_fd(void)
{
    const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
    int fd = -1;
    if (pid && fds && strtol(pid, NULL, 10) == (long)getpid() && strtol(fds, NULL, 10) >= 1) {
        struct stat st;
        int listening = 0;
        socklen_t len = sizeof listening;
        if (fstat(3, &st) == 0 && S_ISSOCK(st.st_mode) &&
            getsockopt(3, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 && listening) {
            fd = 3;
            evutil_make_socket_nonblocking(fd);
            evutil_make_socket_closeonexec(fd);
        } else {
            log_warn("LISTEN_FDS names fd 3, but it is not a listening socket; binding instead");
        }
    }
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    return fd;
}

/* The socket's mode and group, whatever the umask ([server] socket_mode,
 * socket_group): who may connect at all; SO_PEERCRED decides the rest. */
static int router_socket_access(const char *path, const struct server_config *sv)
{
    if (chmod(path, (mode_t)sv->socket_mode) < 0) {
        log_error("cannot set the mode of %s: %s", path, strerror(errno));
        return -1;
    }
    if (!sv->socket_group[0])
        return 0;
    char *end;
    unsigned long gid = strtoul(sv->socket_group, &end, 10);
    if (*end) {
        struct group *g = getgrnam(sv->socket_group);
        if (!g) {
            log_error("socket_group \"%s\" is no group of this system", sv->socket_group);
            return -1;
        }
        gid = g->gr_gid;
    }
    if (chown(path, (uid_t)-1, (gid_t)gid) < 0) {
        log_error("cannot give %s to group %lu: %s", path, gid, strerror(errno));
        return -1;
    }
    return 0;
}

struct router *router_new(struct event_base *base, const struct router_config *cfg)
{
    struct router *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->base = base;
    r->cfg = *cfg;
    r->path = strdup(cfg->socket_path);
    int fd = router_activated_fd();
    r->activated = fd >= 0;
    if (fd < 0) {
        fd = r->path ? router_bind(r->path) : -1;
        if (fd >= 0 && router_socket_access(r->path, &cfg->server) < 0) {
            close(fd);
            unlink(r->path);
            fd = -1;
        }
    }
    if (fd < 0) {
        free(r->path);
        free(r);
        return NULL;
    }
    r->listener = evconnlistener_new(base, router_on_accept, r,
                                     LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC |
                                     LEV_OPT_DISABLED, -1, fd);
    if (!r->listener) {
        log_error("cannot set up the listener");
        close(fd);
        unlink(r->path);
        free(r->path);
        free(r);
        return NULL;
    }
    evconnlistener_set_error_cb(r->listener, router_on_listen_error);
    return r;
}

void router_close_listener(struct router *r)
{
    if (r->listener) {
        evconnlistener_free(r->listener);
        r->listener = NULL;
        if (!r->activated)
            unlink(r->path);   /* systemd keeps its socket for the next start */
    }
}

void router_free(struct router *r)
{
    if (!r)
        return;
    router_close_listener(r);
    struct conn *c, *ctmp;
    HASH_ITER(hh, r->conns, c, ctmp)
        router_conn_free(c);
    struct pending *p, *ptmp;
    HASH_ITER(hh, r->pending, p, ptmp) {
        HASH_DEL(r->pending, p);
        free(p);
    }
    struct poison *po, *potmp;
    HASH_ITER(hh, r->poison, po, potmp) {
        HASH_DEL(r->poison, po);
        keyset_clear(&po->last_crash);
        keyset_clear(&po->parked);
        free(po);
    }
    free(r->path);
    free(r);
}

int router_drain(struct router *r)
{
    router_close_listener(r);
    r->draining = 1;
    struct conn *c, *tmp;
    HASH_ITER(hh, r->conns, c, tmp) {
        if (!c->closing) {
            c->closing = 1;
            bufferevent_disable(c->bev, EV_READ);
            router_on_write(c->bev, c);
        }
    }
    return HASH_COUNT(r->conns);
}
