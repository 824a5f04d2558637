/*
 * test_inflight — what happens to requests when a worker dies under them.
 *
 *   - load: 4 connections (threads) pipeline TopUp(1) commands with unique
 *     command ids to one wallet (64 in flight each) while another thread
 *     SIGKILLs the wallet worker twice. Every reply is collected; every
 *     non-OK one is retried with the same command id by the blocking client
 *     call until OK. Afterwards the wallet's balance and version equal the
 *     number of distinct commands exactly, each command owns exactly one
 *     version, and the log file holds versions 1..N contiguously. At least
 *     one reply must have been UNAVAILABLE with the exit reason (otherwise
 *     the test proved nothing: another round is run, bounded);
 *   - poison: a command in flight at two consecutive crashes of its worker
 *     is refused REJECTED the third time; the daemon, the worker and other
 *     commands go on; with and without a command id (same content);
 *   - a request that arrives while the worker restarts is held and
 *     delivered: OK, not UNAVAILABLE;
 *   - a graceful restart (RESTART, what `cqrsctl restart` sends) under
 *     pipelined load: the worker answers what it has, the rest waits for
 *     its successor; every request is answered OK;
 *   - cqrs_client_command retries UNAVAILABLE with a command id it made up:
 *     the command takes effect exactly once.
 *
 * Retries during the load happen while the connections pause: every
 * thread that sees a kill's effect stops sending, collects what it has in
 * flight and retries its failures before anyone sends again. A stream
 * remembers its last 1,000 command ids (README, idempotency): a command
 * that was applied but not acknowledged when the worker died, retried
 * thousands of commands later, would legitimately be applied again. The
 * pause keeps every retry within a few hundred commands of its original.
 *
 * Threads report failures in their structs; only the main thread asserts.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "evlog.h"
#include "harness.h"
#include "wallet.pb-c.h"

#define RESTART_MS 10000

static struct daemon d;

static void teardown(void)
{
    daemon_cleanup(&d);
}

/* One suite with one fixture (criterion 2.4.1 + ASan, see test_cqrsctl.c). */
TestSuite(inflight, .fini = teardown, .timeout = 240);

static void recv_timeout(struct cqrs_client *c, int seconds)
{
    struct timeval tv = { .tv_sec = seconds };
    cr_assert(setsockopt(cqrs_client_fd(c), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0,
              "SO_RCVTIMEO: %s", strerror(errno));
}

static void finish(void)
{
    int st = daemon_stop(&d);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "cqrsd did not exit 0 on SIGTERM (wait status 0x%x)", st);
}

/* A TopUp request for `wallet` (payload in `buf`); pointers stay valid as
 * long as the struct lives. */
struct topup_req {
    Wallet__TopUp t;
    uint8_t payload[16];
    Cqrs__Command cmd;
    Cqrs__Request req;
};

static void topup_req_init(struct topup_req *q, const char *wallet, int64_t amount,
                           const char *command_id)
{
    q->t = (Wallet__TopUp)WALLET__TOP_UP__INIT;
    q->t.amount = amount;
    q->cmd = (Cqrs__Command)CQRS__COMMAND__INIT;
    q->cmd.aggregate_type = "wallet";
    q->cmd.aggregate_id = (char *)wallet;
    q->cmd.name = "TopUp";
    q->cmd.payload.len = wallet__top_up__pack(&q->t, q->payload);
    q->cmd.payload.data = q->payload;
    if (command_id)
        q->cmd.command_id = (char *)command_id;
    q->req = (Cqrs__Request)CQRS__REQUEST__INIT;
    q->req.body_case = CQRS__REQUEST__BODY_COMMAND;
    q->req.command = &q->cmd;
}

static void wallet_state(struct cqrs_client *c, const char *id, int64_t *balance,
                         uint64_t *version)
{
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_state(c, "wallet", id, &r) == 0, "STATE %s: %s", id, strerror(errno));
    cr_assert_eq(r->status, CQRS__STATUS__OK, "STATE %s: %s (%s)", id,
                 cqrs_status_name(r->status), r->error);
    Wallet__WalletState *s = wallet__wallet_state__unpack(NULL, r->state.len, r->state.data);
    cr_assert(s, "STATE %s does not decode", id);
    *balance = s->balance;
    *version = r->version;
    wallet__wallet_state__free_unpacked(s, NULL);
    cqrs__reply__free_unpacked(r, NULL);
}

/* --- load with kills ----------------------------------------------------------- */

#define CONNS 4
#define PER_CONN 3000
#define DEPTH 64
#define ROUND (CONNS * PER_CONN)
#define MAX_ROUNDS 3
#define MAX_KILLS 5         /* the default intensity: 5 restarts in 10 s */
#define LOAD_WALLET "hot"

/* Shared by the threads of one round. */
struct load {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_int paused;          /* stop sending: a kill's effect was seen */
    int active;                 /* threads still in their loop */
    int parked;                 /* threads done with their retries, waiting */
    unsigned gen;               /* pauses lifted so far */
    atomic_long replies;        /* pipelined replies so far (for the killer) */
    atomic_int finished;        /* every connection thread is done */
};

struct conn {
    struct load *load;
    struct cqrs_client *c;
    int round, index;
    uint64_t version[PER_CONN];      /* the version that acknowledged each command */
    int64_t *slot_of_id;             /* request id → command index (-1: none) */
    size_t n_slots;
    long unavailable;                /* first answers UNAVAILABLE */
    long unavailable_with_reason;    /* ... naming the exit ("killed by signal 9") */
    long retries;                    /* blocking calls made to get them OK */
    long applied_before;             /* ... answered with an event older than the failure:
                                        applied, not acknowledged, found by its id */
    int64_t failed_at_us[PER_CONN];  /* when its first answer was not OK */
    char example[256];               /* one UNAVAILABLE error, for the report */
    char err[512];
};

static void conn_command_id(const struct conn *k, long i, char *buf, size_t len)
{
    snprintf(buf, len, "r%d-c%d-%ld", k->round, k->index, i);
}

static int conn_map(struct conn *k, uint64_t id, long i)
{
    if (id >= k->n_slots) {
        size_t n = k->n_slots ? k->n_slots : 4096;
        while (n <= id)
            n *= 2;
        int64_t *s = realloc(k->slot_of_id, n * sizeof *s);
        if (!s)
            return -1;
        for (size_t j = k->n_slots; j < n; j++)
            s[j] = -1;
        k->slot_of_id = s;
        k->n_slots = n;
    }
    k->slot_of_id[id] = i;
    return 0;
}

/* Blocking retry of command `i` with its command id until OK (bounded). */
static int conn_retry(struct conn *k, long i)
{
    char cid[64];
    conn_command_id(k, i, cid, sizeof cid);
    Wallet__TopUp t = WALLET__TOP_UP__INIT;
    t.amount = 1;
    uint8_t payload[16];
    size_t len = wallet__top_up__pack(&t, payload);
    for (int attempt = 0; attempt < 200; attempt++) {
        Cqrs__Reply *r = NULL;
        k->retries++;
        if (cqrs_client_command(k->c, "wallet", LOAD_WALLET, "TopUp", payload, len, cid, -1,
                                &r) < 0) {
            harness_fail_once(k->err, sizeof k->err, "retry of %s: no reply: %s", cid, strerror(errno));
            return -1;
        }
        Cqrs__Status st = r->status;
        if (st == CQRS__STATUS__OK) {
            if (r->n_events != 1 || r->events[0]->version != r->version ||
                strcmp(r->events[0]->command_id, cid) != 0) {
                harness_fail_once(k->err, sizeof k->err, "retry of %s: OK with %zu events, not its one event", cid,
                          r->n_events);
                cqrs__reply__free_unpacked(r, NULL);
                return -1;
            }
            k->version[i] = r->version;
            if (r->events[0]->timestamp_us < k->failed_at_us[i])
                k->applied_before++;
            cqrs__reply__free_unpacked(r, NULL);
            return 0;
        }
        if (st != CQRS__STATUS__UNAVAILABLE && st != CQRS__STATUS__BUSY) {
            harness_fail_once(k->err, sizeof k->err, "retry of %s: %s (%s)", cid, cqrs_status_name(st), r->error);
            cqrs__reply__free_unpacked(r, NULL);
            return -1;
        }
        cqrs__reply__free_unpacked(r, NULL);
        harness_sleep_ms(20);
    }
    harness_fail_once(k->err, sizeof k->err, "retry of %s: still not OK after 200 attempts", cid);
    return -1;
}

/* One pipelined reply: OK records its version; anything else is kept in
 * `todo` for a retry (and pauses everyone). */
static int conn_take(struct conn *k, long *todo, long *n_todo)
{
    Cqrs__Reply *r = NULL;
    if (cqrs_client_recv_any(k->c, &r) < 0) {
        harness_fail_once(k->err, sizeof k->err, "recv: %s", strerror(errno));
        return -1;
    }
    atomic_fetch_add(&k->load->replies, 1);
    long i = r->id < k->n_slots ? k->slot_of_id[r->id] : -1;
    if (i < 0) {
        harness_fail_once(k->err, sizeof k->err, "a reply for request id %llu, never sent", (unsigned long long)r->id);
        cqrs__reply__free_unpacked(r, NULL);
        return -1;
    }
    k->slot_of_id[r->id] = -1;
    int rc = 0;
    if (r->status == CQRS__STATUS__OK) {
        char cid[64];
        conn_command_id(k, i, cid, sizeof cid);
        if (r->n_events != 1 || r->events[0]->version != r->version ||
            strcmp(r->events[0]->command_id, cid) != 0) {
            harness_fail_once(k->err, sizeof k->err, "%s: OK with %zu events, not its one event", cid, r->n_events);
            rc = -1;
        } else {
            k->version[i] = r->version;
        }
    } else if (r->status == CQRS__STATUS__UNAVAILABLE || r->status == CQRS__STATUS__BUSY) {
        if (r->status == CQRS__STATUS__UNAVAILABLE) {
            k->unavailable++;
            if (strstr(r->error, "killed by signal 9")) {
                k->unavailable_with_reason++;
                if (!k->example[0])
                    snprintf(k->example, sizeof k->example, "%s", r->error);
            }
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        k->failed_at_us[i] = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
        todo[(*n_todo)++] = i;
        atomic_store(&k->load->paused, 1);
    } else {
        harness_fail_once(k->err, sizeof k->err, "request %ld: %s (%s)", i, cqrs_status_name(r->status), r->error);
        rc = -1;
    }
    cqrs__reply__free_unpacked(r, NULL);
    return rc;
}

/* Lifts the pause (l->mu held). */
static void load_resume(struct load *l)
{
    l->parked = 0;
    l->gen++;
    atomic_store(&l->paused, 0);
    pthread_cond_broadcast(&l->cv);
}

/* Under a pause: collect what is in flight, retry every failure, then wait
 * until every thread did the same. The last to arrive lifts the pause. */
static int conn_pause(struct conn *k, long *outstanding, long *todo, long *n_todo)
{
    while (*outstanding > 0) {
        if (conn_take(k, todo, n_todo) < 0)
            return -1;
        (*outstanding)--;
    }
    for (long j = 0; j < *n_todo; j++)
        if (conn_retry(k, todo[j]) < 0)
            return -1;
    *n_todo = 0;
    struct load *l = k->load;
    pthread_mutex_lock(&l->mu);
    unsigned gen = l->gen;
    if (++l->parked == l->active)
        load_resume(l);
    while (gen == l->gen)
        pthread_cond_wait(&l->cv, &l->mu);
    pthread_mutex_unlock(&l->mu);
    return 0;
}

static void *conn_run(void *arg)
{
    struct conn *k = arg;
    struct load *l = k->load;
    long *todo = malloc((PER_CONN + 1) * sizeof *todo);
    long sent = 0, outstanding = 0, n_todo = 0;
    char cid[64];
    struct topup_req q;
    if (!todo) {
        harness_fail_once(k->err, sizeof k->err, "out of memory");
        goto out;
    }
    while (sent < PER_CONN || outstanding > 0 || n_todo > 0) {
        if (atomic_load(&l->paused) || (sent == PER_CONN && outstanding == 0)) {
            if (conn_pause(k, &outstanding, todo, &n_todo) < 0)
                goto out;
            continue;
        }
        if (sent < PER_CONN && outstanding < DEPTH) {
            conn_command_id(k, sent, cid, sizeof cid);
            topup_req_init(&q, LOAD_WALLET, 1, cid);
            uint64_t id;
            if (cqrs_client_send(k->c, &q.req, &id) < 0) {
                harness_fail_once(k->err, sizeof k->err, "send of command %ld: %s", sent, strerror(errno));
                goto out;
            }
            if (conn_map(k, id, sent) < 0) {
                harness_fail_once(k->err, sizeof k->err, "out of memory");
                goto out;
            }
            sent++;
            outstanding++;
            continue;
        }
        if (conn_take(k, todo, &n_todo) < 0)
            goto out;
        outstanding--;
    }
out:
    free(todo);
    pthread_mutex_lock(&l->mu);
    l->active--;
    if (l->parked > 0 && l->parked == l->active)
        load_resume(l);
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* The killer: SIGKILLs the wallet worker when the round's replies pass
 * each threshold, waiting for it to run again in between. */
struct killer {
    struct load *load;
    long thresholds[2];
    int kills;                  /* to do this round */
    int done;                   /* done this round */
    pid_t pids[2];
    char err[256];
};

static int killer_wait_running(struct killer *kl, pid_t not_pid, pid_t *out)
{
    int64_t deadline = harness_ms() + RESTART_MS;
    struct child_status s;
    while (harness_ms() < deadline) {
        if (daemon_child_try(&d, "wallet", &s) == 0 && strcmp(s.state, "running") == 0 &&
            s.pid > 0 && s.pid != not_pid) {
            *out = s.pid;
            return 0;
        }
        harness_sleep_ms(5);
    }
    snprintf(kl->err, sizeof kl->err, "the wallet worker was not running (again) within %d ms",
             RESTART_MS);
    return -1;
}

static void *killer_run(void *arg)
{
    struct killer *kl = arg;
    pid_t pid;
    if (killer_wait_running(kl, 0, &pid) < 0)
        return NULL;
    for (int i = 0; i < kl->kills; i++) {
        while (atomic_load(&kl->load->replies) < kl->thresholds[i] &&
               !atomic_load(&kl->load->finished))
            harness_sleep_ms(1);
        if (kill(pid, SIGKILL) < 0) {
            snprintf(kl->err, sizeof kl->err, "kill %d: %s", (int)pid, strerror(errno));
            return NULL;
        }
        kl->pids[kl->done++] = pid;
        if (killer_wait_running(kl, pid, &pid) < 0)
            return NULL;
    }
    return NULL;
}

Test(inflight, kills_under_pipelined_load_lose_and_double_nothing)
{
    daemon_start(&d, NULL);
    static struct conn conns[CONNS];
    static uint64_t versions[MAX_ROUNDS][CONNS][PER_CONN];
    long with_reason = 0, unavailable = 0, retries = 0, applied_before = 0;
    int kills = 0, rounds = 0;
    char example[256] = "";
    while (rounds < MAX_ROUNDS && with_reason == 0 && kills < MAX_KILLS) {
        struct load l = { .active = CONNS };
        pthread_mutex_init(&l.mu, NULL);
        pthread_cond_init(&l.cv, NULL);
        struct killer kl = { .load = &l };
        kl.kills = MAX_KILLS - kills < 2 ? MAX_KILLS - kills : 2;
        kl.thresholds[0] = ROUND / 6;
        kl.thresholds[1] = ROUND / 2;
        pthread_t th[CONNS], kth;
        for (int i = 0; i < CONNS; i++) {
            memset(&conns[i], 0, sizeof conns[i]);
            conns[i].load = &l;
            conns[i].round = rounds;
            conns[i].index = i;
            conns[i].c = daemon_connect(&d);
            recv_timeout(conns[i].c, 60);
        }
        cr_assert(pthread_create(&kth, NULL, killer_run, &kl) == 0, "pthread_create");
        for (int i = 0; i < CONNS; i++)
            cr_assert(pthread_create(&th[i], NULL, conn_run, &conns[i]) == 0, "pthread_create");
        for (int i = 0; i < CONNS; i++)
            pthread_join(th[i], NULL);
        atomic_store(&l.finished, 1);
        pthread_join(kth, NULL);
        pthread_mutex_destroy(&l.mu);
        pthread_cond_destroy(&l.cv);
        kills += kl.done;
        rounds++;
        for (int i = 0; i < CONNS; i++)
            if (conns[i].err[0] || kl.err[0]) {
                daemon_show_log(&d, "a connection or the killer failed");
                break;
            }
        cr_assert(!kl.err[0], "killer: %s", kl.err);
        for (int i = 0; i < CONNS; i++) {
            cr_assert(!conns[i].err[0], "round %d, connection %d: %s", rounds, i, conns[i].err);
            unavailable += conns[i].unavailable;
            with_reason += conns[i].unavailable_with_reason;
            retries += conns[i].retries;
            applied_before += conns[i].applied_before;
            if (!example[0] && conns[i].example[0])
                snprintf(example, sizeof example, "%s", conns[i].example);
            memcpy(versions[rounds - 1][i], conns[i].version, sizeof conns[i].version);
            free(conns[i].slot_of_id);
            cqrs_client_free(conns[i].c);
            conns[i].c = NULL;
        }
    }
    long n = (long)rounds * ROUND;
    cr_log_info("%d round(s), %d kills, %ld UNAVAILABLE replies (%ld naming the exit, e.g. "
                "\"%s\"), %ld blocking retries; %ld of the failed commands had been applied "
                "before the crash (their retries were answered from the idempotency window)",
                rounds, kills, unavailable, with_reason, example, retries, applied_before);
    cr_assert(with_reason > 0, "no reply was UNAVAILABLE with the exit reason after %d kills "
              "in %d rounds: the kills never caught a command in flight, the test proved nothing",
              kills, rounds);

    /* every command acknowledged, each by a version of its own */
    unsigned char *seen = calloc((size_t)n + 1, 1);
    cr_assert(seen, "out of memory");
    for (int rd = 0; rd < rounds; rd++) {
        for (int i = 0; i < CONNS; i++) {
            for (int j = 0; j < PER_CONN; j++) {
                uint64_t v = versions[rd][i][j];
                cr_assert(v > (uint64_t)0 && v <= (uint64_t)n,
                          "round %d, connection %d, command %d: version %llu, outside 1..%ld",
                          rd, i, j, (unsigned long long)v, n);
                cr_assert(!seen[v], "version %llu acknowledged to two commands",
                          (unsigned long long)v);
                seen[v] = 1;
            }
        }
    }
    free(seen);

    struct cqrs_client *c = daemon_connect(&d);
    int64_t balance;
    uint64_t version;
    wallet_state(c, LOAD_WALLET, &balance, &version);
    cr_assert_eq(balance, n, "balance %lld after %ld distinct TopUp(1) commands: %s",
                 (long long)balance, n, balance > n ? "some were applied twice" : "some were lost");
    cr_assert_eq(version, (uint64_t)n, "version %llu after %ld commands",
                 (unsigned long long)version, n);
    cqrs_client_free(c);
    daemon_check_topup_chain(&d, LOAD_WALLET, (uint64_t)n);
    finish();
    daemon_check_topup_chain(&d, LOAD_WALLET, (uint64_t)n);
}

/* --- poison commands -------------------------------------------------------------- */

/* Puts `q` in flight in a SIGSTOPped wallet worker, SIGKILLs the worker,
 * expects UNAVAILABLE with the reason, and waits for the next worker. */
static void crash_with(struct topup_req *q, int round)
{
    struct child_status w0 = daemon_child(&d, "wallet");
    cr_assert_str_eq(w0.state, "running");
    cr_assert(kill(w0.pid, SIGSTOP) == 0, "SIGSTOP: %s", strerror(errno));
    struct cqrs_client *c = daemon_connect(&d);
    recv_timeout(c, 20);
    uint64_t id;
    cr_assert(cqrs_client_send(c, &q->req, &id) == 0, "send: %s", strerror(errno));
    harness_sleep_ms(300);   /* cqrsd forwards it to the stopped worker */
    cr_assert(kill(w0.pid, SIGKILL) == 0, "SIGKILL: %s", strerror(errno));
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_recv(c, id, &r) == 0, "crash %d: no reply: %s", round, strerror(errno));
    cr_assert_eq(r->status, CQRS__STATUS__UNAVAILABLE,
                 "crash %d: the command in the killed worker was answered %s (%s)", round,
                 cqrs_status_name(r->status), r->error);
    cr_assert(strstr(r->error, "killed by signal 9"),
              "crash %d: the UNAVAILABLE error does not give the exit: \"%s\"", round, r->error);
    cqrs__reply__free_unpacked(r, NULL);
    cqrs_client_free(c);
    daemon_wait_new_pid(&d, "wallet", w0.pid, RESTART_MS);
}

static void poison_case(const char *command_id)
{
    daemon_start_conf(&d, "[supervisor]\nheartbeat_ms = 0\n\n[child wallet]\n[child account]\n",
                      NULL);
    struct cqrs_client *c = daemon_connect(&d);
    recv_timeout(c, 20);
    struct topup_req warm;
    topup_req_init(&warm, "w1", 5, "warm");
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_call(c, &warm.req, &r) == 0, "TopUp: %s", strerror(errno));
    cr_assert_eq(r->status, CQRS__STATUS__OK, "TopUp: %s", r->error);
    cqrs__reply__free_unpacked(r, NULL);

    struct topup_req poison;
    topup_req_init(&poison, "w1", 7, command_id);
    crash_with(&poison, 1);
    crash_with(&poison, 2);
    pid_t w = daemon_child_pid(&d, "wallet");

    /* the third time it is refused, not delivered */
    cr_assert(cqrs_client_call(c, &poison.req, &r) == 0, "third send: %s", strerror(errno));
    cr_assert_eq(r->status, CQRS__STATUS__REJECTED,
                 "a command in flight at two consecutive crashes was answered %s (%s) the third "
                 "time", cqrs_status_name(r->status), r->error);
    cr_assert(strstr(r->error, "crashed the worker twice"), "error: \"%s\"", r->error);
    cqrs__reply__free_unpacked(r, NULL);

    /* the worker was not crashed again, other commands work */
    struct child_status s = daemon_child(&d, "wallet");
    cr_assert(strcmp(s.state, "running") == 0 && s.pid == w,
              "the wallet worker changed (%s, pid %d → %d)", s.state, (int)w, (int)s.pid);
    struct topup_req other;
    topup_req_init(&other, "w1", 1, "other");
    cr_assert(cqrs_client_call(c, &other.req, &r) == 0, "TopUp: %s", strerror(errno));
    cr_assert_eq(r->status, CQRS__STATUS__OK, "another command after the poison one: %s (%s)",
                 cqrs_status_name(r->status), r->error);
    cr_assert_eq(r->version, 2);
    cqrs__reply__free_unpacked(r, NULL);
    struct topup_req other2;
    topup_req_init(&other2, "w2", 3, NULL);
    cr_assert(cqrs_client_call(c, &other2.req, &r) == 0, "TopUp: %s", strerror(errno));
    cr_assert_eq(r->status, CQRS__STATUS__OK, "TopUp w2: %s (%s)", cqrs_status_name(r->status),
                 r->error);
    cqrs__reply__free_unpacked(r, NULL);

    /* the stream holds no event of the poison command */
    int64_t balance;
    uint64_t version;
    wallet_state(c, "w1", &balance, &version);
    cr_assert_eq(balance, 6, "balance %lld: the poison TopUp(7) was applied", (long long)balance);
    cr_assert_eq(version, 2);
    cr_assert(cqrs_client_events(c, "wallet", "w1", 1, 0, &r) == 0, "EVENTS: %s", strerror(errno));
    cr_assert_eq(r->status, CQRS__STATUS__OK);
    cr_assert_eq(r->n_events, 2, "%zu events", r->n_events);
    cr_assert_str_eq(r->events[0]->command_id, "warm");
    cr_assert_str_eq(r->events[1]->command_id, "other");
    cqrs__reply__free_unpacked(r, NULL);
    cqrs_client_free(c);
    finish();
}

Test(inflight, poison_command_with_an_id_is_rejected_after_two_crashes)
{
    poison_case("poison-1");
}

Test(inflight, poison_command_without_an_id_is_known_by_its_content)
{
    poison_case(NULL);
}

/* --- requests held while a worker restarts ----------------------------------------- */

Test(inflight, a_request_sent_while_the_worker_restarts_is_held_and_delivered)
{
    /* standby = false: a standby worker is adopted (and ready) within the
     * very event that reaps the dead one, which leaves no time to send */
    daemon_start_conf(&d, "[supervisor]\nstandby = false\n\n[child wallet]\n[child account]\n",
                      NULL);
    struct cqrs_client *c = daemon_connect(&d);
    recv_timeout(c, 20);
    struct topup_req q;
    topup_req_init(&q, "w1", 10, "first");
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_call(c, &q.req, &r) == 0, "TopUp: %s", strerror(errno));
    cr_assert_eq(r->status, CQRS__STATUS__OK);
    cqrs__reply__free_unpacked(r, NULL);

    /* Send once cqrsd knows the worker is dead (before that, a request is
     * still sent into the dead worker: UNAVAILABLE is right for it) and
     * while it is not running again: then it must be held. A restart can
     * be over before STATUS shows it, so try a few times. */
    int caught = 0, attempts = 0;
    int64_t want_balance = 10;
    uint64_t want_version = 1;
    while (!caught && attempts < 4) {
        attempts++;
        pid_t old = daemon_child_pid(&d, "wallet");
        struct cqrs_client *fresh = daemon_connect(&d);
        recv_timeout(fresh, 20);
        char cid[32];
        snprintf(cid, sizeof cid, "held-%d", attempts);
        topup_req_init(&q, "w1", 1, cid);
        cr_assert(kill(old, SIGKILL) == 0, "kill: %s", strerror(errno));
        struct child_status s;
        int64_t deadline = harness_ms() + RESTART_MS;
        for (;;) {
            cr_assert(daemon_child_try(&d, "wallet", &s) == 0, "STATUS failed");
            if (s.pid != old || strcmp(s.state, "running") != 0)
                break;
            cr_assert(harness_ms() < deadline, "cqrsd did not notice the worker's death");
        }
        caught = strcmp(s.state, "running") != 0;
        if (caught)
            cr_assert_str_eq(s.state, "restarting", "a permanent child between death and ready "
                             "shows as \"%s\"", s.state);
        uint64_t id;
        cr_assert(cqrs_client_send(fresh, &q.req, &id) == 0, "send: %s", strerror(errno));
        cr_assert(cqrs_client_recv(fresh, id, &r) == 0, "no reply: %s", strerror(errno));
        cr_assert_eq(r->status, CQRS__STATUS__OK,
                     "a TopUp sent while the wallet worker was %s was answered %s (%s): it "
                     "should have been held and delivered", s.state,
                     cqrs_status_name(r->status), r->error);
        want_balance += 1;
        want_version += 1;
        cr_assert_eq(r->version, want_version);
        cqrs__reply__free_unpacked(r, NULL);
        cqrs_client_free(fresh);
        daemon_wait_new_pid(&d, "wallet", old, RESTART_MS);
    }
    cr_log_info("sent while the worker was not running at attempt %d", attempts);
    cr_assert(caught, "in %d attempts, STATUS never showed the wallet between death and "
              "running again: the test could not send while it restarted", attempts);
    int64_t balance;
    uint64_t version;
    wallet_state(c, "w1", &balance, &version);
    cr_assert_eq(balance, want_balance);
    cr_assert_eq(version, want_version);
    cqrs_client_free(c);
    finish();
}

/* --- a graceful restart under load ------------------------------------------------ */

#define GRACEFUL_N 3000

/* `cqrsctl restart` stops the worker with SIGTERM: it answers what it has
 * in hand, and what arrives meanwhile waits for its successor. No request
 * sees the restart. */
Test(inflight, graceful_restart_under_load_answers_every_request)
{
    daemon_start(&d, NULL);
    struct cqrs_client *c = daemon_connect(&d), *ctl = daemon_connect(&d);
    recv_timeout(c, 30);
    recv_timeout(ctl, 30);
    pid_t first = daemon_child_pid(&d, "wallet"), pid = first;
    long sent = 0, got = 0, restarts = 0;
    char cid[32];
    struct topup_req q;
    while (got < GRACEFUL_N) {
        if (sent < GRACEFUL_N && sent - got < DEPTH) {
            snprintf(cid, sizeof cid, "g-%ld", sent);
            topup_req_init(&q, "g", 1, cid);
            uint64_t id;
            cr_assert(cqrs_client_send(c, &q.req, &id) == 0, "send: %s", strerror(errno));
            sent++;
            continue;
        }
        Cqrs__Reply *r = NULL;
        cr_assert(cqrs_client_recv_any(c, &r) == 0, "after %ld replies: %s", got,
                  strerror(errno));
        if (r->status != CQRS__STATUS__OK)
            daemon_show_log(&d, "a request failed during a graceful restart");
        cr_assert_eq(r->status, CQRS__STATUS__OK,
                     "request %llu during a graceful restart: %s (%s)",
                     (unsigned long long)r->id, cqrs_status_name(r->status), r->error);
        cqrs__reply__free_unpacked(r, NULL);
        got++;
        if (got == GRACEFUL_N / 3 || got == 2 * GRACEFUL_N / 3) {
            /* restart with 64 commands in flight */
            cr_assert(cqrs_client_control(ctl, CQRS__CONTROL__OP__RESTART, "wallet", &r) == 0,
                      "RESTART: %s", strerror(errno));
            cr_assert_eq(r->status, CQRS__STATUS__OK, "RESTART: %s (%s)",
                         cqrs_status_name(r->status), r->error);
            cqrs__reply__free_unpacked(r, NULL);
            restarts++;
        }
    }
    pid = daemon_wait_new_pid(&d, "wallet", first, RESTART_MS).pid;
    struct child_status w = daemon_child(&d, "wallet");
    cr_assert_eq(w.restarts, 2, "wallet restarts %u after two graceful restarts", w.restarts);
    cr_assert_str_eq(w.last_exit, "exited with status 0");
    (void)pid;
    int64_t balance;
    uint64_t version;
    wallet_state(c, "g", &balance, &version);
    cr_assert_eq(balance, GRACEFUL_N);
    cr_assert_eq(version, GRACEFUL_N);
    cqrs_client_free(c);
    cqrs_client_free(ctl);
    daemon_check_topup_chain(&d, "g", GRACEFUL_N);
    finish();
}

/* --- the client library's retry --------------------------------------------------- */

struct blocking_call {
    struct cqrs_client *c;
    int rc, err;
    Cqrs__Status status;
    uint64_t version;
    char error[256];
};

static void *blocking_call_run(void *arg)
{
    struct blocking_call *b = arg;
    Wallet__TopUp t = WALLET__TOP_UP__INIT;
    t.amount = 5;
    uint8_t payload[16];
    size_t len = wallet__top_up__pack(&t, payload);
    Cqrs__Reply *r = NULL;
    b->rc = cqrs_client_command(b->c, "wallet", "w1", "TopUp", payload, len, NULL, -1, &r);
    b->err = errno;
    if (b->rc == 0) {
        b->status = r->status;
        b->version = r->version;
        snprintf(b->error, sizeof b->error, "%s", r->error);
        cqrs__reply__free_unpacked(r, NULL);
    }
    return NULL;
}

Test(inflight, client_command_retries_with_a_generated_id_and_applies_once)
{
    daemon_start_conf(&d, "[supervisor]\nheartbeat_ms = 0\n\n[child wallet]\n[child account]\n",
                      NULL);
    struct cqrs_client *c = daemon_connect(&d);
    recv_timeout(c, 20);
    struct topup_req q;
    topup_req_init(&q, "w1", 10, NULL);
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_call(c, &q.req, &r) == 0, "TopUp: %s", strerror(errno));
    cr_assert_eq(r->status, CQRS__STATUS__OK);
    cqrs__reply__free_unpacked(r, NULL);

    pid_t w = daemon_child_pid(&d, "wallet");
    cr_assert(kill(w, SIGSTOP) == 0, "SIGSTOP: %s", strerror(errno));
    struct blocking_call b = { .c = daemon_connect(&d) };
    recv_timeout(b.c, 20);
    pthread_t th;
    cr_assert(pthread_create(&th, NULL, blocking_call_run, &b) == 0, "pthread_create");
    harness_sleep_ms(300);   /* the command is in the stopped worker */
    cr_assert(kill(w, SIGKILL) == 0, "SIGKILL: %s", strerror(errno));
    pthread_join(th, NULL);
    cqrs_client_free(b.c);
    cr_assert(b.rc == 0, "cqrs_client_command: %s", strerror(b.err));
    cr_assert_eq(b.status, CQRS__STATUS__OK,
                 "cqrs_client_command whose first try died with the worker: %s (%s)",
                 cqrs_status_name(b.status), b.error);
    cr_assert_eq(b.version, 2);

    int64_t balance;
    uint64_t version;
    wallet_state(c, "w1", &balance, &version);
    cr_assert_eq(balance, 15, "balance %lld: the TopUp(5) did not take effect exactly once",
                 (long long)balance);
    cr_assert_eq(version, 2);
    cr_assert(cqrs_client_events(c, "wallet", "w1", 2, 0, &r) == 0, "EVENTS: %s",
              strerror(errno));
    cr_assert_eq(r->status, CQRS__STATUS__OK);
    cr_assert_eq(r->n_events, 1);
    cr_assert(strlen(r->events[0]->command_id) > 0,
              "the retried command carries no command id: its retry was not idempotent");
    cqrs__reply__free_unpacked(r, NULL);
    cqrs_client_free(c);
    finish();
}
