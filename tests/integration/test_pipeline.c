/*
 * test_pipeline — many pipelined requests on concurrent connections.
 *
 * 4 connections, each on its own thread, send 2,000 TopUp(1) to one wallet
 * without waiting, then collect the replies: every request is answered
 * exactly once, OK, in request order (one aggregate), and the 8,000 events
 * got the versions 1..8000 once each. The wallet ends at balance and
 * version 8000, and its log file holds versions 1..8000 whose
 * WalletToppedUp records chain (from of n = to of n-1).
 *
 * Threads report failures in their struct; only the main thread asserts.
 * Requests queued on one connection go out at the flush, in one write.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>

#include "evlog.h"
#include "harness.h"
#include "wallet.pb-c.h"

#define CONNS 4
#define PER_CONN 2000
#define TOTAL (CONNS * PER_CONN)

static struct daemon d;

static void setup(void)
{
    daemon_start(&d, NULL);
}

static void teardown(void)
{
    daemon_cleanup(&d);
}

TestSuite(pipeline, .init = setup, .fini = teardown, .timeout = 240);

static void finish(void)
{
    int st = daemon_stop(&d);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "cqrsd did not exit 0 on SIGTERM (wait status 0x%x)", st);
}

/* Bounds every blocking read of `c`, so that a lost reply fails the test
 * with a message instead of hanging it. */
static void recv_timeout(struct cqrs_client *c, int seconds)
{
    struct timeval tv = { .tv_sec = seconds };
    cr_assert(setsockopt(cqrs_client_fd(c), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0,
              "SO_RCVTIMEO: %s", strerror(errno));
}

/* --- one pipelined connection -------------------------------------------- */

struct conn {
    struct cqrs_client *c;
    const char *wallet;
    uint64_t first_id;               /* ids are first_id .. first_id+PER_CONN-1 */
    uint64_t version[PER_CONN];      /* the version each request's event got */
    unsigned char answered[PER_CONN];
    char err[512];
};

/* Checks one reply; returns the request's index or -1. */
static long conn_check(struct conn *k, const Cqrs__Reply *r, uint64_t *last_id)
{
    if (r->id < k->first_id || r->id >= k->first_id + PER_CONN) {
        harness_fail_once(k->err, sizeof k->err, "a reply for id %llu, never sent on this connection",
                  (unsigned long long)r->id);
        return -1;
    }
    long i = (long)(r->id - k->first_id);
    if (k->answered[i]) {
        harness_fail_once(k->err, sizeof k->err, "request id %llu answered twice", (unsigned long long)r->id);
        return -1;
    }
    k->answered[i] = 1;
    if (r->id <= *last_id) {
        harness_fail_once(k->err, sizeof k->err, "reply for id %llu came after the one for id %llu: not in request order",
                  (unsigned long long)r->id, (unsigned long long)*last_id);
        return -1;
    }
    *last_id = r->id;
    if (r->status != CQRS__STATUS__OK) {
        harness_fail_once(k->err, sizeof k->err, "request id %llu: %s (%s)", (unsigned long long)r->id,
                  cqrs_status_name(r->status), r->error);
        return -1;
    }
    if (r->n_events != 1 || strcmp(r->events[0]->type, "WalletToppedUp") != 0) {
        harness_fail_once(k->err, sizeof k->err, "request id %llu: %zu events, expected one WalletToppedUp",
                  (unsigned long long)r->id, r->n_events);
        return -1;
    }
    const Cqrs__EventRecord *e = r->events[0];
    if (e->version != r->version) {
        harness_fail_once(k->err, sizeof k->err, "request id %llu: event version %llu, reply version %llu",
                  (unsigned long long)r->id, (unsigned long long)e->version,
                  (unsigned long long)r->version);
        return -1;
    }
    Wallet__WalletToppedUp *t = wallet__wallet_topped_up__unpack(NULL, e->data.len, e->data.data);
    if (!t) {
        harness_fail_once(k->err, sizeof k->err, "request id %llu: WalletToppedUp does not decode", (unsigned long long)r->id);
        return -1;
    }
    /* every command adds 1, so the balance after version v is v */
    int good = t->to == t->from + 1 && (uint64_t)t->to == e->version;
    if (!good)
        harness_fail_once(k->err, sizeof k->err, "request id %llu: version %llu went from %lld to %lld",
                  (unsigned long long)r->id, (unsigned long long)e->version,
                  (long long)t->from, (long long)t->to);
    wallet__wallet_topped_up__free_unpacked(t, NULL);
    if (!good)
        return -1;
    k->version[i] = e->version;
    return i;
}

static void *conn_run(void *arg)
{
    struct conn *k = arg;
    Wallet__TopUp t = WALLET__TOP_UP__INIT;
    t.amount = 1;
    uint8_t payload[16];
    Cqrs__Command cmd = CQRS__COMMAND__INIT;
    cmd.aggregate_type = "wallet";
    cmd.aggregate_id = (char *)k->wallet;
    cmd.name = "TopUp";
    cmd.payload.len = wallet__top_up__pack(&t, payload);
    cmd.payload.data = payload;
    Cqrs__Request req = CQRS__REQUEST__INIT;
    req.body_case = CQRS__REQUEST__BODY_COMMAND;
    req.command = &cmd;

    for (long i = 0; i < PER_CONN; i++) {
        uint64_t id;
        if (cqrs_client_send(k->c, &req, &id) < 0) {
            harness_fail_once(k->err, sizeof k->err, "send of request %ld: %s", i, strerror(errno));
            return NULL;
        }
        if (i == 0)
            k->first_id = id;
        else if (id != k->first_id + (uint64_t)i) {
            harness_fail_once(k->err, sizeof k->err, "the client library gave id %llu to request %ld",
                      (unsigned long long)id, i);
            return NULL;
        }
    }
    uint64_t last_id = 0;
    for (long n = 0; n < PER_CONN; n++) {
        Cqrs__Reply *r = NULL;
        if (cqrs_client_recv_any(k->c, &r) < 0) {
            harness_fail_once(k->err, sizeof k->err, "after %ld of %d replies: %s", n, PER_CONN, strerror(errno));
            return NULL;
        }
        long i = conn_check(k, r, &last_id);
        cqrs__reply__free_unpacked(r, NULL);
        if (i < 0)
            return NULL;
    }
    return NULL;
}

static void check_wallet(struct cqrs_client *c, const char *id, int64_t balance, uint64_t version)
{
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_state(c, "wallet", id, &r) == 0, "STATE %s: no reply", id);
    cr_assert_eq(r->status, CQRS__STATUS__OK, "STATE %s: %s (%s)", id,
                 cqrs_status_name(r->status), r->error);
    Wallet__WalletState *s = wallet__wallet_state__unpack(NULL, r->state.len, r->state.data);
    cr_assert(s, "STATE %s does not decode", id);
    cr_assert_eq(s->balance, balance, "wallet %s balance %lld, expected %lld", id,
                 (long long)s->balance, (long long)balance);
    cr_assert_eq(r->version, version, "wallet %s version %llu, expected %llu", id,
                 (unsigned long long)r->version, (unsigned long long)version);
    wallet__wallet_state__free_unpacked(s, NULL);
    cqrs__reply__free_unpacked(r, NULL);
}

Test(pipeline, four_connections_pipelining_to_one_wallet)
{
    static struct conn conns[CONNS];
    pthread_t th[CONNS];
    for (int i = 0; i < CONNS; i++) {
        memset(&conns[i], 0, sizeof conns[i]);
        conns[i].c = daemon_connect(&d);
        recv_timeout(conns[i].c, 60);
        conns[i].wallet = "hot";
    }
    for (int i = 0; i < CONNS; i++)
        cr_assert(pthread_create(&th[i], NULL, conn_run, &conns[i]) == 0, "pthread_create");
    for (int i = 0; i < CONNS; i++)
        pthread_join(th[i], NULL);

    unsigned char *seen = calloc(TOTAL + 1, 1);
    cr_assert(seen, "out of memory");
    for (int i = 0; i < CONNS; i++) {
        cr_assert(!conns[i].err[0], "connection %d: %s", i, conns[i].err);
        for (int j = 0; j < PER_CONN; j++) {
            cr_assert(conns[i].answered[j], "connection %d: request %d never answered", i, j);
            uint64_t v = conns[i].version[j];
            cr_assert(v >= 1 && v <= TOTAL, "connection %d: request %d got version %llu", i, j,
                      (unsigned long long)v);
            cr_assert(!seen[v], "version %llu acknowledged to two commands",
                      (unsigned long long)v);
            seen[v] = 1;
        }
        cqrs_client_free(conns[i].c);
        conns[i].c = NULL;
    }
    free(seen);

    struct cqrs_client *c = daemon_connect(&d);
    check_wallet(c, "hot", TOTAL, TOTAL);
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_events(c, "wallet", "hot", TOTAL, 0, &r) == 0, "EVENTS: no reply");
    cr_assert_eq(r->status, CQRS__STATUS__OK);
    cr_assert_eq(r->n_events, 1, "EVENTS from %d returned %zu events", TOTAL, r->n_events);
    cr_assert_eq(r->events[0]->version, TOTAL);
    cqrs__reply__free_unpacked(r, NULL);
    cqrs_client_free(c);

    daemon_check_topup_chain(&d, "hot", TOTAL);
    finish();
    /* a clean stop keeps them all */
    daemon_check_topup_chain(&d, "hot", TOTAL);
}

/* --- one connection, several aggregates, queries in between ------------------ */

#define MIX_WALLETS 6
#define MIX_REQUESTS 1200

struct mix_req {
    int wallet;
    int is_query;
    int64_t balance_after;   /* command: the balance its event must reach */
    uint64_t version;        /* command: its version; query: the version to read */
    int answered;
};

Test(pipeline, one_connection_many_aggregates_keeps_order)
{
    static struct mix_req reqs[MIX_REQUESTS];
    memset(reqs, 0, sizeof reqs);
    int64_t balance[MIX_WALLETS] = { 0 };
    uint64_t version[MIX_WALLETS] = { 0 };
    char names[MIX_WALLETS][16];
    for (int w = 0; w < MIX_WALLETS; w++)
        snprintf(names[w], sizeof names[w], "mix%d", w);

    struct cqrs_client *c = daemon_connect(&d);
    recv_timeout(c, 60);
    uint64_t first_id = 0;
    for (int i = 0; i < MIX_REQUESTS; i++) {
        int w = (i + i / 4) % MIX_WALLETS;
        Cqrs__Request req = CQRS__REQUEST__INIT;
        Cqrs__Command cmd = CQRS__COMMAND__INIT;
        Cqrs__Query q = CQRS__QUERY__INIT;
        uint8_t payload[16];
        reqs[i].wallet = w;
        if (i % 10 == 9 && version[w] > 0) {
            /* a query sees exactly the commands sent before it */
            reqs[i].is_query = 1;
            reqs[i].version = version[w];
            reqs[i].balance_after = balance[w];
            q.aggregate_type = "wallet";
            q.aggregate_id = names[w];
            q.kind = CQRS__QUERY__KIND__STATE;
            req.body_case = CQRS__REQUEST__BODY_QUERY;
            req.query = &q;
        } else {
            Wallet__TopUp t = WALLET__TOP_UP__INIT;
            t.amount = i % 5 + 1;
            balance[w] += t.amount;
            reqs[i].balance_after = balance[w];
            reqs[i].version = ++version[w];
            cmd.aggregate_type = "wallet";
            cmd.aggregate_id = names[w];
            cmd.name = "TopUp";
            cmd.payload.len = wallet__top_up__pack(&t, payload);
            cmd.payload.data = payload;
            req.body_case = CQRS__REQUEST__BODY_COMMAND;
            req.command = &cmd;
        }
        uint64_t id;
        cr_assert(cqrs_client_send(c, &req, &id) == 0, "send %d: %s", i, strerror(errno));
        if (i == 0)
            first_id = id;
        cr_assert_eq(id, first_id + (uint64_t)i);
    }

    uint64_t last_id[MIX_WALLETS] = { 0 };
    for (int n = 0; n < MIX_REQUESTS; n++) {
        Cqrs__Reply *r = NULL;
        cr_assert(cqrs_client_recv_any(c, &r) == 0, "after %d of %d replies: %s", n, MIX_REQUESTS,
                  strerror(errno));
        cr_assert(r->id >= first_id && r->id < first_id + MIX_REQUESTS,
                  "a reply for id %llu, never sent", (unsigned long long)r->id);
        int i = (int)(r->id - first_id);
        struct mix_req *m = &reqs[i];
        cr_assert(!m->answered, "request %d answered twice", i);
        m->answered = 1;
        cr_assert(r->id > last_id[m->wallet],
                  "wallet %s: reply to id %llu after the one to id %llu (not in request order)",
                  names[m->wallet], (unsigned long long)r->id,
                  (unsigned long long)last_id[m->wallet]);
        last_id[m->wallet] = r->id;
        cr_assert_eq(r->status, CQRS__STATUS__OK, "request %d: %s (%s)", i,
                     cqrs_status_name(r->status), r->error);
        cr_assert_eq(r->version, m->version, "request %d (%s on %s): version %llu, expected %llu",
                     i, m->is_query ? "STATE" : "TopUp", names[m->wallet],
                     (unsigned long long)r->version, (unsigned long long)m->version);
        if (m->is_query) {
            Wallet__WalletState *s = wallet__wallet_state__unpack(NULL, r->state.len, r->state.data);
            cr_assert(s, "STATE does not decode");
            cr_assert_eq(s->balance, m->balance_after, "request %d: STATE %s balance %lld, expected %lld",
                         i, names[m->wallet], (long long)s->balance, (long long)m->balance_after);
            wallet__wallet_state__free_unpacked(s, NULL);
        } else {
            cr_assert_eq(r->n_events, 1);
            const Cqrs__EventRecord *e = r->events[0];
            Wallet__WalletToppedUp *t = wallet__wallet_topped_up__unpack(NULL, e->data.len, e->data.data);
            cr_assert(t, "WalletToppedUp does not decode");
            cr_assert_eq(t->to, m->balance_after, "request %d: %s topped up to %lld, expected %lld",
                         i, names[m->wallet], (long long)t->to, (long long)m->balance_after);
            wallet__wallet_topped_up__free_unpacked(t, NULL);
        }
        cqrs__reply__free_unpacked(r, NULL);
    }
    for (int i = 0; i < MIX_REQUESTS; i++)
        cr_assert(reqs[i].answered, "request %d never answered", i);
    for (int w = 0; w < MIX_WALLETS; w++)
        check_wallet(c, names[w], balance[w], version[w]);
    cqrs_client_free(c);
    finish();
}

/* --- a client that half-closes after its last request ------------------------ */

#define HALF_CLOSE_REQUESTS 100

Test(pipeline, half_closed_connection_still_gets_its_replies)
{
    /* A client that pipelines its requests and then shuts down its writing
     * side (as `nc -N` or any "send all, then read" client does) has said
     * "no more requests", not "I am gone": every command it sent is applied,
     * so every one must be answered before the daemon closes. */
    struct cqrs_client *c = daemon_connect(&d);
    recv_timeout(c, 10);
    Wallet__TopUp t = WALLET__TOP_UP__INIT;
    t.amount = 1;
    uint8_t payload[16];
    Cqrs__Command cmd = CQRS__COMMAND__INIT;
    cmd.aggregate_type = "wallet";
    cmd.aggregate_id = "hc";
    cmd.name = "TopUp";
    cmd.payload.len = wallet__top_up__pack(&t, payload);
    cmd.payload.data = payload;
    Cqrs__Request req = CQRS__REQUEST__INIT;
    req.body_case = CQRS__REQUEST__BODY_COMMAND;
    req.command = &cmd;
    uint64_t first_id = 0;
    for (int i = 0; i < HALF_CLOSE_REQUESTS; i++) {
        uint64_t id;
        cr_assert(cqrs_client_send(c, &req, &id) == 0, "send %d: %s", i, strerror(errno));
        if (i == 0)
            first_id = id;
    }
    cr_assert(shutdown(cqrs_client_fd(c), SHUT_WR) == 0, "shutdown: %s", strerror(errno));

    unsigned char answered[HALF_CLOSE_REQUESTS] = { 0 };
    int got = 0;
    for (; got < HALF_CLOSE_REQUESTS; got++) {
        Cqrs__Reply *r = NULL;
        if (cqrs_client_recv_any(c, &r) < 0)
            break;
        cr_assert(r->id >= first_id && r->id < first_id + HALF_CLOSE_REQUESTS,
                  "a reply for id %llu, never sent", (unsigned long long)r->id);
        cr_assert(!answered[r->id - first_id], "id %llu answered twice", (unsigned long long)r->id);
        answered[r->id - first_id] = 1;
        cr_assert_eq(r->status, CQRS__STATUS__OK, "id %llu: %s (%s)", (unsigned long long)r->id,
                     cqrs_status_name(r->status), r->error);
        cqrs__reply__free_unpacked(r, NULL);
    }
    int e = errno;
    cqrs_client_free(c);

    /* how many were applied, answered or not */
    c = daemon_connect(&d);
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_state(c, "wallet", "hc", &r) == 0, "STATE: no reply");
    uint64_t applied = r->status == CQRS__STATUS__OK ? r->version : 0;
    cqrs__reply__free_unpacked(r, NULL);
    cqrs_client_free(c);
    cr_assert_eq(got, HALF_CLOSE_REQUESTS,
                 "after the client shut down its writing side, %d of %d requests were answered "
                 "(then: %s), and %llu were applied",
                 got, HALF_CLOSE_REQUESTS, strerror(e), (unsigned long long)applied);
    cr_assert_eq(applied, HALF_CLOSE_REQUESTS);
    finish();
}

/* --- queued requests ------------------------------------------------------ */

/* cqrs_client_queue keeps requests for one write: none reaches cqrsd before
 * the flush (no reply is ready however long we wait), then all are answered
 * once, in order; cqrs_client_recv_ready hands over the replies already
 * there without blocking, and a receive writes what is queued by itself. */
Test(pipeline, queued_requests_go_out_at_the_flush_and_replies_are_taken_as_ready)
{
    struct cqrs_client *c = daemon_connect(&d);
    recv_timeout(c, 10);
    struct topup_request tr;
    topup_request_init(&tr, "queued", 1);
    Cqrs__Request *req = &tr.req;

    enum { N = 200 };
    uint64_t first = 0, id;
    for (int i = 0; i < N; i++) {
        cr_assert_eq(cqrs_client_queue(c, req, &id), 0, "queue: %s", strerror(errno));
        if (i == 0)
            first = id;
        cr_assert_eq(id, first + (uint64_t)i, "ids are not consecutive");
    }
    harness_sleep_ms(300);
    Cqrs__Reply *r;
    cr_assert_eq(cqrs_client_recv_ready(c, &r), 0, "a reply before the queued requests were sent");

    cr_assert_eq(cqrs_client_flush(c), 0, "flush: %s", strerror(errno));
    uint64_t got = 0;
    while (got < N) {
        int k = cqrs_client_recv_ready(c, &r);
        cr_assert_geq(k, 0, "recv_ready: %s", strerror(errno));
        if (k == 0)
            cr_assert_eq(cqrs_client_recv_any(c, &r), 0, "recv_any: %s", strerror(errno));
        cr_assert_eq(r->status, CQRS__STATUS__OK, "%s", r->error);
        cr_assert_eq(r->id, first + got, "reply %llu out of order", (unsigned long long)r->id);
        cr_assert_eq(r->version, got + 1);
        cqrs__reply__free_unpacked(r, NULL);
        got++;
    }
    cr_assert_eq(cqrs_client_recv_ready(c, &r), 0, "a reply more than the requests");

    /* queued, not flushed: the receive itself writes it */
    cr_assert_eq(cqrs_client_queue(c, req, &id), 0);
    cr_assert_eq(cqrs_client_recv(c, id, &r), 0, "recv of a queued request: %s", strerror(errno));
    cr_assert_eq(r->version, N + 1);
    cqrs__reply__free_unpacked(r, NULL);
    check_wallet(c, "queued", N + 1, N + 1);
    cqrs_client_free(c);
}
