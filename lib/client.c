/* client — see client.h. */
#include "client.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uthash.h>

#include "frame.h"

#define CLIENT_MAX_REPLY (64u << 20)

/* The replies read for one id while waiting for another, oldest first: a
 * streamed request (SUBSCRIBE) has several. */
struct parked_reply {
    Cqrs__Reply *reply;
    struct parked_reply *next;
};

struct parked {
    uint64_t id;
    struct parked_reply *head, *tail;
    UT_hash_handle hh;
};

struct cqrs_client {
    int fd;
    uint64_t next_id;
    unsigned retries;          /* of a command answered UNAVAILABLE */
    struct evbuffer *in, *out;
    struct parked *parked;     /* replies read while waiting for another id */
};

struct cqrs_client *cqrs_client_connect(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sa.sun_path) {
        errno = ENAMETOOLONG;
        return NULL;
    }
    strcpy(sa.sun_path, path);
    struct cqrs_client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->next_id = 1;
    c->retries = CQRS_CLIENT_RETRIES;
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    c->in = evbuffer_new();
    c->out = evbuffer_new();
    if (c->fd < 0 || !c->in || !c->out ||
        connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        cqrs_client_free(c);
        errno = e;
        return NULL;
    }
    return c;
}

void cqrs_client_free(struct cqrs_client *c)
{
    if (!c)
        return;
    struct parked *p, *tmp;
    HASH_ITER(hh, c->parked, p, tmp) {
        HASH_DEL(c->parked, p);
        while (p->head) {
            struct parked_reply *pr = p->head;
            p->head = pr->next;
            cqrs__reply__free_unpacked(pr->reply, NULL);
            free(pr);
        }
        free(p);
    }
    if (c->fd >= 0)
        close(c->fd);
    if (c->in)
        evbuffer_free(c->in);
    if (c->out)
        evbuffer_free(c->out);
    free(c);
}

int cqrs_client_fd(const struct cqrs_client *c)
{
    return c->fd;
}

int cqrs_client_queue(struct cqrs_client *c, Cqrs__Request *req, uint64_t *id_out)
{
    req->id = c->next_id++;
    if (id_out)
        *id_out = req->id;
    return frame_put(c->out, NULL, &req->base) < 0 ? -1 : 0;
}

int cqrs_client_flush(struct cqrs_client *c)
{
    return evbuffer_get_length(c->out) ? frame_flush(c->out, c->fd) : 0;
}

int cqrs_client_send(struct cqrs_client *c, Cqrs__Request *req, uint64_t *id_out)
{
    if (cqrs_client_queue(c, req, id_out) < 0)
        return -1;
    return cqrs_client_flush(c);
}

/* Decodes the frame f of c->in into *out and consumes it. */
static int client_take(struct cqrs_client *c, struct frame *f, Cqrs__Reply **out)
{
    *out = cqrs__reply__unpack(NULL, f->len, f->body);
    frame_consume(c->in, f);
    if (!*out) {
        errno = EPROTO;
        return -1;
    }
    return 0;
}

static Cqrs__Reply *client_unpark(struct cqrs_client *c, struct parked *p);

int cqrs_client_recv_ready(struct cqrs_client *c, Cqrs__Reply **out)
{
    if (c->parked) {
        *out = client_unpark(c, c->parked);
        return 1;
    }
    struct frame f;
    enum frame_status st = frame_next(c->in, CLIENT_MAX_REPLY, &f);
    if (st == FRAME_TOO_BIG) {
        errno = EPROTO;
        return -1;
    }
    if (st != FRAME_OK)
        return 0;
    return client_take(c, &f, out) < 0 ? -1 : 1;
}

/* Reads the next reply off the socket (writing what is queued first). */
static int client_read_one(struct cqrs_client *c, Cqrs__Reply **out)
{
    if (cqrs_client_flush(c) < 0)
        return -1;
    struct frame f;
    for (;;) {
        enum frame_status st = frame_next(c->in, CLIENT_MAX_REPLY, &f);
        if (st == FRAME_OK)
            break;
        if (st == FRAME_TOO_BIG) {
            errno = EPROTO;
            return -1;
        }
        int n = frame_fill(c->in, c->fd);
        if (n < 0)
            return -1;
        if (n == 0) {
            errno = ECONNRESET;
            return -1;
        }
    }
    return client_take(c, &f, out);
}

/* The oldest reply parked in p; p is freed once empty. */
static Cqrs__Reply *client_unpark(struct cqrs_client *c, struct parked *p)
{
    struct parked_reply *pr = p->head;
    Cqrs__Reply *r = pr->reply;
    p->head = pr->next;
    free(pr);
    if (!p->head) {
        HASH_DEL(c->parked, p);
        free(p);
    }
    return r;
}

/* Keeps r for a later recv of its id, after those already kept for it. */
static int client_park(struct cqrs_client *c, Cqrs__Reply *r)
{
    struct parked *p;
    struct parked_reply *pr = malloc(sizeof *pr);
    if (!pr)
        goto nomem;
    pr->reply = r;
    pr->next = NULL;
    HASH_FIND(hh, c->parked, &r->id, sizeof r->id, p);
    if (!p) {
        if (!(p = malloc(sizeof *p))) {
            free(pr);
            goto nomem;
        }
        p->id = r->id;
        p->head = p->tail = NULL;
        HASH_ADD(hh, c->parked, id, sizeof p->id, p);
    }
    if (p->tail)
        p->tail->next = pr;
    else
        p->head = pr;
    p->tail = pr;
    return 0;
nomem:
    cqrs__reply__free_unpacked(r, NULL);
    errno = ENOMEM;
    return -1;
}

int cqrs_client_recv_any(struct cqrs_client *c, Cqrs__Reply **out)
{
    if (c->parked) {
        *out = client_unpark(c, c->parked);
        return 0;
    }
    return client_read_one(c, out);
}

int cqrs_client_recv(struct cqrs_client *c, uint64_t id, Cqrs__Reply **out)
{
    struct parked *p;
    HASH_FIND(hh, c->parked, &id, sizeof id, p);
    if (p) {
        *out = client_unpark(c, p);
        return 0;
    }
    for (;;) {
        Cqrs__Reply *r;
        if (client_read_one(c, &r) < 0)
            return -1;
        if (r->id == id) {
            *out = r;
            return 0;
        }
        /* Replies with id 0 answer a frame the daemon could not read. */
        if (client_park(c, r) < 0)
            return -1;
    }
}

int cqrs_client_call(struct cqrs_client *c, Cqrs__Request *req, Cqrs__Reply **out)
{
    uint64_t id;
    if (cqrs_client_send(c, req, &id) < 0)
        return -1;
    return cqrs_client_recv(c, id, out);
}

void cqrs_client_set_retries(struct cqrs_client *c, unsigned retries)
{
    c->retries = retries;
}

int cqrs_client_new_command_id(char out[CQRS_COMMAND_ID_LEN + 1])
{
    uint8_t raw[CQRS_COMMAND_ID_LEN / 2];
    size_t got = 0;
    while (got < sizeof raw) {
        ssize_t n = getrandom(raw + got, sizeof raw - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        got += (size_t)n;
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof raw; i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[CQRS_COMMAND_ID_LEN] = '\0';
    return 0;
}

int cqrs_client_command(struct cqrs_client *c, const char *type, const char *id,
                        const char *name, const uint8_t *payload, size_t len,
                        const char *command_id, int64_t expected_version,
                        Cqrs__Reply **out)
{
    char fresh[CQRS_COMMAND_ID_LEN + 1];
    if (!command_id || !command_id[0]) {
        if (cqrs_client_new_command_id(fresh) < 0)
            return -1;
        command_id = fresh;
    }
    Cqrs__Request req = CQRS__REQUEST__INIT;
    Cqrs__Command cmd = CQRS__COMMAND__INIT;
    cmd.aggregate_type = (char *)type;
    cmd.aggregate_id = (char *)id;
    cmd.name = (char *)name;
    cmd.payload.data = (uint8_t *)payload;
    cmd.payload.len = len;
    if (command_id)
        cmd.command_id = (char *)command_id;
    if (expected_version >= 0) {
        cmd.expected_case = CQRS__COMMAND__EXPECTED_EXPECTED_VERSION;
        cmd.expected_version = (uint64_t)expected_version;
    }
    req.body_case = CQRS__REQUEST__BODY_COMMAND;
    req.command = &cmd;
    /* UNAVAILABLE: the worker died or is restarting, and the command may or
     * may not have been applied; the same command_id makes the retry safe. */
    long delay_ms = 10;
    for (unsigned attempt = 0;; attempt++) {
        if (cqrs_client_call(c, &req, out) < 0)
            return -1;
        if ((*out)->status != CQRS__STATUS__UNAVAILABLE || attempt >= c->retries)
            return 0;
        cqrs__reply__free_unpacked(*out, NULL);
        *out = NULL;
        struct timespec ts = { delay_ms / 1000, (delay_ms % 1000) * 1000000L };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
            ;
        if (delay_ms < 1000)
            delay_ms *= 2;
    }
}

/* req carrying q, a query of `kind` about aggregate type `type`; the
 * caller sets the rest of q. */
static void client_query_init(Cqrs__Request *req, Cqrs__Query *q, const char *type,
                              Cqrs__Query__Kind kind)
{
    cqrs__request__init(req);
    cqrs__query__init(q);
    q->aggregate_type = (char *)type;
    q->kind = kind;
    req->body_case = CQRS__REQUEST__BODY_QUERY;
    req->query = q;
}

static int client_query(struct cqrs_client *c, const char *type, const char *id,
                        Cqrs__Query__Kind kind, uint64_t from, uint32_t max,
                        Cqrs__Reply **out)
{
    Cqrs__Request req;
    Cqrs__Query q;
    client_query_init(&req, &q, type, kind);
    q.aggregate_id = (char *)id;
    q.from_version = from;
    q.max_count = max;
    return cqrs_client_call(c, &req, out);
}

int cqrs_client_state(struct cqrs_client *c, const char *type, const char *id,
                      Cqrs__Reply **out)
{
    return client_query(c, type, id, CQRS__QUERY__KIND__STATE, 0, 0, out);
}

int cqrs_client_events(struct cqrs_client *c, const char *type, const char *id,
                       uint64_t from_version, uint32_t max_count, Cqrs__Reply **out)
{
    return client_query(c, type, id, CQRS__QUERY__KIND__EVENTS, from_version, max_count, out);
}

int cqrs_client_read_model(struct cqrs_client *c, const char *type, const char *name,
                           const uint8_t *payload, size_t len, uint64_t min_position,
                           int latest, uint32_t timeout_ms, Cqrs__Reply **out)
{
    Cqrs__Request req;
    Cqrs__Query q;
    client_query_init(&req, &q, type, CQRS__QUERY__KIND__READ_MODEL);
    q.name = (char *)name;
    q.payload.data = (uint8_t *)payload;
    q.payload.len = len;
    q.min_position = min_position;
    q.latest = latest != 0;
    q.timeout_ms = timeout_ms;
    return cqrs_client_call(c, &req, out);
}

int cqrs_client_all_events(struct cqrs_client *c, const char *type, uint64_t from_position,
                           uint32_t max_count, Cqrs__Reply **out)
{
    Cqrs__Request req;
    Cqrs__Query q;
    client_query_init(&req, &q, type, CQRS__QUERY__KIND__ALL_EVENTS);
    q.from_position = from_position;
    q.max_count = max_count;
    return cqrs_client_call(c, &req, out);
}

int cqrs_client_subscribe_start(struct cqrs_client *c, const char *type,
                                uint64_t from_position, uint64_t *id_out)
{
    Cqrs__Request req;
    Cqrs__Query q;
    client_query_init(&req, &q, type, CQRS__QUERY__KIND__SUBSCRIBE);
    q.from_position = from_position;
    return cqrs_client_send(c, &req, id_out);
}

int cqrs_client_control(struct cqrs_client *c, Cqrs__Control__Op op,
                        const char *child, Cqrs__Reply **out)
{
    Cqrs__Request req = CQRS__REQUEST__INIT;
    Cqrs__Control ctl = CQRS__CONTROL__INIT;
    ctl.op = op;
    if (child)
        ctl.child = (char *)child;
    req.body_case = CQRS__REQUEST__BODY_CONTROL;
    req.control = &ctl;
    return cqrs_client_call(c, &req, out);
}

const char *cqrs_status_name(Cqrs__Status s)
{
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(&cqrs__status__descriptor, (int)s);
    return v ? v->name : "UNKNOWN";
}
