/*
 * test_readmodel_crash — the read model under SIGKILL: the projector (and
 * sometimes the wallet worker) killed at random moments while clients work,
 * and nothing is missed or applied twice.
 *
 *   - a random workload (TopUp, AuthorizeFunds, CaptureFunds, ReleaseFunds,
 *     RenameWallet) of thousands of commands over hundreds of wallets, from
 *     two connections retrying UNAVAILABLE, while a killer thread SIGKILLs
 *     the projector every 50–300 ms and the wallet worker now and then;
 *     afterwards every GetWallet row equals the aggregate's STATE (label,
 *     balance, available = balance − blocked, blocked_count, version),
 *     ListWallets over all pages holds exactly the wallets that exist,
 *     TotalBalance is the sum of the STATE balances, and the read model's
 *     position is the type's head;
 *   - a subscriber that resumes from its last position + 1 whenever its
 *     stream ends (the projector killed many times) sees every position from
 *     1 to the end in order, each the event ALL_EVENTS has there;
 *   - queries waiting in the projector when it is killed twice are not taken
 *     for poison: the same query is answered afterwards.
 *
 * Sleeps only pace the killer; every wait for an outcome is a poll with a
 * deadline, or a query that waits in the daemon.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "wallet.pb-c.h"

/* Restarts are the point here: the default intensity (5 in 10 s) would
 * stop cqrsd. fsync = batch keeps thousands of commands quick; a SIGKILL
 * loses nothing written either way. */
#define CRASH_CONF                                                                      \
    "[supervisor]\nintensity = 1000\nperiod = 10\n"                                     \
    "[storage]\nfsync = batch\n"                                                        \
    "[child wallet]\n[child account]\n[child readmodel]\nkind = projector\n"

static struct daemon d;

static void teardown(void)
{
    daemon_cleanup(&d);
}

/* One suite with one fixture (criterion 2.4.1 leaks with two under --jobs 2). */
TestSuite(readmodel_crash, .fini = teardown, .timeout = 180);

#define OK CQRS__STATUS__OK

static void finish(void)
{
    int st = daemon_stop(&d);
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        daemon_show_log(&d, "cqrsd did not exit 0");
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "cqrsd did not exit 0 on SIGTERM (wait status 0x%x)", st);
}

static void recv_timeout(struct cqrs_client *c, int seconds)
{
    struct timeval tv = { .tv_sec = seconds };
    cr_assert(setsockopt(cqrs_client_fd(c), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0,
              "SO_RCVTIMEO: %s", strerror(errno));
}

static uint32_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (uint32_t)(*s >> 11);
}

/* --- the killer ---------------------------------------------------------------- */

struct killer {
    pthread_t th;
    atomic_int stop;
    int worker_too;              /* sometimes the wallet worker instead */
    uint64_t seed;
    atomic_int projector_kills, worker_kills;
};

static void *killer_main(void *arg)
{
    struct killer *k = arg;
    while (!atomic_load(&k->stop)) {
        harness_sleep_ms(50 + (long)(rnd(&k->seed) % 251));   /* pacing only */
        if (atomic_load(&k->stop))
            break;
        int worker = k->worker_too && rnd(&k->seed) % 5 == 0;
        const char *name = worker ? "wallet" : "readmodel";
        struct child_status cs;
        if (daemon_child_try(&d, name, &cs) < 0 || strcmp(cs.state, "running") != 0 ||
            cs.pid <= 0)
            continue;
        if (kill(cs.pid, SIGKILL) == 0)
            atomic_fetch_add(worker ? &k->worker_kills : &k->projector_kills, 1);
    }
    return NULL;
}

static void killer_start(struct killer *k, int worker_too, uint64_t seed)
{
    memset(k, 0, sizeof *k);
    k->worker_too = worker_too;
    k->seed = seed;
    cr_assert(pthread_create(&k->th, NULL, killer_main, k) == 0, "pthread_create");
}

static void killer_stop(struct killer *k)
{
    atomic_store(&k->stop, 1);
    pthread_join(k->th, NULL);
}

/* --- read model helpers (main thread) ----------------------------------------------- */

static Cqrs__Reply *rm_call(struct cqrs_client *c, const char *name, const ProtobufCMessage *m,
                            uint64_t min_position, int latest, uint32_t timeout_ms)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(len ? len : 1);
    cr_assert(buf);
    protobuf_c_message_pack(m, buf);
    Cqrs__Reply *r = NULL;
    int rc = cqrs_client_read_model(c, "wallet", name, buf, len, min_position, latest,
                                    timeout_ms, &r);
    int e = errno;
    free(buf);
    cr_assert(rc == 0, "READ_MODEL %s: no reply: %s", name, strerror(e));
    return r;
}

/* Polls TotalBalance with latest until the read model answers OK (it may be
 * restarting and catching up); returns that reply. */
static Cqrs__Reply *wait_read_model(struct cqrs_client *c, int ms)
{
    Wallet__TotalBalance q = WALLET__TOTAL_BALANCE__INIT;
    int64_t deadline = harness_ms() + ms;
    Cqrs__Reply *r = NULL;
    int tries = 0;
    for (;;) {
        r = rm_call(c, "TotalBalance", &q.base, 0, 1, 2000);
        tries++;
        if (r->status == OK)
            return r;
        if (harness_ms() > deadline) {
            daemon_show_log(&d, "the read model never answered");
            cr_assert_fail("the read model did not answer within %d ms (%d tries): %s (%s)",
                           ms, tries, cqrs_status_name(r->status), r->error);
        }
        cqrs__reply__free_unpacked(r, NULL);
        harness_sleep_ms(20);
    }
}

/* The head of the wallet type: ALL_EVENTS' Reply.position. */
static uint64_t wallet_head(struct cqrs_client *c)
{
    int64_t deadline = harness_ms() + 30000;
    for (;;) {
        Cqrs__Reply *r = NULL;
        cr_assert(cqrs_client_all_events(c, "wallet", 1, 1, &r) == 0, "ALL_EVENTS: %s",
                  strerror(errno));
        if (r->status == OK) {
            uint64_t head = r->position;
            cqrs__reply__free_unpacked(r, NULL);
            return head;
        }
        cr_assert(harness_ms() < deadline, "ALL_EVENTS never answered: %s (%s)",
                  cqrs_status_name(r->status), r->error);
        cqrs__reply__free_unpacked(r, NULL);
        harness_sleep_ms(20);
    }
}

/* --- the workload ------------------------------------------------------------------- */

#define WALLETS 200
#define COMMANDS 3000            /* at least, and ... */
#define MIN_KILLS 25             /* ... at least this many projector kills meanwhile */
#define MAX_COMMANDS 60000       /* then stop even short of the kills */
#define LOAD_MAX_MS 40000
#define LOADERS 2
#define MAX_TX 8

static atomic_int load_stop;
static atomic_long load_sent;

struct wmodel {                  /* what a loader believes of one of its wallets */
    int64_t balance;
    struct { char tx[16]; int64_t amount; } blocks[MAX_TX];
    int n_blocks;
};

struct loader {
    pthread_t th;
    int index;
    struct cqrs_client *c;
    uint64_t seed;
    struct wmodel w[WALLETS / LOADERS];
    uint64_t max_position;
    long ok, rejected, other, txn;
    char err[512];
};

static void wallet_name(int i, char *buf, size_t len)
{
    snprintf(buf, len, "w%03d", i);
}

/* Sends one command; the reply, or NULL (l->err set) when there is none. */
static Cqrs__Reply *loader_send(struct loader *l, const char *id, const ProtobufCMessage *m)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t buf[256];
    if (len > sizeof buf) {
        harness_fail_once(l->err, sizeof l->err, "a command of %zu bytes", len);
        return NULL;
    }
    protobuf_c_message_pack(m, buf);
    Cqrs__Reply *r = NULL;
    if (cqrs_client_command(l->c, "wallet", id, m->descriptor->short_name, buf, len, NULL, -1,
                            &r) < 0) {
        harness_fail_once(l->err, sizeof l->err, "%s %s: no reply: %s", m->descriptor->short_name, id, strerror(errno));
        return NULL;
    }
    if (r->status == OK) {
        l->ok++;
        if (r->position > l->max_position)
            l->max_position = r->position;
        if (r->n_events && r->position == 0)
            harness_fail_once(l->err, sizeof l->err, "%s %s: OK with %zu events and no position",
                        m->descriptor->short_name, id, r->n_events);
    } else if (r->status == CQRS__STATUS__REJECTED) {
        l->rejected++;
    } else {
        l->other++;       /* UNAVAILABLE past the retries: unknown outcome, fine here */
    }
    return r;
}

static void *loader_main(void *arg)
{
    struct loader *l = arg;
    int per = WALLETS / LOADERS;
    while (!atomic_load(&load_stop) && !l->err[0]) {
        atomic_fetch_add(&load_sent, 1);
        int k = (int)(rnd(&l->seed) % (uint32_t)per);
        struct wmodel *w = &l->w[k];
        char id[16];
        wallet_name(l->index * per + k, id, sizeof id);
        int64_t blocked = 0;
        for (int b = 0; b < w->n_blocks; b++)
            blocked += w->blocks[b].amount;
        uint32_t op = rnd(&l->seed) % 100;
        Cqrs__Reply *r = NULL;
        if (op < 35 || w->balance == 0) {
            Wallet__TopUp m = WALLET__TOP_UP__INIT;
            m.amount = 1 + rnd(&l->seed) % 500;
            if ((r = loader_send(l, id, &m.base)) && r->status == OK)
                w->balance += m.amount;
        } else if (op < 60 && w->n_blocks < MAX_TX && w->balance - blocked > 0) {
            Wallet__AuthorizeFunds m = WALLET__AUTHORIZE_FUNDS__INIT;
            char tx[16];
            snprintf(tx, sizeof tx, "t%ld", l->txn++);
            m.amount = 1 + (int64_t)(rnd(&l->seed) % (uint64_t)(w->balance - blocked));
            m.tx_id = tx;
            if ((r = loader_send(l, id, &m.base)) && r->status == OK) {
                snprintf(w->blocks[w->n_blocks].tx, sizeof w->blocks[0].tx, "%s", tx);
                w->blocks[w->n_blocks++].amount = m.amount;
            }
        } else if (op < 75 && w->n_blocks) {
            int b = (int)(rnd(&l->seed) % (uint32_t)w->n_blocks);
            Wallet__CaptureFunds m = WALLET__CAPTURE_FUNDS__INIT;
            m.amount = 1 + (int64_t)(rnd(&l->seed) % (uint64_t)w->blocks[b].amount);
            m.tx_id = w->blocks[b].tx;
            if ((r = loader_send(l, id, &m.base)) && r->status == OK) {
                w->balance -= m.amount;
                w->blocks[b] = w->blocks[--w->n_blocks];
            }
        } else if (op < 85 && w->n_blocks) {
            int b = (int)(rnd(&l->seed) % (uint32_t)w->n_blocks);
            Wallet__ReleaseFunds m = WALLET__RELEASE_FUNDS__INIT;
            m.tx_id = w->blocks[b].tx;
            if ((r = loader_send(l, id, &m.base)) && r->status == OK)
                w->blocks[b] = w->blocks[--w->n_blocks];
        } else {
            Wallet__RenameWallet m = WALLET__RENAME_WALLET__INIT;
            char name[32];
            snprintf(name, sizeof name, "label-%u", rnd(&l->seed) % 1000);
            m.name = name;
            r = loader_send(l, id, &m.base);
        }
        if (r)
            cqrs__reply__free_unpacked(r, NULL);
    }
    return NULL;
}

struct wstate {
    int exists;
    char label[128];
    int64_t balance, blocked;
    uint32_t n_blocked;
    uint64_t version;
};

static void state_of(struct cqrs_client *c, const char *id, struct wstate *s)
{
    memset(s, 0, sizeof *s);
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_state(c, "wallet", id, &r) == 0, "STATE %s: %s", id, strerror(errno));
    if (r->status == CQRS__STATUS__NOT_FOUND) {
        cqrs__reply__free_unpacked(r, NULL);
        return;
    }
    check_status(r, OK, "STATE");
    Wallet__WalletState *st = wallet__wallet_state__unpack(NULL, r->state.len, r->state.data);
    cr_assert(st, "WalletState of %s does not decode", id);
    s->exists = 1;
    snprintf(s->label, sizeof s->label, "%s", st->label);
    s->balance = st->balance;
    for (size_t i = 0; i < st->n_blocked; i++)
        s->blocked += st->blocked[i]->amount;
    s->n_blocked = (uint32_t)st->n_blocked;
    s->version = r->version;
    wallet__wallet_state__free_unpacked(st, NULL);
    cqrs__reply__free_unpacked(r, NULL);
}

Test(readmodel_crash, random_workload_with_projector_kills)
{
    daemon_start_conf(&d, CRASH_CONF, NULL);
    int64_t t0 = harness_ms();
    static struct loader loaders[LOADERS];
    memset(loaders, 0, sizeof loaders);
    struct killer k;
    killer_start(&k, 1, 0x9e3779b97f4a7c15ULL ^ (uint64_t)t0);
    for (int i = 0; i < LOADERS; i++) {
        loaders[i].index = i;
        loaders[i].seed = 0x1234567ULL * (uint64_t)(i + 1) + (uint64_t)t0;
        loaders[i].c = daemon_connect(&d);
        cqrs_client_set_retries(loaders[i].c, 12);   /* ~8 s: a restart under ASan */
        cr_assert(pthread_create(&loaders[i].th, NULL, loader_main, &loaders[i]) == 0);
    }
    /* enough commands, with enough kills among them (polled, bounded) */
    while (!(atomic_load(&load_sent) >= COMMANDS &&
             atomic_load(&k.projector_kills) >= MIN_KILLS) &&
           atomic_load(&load_sent) < MAX_COMMANDS && harness_ms() - t0 < LOAD_MAX_MS)
        harness_sleep_ms(20);
    atomic_store(&load_stop, 1);
    for (int i = 0; i < LOADERS; i++)
        pthread_join(loaders[i].th, NULL);
    killer_stop(&k);
    int64_t t_load = harness_ms() - t0;
    uint64_t max_position = 0;
    long ok = 0, rejected = 0, other = 0;
    for (int i = 0; i < LOADERS; i++) {
        cqrs_client_free(loaders[i].c);
        cr_assert(!loaders[i].err[0], "loader %d: %s", i, loaders[i].err);
        if (loaders[i].max_position > max_position)
            max_position = loaders[i].max_position;
        ok += loaders[i].ok;
        rejected += loaders[i].rejected;
        other += loaders[i].other;
    }
    long sent = atomic_load(&load_sent);
    cr_log_info("%ld commands in %lld ms: %ld OK, %ld rejected, %ld other; %d projector kills, "
                "%d wallet worker kills; last position %llu", sent, (long long)t_load, ok,
                rejected, other, atomic_load(&k.projector_kills), atomic_load(&k.worker_kills),
                (unsigned long long)max_position);
    cr_assert_geq(sent, COMMANDS);
    cr_assert_geq(atomic_load(&k.projector_kills), 3, "the projector was killed only %d times",
                  atomic_load(&k.projector_kills));
    cr_assert_gt(ok, sent / 2, "only %ld of %ld commands were OK", ok, sent);

    struct cqrs_client *c = daemon_connect(&d);
    Cqrs__Reply *tr = wait_read_model(c, 60000);
    uint64_t head = wallet_head(c);
    cr_assert_geq(head, max_position, "head %llu behind a command's position %llu",
                  (unsigned long long)head, (unsigned long long)max_position);
    cr_assert_eq(tr->position, head, "the read model answered at position %llu, the head is "
                 "%llu", (unsigned long long)tr->position, (unsigned long long)head);
    Wallet__Total *total = wallet__total__unpack(NULL, tr->state.len, tr->state.data);
    cr_assert(total, "Total does not decode");
    int64_t rm_total = total->balance;
    uint64_t rm_wallets = total->wallets;
    wallet__total__free_unpacked(total, NULL);
    cqrs__reply__free_unpacked(tr, NULL);

    /* row for row: GetWallet equals STATE */
    static struct wstate states[WALLETS];
    int64_t sum = 0;
    uint64_t exist = 0;
    int mismatches = 0;
    for (int i = 0; i < WALLETS; i++) {
        char id[16];
        wallet_name(i, id, sizeof id);
        struct wstate *s = &states[i];
        state_of(c, id, s);
        Wallet__GetWallet g = WALLET__GET_WALLET__INIT;
        g.id = id;
        Cqrs__Reply *r = rm_call(c, "GetWallet", &g.base, 0, 1, 10000);
        if (!s->exists) {
            cr_assert_eq(r->status, CQRS__STATUS__NOT_FOUND,
                         "wallet %s has no events but GetWallet says %s", id,
                         cqrs_status_name(r->status));
            cqrs__reply__free_unpacked(r, NULL);
            continue;
        }
        sum += s->balance;
        exist++;
        check_status(r, OK, "GetWallet");
        Wallet__WalletView *v = wallet__wallet_view__unpack(NULL, r->state.len, r->state.data);
        cr_assert(v, "WalletView of %s does not decode", id);
        int same = strcmp(v->id, id) == 0 && strcmp(v->label, s->label) == 0 &&
                   v->balance == s->balance && v->available == s->balance - s->blocked &&
                   v->blocked_count == s->n_blocked && v->version == s->version;
        if (!same && mismatches++ < 10)
            cr_log_error("wallet %s: view {label \"%s\", balance %lld, available %lld, blocked "
                         "%u, version %llu}, state {label \"%s\", balance %lld, available "
                         "%lld, blocked %u, version %llu}", id, v->label, (long long)v->balance,
                         (long long)v->available, v->blocked_count,
                         (unsigned long long)v->version, s->label, (long long)s->balance,
                         (long long)(s->balance - s->blocked), s->n_blocked,
                         (unsigned long long)s->version);
        wallet__wallet_view__free_unpacked(v, NULL);
        cqrs__reply__free_unpacked(r, NULL);
    }
    cr_assert_eq(mismatches, 0, "%d of %llu wallets differ from their aggregate (see above)",
                 mismatches, (unsigned long long)exist);

    /* ListWallets over every page: exactly the wallets that exist */
    char after[32] = "";
    uint64_t listed = 0;
    int next_existing = 0;
    for (int pages = 0;; pages++) {
        cr_assert_lt(pages, 1000);
        Wallet__ListWallets lq = WALLET__LIST_WALLETS__INIT;
        lq.limit = 37;
        lq.after_id = after;
        Cqrs__Reply *r = rm_call(c, "ListWallets", &lq.base, 0, 1, 10000);
        check_status(r, OK, "ListWallets");
        Wallet__WalletList *l = wallet__wallet_list__unpack(NULL, r->state.len, r->state.data);
        cr_assert(l, "WalletList does not decode");
        cqrs__reply__free_unpacked(r, NULL);
        for (size_t i = 0; i < l->n_wallets; i++) {
            while (next_existing < WALLETS && !states[next_existing].exists)
                next_existing++;
            char want[16];
            wallet_name(next_existing, want, sizeof want);
            cr_assert(next_existing < WALLETS, "ListWallets lists %s past the last wallet",
                      l->wallets[i]->id);
            cr_assert_str_eq(l->wallets[i]->id, want, "ListWallets: %s where %s was expected",
                             l->wallets[i]->id, want);
            cr_assert_eq(l->wallets[i]->balance, states[next_existing].balance);
            snprintf(after, sizeof after, "%s", l->wallets[i]->id);
            next_existing++;
            listed++;
        }
        size_t n = l->n_wallets;
        wallet__wallet_list__free_unpacked(l, NULL);
        if (n < 37)
            break;
    }
    cr_assert_eq(listed, exist, "ListWallets listed %llu wallets, %llu exist",
                 (unsigned long long)listed, (unsigned long long)exist);
    cr_assert_eq(rm_wallets, exist, "TotalBalance counts %llu wallets, %llu exist",
                 (unsigned long long)rm_wallets, (unsigned long long)exist);
    cr_assert_eq(rm_total, sum, "TotalBalance %lld, the aggregates' balances sum to %lld",
                 (long long)rm_total, (long long)sum);
    cr_log_info("checked %llu wallets, total %lld, in %lld ms overall",
                (unsigned long long)exist, (long long)sum, (long long)(harness_ms() - t0));
    cqrs_client_free(c);
    finish();
}

/* --- a subscriber through projector kills ---------------------------------------------- */

#define SUB_COMMANDS 1500        /* at least, and ... */
#define SUB_KILLS 20             /* ... at least this many projector kills meanwhile */
#define SUB_MAX 50000            /* positions at most */
#define SUB_MAX_MS 40000
#define SUB_WALLETS 50

struct subscriber {
    pthread_t th;
    struct cqrs_client *c;
    atomic_ullong target;        /* 0 until the commands are done: the head */
    uint64_t last;               /* the last position seen */
    char (*stream)[8];           /* stream of each position seen, [position] */
    uint64_t *version;
    long subscriptions, replies, duplicates, ended_unavailable, ended_other;
    char err[512];
};

static int sub_done(struct subscriber *s)
{
    uint64_t t = atomic_load(&s->target);
    return t && s->last >= t;
}

static void *subscriber_main(void *arg)
{
    struct subscriber *s = arg;
    int64_t deadline = harness_ms() + 150000;
    while (!sub_done(s) && !s->err[0]) {
        if (harness_ms() > deadline) {
            harness_fail_once(s->err, sizeof s->err, "not done by the deadline: at position %llu of %llu",
                     (unsigned long long)s->last, (unsigned long long)atomic_load(&s->target));
            break;
        }
        uint64_t id, from = s->last + 1;
        if (cqrs_client_subscribe_start(s->c, "wallet", from, &id) < 0) {
            harness_fail_once(s->err, sizeof s->err, "SUBSCRIBE from %llu: %s", (unsigned long long)from, strerror(errno));
            break;
        }
        s->subscriptions++;
        uint64_t expect = from;          /* within one subscription: each position once */
        for (;;) {
            Cqrs__Reply *r = NULL;
            if (cqrs_client_recv(s->c, id, &r) < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    if (sub_done(s) || harness_ms() > deadline)
                        break;
                    continue;
                }
                harness_fail_once(s->err, sizeof s->err, "recv: %s", strerror(errno));
                break;
            }
            s->replies++;
            for (size_t i = 0; i < r->n_events; i++) {
                const Cqrs__EventRecord *e = r->events[i];
                if (e->position != expect) {
                    harness_fail_once(s->err, sizeof s->err, "subscription from %llu: position %llu where %llu was due",
                             (unsigned long long)from, (unsigned long long)e->position,
                             (unsigned long long)expect);
                    break;
                }
                expect++;
                if (e->position <= s->last) {
                    s->duplicates++;
                    continue;
                }
                if (e->position != s->last + 1) {
                    harness_fail_once(s->err, sizeof s->err, "position %llu after %llu: a gap", (unsigned long long)e->position,
                             (unsigned long long)s->last);
                    break;
                }
                if (e->position > SUB_MAX) {
                    harness_fail_once(s->err, sizeof s->err, "position %llu: more events than commands",
                             (unsigned long long)e->position);
                    break;
                }
                snprintf(s->stream[e->position], sizeof s->stream[0], "%s", e->stream);
                s->version[e->position] = e->version;
                s->last = e->position;
            }
            int more = r->more, st = r->status;
            cqrs__reply__free_unpacked(r, NULL);
            if (s->err[0])
                break;
            if (!more) {
                if (st == CQRS__STATUS__UNAVAILABLE)
                    s->ended_unavailable++;
                else
                    s->ended_other++;
                if (st != CQRS__STATUS__UNAVAILABLE && st != CQRS__STATUS__BUSY)
                    harness_fail_once(s->err, sizeof s->err, "a subscription ended with %s", cqrs_status_name(st));
                break;
            }
            if (sub_done(s))
                break;
        }
        if (!sub_done(s) && !s->err[0])
            harness_sleep_ms(10);        /* pacing before resuming */
    }
    return NULL;
}

Test(readmodel_crash, subscriber_resumes_through_projector_kills)
{
    daemon_start_conf(&d, CRASH_CONF, NULL);
    int64_t t0 = harness_ms();
    static struct subscriber s;
    static char streams[SUB_MAX + 1][8];
    static uint64_t versions[SUB_MAX + 1];
    memset(&s, 0, sizeof s);
    s.stream = streams;
    s.version = versions;
    s.c = daemon_connect(&d);
    recv_timeout(s.c, 1);
    cr_assert(pthread_create(&s.th, NULL, subscriber_main, &s) == 0);

    struct killer k;
    killer_start(&k, 0, 0xabcdef12345ULL ^ (uint64_t)t0);
    struct cqrs_client *c = daemon_connect(&d);
    cqrs_client_set_retries(c, 12);
    uint64_t last = 0;
    for (int i = 0; i < SUB_MAX; i++) {
        if (i >= SUB_COMMANDS && (atomic_load(&k.projector_kills) >= SUB_KILLS ||
                                  harness_ms() - t0 > SUB_MAX_MS))
            break;
        Wallet__TopUp m = WALLET__TOP_UP__INIT;
        m.amount = 1;
        char id[16];
        snprintf(id, sizeof id, "s%02d", i % SUB_WALLETS);
        Cqrs__Reply *r = send_cmd(c, "wallet", id, &m.base, NULL, -1);
        check_status(r, OK, "TopUp");
        cr_assert_eq(r->position, last + 1, "TopUp %d at position %llu after %llu", i,
                     (unsigned long long)r->position, (unsigned long long)last);
        last = r->position;
        cqrs__reply__free_unpacked(r, NULL);
    }
    killer_stop(&k);
    atomic_store(&s.target, last);
    pthread_join(s.th, NULL);
    cqrs_client_free(s.c);
    cr_log_info("%llu commands, %d projector kills; subscriber: %ld subscriptions, %ld replies, "
                "%ld duplicates skipped, %ld ends UNAVAILABLE, %ld other; %lld ms",
                (unsigned long long)last, atomic_load(&k.projector_kills), s.subscriptions, s.replies, s.duplicates,
                s.ended_unavailable, s.ended_other, (long long)(harness_ms() - t0));
    cr_assert(!s.err[0], "subscriber: %s", s.err);
    cr_assert_eq(s.last, last, "the subscriber reached %llu of %llu",
                 (unsigned long long)s.last, (unsigned long long)last);
    cr_assert_geq(atomic_load(&k.projector_kills), 3, "the projector was killed only %d times",
                  atomic_load(&k.projector_kills));

    /* each position is the event the type has there */
    uint64_t next = 1;
    while (next <= last) {
        Cqrs__Reply *r = NULL;
        cr_assert(cqrs_client_all_events(c, "wallet", next, 0, &r) == 0);
        check_status(r, OK, "ALL_EVENTS");
        cr_assert(r->n_events > 0, "ALL_EVENTS from %llu: nothing", (unsigned long long)next);
        for (size_t i = 0; i < r->n_events && next <= last; i++, next++) {
            const Cqrs__EventRecord *e = r->events[i];
            cr_assert_eq(e->position, next);
            cr_assert_str_eq(streams[next], e->stream, "position %llu: the subscriber saw %s, "
                             "ALL_EVENTS has %s", (unsigned long long)next, streams[next],
                             e->stream);
            cr_assert_eq(versions[next], e->version, "position %llu: version %llu vs %llu",
                         (unsigned long long)next, (unsigned long long)versions[next],
                         (unsigned long long)e->version);
        }
        cqrs__reply__free_unpacked(r, NULL);
    }
    cqrs_client_free(c);
    finish();
}

/* --- queries waiting when the projector dies ---------------------------------------- */

Test(readmodel_crash, queries_waiting_at_two_projector_crashes_are_not_poison)
{
    daemon_start_conf(&d, CRASH_CONF, NULL);
    struct cqrs_client *c = daemon_connect(&d);
    recv_timeout(c, 30);
    Wallet__TopUp t = WALLET__TOP_UP__INIT;
    t.amount = 5;
    Cqrs__Reply *r = send_cmd(c, "wallet", "w1", &t.base, NULL, -1);
    check_status(r, OK, "TopUp");
    cqrs__reply__free_unpacked(r, NULL);

    Wallet__GetWallet g = WALLET__GET_WALLET__INIT;
    g.id = "w1";
    size_t len = wallet__get_wallet__get_packed_size(&g);
    uint8_t buf[64];
    wallet__get_wallet__pack(&g, buf);
    for (int crash = 0; crash < 2; crash++) {
        /* a GetWallet w1 waiting for a position far ahead */
        Cqrs__Request req = CQRS__REQUEST__INIT;
        Cqrs__Query q = CQRS__QUERY__INIT;
        q.aggregate_type = "wallet";
        q.kind = CQRS__QUERY__KIND__READ_MODEL;
        q.name = "GetWallet";
        q.payload.data = buf;
        q.payload.len = len;
        q.min_position = 1000000;
        q.timeout_ms = 30000;
        req.body_case = CQRS__REQUEST__BODY_QUERY;
        req.query = &q;
        uint64_t waiting;
        cr_assert(cqrs_client_send(c, &req, &waiting) == 0);
        /* a query sent after it on the same connection is answered after the
         * projector has it: then it is surely waiting there */
        Wallet__TotalBalance tb = WALLET__TOTAL_BALANCE__INIT;
        r = rm_call(c, "TotalBalance", &tb.base, 0, 1, 10000);
        check_status(r, OK, "TotalBalance");
        cqrs__reply__free_unpacked(r, NULL);

        pid_t pid = daemon_child_pid(&d, "readmodel");
        cr_assert(kill(pid, SIGKILL) == 0);
        r = NULL;
        cr_assert(cqrs_client_recv(c, waiting, &r) == 0, "the waiting query got no answer: %s",
                  strerror(errno));
        check_status(r, CQRS__STATUS__UNAVAILABLE, "a query waiting when the projector died");
        cqrs__reply__free_unpacked(r, NULL);
        daemon_wait_new_pid(&d, "readmodel", pid, 20000);
    }
    /* the same query, now answerable: answered, not refused as poison */
    r = rm_call(c, "GetWallet", &g.base, 0, 1, 10000);
    check_status(r, OK, "GetWallet w1 after two projector crashes with it waiting");
    cqrs__reply__free_unpacked(r, NULL);
    r = rm_call(c, "GetWallet", &g.base, 1000000, 0, 100);
    cr_assert_eq(r->status, CQRS__STATUS__UNAVAILABLE, "GetWallet w1 min_position 1e6: %s (%s)",
                 cqrs_status_name(r->status), r->error);
    cqrs__reply__free_unpacked(r, NULL);
    cqrs_client_free(c);
    finish();
}

/* --- a rebuild killed midway ------------------------------------------------------------ */

/* Every wallet row (ListWallets, all pages), as text (caller frees). */
static char *dump_wallets(struct cqrs_client *c)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cr_assert(f);
    char after[32] = "";
    for (int pages = 0;; pages++) {
        cr_assert_lt(pages, 1000);
        Wallet__ListWallets lq = WALLET__LIST_WALLETS__INIT;
        lq.limit = 1000;
        lq.after_id = after;
        Cqrs__Reply *r = rm_call(c, "ListWallets", &lq.base, 0, 1, 30000);
        check_status(r, OK, "ListWallets");
        Wallet__WalletList *l = wallet__wallet_list__unpack(NULL, r->state.len, r->state.data);
        cr_assert(l);
        cqrs__reply__free_unpacked(r, NULL);
        for (size_t i = 0; i < l->n_wallets; i++) {
            const Wallet__WalletView *v = l->wallets[i];
            fprintf(f, "%s|%s|%lld|%lld|%u|%llu\n", v->id, v->label, (long long)v->balance,
                    (long long)v->available, v->blocked_count, (unsigned long long)v->version);
            snprintf(after, sizeof after, "%s", v->id);
        }
        size_t n = l->n_wallets;
        wallet__wallet_list__free_unpacked(l, NULL);
        if (n < 1000)
            break;
    }
    fclose(f);
    return buf;
}

/* 8,000 events over 300 wallets (a rebuild takes a while); returns the rows. */
static char *rebuild_history(struct cqrs_client *c, uint64_t *seed)
{
    for (int i = 0; i < 8000; i++) {
        char id[16];
        snprintf(id, sizeof id, "r%03u", rnd(seed) % 300);
        Cqrs__Reply *r;
        if (i % 4 == 3) {
            Wallet__RenameWallet m = WALLET__RENAME_WALLET__INIT;
            char name[16];
            snprintf(name, sizeof name, "n%d", i);
            m.name = name;
            r = send_cmd(c, "wallet", id, &m.base, NULL, -1);
        } else {
            Wallet__TopUp m = WALLET__TOP_UP__INIT;
            m.amount = 1 + i % 13;
            r = send_cmd(c, "wallet", id, &m.base, NULL, -1);
        }
        check_status(r, OK, "a command");
        cqrs__reply__free_unpacked(r, NULL);
    }
    return dump_wallets(c);
}

/* Sends REBUILD, SIGKILLs the projector up to `delay_ms` later, and returns
 * the answer's status once the projector runs again. */
static Cqrs__Status rebuild_and_kill(struct cqrs_client *c, long delay_ms)
{
    Cqrs__Request req = CQRS__REQUEST__INIT;
    Cqrs__Control ctl = CQRS__CONTROL__INIT;
    ctl.op = CQRS__CONTROL__OP__REBUILD;
    ctl.child = "";
    req.body_case = CQRS__REQUEST__BODY_CONTROL;
    req.control = &ctl;
    uint64_t id;
    pid_t pid = daemon_child_pid(&d, "readmodel");
    cr_assert(cqrs_client_send(c, &req, &id) == 0);
    harness_sleep_ms(delay_ms);   /* the kill lands anywhere in the rebuild */
    kill(pid, SIGKILL);
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_recv(c, id, &r) == 0, "REBUILD: no answer: %s", strerror(errno));
    Cqrs__Status st = r->status;
    if (st != OK && st != CQRS__STATUS__UNAVAILABLE)
        cr_log_error("REBUILD killed midway: %s (%s)", cqrs_status_name(st), r->error);
    cqrs__reply__free_unpacked(r, NULL);
    daemon_wait_new_pid(&d, "readmodel", pid, 20000);
    return st;
}

/* A kill with nothing in flight: the crash before no longer counts twice
 * against what was in flight then (see the next test). */
static void kill_idle_projector(void)
{
    pid_t pid = daemon_child_pid(&d, "readmodel");
    cr_assert(kill(pid, SIGKILL) == 0);
    daemon_wait_new_pid(&d, "readmodel", pid, 20000);
}

Test(readmodel_crash, rebuild_killed_midway_ends_with_the_same_rows)
{
    daemon_start_conf(&d, CRASH_CONF, NULL);
    struct cqrs_client *c = daemon_connect(&d);
    recv_timeout(c, 60);
    uint64_t seed = 42;
    char *before = rebuild_history(c, &seed);
    int interrupted = 0;
    for (int round = 0; round < 4; round++) {
        Cqrs__Status st = rebuild_and_kill(c, (long)(rnd(&seed) % 80));
        cr_assert(st == OK || st == CQRS__STATUS__UNAVAILABLE, "round %d: REBUILD answered %s",
                  round, cqrs_status_name(st));
        interrupted += st != OK;
        char *now = dump_wallets(c);
        cr_assert_str_eq(now, before, "round %d: the rows after a killed rebuild differ", round);
        free(now);
        kill_idle_projector();
    }
    cr_log_info("rebuilds interrupted: %d of 4", interrupted);
    /* and a rebuild left alone says how many events it applied */
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_control(c, CQRS__CONTROL__OP__REBUILD, "", &r) == 0);
    check_status(r, OK, "REBUILD");
    cr_assert_eq(r->version, 8000, "REBUILD applied %llu events", (unsigned long long)r->version);
    cqrs__reply__free_unpacked(r, NULL);
    char *now = dump_wallets(c);
    cr_assert_str_eq(now, before, "the rows after a full rebuild differ");
    free(now);
    free(before);
    cqrs_client_free(c);
    finish();
}

Test(readmodel_crash, rebuild_killed_twice_can_run_again)
{
    /* An operator's REBUILD interrupted by two projector crashes in a row
     * (the crashes are not the rebuild's doing) can be asked for again. */
    daemon_start_conf(&d, CRASH_CONF, NULL);
    struct cqrs_client *c = daemon_connect(&d);
    recv_timeout(c, 60);
    uint64_t seed = 7;
    char *before = rebuild_history(c, &seed);
    int unavailable = 0;
    for (int round = 0; round < 2; round++)
        unavailable += rebuild_and_kill(c, 0) == CQRS__STATUS__UNAVAILABLE;
    cr_log_info("REBUILD in flight at %d of 2 crashes", unavailable);
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_control(c, CQRS__CONTROL__OP__REBUILD, "", &r) == 0);
    check_status(r, OK, "REBUILD after two projector crashes during rebuilds");
    cr_assert_eq(r->version, 8000, "REBUILD applied %llu events", (unsigned long long)r->version);
    cqrs__reply__free_unpacked(r, NULL);
    char *now = dump_wallets(c);
    cr_assert_str_eq(now, before, "the rows after the rebuild differ");
    free(now);
    free(before);
    cqrs_client_free(c);
    finish();
}
