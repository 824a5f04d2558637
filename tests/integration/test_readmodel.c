/*
 * test_readmodel — the read model end to end through the real cqrsd, its
 * workers and cqrs-projector, with the client library and cqrsctl:
 *
 *   - READ_MODEL queries (latest) answer the views the commands made:
 *     GetWallet, ListWallets, TotalBalance, FindByEmail, each row equal to
 *     the aggregate's STATE; read-your-writes over hundreds of commands;
 *   - min_position out of reach: UNAVAILABLE after timeout_ms;
 *   - positions: a command's Reply.position is consecutive across the
 *     wallets of one type, types count apart, events carry them;
 *   - ALL_EVENTS pages in position order up to the head;
 *   - SUBSCRIBE: live (commands after the subscription) and late (from
 *     position 1 after the commands): every event once, in order, more set;
 *   - cqrsctl query / subscribe / readmodel rebuild and their exit codes;
 *   - REBUILD, a restart, and a readmodel.db deleted while stopped all give
 *     the same rows again.
 *
 * Every test starts its own cqrsd in a temp dir. Nothing waits by sleeping:
 * a wait is a query that waits in the daemon (latest, min_position) or a
 * poll with a deadline.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "account.pb-c.h"
#include "harness.h"
#include "wallet.pb-c.h"

static struct daemon d;
static struct cqrs_client *c;

static void setup(void)
{
    daemon_start(&d, NULL);
    c = daemon_connect(&d);
}

static void teardown(void)
{
    cqrs_client_free(c);
    c = NULL;
    daemon_cleanup(&d);
}

/* One suite with one fixture (criterion 2.4.1 leaks with two under --jobs 2). */
TestSuite(readmodel, .init = setup, .fini = teardown, .timeout = 90);

#define OK CQRS__STATUS__OK
#define INVALID CQRS__STATUS__INVALID
#define NOT_FOUND CQRS__STATUS__NOT_FOUND
#define UNAVAILABLE CQRS__STATUS__UNAVAILABLE

static void finish(void)
{
    cqrs_client_free(c);
    c = NULL;
    int st = daemon_stop(&d);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "cqrsd did not exit 0 on SIGTERM (wait status 0x%x)", st);
}

static void recv_timeout(struct cqrs_client *cl, int seconds)
{
    struct timeval tv = { .tv_sec = seconds };
    cr_assert(setsockopt(cqrs_client_fd(cl), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0,
              "SO_RCVTIMEO: %s", strerror(errno));
}

/* --- commands ------------------------------------------------------------- */

/* Sends a command that must be OK; returns the reply (caller frees). */
static Cqrs__Reply *ok_cmd(struct cqrs_client *cl, const char *type, const char *id,
                           const ProtobufCMessage *m)
{
    Cqrs__Reply *r = send_cmd(cl, type, id, m, NULL, -1);
    if (r->status != OK)
        cr_assert_fail("%s %s %s: %s (%s)", m->descriptor->short_name, type, id,
                       cqrs_status_name(r->status), r->error);
    return r;
}

/* The command's position (asserted non-zero), reply freed. */
static uint64_t done(Cqrs__Reply *r)
{
    uint64_t p = r->position;
    cr_assert(r->n_events == 0 || p > 0, "a command reply with %zu events has no position",
              r->n_events);
    cqrs__reply__free_unpacked(r, NULL);
    return p;
}

static uint64_t topup(struct cqrs_client *cl, const char *id, int64_t amount)
{
    Wallet__TopUp m = WALLET__TOP_UP__INIT;
    m.amount = amount;
    return done(ok_cmd(cl, "wallet", id, &m.base));
}

static uint64_t rename_w(struct cqrs_client *cl, const char *id, const char *name)
{
    Wallet__RenameWallet m = WALLET__RENAME_WALLET__INIT;
    m.name = (char *)name;
    return done(ok_cmd(cl, "wallet", id, &m.base));
}

static uint64_t authorize(struct cqrs_client *cl, const char *id, int64_t amount, const char *tx)
{
    Wallet__AuthorizeFunds m = WALLET__AUTHORIZE_FUNDS__INIT;
    m.amount = amount;
    m.tx_id = (char *)tx;
    return done(ok_cmd(cl, "wallet", id, &m.base));
}

static uint64_t capture(struct cqrs_client *cl, const char *id, int64_t amount, const char *tx)
{
    Wallet__CaptureFunds m = WALLET__CAPTURE_FUNDS__INIT;
    m.amount = amount;
    m.tx_id = (char *)tx;
    return done(ok_cmd(cl, "wallet", id, &m.base));
}

static uint64_t release(struct cqrs_client *cl, const char *id, const char *tx)
{
    Wallet__ReleaseFunds m = WALLET__RELEASE_FUNDS__INIT;
    m.tx_id = (char *)tx;
    return done(ok_cmd(cl, "wallet", id, &m.base));
}

static uint64_t open_account(struct cqrs_client *cl, const char *id, const char *owner,
                             const char *email)
{
    Account__OpenAccount m = ACCOUNT__OPEN_ACCOUNT__INIT;
    m.owner = (char *)owner;
    m.email = (char *)email;
    return done(ok_cmd(cl, "account", id, &m.base));
}

static uint64_t change_email(struct cqrs_client *cl, const char *id, const char *email)
{
    Account__ChangeEmail m = ACCOUNT__CHANGE_EMAIL__INIT;
    m.email = (char *)email;
    return done(ok_cmd(cl, "account", id, &m.base));
}

static uint64_t close_account(struct cqrs_client *cl, const char *id)
{
    Account__CloseAccount m = ACCOUNT__CLOSE_ACCOUNT__INIT;
    return done(ok_cmd(cl, "account", id, &m.base));
}

/* --- read model queries ----------------------------------------------------- */

static Cqrs__Reply *rm_query(struct cqrs_client *cl, const char *type, const char *name,
                             const ProtobufCMessage *m, uint64_t min_position, int latest,
                             uint32_t timeout_ms)
{
    size_t len = m ? protobuf_c_message_get_packed_size(m) : 0;
    uint8_t *buf = malloc(len ? len : 1);
    cr_assert(buf, "out of memory");
    if (m)
        protobuf_c_message_pack(m, buf);
    Cqrs__Reply *r = NULL;
    int rc = cqrs_client_read_model(cl, type, name, buf, len, min_position, latest, timeout_ms,
                                    &r);
    int e = errno;
    free(buf);
    cr_assert(rc == 0, "READ_MODEL %s %s: no reply: %s", type, name, strerror(e));
    return r;
}

/* GetWallet `id` with latest: the view (caller frees); *position the
 * read model's. */
static Wallet__WalletView *get_wallet(struct cqrs_client *cl, const char *id, uint64_t *position)
{
    Wallet__GetWallet q = WALLET__GET_WALLET__INIT;
    q.id = (char *)id;
    Cqrs__Reply *r = rm_query(cl, "wallet", "GetWallet", &q.base, 0, 1, 0);
    check_status(r, OK, "GetWallet");
    cr_assert_str_eq(r->state_type, "WalletView", "GetWallet answered %s", r->state_type);
    Wallet__WalletView *v = wallet__wallet_view__unpack(NULL, r->state.len, r->state.data);
    cr_assert(v, "GetWallet %s: the answer does not decode as WalletView", id);
    if (position)
        *position = r->position;
    cqrs__reply__free_unpacked(r, NULL);
    return v;
}

static void expect_view(const char *id, const char *label, int64_t balance, int64_t available,
                        uint32_t blocked, uint64_t version)
{
    Wallet__WalletView *v = get_wallet(c, id, NULL);
    Wallet__WalletView got = *v;
    char lab[128];
    snprintf(lab, sizeof lab, "%s", v->label);
    int same_id = strcmp(v->id, id) == 0;
    wallet__wallet_view__free_unpacked(v, NULL);
    cr_assert(same_id, "GetWallet %s answered another id", id);
    cr_assert_str_eq(lab, label, "wallet %s label", id);
    cr_assert_eq(got.balance, balance, "wallet %s: balance %lld, expected %lld", id,
                 (long long)got.balance, (long long)balance);
    cr_assert_eq(got.available, available, "wallet %s: available %lld, expected %lld", id,
                 (long long)got.available, (long long)available);
    cr_assert_eq(got.blocked_count, blocked, "wallet %s: blocked_count %u, expected %u", id,
                 got.blocked_count, blocked);
    cr_assert_eq(got.version, version, "wallet %s: version %llu, expected %llu", id,
                 (unsigned long long)got.version, (unsigned long long)version);
}

/* The view agrees with the aggregate's STATE, row for row. */
static void expect_view_is_state(struct cqrs_client *cl, const char *id)
{
    Cqrs__Reply *s = NULL;
    cr_assert(cqrs_client_state(cl, "wallet", id, &s) == 0, "STATE wallet %s: no reply", id);
    check_status(s, OK, "STATE wallet");
    Wallet__WalletState *st = wallet__wallet_state__unpack(NULL, s->state.len, s->state.data);
    cr_assert(st, "WalletState does not decode");
    int64_t blocked = 0;
    for (size_t i = 0; i < st->n_blocked; i++)
        blocked += st->blocked[i]->amount;
    char label[128];
    snprintf(label, sizeof label, "%s", st->label);
    int64_t balance = st->balance;
    uint32_t nb = (uint32_t)st->n_blocked;
    uint64_t version = s->version;
    wallet__wallet_state__free_unpacked(st, NULL);
    cqrs__reply__free_unpacked(s, NULL);
    expect_view(id, label, balance, balance - blocked, nb, version);
}

static Wallet__WalletList *list_wallets(struct cqrs_client *cl, int64_t min_balance,
                                        uint32_t limit, const char *after)
{
    Wallet__ListWallets q = WALLET__LIST_WALLETS__INIT;
    q.min_balance = min_balance;
    q.limit = limit;
    q.after_id = (char *)(after ? after : "");
    Cqrs__Reply *r = rm_query(cl, "wallet", "ListWallets", &q.base, 0, 1, 0);
    check_status(r, OK, "ListWallets");
    cr_assert_str_eq(r->state_type, "WalletList");
    Wallet__WalletList *l = wallet__wallet_list__unpack(NULL, r->state.len, r->state.data);
    cr_assert(l, "ListWallets: the answer does not decode as WalletList");
    cqrs__reply__free_unpacked(r, NULL);
    return l;
}

/* Every wallet row (all pages of ListWallets, min_balance 0) as text, one
 * line each, in id order (caller frees); *n the number of rows. */
static char *dump_wallets(struct cqrs_client *cl, size_t *n)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cr_assert(f);
    char after[160] = "";
    size_t rows = 0;
    for (int pages = 0;; pages++) {
        cr_assert_lt(pages, 1000, "ListWallets paging does not end");
        Wallet__WalletList *l = list_wallets(cl, 0, 7, after);
        for (size_t i = 0; i < l->n_wallets; i++) {
            const Wallet__WalletView *v = l->wallets[i];
            cr_assert(strcmp(v->id, after) > 0, "ListWallets: %s after %s", v->id, after);
            fprintf(f, "%s|%s|%lld|%lld|%u|%llu\n", v->id, v->label, (long long)v->balance,
                    (long long)v->available, v->blocked_count, (unsigned long long)v->version);
            snprintf(after, sizeof after, "%s", v->id);
            rows++;
        }
        size_t got = l->n_wallets;
        wallet__wallet_list__free_unpacked(l, NULL);
        if (got < 7)
            break;
    }
    fclose(f);
    if (n)
        *n = rows;
    return buf;
}

static void total_balance(struct cqrs_client *cl, int64_t *balance, uint64_t *wallets)
{
    Wallet__TotalBalance q = WALLET__TOTAL_BALANCE__INIT;
    Cqrs__Reply *r = rm_query(cl, "wallet", "TotalBalance", &q.base, 0, 1, 0);
    check_status(r, OK, "TotalBalance");
    cr_assert_str_eq(r->state_type, "Total");
    Wallet__Total *t = wallet__total__unpack(NULL, r->state.len, r->state.data);
    cr_assert(t, "Total does not decode");
    *balance = t->balance;
    *wallets = t->wallets;
    wallet__total__free_unpacked(t, NULL);
    cqrs__reply__free_unpacked(r, NULL);
}

static Cqrs__Reply *find_by_email(const char *email)
{
    Account__FindByEmail q = ACCOUNT__FIND_BY_EMAIL__INIT;
    q.email = (char *)email;
    return rm_query(c, "account", "FindByEmail", &q.base, 0, 1, 0);
}

static void expect_account(const char *email, const char *id, const char *owner, int open,
                           uint64_t version)
{
    Cqrs__Reply *r = find_by_email(email);
    check_status(r, OK, "FindByEmail");
    cr_assert_str_eq(r->state_type, "AccountView");
    Account__AccountView *v = account__account_view__unpack(NULL, r->state.len, r->state.data);
    cr_assert(v, "AccountView does not decode");
    cqrs__reply__free_unpacked(r, NULL);
    cr_assert_str_eq(v->id, id);
    cr_assert_str_eq(v->owner, owner);
    cr_assert_str_eq(v->email, email);
    cr_assert_eq(!!v->open, !!open, "account %s open %d, expected %d", id, (int)v->open, open);
    cr_assert_eq(v->version, version, "account %s version %llu, expected %llu", id,
                 (unsigned long long)v->version, (unsigned long long)version);
    account__account_view__free_unpacked(v, NULL);
}

/* --- the views ----------------------------------------------------------------- */

Test(readmodel, views_follow_the_commands)
{
    topup(c, "w1", 100);
    expect_view("w1", "Main wallet", 100, 100, 0, 1);
    rename_w(c, "w1", "Savings");
    expect_view("w1", "Savings", 100, 100, 0, 2);
    authorize(c, "w1", 30, "tx1");
    authorize(c, "w1", 20, "tx2");
    expect_view("w1", "Savings", 100, 50, 2, 4);
    capture(c, "w1", 10, "tx1");               /* 20 of the 30 released */
    expect_view("w1", "Savings", 90, 70, 1, 5);
    release(c, "w1", "tx2");
    expect_view("w1", "Savings", 90, 90, 0, 6);
    expect_view_is_state(c, "w1");

    topup(c, "w2", 40);
    topup(c, "w3", 60);
    authorize(c, "w3", 60, "all");
    expect_view_is_state(c, "w2");
    expect_view_is_state(c, "w3");

    Wallet__WalletList *l = list_wallets(c, 50, 10, NULL);
    cr_assert_eq(l->n_wallets, 2, "ListWallets min_balance 50: %zu rows", l->n_wallets);
    cr_assert_str_eq(l->wallets[0]->id, "w1");
    cr_assert_str_eq(l->wallets[1]->id, "w3");
    cr_assert_eq(l->wallets[1]->available, 0);
    wallet__wallet_list__free_unpacked(l, NULL);
    l = list_wallets(c, 0, 1, "w1");
    cr_assert_eq(l->n_wallets, 1);
    cr_assert_str_eq(l->wallets[0]->id, "w2");
    wallet__wallet_list__free_unpacked(l, NULL);
    int64_t sum;
    uint64_t n;
    total_balance(c, &sum, &n);
    cr_assert(sum == 190 && n == 3, "TotalBalance %lld over %llu, expected 190 over 3",
              (long long)sum, (unsigned long long)n);

    open_account(c, "acc1", "Ann", "ann@example.com");
    expect_account("ann@example.com", "acc1", "Ann", 1, 1);
    change_email(c, "acc1", "ann@example.org");
    Cqrs__Reply *r = find_by_email("ann@example.com");
    check_status(r, NOT_FOUND, "FindByEmail of the old email");
    cr_assert(r->error[0]);
    cqrs__reply__free_unpacked(r, NULL);
    expect_account("ann@example.org", "acc1", "Ann", 1, 2);
    close_account(c, "acc1");
    expect_account("ann@example.org", "acc1", "Ann", 0, 3);
    finish();
}

Test(readmodel, read_your_writes)
{
    /* a query sent after a command's reply sees it, every time */
    struct cqrs_client *q = daemon_connect(&d);   /* another connection reads */
    int64_t sum = 0;
    for (int i = 1; i <= 300; i++) {
        const char *id = i % 3 ? "ryw" : "other";
        uint64_t pos = topup(c, id, i);
        if (i % 3)
            sum += i;
        uint64_t rpos;
        Wallet__WalletView *v = get_wallet(i % 2 ? c : q, "ryw", &rpos);
        int64_t bal = v->balance;
        wallet__wallet_view__free_unpacked(v, NULL);
        cr_assert_eq(bal, sum, "query %d after its TopUp: balance %lld, expected %lld", i,
                     (long long)bal, (long long)sum);
        cr_assert_geq(rpos, pos, "query %d answered at position %llu, before the command's %llu",
                      i, (unsigned long long)rpos, (unsigned long long)pos);
    }
    cqrs_client_free(q);
    finish();
}

Test(readmodel, min_position_out_of_reach_is_unavailable)
{
    topup(c, "w1", 5);
    Wallet__GetWallet g = WALLET__GET_WALLET__INIT;
    g.id = "w1";
    Cqrs__Reply *r = rm_query(c, "wallet", "GetWallet", &g.base, 1000000000ULL, 0, 200);
    check_status(r, UNAVAILABLE, "GetWallet with min_position 1e9, timeout 200 ms");
    cr_assert(r->error[0], "UNAVAILABLE without a sentence");
    cr_assert_eq(r->state.len, 0, "an UNAVAILABLE answer carries a result");
    cqrs__reply__free_unpacked(r, NULL);

    /* latest raises min_position, never lowers it */
    r = rm_query(c, "wallet", "GetWallet", &g.base, 1000000000ULL, 1, 200);
    check_status(r, UNAVAILABLE, "GetWallet latest with min_position 1e9");
    cqrs__reply__free_unpacked(r, NULL);

    /* the connection is still fine, and a reachable position answers */
    r = rm_query(c, "wallet", "GetWallet", &g.base, 1, 0, 200);
    check_status(r, OK, "GetWallet with min_position 1");
    cr_assert_geq(r->position, 1);
    cqrs__reply__free_unpacked(r, NULL);
    finish();
}

Test(readmodel, bad_queries_through_the_daemon)
{
    topup(c, "w1", 5);
    Wallet__GetWallet g = WALLET__GET_WALLET__INIT;
    g.id = "w1";
    Cqrs__Reply *r = rm_query(c, "wallet", "NoSuchQuery", &g.base, 0, 1, 0);
    check_status(r, INVALID, "an unknown query name");
    cr_assert(r->error[0]);
    cqrs__reply__free_unpacked(r, NULL);
    r = rm_query(c, "nosuchtype", "GetWallet", &g.base, 0, 1, 0);
    check_status(r, INVALID, "an unknown aggregate type");
    cqrs__reply__free_unpacked(r, NULL);

    Cqrs__Reply *rr = NULL;
    cr_assert(cqrs_client_read_model(c, "wallet", "GetWallet", (const uint8_t *)"\xff\xff", 2, 0,
                                     1, 0, &rr) == 0);
    check_status(rr, INVALID, "a payload that does not decode");
    cqrs__reply__free_unpacked(rr, NULL);

    Wallet__ListWallets l = WALLET__LIST_WALLETS__INIT;
    l.limit = 1001;
    r = rm_query(c, "wallet", "ListWallets", &l.base, 0, 1, 0);
    check_status(r, INVALID, "ListWallets limit 1001");
    cqrs__reply__free_unpacked(r, NULL);

    g.id = "nobody";
    r = rm_query(c, "wallet", "GetWallet", &g.base, 0, 1, 0);
    check_status(r, NOT_FOUND, "GetWallet of an unknown id");
    cqrs__reply__free_unpacked(r, NULL);

    /* and the read model still answers */
    expect_view("w1", "Main wallet", 5, 5, 0, 1);
    finish();
}

/* --- positions ----------------------------------------------------------------- */

Test(readmodel, command_positions_are_consecutive_per_type)
{
    const char *ids[] = { "a", "b", "c", "b", "a", "d" };
    uint64_t expect = 0;
    for (int round = 0; round < 5; round++)
        for (size_t i = 0; i < 6; i++) {
            Wallet__TopUp m = WALLET__TOP_UP__INIT;
            m.amount = 1;
            Cqrs__Reply *r = ok_cmd(c, "wallet", ids[i], &m.base);
            expect++;
            cr_assert_eq(r->position, expect, "TopUp %s: position %llu, expected %llu", ids[i],
                         (unsigned long long)r->position, (unsigned long long)expect);
            cr_assert_eq(r->n_events, 1);
            cr_assert_eq(r->events[0]->position, expect, "the event's position %llu",
                         (unsigned long long)r->events[0]->position);
            cr_assert_str_eq(r->events[0]->stream, ids[i], "the event's stream");
            cqrs__reply__free_unpacked(r, NULL);
        }
    /* accounts count their own positions */
    cr_assert_eq(open_account(c, "x", "X", "x@example.com"), 1);
    cr_assert_eq(open_account(c, "y", "Y", "y@example.com"), 2);
    cr_assert_eq(topup(c, "a", 1), expect + 1);
    /* an idempotent retry answers the first outcome, position and all */
    Wallet__TopUp m = WALLET__TOP_UP__INIT;
    m.amount = 7;
    Cqrs__Reply *r1 = send_cmd(c, "wallet", "e", &m.base, "same-id", -1);
    Cqrs__Reply *r2 = send_cmd(c, "wallet", "e", &m.base, "same-id", -1);
    check_status(r1, OK, "TopUp");
    check_status(r2, OK, "TopUp retried");
    cr_assert_eq(r1->position, expect + 2);
    cr_assert_eq(r2->position, r1->position, "a retry answered position %llu, first %llu",
                 (unsigned long long)r2->position, (unsigned long long)r1->position);
    cqrs__reply__free_unpacked(r1, NULL);
    cqrs__reply__free_unpacked(r2, NULL);
    cr_assert_eq(topup(c, "a", 1), expect + 3, "a retry used a position");

    /* EVENTS replies carry the positions too */
    Cqrs__Reply *ev = NULL;
    cr_assert(cqrs_client_events(c, "wallet", "b", 1, 0, &ev) == 0);
    check_status(ev, OK, "EVENTS wallet b");
    cr_assert_eq(ev->n_events, 10);
    for (size_t i = 0; i < ev->n_events; i++) {
        /* b is the 2nd and 4th command of each round of 6 */
        uint64_t want = (i / 2) * 6 + (i % 2 ? 4 : 2);
        cr_assert_eq(ev->events[i]->position, want, "b v%zu at position %llu, expected %llu",
                     i + 1, (unsigned long long)ev->events[i]->position,
                     (unsigned long long)want);
    }
    cqrs__reply__free_unpacked(ev, NULL);
    finish();
}

struct cmd_ack {                 /* what a command's reply said of its event */
    char id[16];
    uint64_t version, position;
};

/* n TopUps over 7 wallets, the first at position `first`; acks[k] (acks
 * being the base array) is filled for position k + 1. */
static void topups(struct cqrs_client *cl, struct cmd_ack *acks, int n, uint64_t first)
{
    for (int i = 0; i < n; i++) {
        Wallet__TopUp m = WALLET__TOP_UP__INIT;
        m.amount = i + 1;
        char id[16];
        snprintf(id, sizeof id, "s%d", i % 7);
        Cqrs__Reply *r = ok_cmd(cl, "wallet", id, &m.base);
        cr_assert_eq(r->position, first + (uint64_t)i, "TopUp %d at position %llu", i,
                     (unsigned long long)r->position);
        struct cmd_ack *a = &acks[r->position - 1];
        snprintf(a->id, sizeof a->id, "%s", id);
        a->version = r->version;
        a->position = r->position;
        cqrs__reply__free_unpacked(r, NULL);
    }
}

static void check_event_ack(const Cqrs__EventRecord *e, const struct cmd_ack *a)
{
    cr_assert_eq(e->position, a->position);
    cr_assert_str_eq(e->stream, a->id, "position %llu: stream %s, the command's %s",
                     (unsigned long long)e->position, e->stream, a->id);
    cr_assert_eq(e->version, a->version, "position %llu: version %llu, the command's %llu",
                 (unsigned long long)e->position, (unsigned long long)e->version,
                 (unsigned long long)a->version);
    cr_assert_str_eq(e->type, "WalletToppedUp");
}

Test(readmodel, all_events_pages_in_position_order)
{
    enum { N = 250 };
    static struct cmd_ack acks[N];
    topups(c, acks, N, 1);
    uint64_t next = 1;
    int pages = 0;
    for (;;) {
        Cqrs__Reply *r = NULL;
        cr_assert(cqrs_client_all_events(c, "wallet", next, 100, &r) == 0, "ALL_EVENTS: %s",
                  strerror(errno));
        check_status(r, OK, "ALL_EVENTS");
        cr_assert_eq(r->position, N, "ALL_EVENTS head %llu, expected %d",
                     (unsigned long long)r->position, N);
        cr_assert_leq(r->n_events, 100);
        for (size_t i = 0; i < r->n_events; i++) {
            cr_assert_eq(r->events[i]->position, next, "ALL_EVENTS from %llu: position %llu "
                         "at index %zu", (unsigned long long)next,
                         (unsigned long long)r->events[i]->position, i);
            check_event_ack(r->events[i], &acks[next - 1]);
            next++;
        }
        size_t n = r->n_events;
        cqrs__reply__free_unpacked(r, NULL);
        pages++;
        if (n == 0 || next > N)
            break;
        cr_assert_eq(n, 100, "a page short of max_count before the head: %zu", n);
    }
    cr_assert_eq(next, N + 1, "ALL_EVENTS paging ended at %llu", (unsigned long long)next);
    cr_assert_eq(pages, 3);

    /* from_position 0 is 1; max_count 0 is the default page (all 250 here) */
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_all_events(c, "wallet", 0, 0, &r) == 0);
    check_status(r, OK, "ALL_EVENTS from 0");
    cr_assert_eq(r->n_events, N, "ALL_EVENTS with defaults: %zu events", r->n_events);
    cr_assert_eq(r->events[0]->position, 1);
    cqrs__reply__free_unpacked(r, NULL);
    /* past the head: nothing, and the head */
    cr_assert(cqrs_client_all_events(c, "wallet", N + 1, 10, &r) == 0);
    check_status(r, OK, "ALL_EVENTS past the head");
    cr_assert_eq(r->n_events, 0);
    cr_assert_eq(r->position, N);
    cqrs__reply__free_unpacked(r, NULL);
    /* another type: its own head */
    cr_assert(cqrs_client_all_events(c, "account", 1, 10, &r) == 0);
    check_status(r, OK, "ALL_EVENTS account");
    cr_assert_eq(r->n_events, 0);
    cr_assert_eq(r->position, 0);
    cqrs__reply__free_unpacked(r, NULL);
    finish();
}

/* --- subscriptions --------------------------------------------------------------- */

/* Reads the subscription `id` on `s` until `*next` passes `last`: each
 * reply OK with more set, each event the next position. */
static void read_subscription(struct cqrs_client *s, uint64_t id, uint64_t *next, uint64_t last,
                              const struct cmd_ack *acks)
{
    while (*next <= last) {
        Cqrs__Reply *r = NULL;
        int rc = cqrs_client_recv(s, id, &r);
        cr_assert(rc == 0, "subscription: no reply while waiting for position %llu: %s",
                  (unsigned long long)*next, strerror(errno));
        cr_assert_eq(r->id, id);
        check_status(r, OK, "a subscription reply");
        cr_assert(r->more, "a subscription reply without more (position %llu expected)",
                  (unsigned long long)*next);
        cr_assert(r->n_events > 0, "a subscription reply without events");
        for (size_t i = 0; i < r->n_events; i++) {
            const Cqrs__EventRecord *e = r->events[i];
            cr_assert_eq(e->position, *next, "subscription: position %llu, expected %llu",
                         (unsigned long long)e->position, (unsigned long long)*next);
            cr_assert_leq(e->position, last, "subscription: position %llu past the %llu made",
                          (unsigned long long)e->position, (unsigned long long)last);
            if (acks)
                check_event_ack(e, &acks[e->position - 1]);
            (*next)++;
        }
        cqrs__reply__free_unpacked(r, NULL);
    }
}

Test(readmodel, subscribe_live)
{
    enum { N = 300 };
    static struct cmd_ack acks[N + 1];
    struct cqrs_client *s = daemon_connect(&d);
    recv_timeout(s, 30);
    uint64_t id;
    cr_assert(cqrs_client_subscribe_start(s, "wallet", 1, &id) == 0, "SUBSCRIBE: %s",
              strerror(errno));
    topups(c, acks, N, 1);
    uint64_t next = 1;
    read_subscription(s, id, &next, N, acks);
    /* nothing doubled or left over: the next event is the next command's */
    topups(c, acks, 1, N + 1);
    read_subscription(s, id, &next, N + 1, NULL);
    cr_assert_str_eq(acks[N].id, "s0");
    cqrs_client_free(s);
    finish();
}

Test(readmodel, subscribe_late_from_the_start)
{
    enum { N = 1500 };   /* more than one reply's worth from disk */
    static struct cmd_ack acks[N + 2];
    topups(c, acks, N, 1);
    struct cqrs_client *s = daemon_connect(&d);
    recv_timeout(s, 30);
    uint64_t id;
    cr_assert(cqrs_client_subscribe_start(s, "wallet", 1, &id) == 0);
    uint64_t next = 1;
    read_subscription(s, id, &next, N, acks);
    topups(c, acks, 2, N + 1);
    read_subscription(s, id, &next, N + 2, acks);

    /* a second subscriber from the middle, on the same connection as commands */
    uint64_t id2;
    cr_assert(cqrs_client_subscribe_start(s, "wallet", N - 5, &id2) == 0);
    uint64_t next2 = N - 5;
    read_subscription(s, id2, &next2, N + 2, acks);
    cqrs_client_free(s);
    finish();
}

/* --- REBUILD, restarts ------------------------------------------------------------ */

/* A small mixed history over a few wallets and accounts. */
static void some_history(struct cqrs_client *cl)
{
    char id[16], tx[16];
    for (int i = 0; i < 12; i++) {
        snprintf(id, sizeof id, "h%02d", i);
        topup(cl, id, 100 + i);
        if (i % 2) {
            snprintf(tx, sizeof tx, "t%d", i);
            authorize(cl, id, 10 + i, tx);
            if (i % 3 == 0)
                capture(cl, id, 5, tx);
        }
        if (i % 4 == 0)
            rename_w(cl, id, "Renamed");
        if (i % 5 == 0) {
            authorize(cl, id, 3, "r");
            release(cl, id, "r");
        }
    }
    open_account(cl, "acc1", "Ann", "ann@example.com");
    open_account(cl, "acc2", "Bob", "bob@example.com");
    change_email(cl, "acc2", "bob@example.org");
}

Test(readmodel, rebuild_gives_the_same_rows)
{
    some_history(c);
    size_t n;
    char *before = dump_wallets(c, &n);
    cr_assert_eq(n, 12);
    Cqrs__Reply *all = NULL;
    cr_assert(cqrs_client_all_events(c, "wallet", 1, 0, &all) == 0);
    uint64_t wallet_events = all->position;
    cqrs__reply__free_unpacked(all, NULL);

    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_control(c, CQRS__CONTROL__OP__REBUILD, "", &r) == 0,
              "REBUILD: no reply: %s", strerror(errno));
    check_status(r, OK, "REBUILD");
    cr_assert_eq(r->version, wallet_events + 3, "REBUILD applied %llu events, expected %llu",
                 (unsigned long long)r->version, (unsigned long long)(wallet_events + 3));
    cqrs__reply__free_unpacked(r, NULL);

    char *after = dump_wallets(c, NULL);
    cr_assert_str_eq(after, before, "the rows after REBUILD differ");
    free(after);
    free(before);
    expect_account("bob@example.org", "acc2", "Bob", 1, 2);
    /* and it goes on applying */
    topup(c, "h00", 1);
    expect_view_is_state(c, "h00");
    finish();
}

Test(readmodel, restart_keeps_rows_and_positions)
{
    some_history(c);
    uint64_t last = topup(c, "h01", 1);
    char *before = dump_wallets(c, NULL);

    cqrs_client_free(c);
    c = NULL;
    int st = daemon_stop(&d);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "cqrsd did not exit 0 (0x%x)", st);
    daemon_restart(&d);
    c = daemon_connect(&d);

    char *after = dump_wallets(c, NULL);
    cr_assert_str_eq(after, before, "the rows after a restart differ");
    free(after);
    free(before);
    cr_assert_eq(topup(c, "h01", 1), last + 1, "positions did not go on after a restart");
    expect_view_is_state(c, "h01");
    finish();
}

Test(readmodel, deleted_database_is_rebuilt_on_start)
{
    some_history(c);
    char *before = dump_wallets(c, NULL);
    cqrs_client_free(c);
    c = NULL;
    int st = daemon_stop(&d);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "cqrsd did not exit 0 (0x%x)", st);
    const char *suffix[] = { "", "-wal", "-shm", NULL };
    int removed = 0;
    for (const char *const *s = suffix; *s; s++) {
        char path[400];
        snprintf(path, sizeof path, "%s/readmodel.db%s", d.data, *s);
        if (unlink(path) == 0)
            removed++;
        else
            cr_assert_eq(errno, ENOENT, "unlink %s: %s", path, strerror(errno));
    }
    cr_assert_geq(removed, 1, "there was no readmodel.db in %s", d.data);
    daemon_restart(&d);
    c = daemon_connect(&d);

    char *after = dump_wallets(c, NULL);
    if (strcmp(after, before) != 0)
        daemon_show_log(&d, "rows differ after deleting readmodel.db");
    cr_assert_str_eq(after, before, "the rows rebuilt from the events differ");
    free(after);
    free(before);
    expect_account("ann@example.com", "acc1", "Ann", 1, 1);
    expect_account("bob@example.org", "acc2", "Bob", 1, 2);
    finish();
}

/* --- cqrsctl ---------------------------------------------------------------------- */

static json_t *parse_json(const char *text, const char *what)
{
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    cr_assert(j, "%s: not one JSON document (%s): %s", what, je.text, text);
    return j;
}

static void ctl_ok(char **out, const char *what, int rc, char *err)
{
    cr_assert_eq(rc, 0, "cqrsctl %s: exit %d\nstdout: %s\nstderr: %s", what, rc, *out, err);
    free(err);
}

Test(readmodel, cqrsctl_query)
{
    topup(c, "w1", 100);
    topup(c, "w2", 30);
    topup(c, "w3", 70);
    authorize(c, "w3", 20, "tx");
    open_account(c, "acc1", "Ann", "ann@example.com");
    char *out = NULL, *err = NULL;

    int rc = run_cqrsctl(&d, &out, &err, "query", "wallet", "GetWallet", "id=w1", NULL);
    ctl_ok(&out, "query wallet GetWallet id=w1", rc, err);
    cr_assert(strstr(out, "WalletView"), "query output: %s", out);
    cr_assert(strstr(out, "balance: 100"), "query output has no balance 100: %s", out);
    cr_assert(strstr(out, "Main wallet"), "query output has no label: %s", out);
    free(out);

    rc = run_cqrsctl(&d, &out, &err, "--json", "query", "wallet", "ListWallets",
                     "min_balance=50", "limit=10", NULL);
    ctl_ok(&out, "query wallet ListWallets", rc, err);
    json_t *j = parse_json(out, "query --json ListWallets");
    cr_assert_str_eq(json_string_value(json_object_get(j, "status")), "OK");
    cr_assert_str_eq(json_string_value(json_object_get(j, "type")), "WalletList");
    cr_assert_eq(json_integer_value(json_object_get(j, "position")), 4, "position: %s", out);
    json_t *ws = json_object_get(json_object_get(j, "result"), "wallets");
    cr_assert(json_is_array(ws), "no wallets array: %s", out);
    cr_assert_eq(json_array_size(ws), 2, "ListWallets min_balance=50: %s", out);
    json_t *w0 = json_array_get(ws, 0), *w1 = json_array_get(ws, 1);
    cr_assert_str_eq(json_string_value(json_object_get(w0, "id")), "w1");
    cr_assert_eq(json_integer_value(json_object_get(w0, "balance")), 100);
    cr_assert_str_eq(json_string_value(json_object_get(w1, "id")), "w3");
    cr_assert_eq(json_integer_value(json_object_get(w1, "balance")), 70);
    cr_assert_eq(json_integer_value(json_object_get(w1, "available")), 50);
    cr_assert_eq(json_integer_value(json_object_get(w1, "blocked_count")), 1);
    cr_assert_eq(json_integer_value(json_object_get(w1, "version")), 2);
    json_decref(j);
    free(out);

    rc = run_cqrsctl(&d, &out, &err, "--json", "query", "account", "FindByEmail",
                     "email=ann@example.com", NULL);
    ctl_ok(&out, "query account FindByEmail", rc, err);
    j = parse_json(out, "query --json FindByEmail");
    json_t *res = json_object_get(j, "result");
    cr_assert_str_eq(json_string_value(json_object_get(res, "id")), "acc1", "%s", out);
    cr_assert_str_eq(json_string_value(json_object_get(res, "owner")), "Ann");
    cr_assert(json_is_true(json_object_get(res, "open")), "%s", out);
    json_decref(j);
    free(out);

    rc = run_cqrsctl(&d, &out, &err, "--json", "query", "wallet", "TotalBalance", NULL);
    ctl_ok(&out, "query wallet TotalBalance", rc, err);
    j = parse_json(out, "query --json TotalBalance");
    res = json_object_get(j, "result");
    cr_assert_eq(json_integer_value(json_object_get(res, "balance")), 200, "%s", out);
    cr_assert_eq(json_integer_value(json_object_get(res, "wallets")), 3, "%s", out);
    json_decref(j);
    free(out);

    /* refusals and their exit codes */
    rc = run_cqrsctl(&d, &out, &err, "query", "wallet", "NoSuchQuery", NULL);
    cr_assert_eq(rc, 64, "an unknown query name: exit %d, expected 64 (usage)\n%s", rc, err);
    cr_assert(strstr(err, "GetWallet"), "the usage error does not list the queries: %s", err);
    free(out);
    free(err);
    rc = run_cqrsctl(&d, &out, &err, "query", "wallet", "GetWallet", "nofield=1", NULL);
    cr_assert_eq(rc, 64, "an unknown field: exit %d, expected 64\n%s", rc, err);
    free(out);
    free(err);
    rc = run_cqrsctl(&d, &out, &err, "query", "wallet", "ListWallets", "limit=1001", NULL);
    cr_assert_eq(rc, 65, "limit=1001: exit %d, expected 65 (INVALID)\n%s", rc, err);
    free(out);
    free(err);
    rc = run_cqrsctl(&d, &out, &err, "query", "wallet", "GetWallet", "id=nobody", NULL);
    cr_assert_eq(rc, 1, "GetWallet of an unknown id: exit %d, expected 1\n%s", rc, err);
    cr_assert(strstr(err, "not found"), "stderr: %s", err);
    free(out);
    free(err);
    rc = run_cqrsctl(&d, &out, &err, "--json", "query", "wallet", "GetWallet", "id=nobody", NULL);
    cr_assert_eq(rc, 1);
    j = parse_json(out, "query --json of an unknown id");
    cr_assert_str_eq(json_string_value(json_object_get(j, "status")), "NOT_FOUND", "%s", out);
    json_decref(j);
    free(out);
    free(err);
    rc = run_cqrsctl(&d, &out, &err, "query", "wallet", "GetWallet", "id=w1", "--eventual",
                     "--min-position", "1000000", "--timeout-ms", "100", NULL);
    cr_assert_eq(rc, 69, "a position out of reach: exit %d, expected 69\n%s", rc, err);
    free(out);
    free(err);
    finish();
}

Test(readmodel, cqrsctl_subscribe)
{
    enum { N = 40 };
    static struct cmd_ack acks[N];
    topups(c, acks, N, 1);
    char *out = NULL, *err = NULL;
    int rc = run_cqrsctl(&d, &out, &err, "--json", "subscribe", "wallet", "--from", "1",
                         "--count", "40", NULL);
    ctl_ok(&out, "subscribe wallet --from 1 --count 40 --json", rc, err);
    char *save = NULL;
    uint64_t next = 1;
    for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_t *j = parse_json(line, "a subscribe line");
        uint64_t pos = (uint64_t)json_integer_value(json_object_get(j, "position"));
        cr_assert_eq(pos, next, "subscribe printed position %llu, expected %llu",
                     (unsigned long long)pos, (unsigned long long)next);
        cr_assert_str_eq(json_string_value(json_object_get(j, "id")), acks[pos - 1].id);
        cr_assert_eq((uint64_t)json_integer_value(json_object_get(j, "version")),
                     acks[pos - 1].version);
        cr_assert_str_eq(json_string_value(json_object_get(j, "type")), "WalletToppedUp");
        json_t *data = json_object_get(j, "data");
        cr_assert_eq(json_integer_value(json_object_get(data, "to")) -
                     json_integer_value(json_object_get(data, "from")), (json_int_t)pos,
                     "position %llu: %s", (unsigned long long)pos, line);
        json_decref(j);
        next++;
    }
    cr_assert_eq(next, N + 1, "subscribe --count 40 printed %llu events",
                 (unsigned long long)(next - 1));
    free(out);

    /* from the middle, in text */
    rc = run_cqrsctl(&d, &out, &err, "subscribe", "wallet", "--from", "39", "--count", "2", NULL);
    ctl_ok(&out, "subscribe wallet --from 39 --count 2", rc, err);
    cr_assert(strncmp(out, "39 ", 3) == 0 && strstr(out, "\n40 "),
              "subscribe --from 39: %s", out);
    free(out);
    finish();
}

Test(readmodel, cqrsctl_readmodel_rebuild)
{
    some_history(c);
    char *out = NULL, *err = NULL;
    int rc = run_cqrsctl(&d, &out, &err, "--json", "query", "wallet", "ListWallets", "limit=1000",
                         NULL);
    ctl_ok(&out, "query wallet ListWallets limit=1000 (before)", rc, err);
    json_t *before = parse_json(out, "ListWallets before");
    free(out);
    /* the position is the read model's, the same before and after */
    json_object_del(before, "position");

    rc = run_cqrsctl(&d, &out, &err, "--json", "readmodel", "rebuild", NULL);
    if (rc != 0)
        daemon_show_log(&d, "readmodel rebuild failed");
    ctl_ok(&out, "readmodel rebuild", rc, err);
    json_t *rb = parse_json(out, "readmodel rebuild --json");
    cr_assert_gt(json_integer_value(json_object_get(rb, "events_applied")), 0, "%s", out);
    json_decref(rb);
    free(out);

    rc = run_cqrsctl(&d, &out, &err, "--json", "query", "wallet", "ListWallets", "limit=1000",
                     NULL);
    ctl_ok(&out, "query wallet ListWallets limit=1000 (after)", rc, err);
    json_t *after = parse_json(out, "ListWallets after");
    json_object_del(after, "position");
    char *b = json_dumps(before, JSON_SORT_KEYS), *a = json_dumps(after, JSON_SORT_KEYS);
    cr_assert_str_eq(a, b, "ListWallets after the rebuild differs");
    free(a);
    free(b);
    json_decref(before);
    json_decref(after);
    free(out);
    finish();
}

/* --- more of the subscription's edges --------------------------------------------- */

Test(readmodel, subscribe_from_beyond_the_head)
{
    enum { N = 10 };
    static struct cmd_ack acks[N + 10];
    topups(c, acks, N, 1);
    struct cqrs_client *s = daemon_connect(&d);
    recv_timeout(s, 30);
    uint64_t id;
    /* from N + 4: positions N + 1 .. N + 3 are not for it */
    cr_assert(cqrs_client_subscribe_start(s, "wallet", N + 4, &id) == 0);
    topups(c, acks, 6, N + 1);
    uint64_t next = N + 4;
    read_subscription(s, id, &next, N + 6, acks);
    cqrs_client_free(s);
    finish();
}

Test(readmodel, a_subscriber_that_leaves_harms_nothing)
{
    enum { N = 30 };
    static struct cmd_ack acks[3 * N];
    topups(c, acks, N, 1);
    pid_t projector = daemon_child_pid(&d, "readmodel");
    for (int round = 0; round < 3; round++) {
        struct cqrs_client *s = daemon_connect(&d);
        recv_timeout(s, 30);
        uint64_t id;
        cr_assert(cqrs_client_subscribe_start(s, "wallet", 1, &id) == 0);
        Cqrs__Reply *r = NULL;                      /* reads a little, then goes */
        cr_assert(cqrs_client_recv(s, id, &r) == 0, "subscription: %s", strerror(errno));
        check_status(r, OK, "the first reply of a subscription");
        cr_assert(r->n_events > 0 && r->events[0]->position == 1);
        cqrs__reply__free_unpacked(r, NULL);
        cqrs_client_free(s);
        topups(c, acks, N / 3, (uint64_t)N + (uint64_t)round * (N / 3) + 1);
    }
    uint64_t last = N + 3 * (N / 3);
    /* a new subscriber gets everything; the projector never restarted */
    struct cqrs_client *s = daemon_connect(&d);
    recv_timeout(s, 30);
    uint64_t id;
    cr_assert(cqrs_client_subscribe_start(s, "wallet", 1, &id) == 0);
    uint64_t next = 1;
    read_subscription(s, id, &next, last, acks);
    cqrs_client_free(s);
    struct child_status cs = daemon_child(&d, "readmodel");
    cr_assert_eq(cs.pid, projector, "the projector restarted (%s)", cs.last_exit);
    cr_assert_eq(cs.restarts, 0);
    finish();
}

/* The projector's count of subscriptions it feeds, from STATUS (-1: no
 * heartbeat answer yet). */
static long projector_subscriptions(void)
{
    struct cqrs_client *k = daemon_connect(&d);
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_control(k, CQRS__CONTROL__OP__STATUS, "", &r) == 0);
    long n = -1;
    for (size_t i = 0; i < r->n_children; i++)
        if (strcmp(r->children[i]->name, "readmodel") == 0 && r->children[i]->stats)
            n = (long)r->children[i]->stats->subscriptions;
    cqrs__reply__free_unpacked(r, NULL);
    cqrs_client_free(k);
    return n;
}

/* Polls STATUS (heartbeats refresh it every second) until the projector
 * feeds `want` subscriptions; asserts after 10 s. */
static void wait_subscriptions(long want, const char *what)
{
    long n = -1;
    for (int64_t deadline = harness_ms() + 10000; harness_ms() < deadline; harness_sleep_ms(50))
        if ((n = projector_subscriptions()) == want)
            return;
    cr_assert_fail("%s: the projector feeds %ld subscriptions, expected %ld", what, n, want);
}

/* A subscriber that goes while nothing happens ends its subscription at
 * once, not at the type's next event. */
Test(readmodel, an_idle_subscriber_that_leaves_is_forgotten)
{
    struct cqrs_client *s = daemon_connect(&d);
    uint64_t id;
    cr_assert(cqrs_client_subscribe_start(s, "wallet", 1, &id) == 0);
    wait_subscriptions(1, "after subscribing");
    cqrs_client_free(s);
    wait_subscriptions(0, "after the subscriber closed its connection, no event since");
    finish();
}

Test(readmodel, cqrsctl_kill_readmodel_and_status)
{
    some_history(c);
    char *before = dump_wallets(c, NULL);
    pid_t old = daemon_child_pid(&d, "readmodel");
    char *out = NULL, *err = NULL;
    int rc = run_cqrsctl(&d, &out, &err, "status", NULL);
    ctl_ok(&out, "status", rc, err);
    cr_assert(strstr(out, "readmodel"), "status does not show the readmodel child:\n%s", out);
    free(out);
    rc = run_cqrsctl(&d, &out, &err, "kill", "readmodel", NULL);
    ctl_ok(&out, "kill readmodel", rc, err);
    free(out);
    daemon_wait_new_pid(&d, "readmodel", old, 20000);
    /* commands while it restarted, and after: the rows say so */
    topup(c, "h00", 1);
    char *after = dump_wallets(c, NULL);
    cr_assert_str_neq(after, before);
    free(after);
    free(before);
    expect_view_is_state(c, "h00");
    finish();
}

/* --- beyond the journal's retention ------------------------------------------------- */

#define RETENTION_CONF                                                                  \
    "[storage]\nfsync = batch\njournal_segment_mb = 1\njournal_retention_mb = 0\n"     \
    "journal_retention_s = 0\ncheckpoint_ms = 50\n"                                     \
    "[child wallet]\n[child account]\n[child readmodel]\nkind = projector\n"

/* n commands over `wallets` wallets, 128 in flight at a time: TopUps of 1,
 * or (big) renames to 100-byte names, each new. */
static void pipelined(struct cqrs_client *cl, int n, int wallets, int big)
{
    int sent = 0, got = 0;
    while (got < n) {
        while (sent < n && sent - got < 128) {
            char id[16], name[128];
            uint8_t payload[160];
            size_t plen;
            snprintf(id, sizeof id, "p%03d", sent % wallets);
            if (big) {
                Wallet__RenameWallet m = WALLET__RENAME_WALLET__INIT;
                snprintf(name, sizeof name, "%092d%08d", 0, sent);
                m.name = name;
                plen = wallet__rename_wallet__pack(&m, payload);
            } else {
                Wallet__TopUp m = WALLET__TOP_UP__INIT;
                m.amount = 1;
                plen = wallet__top_up__pack(&m, payload);
            }
            Cqrs__Request req = CQRS__REQUEST__INIT;
            Cqrs__Command cmd = CQRS__COMMAND__INIT;
            cmd.aggregate_type = "wallet";
            cmd.aggregate_id = id;
            cmd.name = big ? "RenameWallet" : "TopUp";
            cmd.payload.data = payload;
            cmd.payload.len = plen;
            req.body_case = CQRS__REQUEST__BODY_COMMAND;
            req.command = &cmd;
            cr_assert(cqrs_client_send(cl, &req, NULL) == 0, "send: %s", strerror(errno));
            sent++;
        }
        Cqrs__Reply *r = NULL;
        cr_assert(cqrs_client_recv_any(cl, &r) == 0, "recv: %s", strerror(errno));
        check_status(r, OK, "a pipelined command");
        cr_assert_eq(r->n_events, 1);
        cqrs__reply__free_unpacked(r, NULL);
        got++;
    }
}

static void pipelined_topups(struct cqrs_client *cl, int n, int wallets)
{
    pipelined(cl, n, wallets, 0);
}

/* The first position the wallet journal still holds (its oldest segment's
 * name), 0 when there is no segment. */
static uint64_t journal_first(void)
{
    char path[400];
    snprintf(path, sizeof path, "%s/wallet/journal", d.data);
    DIR *dir = opendir(path);
    cr_assert(dir, "opendir %s: %s", path, strerror(errno));
    uint64_t first = 0;
    for (struct dirent *e; (e = readdir(dir)) != NULL;) {
        size_t len = strlen(e->d_name);
        if (len < 5 || strcmp(e->d_name + len - 4, ".wal") != 0)
            continue;
        uint64_t p = strtoull(e->d_name, NULL, 10);
        if (!first || p < first)
            first = p;
    }
    closedir(dir);
    return first;
}

Test(readmodel, rebuilt_from_stream_files_beyond_retention)
{
    cqrs_client_free(c);
    c = NULL;
    daemon_cleanup(&d);
    daemon_start_conf(&d, RETENTION_CONF, NULL);
    c = daemon_connect(&d);
    recv_timeout(c, 60);

    /* enough events that the first journal segment is checkpointed and gone */
    int total = 0;
    int64_t deadline = harness_ms() + 60000;
    while (journal_first() <= 1) {
        cr_assert_lt(total, 60000, "60,000 events and the first segment is still there");
        cr_assert_lt(harness_ms(), deadline, "the first segment is still there after 60 s");
        if (total < 60000) {
            pipelined_topups(c, 2000, 97);
            total += 2000;
        }
    }
    uint64_t first = journal_first();
    cr_log_info("%d events; the journal starts at position %llu", total,
                (unsigned long long)first);
    char *before = dump_wallets(c, NULL);

    /* the positions the journal dropped are still served, from the stream files */
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_all_events(c, "wallet", 1, 500, &r) == 0);
    check_status(r, OK, "ALL_EVENTS from 1 beyond retention");
    cr_assert_eq(r->n_events, 500, "ALL_EVENTS from 1: %zu events", r->n_events);
    for (size_t i = 0; i < r->n_events; i++)
        cr_assert_eq(r->events[i]->position, i + 1);
    cr_assert_eq(r->position, (uint64_t)total);
    cqrs__reply__free_unpacked(r, NULL);

    cqrs_client_free(c);
    c = NULL;
    int st = daemon_stop(&d);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "cqrsd did not exit 0 (0x%x)", st);
    const char *suffix[] = { "", "-wal", "-shm", NULL };
    for (const char *const *s = suffix; *s; s++) {
        char path[400];
        snprintf(path, sizeof path, "%s/readmodel.db%s", d.data, *s);
        cr_assert(unlink(path) == 0 || errno == ENOENT, "unlink %s: %s", path, strerror(errno));
    }
    daemon_restart(&d);
    c = daemon_connect(&d);
    recv_timeout(c, 60);
    char *after = dump_wallets(c, NULL);
    if (strcmp(after, before) != 0)
        daemon_show_log(&d, "rows differ after a rebuild beyond retention");
    cr_assert_str_eq(after, before, "the rows rebuilt from the stream files differ");
    free(after);
    free(before);
    int64_t sum;
    uint64_t n;
    total_balance(c, &sum, &n);
    cr_assert(sum == total && n == 97, "TotalBalance %lld over %llu, expected %d over 97",
              (long long)sum, (unsigned long long)n, total);

    /* a subscriber from 1 gets every position, the old ones from the stream files */
    struct cqrs_client *s = daemon_connect(&d);
    recv_timeout(s, 60);
    uint64_t id;
    cr_assert(cqrs_client_subscribe_start(s, "wallet", 1, &id) == 0);
    uint64_t next = 1;
    read_subscription(s, id, &next, (uint64_t)total, NULL);
    cqrs_client_free(s);
    finish();
}

/* --- a subscriber that does not read ------------------------------------------------ */

Test(readmodel, a_slow_subscriber_is_dropped_then_resumes)
{
    enum { N = 40000 };   /* some 7 MB of events: past the 4 MB cqrsd keeps unread */
    struct cqrs_client *s = daemon_connect(&d);
    recv_timeout(s, 60);
    uint64_t id;
    cr_assert(cqrs_client_subscribe_start(s, "wallet", 1, &id) == 0);
    /* the subscription is set up before the commands: a query after it on
     * the same connection is answered after it */
    Wallet__TotalBalance tb = WALLET__TOTAL_BALANCE__INIT;
    Cqrs__Reply *r = rm_query(s, "wallet", "TotalBalance", &tb.base, 0, 1, 0);
    check_status(r, OK, "TotalBalance");
    cqrs__reply__free_unpacked(r, NULL);

    recv_timeout(c, 60);
    pipelined(c, N, 50, 1);

    /* now read: in order, then the end of the stream, BUSY */
    uint64_t next = 1;
    int ended = 0;
    while (!ended) {
        r = NULL;
        cr_assert(cqrs_client_recv(s, id, &r) == 0, "subscription: %s (at %llu)",
                  strerror(errno), (unsigned long long)next);
        for (size_t i = 0; i < r->n_events; i++, next++)
            cr_assert_eq(r->events[i]->position, next, "position %llu where %llu was due",
                         (unsigned long long)r->events[i]->position, (unsigned long long)next);
        if (!r->more) {
            check_status(r, CQRS__STATUS__BUSY, "the end of a subscription nobody read");
            cr_assert(strstr(r->error, "too slow"), "BUSY without saying why: %s", r->error);
            cr_assert_eq(r->n_events, 0);
            ended = 1;
        } else {
            check_status(r, OK, "a subscription reply");
            cr_assert_leq(next, (uint64_t)N + 1);
            cr_assert(next <= N, "every event was delivered to a subscriber that did not read");
        }
        cqrs__reply__free_unpacked(r, NULL);
    }
    cr_log_info("dropped after position %llu of %d", (unsigned long long)(next - 1), N);
    /* resuming from the next position gets the rest */
    cr_assert(cqrs_client_subscribe_start(s, "wallet", next, &id) == 0);
    read_subscription(s, id, &next, N, NULL);
    cqrs_client_free(s);
    finish();
}
