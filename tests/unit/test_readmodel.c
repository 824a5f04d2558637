/*
 * test_readmodel — the read model in SQLite (projector/readmodel.h) with the
 * projections of the shipped types (worker/aggregates/wallet.c, account.c):
 *
 *   - each event type's rule, seen through the type's queries: wallet
 *     renamed, topped up, authorized, captured (a partial capture releases
 *     the rest of its block), released; account opened, email changed,
 *     closed; the version of every row follows its stream;
 *   - the queries: GetWallet, ListWallets (min_balance, limit, after_id
 *     paging, ordered by id, limit 0 = 100), TotalBalance, FindByEmail
 *     (lowest id of several);
 *   - exactly once: a position already applied is skipped and changes
 *     nothing, a gap changes nothing, a rollback gives the position back,
 *     the committed position survives closing and opening the file again,
 *     reset empties rows and positions; types keep positions apart;
 *   - refusals: unknown query, payload that does not decode, limit above
 *     1,000, bad ids, an empty email (INVALID); a missing row (NOT_FOUND);
 *     an event of an unknown type or with undecodable data (-1, nothing
 *     applied).
 *
 * Events are built by hand as the journal holds them: type, data (the
 * packed event message), stream, version, and consecutive positions.
 */
#include <criterion/criterion.h>
#include <sqlite3.h>
#include <errno.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "account.pb-c.h"
#include "aggregate.h"
#include "cqrs.pb-c.h"
#include "readmodel.h"
#include "wallet.pb-c.h"

static struct readmodel *rm;
static const struct aggregate_type *W, *A;
static char dir[64];             /* temp dir of a file database ("" when none) */
static char err[512];

static void setup(void)
{
    W = aggregate_lookup("wallet");
    A = aggregate_lookup("account");
    cr_assert(W && W->projection, "wallet has no projection");
    cr_assert(A && A->projection, "account has no projection");
    rm = readmodel_open(":memory:", err, sizeof err);
    cr_assert(rm, "readmodel_open(:memory:): %s", err);
}

static int rm_file(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    remove(path);
    return 0;
}

static void teardown(void)
{
    readmodel_close(rm);
    rm = NULL;
    if (dir[0])
        nftw(dir, rm_file, 8, FTW_DEPTH | FTW_PHYS);
    dir[0] = '\0';
}

TestSuite(readmodel, .init = setup, .fini = teardown, .timeout = 60);

#define OK CQRS__STATUS__OK
#define INVALID CQRS__STATUS__INVALID
#define NOT_FOUND CQRS__STATUS__NOT_FOUND

/* --- events ----------------------------------------------------------------- */

/* Applies one event message `ev` as the record of `stream` at `version`
 * and `position`, outside any transaction handling: readmodel_apply's
 * result. */
static int apply_raw(const struct aggregate_type *t, const char *stream, uint64_t version,
                     uint64_t position, const ProtobufCMessage *ev)
{
    size_t len = protobuf_c_message_get_packed_size(ev);
    uint8_t *data = malloc(len ? len : 1);
    cr_assert(data, "out of memory");
    protobuf_c_message_pack(ev, data);
    Cqrs__EventRecord rec = CQRS__EVENT_RECORD__INIT;
    rec.version = version;
    rec.timestamp_us = 1700000000000000LL + (int64_t)position;
    rec.type = (char *)ev->descriptor->short_name;
    rec.data.data = data;
    rec.data.len = len;
    rec.stream = (char *)stream;
    rec.position = position;
    err[0] = '\0';
    int rc = readmodel_apply(rm, t, &rec, err, sizeof err);
    free(data);
    return rc;
}

/* Replaces the in-memory database with a new file database in a temp dir
 * (removed by teardown); its path goes to `path`. */
static void open_file_database(char *path, size_t len)
{
    strcpy(dir, "/tmp/cqrs-rm.XXXXXX");
    cr_assert(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
    snprintf(path, len, "%s/readmodel.db", dir);
    readmodel_close(rm);
    rm = readmodel_open(path, err, sizeof err);
    cr_assert(rm, "readmodel_open(%s): %s", path, err);
}

static void begin(void)
{
    cr_assert(readmodel_begin(rm, err, sizeof err) == 0, "readmodel_begin: %s", err);
}

static void commit(void)
{
    cr_assert(readmodel_commit(rm, err, sizeof err) == 0, "readmodel_commit: %s", err);
}

/* One event in its own transaction; asserts it is applied. */
static void apply1(const struct aggregate_type *t, const char *stream, uint64_t version,
                   uint64_t position, const ProtobufCMessage *ev)
{
    begin();
    int rc = apply_raw(t, stream, version, position, ev);
    cr_assert_eq(rc, READMODEL_APPLIED, "%s %s v%llu at position %llu: apply gave %d (%s)",
                 ev->descriptor->short_name, stream, (unsigned long long)version,
                 (unsigned long long)position, rc, err);
    commit();
    cr_assert_eq(readmodel_position(rm, t), position, "%s position after applying %llu",
                 t->name, (unsigned long long)position);
}

/* A little wallet stream builder: each call is the next version of `id`
 * and the next wallet position. */
static uint64_t wpos, apos;

struct wstream {
    const char *id;
    uint64_t version;
    int64_t balance;
};

static void w_renamed(struct wstream *w, const char *name)
{
    Wallet__WalletRenamed e = WALLET__WALLET_RENAMED__INIT;
    e.name = (char *)name;
    apply1(W, w->id, ++w->version, ++wpos, &e.base);
}

static void w_topped_up(struct wstream *w, int64_t amount)
{
    Wallet__WalletToppedUp e = WALLET__WALLET_TOPPED_UP__INIT;
    e.from = w->balance;
    e.to = w->balance + amount;
    w->balance += amount;
    apply1(W, w->id, ++w->version, ++wpos, &e.base);
}

static void w_authorized(struct wstream *w, int64_t amount, const char *tx)
{
    Wallet__FundsAuthorized e = WALLET__FUNDS_AUTHORIZED__INIT;
    e.amount = amount;
    e.tx_id = (char *)tx;
    apply1(W, w->id, ++w->version, ++wpos, &e.base);
}

static void w_captured(struct wstream *w, int64_t amount, const char *tx)
{
    Wallet__FundsCaptured e = WALLET__FUNDS_CAPTURED__INIT;
    e.amount = amount;
    e.tx_id = (char *)tx;
    w->balance -= amount;
    apply1(W, w->id, ++w->version, ++wpos, &e.base);
}

static void w_released(struct wstream *w, int64_t amount, const char *tx)
{
    Wallet__FundsReleased e = WALLET__FUNDS_RELEASED__INIT;
    e.amount = amount;
    e.tx_id = (char *)tx;
    apply1(W, w->id, ++w->version, ++wpos, &e.base);
}

struct astream {
    const char *id;
    uint64_t version;
};

static void a_opened(struct astream *a, const char *owner, const char *email)
{
    Account__AccountOpened e = ACCOUNT__ACCOUNT_OPENED__INIT;
    e.owner = (char *)owner;
    e.email = (char *)email;
    apply1(A, a->id, ++a->version, ++apos, &e.base);
}

static void a_email_changed(struct astream *a, const char *from, const char *to)
{
    Account__EmailChanged e = ACCOUNT__EMAIL_CHANGED__INIT;
    e.from = (char *)from;
    e.to = (char *)to;
    apply1(A, a->id, ++a->version, ++apos, &e.base);
}

static void a_closed(struct astream *a)
{
    Account__AccountClosed e = ACCOUNT__ACCOUNT_CLOSED__INIT;
    apply1(A, a->id, ++a->version, ++apos, &e.base);
}

/* --- queries ---------------------------------------------------------------- */

/* Runs query `name` of `t` with `msg` packed (NULL: an empty payload);
 * returns the status, *out the packed result (caller frees). */
static Cqrs__Status query(const struct aggregate_type *t, const char *name,
                          const ProtobufCMessage *msg, uint8_t **out, size_t *out_len,
                          const char **rtype)
{
    uint8_t *payload = NULL;
    size_t len = 0;
    if (msg) {
        len = protobuf_c_message_get_packed_size(msg);
        payload = malloc(len ? len : 1);
        cr_assert(payload, "out of memory");
        protobuf_c_message_pack(msg, payload);
    }
    *out = NULL;
    *out_len = 0;
    *rtype = NULL;
    err[0] = '\0';
    Cqrs__Status st = readmodel_query(rm, t, name, payload ? payload : (const uint8_t *)"", len,
                                      out, out_len, rtype, err, sizeof err);
    free(payload);
    return st;
}

/* GetWallet `id`: the view (caller frees), or NULL with *st NOT_FOUND etc. */
static Wallet__WalletView *get_wallet_st(const char *id, Cqrs__Status *st)
{
    Wallet__GetWallet q = WALLET__GET_WALLET__INIT;
    q.id = (char *)id;
    uint8_t *out;
    size_t len;
    const char *rtype;
    *st = query(W, "GetWallet", &q.base, &out, &len, &rtype);
    if (*st != OK) {
        cr_assert(err[0], "GetWallet %s: status %d without a sentence", id, (int)*st);
        free(out);
        return NULL;
    }
    cr_assert_str_eq(rtype, "WalletView", "GetWallet answers %s", rtype);
    Wallet__WalletView *v = wallet__wallet_view__unpack(NULL, len, out);
    free(out);
    cr_assert(v, "GetWallet %s: the answer does not decode as WalletView", id);
    return v;
}

static Wallet__WalletView *get_wallet(const char *id)
{
    Cqrs__Status st;
    Wallet__WalletView *v = get_wallet_st(id, &st);
    cr_assert_eq(st, OK, "GetWallet %s: status %d (%s)", id, (int)st, err);
    return v;
}

static void expect_wallet(const char *id, const char *label, int64_t balance, int64_t available,
                          uint32_t blocked, uint64_t version)
{
    /* copied out and freed before asserting: a failure leaks nothing */
    Wallet__WalletView *v = get_wallet(id);
    Wallet__WalletView got = *v;
    char got_id[AGG_ID_MAX + 1], got_label[256];
    snprintf(got_id, sizeof got_id, "%s", v->id);
    snprintf(got_label, sizeof got_label, "%s", v->label);
    wallet__wallet_view__free_unpacked(v, NULL);
    cr_assert_str_eq(got_id, id);
    cr_assert_str_eq(got_label, label, "wallet %s: label \"%s\", expected \"%s\"", id,
                     got_label, label);
    cr_assert_eq(got.balance, balance, "wallet %s: balance %lld, expected %lld", id,
                 (long long)got.balance, (long long)balance);
    cr_assert_eq(got.available, available, "wallet %s: available %lld, expected %lld", id,
                 (long long)got.available, (long long)available);
    cr_assert_eq(got.blocked_count, blocked, "wallet %s: blocked_count %u, expected %u", id,
                 got.blocked_count, blocked);
    cr_assert_eq(got.version, version, "wallet %s: version %llu, expected %llu", id,
                 (unsigned long long)got.version, (unsigned long long)version);
}

static void expect_no_wallet(const char *id)
{
    Cqrs__Status st;
    Wallet__WalletView *v = get_wallet_st(id, &st);
    if (v)
        wallet__wallet_view__free_unpacked(v, NULL);
    cr_assert_eq(st, NOT_FOUND, "GetWallet %s: status %d, expected NOT_FOUND", id, (int)st);
}

static Wallet__WalletList *list_wallets(int64_t min_balance, uint32_t limit, const char *after)
{
    Wallet__ListWallets q = WALLET__LIST_WALLETS__INIT;
    q.min_balance = min_balance;
    q.limit = limit;
    q.after_id = (char *)(after ? after : "");
    uint8_t *out;
    size_t len;
    const char *rtype;
    Cqrs__Status st = query(W, "ListWallets", &q.base, &out, &len, &rtype);
    cr_assert_eq(st, OK, "ListWallets: status %d (%s)", (int)st, err);
    cr_assert_str_eq(rtype, "WalletList");
    Wallet__WalletList *l = wallet__wallet_list__unpack(NULL, len, out);
    free(out);
    cr_assert(l, "ListWallets: the answer does not decode as WalletList");
    return l;
}

static void total_balance(int64_t *balance, uint64_t *wallets)
{
    Wallet__TotalBalance q = WALLET__TOTAL_BALANCE__INIT;
    uint8_t *out;
    size_t len;
    const char *rtype;
    Cqrs__Status st = query(W, "TotalBalance", &q.base, &out, &len, &rtype);
    cr_assert_eq(st, OK, "TotalBalance: status %d (%s)", (int)st, err);
    cr_assert_str_eq(rtype, "Total");
    Wallet__Total *t = wallet__total__unpack(NULL, len, out);
    free(out);
    cr_assert(t, "TotalBalance: the answer does not decode as Total");
    *balance = t->balance;
    *wallets = t->wallets;
    wallet__total__free_unpacked(t, NULL);
}

static Account__AccountView *find_by_email_st(const char *email, Cqrs__Status *st)
{
    Account__FindByEmail q = ACCOUNT__FIND_BY_EMAIL__INIT;
    q.email = (char *)email;
    uint8_t *out;
    size_t len;
    const char *rtype;
    *st = query(A, "FindByEmail", &q.base, &out, &len, &rtype);
    if (*st != OK) {
        free(out);
        return NULL;
    }
    cr_assert_str_eq(rtype, "AccountView");
    Account__AccountView *v = account__account_view__unpack(NULL, len, out);
    free(out);
    cr_assert(v, "FindByEmail: the answer does not decode as AccountView");
    return v;
}

static void expect_account(const char *email, const char *id, const char *owner, int open,
                           uint64_t version)
{
    Cqrs__Status st;
    Account__AccountView *v = find_by_email_st(email, &st);
    cr_assert_eq(st, OK, "FindByEmail %s: status %d (%s)", email, (int)st, err);
    cr_assert_str_eq(v->id, id, "FindByEmail %s: id %s, expected %s", email, v->id, id);
    cr_assert_str_eq(v->owner, owner);
    cr_assert_str_eq(v->email, email);
    cr_assert_eq(!!v->open, !!open, "account %s: open %d, expected %d", id, (int)v->open, open);
    cr_assert_eq(v->version, version, "account %s: version %llu, expected %llu", id,
                 (unsigned long long)v->version, (unsigned long long)version);
    account__account_view__free_unpacked(v, NULL);
}

static void expect_no_account(const char *email)
{
    Cqrs__Status st;
    Account__AccountView *v = find_by_email_st(email, &st);
    if (v)
        account__account_view__free_unpacked(v, NULL);
    cr_assert_eq(st, NOT_FOUND, "FindByEmail %s: status %d, expected NOT_FOUND", email, (int)st);
}

/* Every wallet row packed in id order, as one byte string (caller frees):
 * "nothing changed" is this being byte for byte the same. */
static char *snapshot_rows(size_t *len)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    cr_assert(f, "open_memstream: %s", strerror(errno));
    Wallet__WalletList *l = list_wallets(INT64_MIN, 1000, "");
    for (size_t i = 0; i < l->n_wallets; i++) {
        const Wallet__WalletView *v = l->wallets[i];
        fprintf(f, "%s|%s|%lld|%lld|%u|%llu\n", v->id, v->label, (long long)v->balance,
                (long long)v->available, v->blocked_count, (unsigned long long)v->version);
    }
    wallet__wallet_list__free_unpacked(l, NULL);
    Account__AccountView *a;
    Cqrs__Status st;
    const char *emails[] = { "ann@example.com", "bob@example.com", NULL };
    for (const char *const *e = emails; *e; e++)
        if ((a = find_by_email_st(*e, &st)) != NULL) {
            fprintf(f, "%s|%s|%s|%d|%llu\n", a->id, a->owner, a->email, (int)a->open,
                    (unsigned long long)a->version);
            account__account_view__free_unpacked(a, NULL);
        }
    fclose(f);
    *len = n;
    return buf;
}

static void expect_same_rows(const char *before, size_t before_len, const char *what)
{
    size_t len;
    char *now = snapshot_rows(&len);
    int same = len == before_len && memcmp(now, before, len) == 0;
    if (!same)
        cr_log_error("%s: rows before:\n%s\nrows now:\n%s", what, before, now);
    free(now);
    cr_assert(same, "%s changed the rows", what);
}

/* --- wallet rules ----------------------------------------------------------- */

Test(readmodel, empty_model_has_no_rows_and_position_zero)
{
    cr_assert_eq(readmodel_position(rm, W), 0);
    cr_assert_eq(readmodel_position(rm, A), 0);
    expect_no_wallet("w1");
    int64_t b;
    uint64_t n;
    total_balance(&b, &n);
    cr_assert(b == 0 && n == 0, "TotalBalance of nothing: %lld over %llu wallets", (long long)b,
              (unsigned long long)n);
    Wallet__WalletList *l = list_wallets(0, 0, NULL);
    cr_assert_eq(l->n_wallets, 0);
    wallet__wallet_list__free_unpacked(l, NULL);
    expect_no_account("ann@example.com");
}

Test(readmodel, first_top_up_creates_the_wallet_with_the_default_label)
{
    struct wstream w = { "w1", 0, 0 };
    w_topped_up(&w, 100);
    expect_wallet("w1", "Main wallet", 100, 100, 0, 1);
    w_topped_up(&w, 23);
    expect_wallet("w1", "Main wallet", 123, 123, 0, 2);
}

Test(readmodel, renamed_sets_the_label_and_keeps_the_funds)
{
    struct wstream w = { "w1", 0, 0 };
    w_renamed(&w, "Holidays");           /* a rename as the very first event */
    expect_wallet("w1", "Holidays", 0, 0, 0, 1);
    w_topped_up(&w, 50);
    w_renamed(&w, "Groceries");
    expect_wallet("w1", "Groceries", 50, 50, 0, 3);
    w_renamed(&w, "Main wallet");
    expect_wallet("w1", "Main wallet", 50, 50, 0, 4);
}

Test(readmodel, authorized_blocks_funds_without_touching_the_balance)
{
    struct wstream w = { "w1", 0, 0 };
    w_topped_up(&w, 100);
    w_authorized(&w, 30, "tx1");
    expect_wallet("w1", "Main wallet", 100, 70, 1, 2);
    w_authorized(&w, 45, "tx2");
    expect_wallet("w1", "Main wallet", 100, 25, 2, 3);
    w_topped_up(&w, 10);                  /* a top-up adds to both */
    expect_wallet("w1", "Main wallet", 110, 35, 2, 4);
}

Test(readmodel, full_capture_takes_the_funds_and_ends_the_block)
{
    struct wstream w = { "w1", 0, 0 };
    w_topped_up(&w, 100);
    w_authorized(&w, 30, "tx1");
    w_captured(&w, 30, "tx1");
    expect_wallet("w1", "Main wallet", 70, 70, 0, 3);
}

Test(readmodel, partial_capture_releases_the_rest_of_the_block)
{
    struct wstream w = { "w1", 0, 0 };
    w_topped_up(&w, 100);
    w_authorized(&w, 30, "tx1");
    w_authorized(&w, 20, "tx2");
    expect_wallet("w1", "Main wallet", 100, 50, 2, 3);
    w_captured(&w, 10, "tx1");            /* 10 of 30 taken, 20 released */
    expect_wallet("w1", "Main wallet", 90, 70, 1, 4);
    w_captured(&w, 1, "tx2");             /* 1 of 20 taken, 19 released */
    expect_wallet("w1", "Main wallet", 89, 89, 0, 5);
}

Test(readmodel, captured_tx_id_can_be_authorized_again)
{
    struct wstream w = { "w1", 0, 0 };
    w_topped_up(&w, 100);
    w_authorized(&w, 30, "tx1");
    w_captured(&w, 5, "tx1");
    w_authorized(&w, 40, "tx1");          /* the same tx_id, a new block */
    expect_wallet("w1", "Main wallet", 95, 55, 1, 4);
    w_captured(&w, 40, "tx1");
    expect_wallet("w1", "Main wallet", 55, 55, 0, 5);
}

Test(readmodel, released_gives_the_block_back)
{
    struct wstream w = { "w1", 0, 0 };
    w_topped_up(&w, 100);
    w_authorized(&w, 30, "tx1");
    w_authorized(&w, 20, "tx2");
    w_released(&w, 30, "tx1");
    expect_wallet("w1", "Main wallet", 100, 80, 1, 4);
    w_released(&w, 20, "tx2");
    expect_wallet("w1", "Main wallet", 100, 100, 0, 5);
}

Test(readmodel, balances_near_the_int64_limit_stay_exact)
{
    /* The wallet lets a balance reach INT64_MAX (wallet.c: a top-up is
     * refused only past it), and its invariant keeps available within
     * 0..balance: the view must say exactly what the aggregate says. */
    struct wstream w = { "w1", 0, 0 };
    w_topped_up(&w, 100);
    w_authorized(&w, 50, "tx1");
    w_topped_up(&w, INT64_MAX - 110);      /* balance INT64_MAX - 10 */
    expect_wallet("w1", "Main wallet", INT64_MAX - 10, INT64_MAX - 60, 1, 3);
    w_released(&w, 50, "tx1");
    expect_wallet("w1", "Main wallet", INT64_MAX - 10, INT64_MAX - 10, 0, 4);
    w_topped_up(&w, 10);
    expect_wallet("w1", "Main wallet", INT64_MAX, INT64_MAX, 0, 5);
}

Test(readmodel, streams_are_rows_apart_and_share_the_positions)
{
    struct wstream a = { "a", 0, 0 }, b = { "b", 0, 0 };
    w_topped_up(&a, 10);
    w_topped_up(&b, 20);
    w_authorized(&a, 5, "tx");
    w_authorized(&b, 5, "tx");            /* the same tx_id in another wallet */
    w_captured(&b, 5, "tx");
    expect_wallet("a", "Main wallet", 10, 5, 1, 2);
    expect_wallet("b", "Main wallet", 15, 15, 0, 3);
    cr_assert_eq(readmodel_position(rm, W), 5);
    cr_assert_eq(readmodel_position(rm, A), 0, "wallet events moved the account position");
}

Test(readmodel, a_mixed_history_matches_a_model_of_it)
{
    /* 40 wallets, a few hundred events, each transaction several events:
     * every row equals what a plain model of the events says. */
    enum { NW = 40 };
    struct model { struct wstream w; char id[8]; int64_t blocks[4]; char label[16]; } m[NW];
    memset(m, 0, sizeof m);
    for (int i = 0; i < NW; i++) {
        snprintf(m[i].id, sizeof m[i].id, "w%02d", i);
        m[i].w.id = m[i].id;
        strcpy(m[i].label, "Main wallet");
    }
    unsigned seed = 12345;
    for (int step = 0; step < 600; step++) {
        seed = seed * 1103515245u + 12345u;
        struct model *x = &m[(seed >> 8) % NW];
        int op = (int)((seed >> 20) % 5);
        int slot = (int)((seed >> 4) % 4);
        char tx[8];
        snprintf(tx, sizeof tx, "t%d", slot);
        int64_t blocked = 0;
        for (int k = 0; k < 4; k++)
            blocked += x->blocks[k];
        if (op == 0 || x->w.balance == 0) {
            w_topped_up(&x->w, 1 + (int64_t)(seed % 97));
        } else if (op == 1 && !x->blocks[slot] && x->w.balance - blocked > 0) {
            int64_t amt = 1 + (int64_t)((seed >> 3) % (uint64_t)(x->w.balance - blocked));
            w_authorized(&x->w, amt, tx);
            x->blocks[slot] = amt;
        } else if (op == 2 && x->blocks[slot]) {
            int64_t amt = 1 + (int64_t)((seed >> 5) % (uint64_t)x->blocks[slot]);
            w_captured(&x->w, amt, tx);
            x->blocks[slot] = 0;
        } else if (op == 3 && x->blocks[slot]) {
            w_released(&x->w, x->blocks[slot], tx);
            x->blocks[slot] = 0;
        } else {
            snprintf(x->label, sizeof x->label, "L%d", step);
            w_renamed(&x->w, x->label);
        }
    }
    int64_t sum = 0;
    uint64_t exist = 0;
    for (int i = 0; i < NW; i++) {
        if (!m[i].w.version) {
            expect_no_wallet(m[i].id);
            continue;
        }
        int64_t blocked = 0;
        uint32_t nb = 0;
        for (int k = 0; k < 4; k++) {
            blocked += m[i].blocks[k];
            nb += m[i].blocks[k] != 0;
        }
        expect_wallet(m[i].id, m[i].label, m[i].w.balance, m[i].w.balance - blocked, nb,
                      m[i].w.version);
        sum += m[i].w.balance;
        exist++;
    }
    int64_t b;
    uint64_t n;
    total_balance(&b, &n);
    cr_assert(b == sum && n == exist, "TotalBalance %lld over %llu, expected %lld over %llu",
              (long long)b, (unsigned long long)n, (long long)sum, (unsigned long long)exist);
    cr_assert_eq(readmodel_position(rm, W), 600);
}

Test(readmodel, many_events_in_one_transaction)
{
    struct wstream w = { "w1", 0, 0 };
    begin();
    for (int i = 1; i <= 500; i++) {
        Wallet__WalletToppedUp e = WALLET__WALLET_TOPPED_UP__INIT;
        e.from = w.balance;
        e.to = w.balance + i;
        w.balance += i;
        int rc = apply_raw(W, "w1", ++w.version, (uint64_t)i, &e.base);
        cr_assert_eq(rc, READMODEL_APPLIED, "event %d: %d (%s)", i, rc, err);
        cr_assert_eq(readmodel_position(rm, W), (uint64_t)i,
                     "the open transaction's position is the last applied");
    }
    commit();
    expect_wallet("w1", "Main wallet", 500 * 501 / 2, 500 * 501 / 2, 0, 500);
    cr_assert_eq(readmodel_position(rm, W), 500);
}

/* --- account rules ---------------------------------------------------------- */

Test(readmodel, account_opened_changed_closed)
{
    struct astream a = { "acc1", 0 };
    a_opened(&a, "Ann", "ann@example.com");
    expect_account("ann@example.com", "acc1", "Ann", 1, 1);
    a_email_changed(&a, "ann@example.com", "ann@example.org");
    expect_no_account("ann@example.com");
    expect_account("ann@example.org", "acc1", "Ann", 1, 2);
    a_closed(&a);
    expect_account("ann@example.org", "acc1", "Ann", 0, 3);
    cr_assert_eq(readmodel_position(rm, A), 3);
    cr_assert_eq(readmodel_position(rm, W), 0, "account events moved the wallet position");
}

Test(readmodel, find_by_email_answers_the_lowest_id)
{
    struct astream b = { "acc-b", 0 }, a = { "acc-a", 0 }, c = { "acc-c", 0 };
    a_opened(&b, "Bob", "shared@example.com");
    a_opened(&c, "Cat", "shared@example.com");
    expect_account("shared@example.com", "acc-b", "Bob", 1, 1);
    a_opened(&a, "Ann", "shared@example.com");
    expect_account("shared@example.com", "acc-a", "Ann", 1, 1);
    a_email_changed(&a, "shared@example.com", "ann@example.com");
    expect_account("shared@example.com", "acc-b", "Bob", 1, 1);
    expect_account("ann@example.com", "acc-a", "Ann", 1, 2);
}

/* --- ListWallets and TotalBalance ------------------------------------------- */

/* Wallets w000..w(n-1) topped up by (i % 10) * 10 + 10, applied out of id
 * order; returns the sum. */
static int64_t make_wallets(int n)
{
    int64_t sum = 0;
    begin();
    for (int k = 0; k < n; k++) {
        int i = (k * 37) % n;             /* n not a multiple of 37: a permutation */
        char id[16];
        snprintf(id, sizeof id, "w%03d", i);
        Wallet__WalletToppedUp e = WALLET__WALLET_TOPPED_UP__INIT;
        e.from = 0;
        e.to = (i % 10) * 10 + 10;
        sum += e.to;
        int rc = apply_raw(W, id, 1, ++wpos, &e.base);
        cr_assert_eq(rc, READMODEL_APPLIED, "%s: %d (%s)", id, rc, err);
    }
    commit();
    return sum;
}

Test(readmodel, list_wallets_pages_by_id_with_min_balance)
{
    int64_t sum = make_wallets(150);
    /* min_balance 50: balances 50..100, i.e. i % 10 >= 4: 6 of every 10 */
    char after[16] = "";
    int pages = 0, seen = 0;
    char last[16] = "";
    for (;;) {
        Wallet__WalletList *l = list_wallets(50, 7, after);
        cr_assert_leq(l->n_wallets, 7, "a page of limit 7 has %zu rows", l->n_wallets);
        for (size_t k = 0; k < l->n_wallets; k++) {
            const Wallet__WalletView *v = l->wallets[k];
            cr_assert(strcmp(v->id, last) > 0, "ListWallets: %s after %s, not by id", v->id,
                      last);
            /* every wallet in between that qualifies is here: the next id
             * in order with i % 10 >= 4 */
            int i = atoi(v->id + 1);
            int expect = seen == 0 ? 4 : -1;
            if (seen) {
                int prev = atoi(last + 1);
                expect = prev + 1;
                while (expect % 10 < 4)
                    expect++;
            }
            cr_assert_eq(i, expect, "ListWallets: %s, expected w%03d", v->id, expect);
            cr_assert_geq(v->balance, 50);
            cr_assert_eq(v->balance, (i % 10) * 10 + 10);
            cr_assert_eq(v->available, v->balance);
            cr_assert_eq(v->version, 1);
            cr_assert_str_eq(v->label, "Main wallet");
            snprintf(last, sizeof last, "%s", v->id);
            seen++;
        }
        size_t n = l->n_wallets;
        wallet__wallet_list__free_unpacked(l, NULL);
        if (n < 7)
            break;
        snprintf(after, sizeof after, "%s", last);
        pages++;
        cr_assert_lt(pages, 100, "paging does not end");
    }
    cr_assert_eq(seen, 90, "ListWallets min_balance 50 over every page: %d rows, expected 90",
                 seen);
    cr_assert_str_eq(last, "w149");

    /* limit 0: 100; limit 1000 with nothing past the last id: none */
    Wallet__WalletList *l = list_wallets(0, 0, NULL);
    cr_assert_eq(l->n_wallets, 100, "ListWallets limit 0: %zu rows, expected 100", l->n_wallets);
    cr_assert_str_eq(l->wallets[0]->id, "w000");
    cr_assert_str_eq(l->wallets[99]->id, "w099");
    wallet__wallet_list__free_unpacked(l, NULL);
    l = list_wallets(0, 1000, NULL);
    cr_assert_eq(l->n_wallets, 150);
    wallet__wallet_list__free_unpacked(l, NULL);
    l = list_wallets(0, 1000, "w149");
    cr_assert_eq(l->n_wallets, 0, "ListWallets after the last id: %zu rows", l->n_wallets);
    wallet__wallet_list__free_unpacked(l, NULL);
    l = list_wallets(101, 10, NULL);
    cr_assert_eq(l->n_wallets, 0, "no wallet has more than 100: %zu rows", l->n_wallets);
    wallet__wallet_list__free_unpacked(l, NULL);

    int64_t b;
    uint64_t n;
    total_balance(&b, &n);
    cr_assert(b == sum && n == 150, "TotalBalance %lld over %llu, expected %lld over 150",
              (long long)b, (unsigned long long)n, (long long)sum);
}

Test(readmodel, list_wallets_sees_balances_after_captures)
{
    struct wstream a = { "a", 0, 0 }, b = { "b", 0, 0 };
    w_topped_up(&a, 100);
    w_topped_up(&b, 100);
    w_authorized(&a, 60, "tx");
    w_captured(&a, 60, "tx");              /* a: 40 */
    Wallet__WalletList *l = list_wallets(50, 10, NULL);
    cr_assert_eq(l->n_wallets, 1);
    cr_assert_str_eq(l->wallets[0]->id, "b");
    wallet__wallet_list__free_unpacked(l, NULL);
    int64_t sum;
    uint64_t n;
    total_balance(&sum, &n);
    cr_assert(sum == 140 && n == 2, "TotalBalance %lld over %llu", (long long)sum,
              (unsigned long long)n);
}

/* --- exactly once ------------------------------------------------------------ */

static int topup_at(const char *id, uint64_t version, uint64_t position, int64_t from, int64_t to)
{
    Wallet__WalletToppedUp e = WALLET__WALLET_TOPPED_UP__INIT;
    e.from = from;
    e.to = to;
    return apply_raw(W, id, version, position, &e.base);
}

Test(readmodel, an_applied_position_is_skipped_and_changes_nothing)
{
    struct wstream w = { "w1", 0, 0 };
    w_topped_up(&w, 100);
    w_authorized(&w, 30, "tx1");
    w_topped_up(&w, 5);
    size_t len;
    char *before = snapshot_rows(&len);
    begin();
    for (uint64_t p = 1; p <= 3; p++) {
        /* the same positions again, even with other contents */
        int rc = topup_at("w1", p, p, 0, 1000);
        cr_assert_eq(rc, READMODEL_SKIPPED, "position %llu again: %d (%s)", (unsigned long long)p,
                     rc, err);
        rc = topup_at("other", 1, p, 0, 1000);
        cr_assert_eq(rc, READMODEL_SKIPPED, "position %llu of another stream: %d",
                     (unsigned long long)p, rc);
    }
    commit();
    cr_assert_eq(readmodel_position(rm, W), 3);
    expect_same_rows(before, len, "replaying positions 1..3");
    expect_no_wallet("other");
    free(before);
    /* and the next one still applies */
    w_topped_up(&w, 1);
    expect_wallet("w1", "Main wallet", 106, 76, 1, 4);
}

Test(readmodel, a_gap_is_refused_and_changes_nothing)
{
    struct wstream w = { "w1", 0, 0 };
    w_topped_up(&w, 100);
    w_topped_up(&w, 10);
    size_t len;
    char *before = snapshot_rows(&len);
    begin();
    int rc = topup_at("w1", 3, 4, 110, 200);   /* position 3 missing */
    cr_assert_eq(rc, READMODEL_GAP, "position 4 after 2: %d (%s)", rc, err);
    rc = topup_at("w2", 1, 1000, 0, 5);
    cr_assert_eq(rc, READMODEL_GAP, "position 1000 after 2: %d (%s)", rc, err);
    cr_assert_eq(readmodel_position(rm, W), 2, "a gap moved the position");
    commit();
    cr_assert_eq(readmodel_position(rm, W), 2);
    expect_same_rows(before, len, "a gap");
    expect_no_wallet("w2");
    free(before);
    /* the missing position, then the one that was refused */
    begin();
    cr_assert_eq(topup_at("w1", 3, 3, 110, 150), READMODEL_APPLIED, "%s", err);
    cr_assert_eq(topup_at("w1", 4, 4, 150, 200), READMODEL_APPLIED, "%s", err);
    commit();
    expect_wallet("w1", "Main wallet", 200, 200, 0, 4);
}

Test(readmodel, rollback_gives_the_position_and_rows_back)
{
    struct wstream w = { "w1", 0, 0 };
    w_topped_up(&w, 100);
    size_t len;
    char *before = snapshot_rows(&len);
    begin();
    cr_assert_eq(topup_at("w1", 2, 2, 100, 150), READMODEL_APPLIED, "%s", err);
    cr_assert_eq(topup_at("w2", 1, 3, 0, 7), READMODEL_APPLIED, "%s", err);
    cr_assert_eq(readmodel_position(rm, W), 3);
    readmodel_rollback(rm);
    cr_assert_eq(readmodel_position(rm, W), 1, "after a rollback: position %llu, expected 1",
                 (unsigned long long)readmodel_position(rm, W));
    expect_same_rows(before, len, "a rolled back transaction");
    expect_no_wallet("w2");
    free(before);
    /* position 2 is next again */
    begin();
    cr_assert_eq(topup_at("w1", 2, 3, 100, 150), READMODEL_GAP);
    cr_assert_eq(topup_at("w1", 2, 2, 100, 160), READMODEL_APPLIED, "%s", err);
    commit();
    expect_wallet("w1", "Main wallet", 160, 160, 0, 2);
}

Test(readmodel, a_failed_apply_applies_nothing_of_that_event)
{
    struct wstream w = { "w1", 0, 0 };
    w_topped_up(&w, 100);
    begin();
    /* an event type the wallet does not have */
    Account__AccountOpened bad = ACCOUNT__ACCOUNT_OPENED__INIT;
    bad.owner = "x";
    bad.email = "x@example.com";
    int rc = apply_raw(W, "w1", 2, 2, &bad.base);
    cr_assert_eq(rc, -1, "an AccountOpened as a wallet event: %d", rc);
    cr_assert(err[0], "no sentence for an unknown event type");
    cr_assert_eq(readmodel_position(rm, W), 1, "an unknown event moved the position");

    /* data that does not decode as the named event */
    Cqrs__EventRecord rec = CQRS__EVENT_RECORD__INIT;
    rec.version = 2;
    rec.type = "WalletToppedUp";
    rec.data.data = (uint8_t *)"\xff\xff\xff";
    rec.data.len = 3;
    rec.stream = "w1";
    rec.position = 2;
    rc = readmodel_apply(rm, W, &rec, err, sizeof err);
    cr_assert_eq(rc, -1, "undecodable data: %d", rc);
    cr_assert_eq(readmodel_position(rm, W), 1, "an undecodable event moved the position");
    readmodel_rollback(rm);
    expect_wallet("w1", "Main wallet", 100, 100, 0, 1);
    w_topped_up(&w, 1);
    expect_wallet("w1", "Main wallet", 101, 101, 0, 2);
}

Test(readmodel, an_event_outside_a_transaction_is_refused)
{
    int rc = topup_at("w1", 1, 1, 0, 10);
    cr_assert_eq(rc, -1, "an apply outside a transaction gave %d", rc);
    cr_assert_eq(readmodel_position(rm, W), 0);
    expect_no_wallet("w1");
}

Test(readmodel, positions_survive_close_and_open)
{
    char path[128];
    open_file_database(path, sizeof path);

    struct wstream w = { "w1", 0, 0 };
    struct astream a = { "acc1", 0 };
    w_topped_up(&w, 100);
    w_authorized(&w, 40, "tx1");
    w_renamed(&w, "Kept");
    a_opened(&a, "Ann", "ann@example.com");
    size_t len;
    char *before = snapshot_rows(&len);

    /* applied but not committed when the database closes: lost */
    begin();
    cr_assert_eq(topup_at("w1", 4, 4, 100, 999), READMODEL_APPLIED, "%s", err);
    readmodel_close(rm);
    rm = readmodel_open(path, err, sizeof err);
    cr_assert(rm, "readmodel_open again: %s", err);
    cr_assert_eq(readmodel_position(rm, W), 3, "wallet position after reopening: %llu, "
                 "expected the committed 3", (unsigned long long)readmodel_position(rm, W));
    cr_assert_eq(readmodel_position(rm, A), 1, "account position after reopening: %llu",
                 (unsigned long long)readmodel_position(rm, A));
    expect_same_rows(before, len, "closing with an open transaction");
    free(before);
    begin();
    cr_assert_eq(topup_at("w1", 3, 3, 100, 999), READMODEL_SKIPPED);
    cr_assert_eq(topup_at("w1", 4, 5, 100, 999), READMODEL_GAP);
    cr_assert_eq(topup_at("w1", 4, 4, 100, 130), READMODEL_APPLIED, "%s", err);
    commit();
    readmodel_close(rm);
    rm = readmodel_open(path, err, sizeof err);
    cr_assert(rm, "readmodel_open a third time: %s", err);
    cr_assert_eq(readmodel_position(rm, W), 4);
    expect_wallet("w1", "Kept", 130, 90, 1, 4);
}

/* A database built under another version of a projection: that type's
 * tables and position go (every event is applied again), the others stay. */
Test(readmodel, a_changed_projection_starts_its_type_again)
{
    char path[128];
    open_file_database(path, sizeof path);
    cr_assert_str_empty(readmodel_note(rm), "a new database: %s", readmodel_note(rm));
    struct wstream w = { "w1", 0, 0 };
    struct astream a = { "acc1", 0 };
    w_topped_up(&w, 100);
    a_opened(&a, "Ann", "ann@example.com");
    readmodel_close(rm);

    /* the same version: nothing happens */
    rm = readmodel_open(path, err, sizeof err);
    cr_assert(rm, "%s", err);
    cr_assert_str_empty(readmodel_note(rm), "%s", readmodel_note(rm));
    cr_assert_eq(readmodel_position(rm, W), 1);
    readmodel_close(rm);

    /* as if the database had been built by an older wallet projection */
    sqlite3 *db;
    cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(db, "UPDATE projections SET version = version + 7 WHERE "
                              "type = 'wallet'", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    rm = readmodel_open(path, err, sizeof err);
    cr_assert(rm, "%s", err);
    cr_assert(strstr(readmodel_note(rm), "wallet: projection"), "note: \"%s\"",
              readmodel_note(rm));
    cr_assert_null(strstr(readmodel_note(rm), "account"), "%s", readmodel_note(rm));
    cr_assert_eq(readmodel_position(rm, W), 0, "the wallet position stayed at %llu",
                 (unsigned long long)readmodel_position(rm, W));
    expect_no_wallet("w1");
    cr_assert_eq(readmodel_position(rm, A), 1, "the account projection was touched");
    expect_account("ann@example.com", "acc1", "Ann", 1, 1);
    /* and the events apply again from the first */
    wpos = 0;
    w = (struct wstream){ "w1", 0, 0 };
    w_topped_up(&w, 100);
    expect_wallet("w1", "Main wallet", 100, 100, 0, 1);
}

Test(readmodel, reset_empties_rows_and_positions)
{
    char path[128];
    open_file_database(path, sizeof path);

    struct wstream w = { "w1", 0, 0 };
    struct astream a = { "acc1", 0 };
    w_topped_up(&w, 100);
    w_authorized(&w, 40, "tx1");
    a_opened(&a, "Ann", "ann@example.com");
    size_t len;
    char *before = snapshot_rows(&len);

    cr_assert(readmodel_reset(rm, err, sizeof err) == 0, "readmodel_reset: %s", err);
    cr_assert_eq(readmodel_position(rm, W), 0);
    cr_assert_eq(readmodel_position(rm, A), 0);
    expect_no_wallet("w1");
    expect_no_account("ann@example.com");
    int64_t b;
    uint64_t n;
    total_balance(&b, &n);
    cr_assert(b == 0 && n == 0, "TotalBalance after reset: %lld over %llu", (long long)b,
              (unsigned long long)n);

    /* the positions stay at 0 for a fresh open too */
    readmodel_close(rm);
    rm = readmodel_open(path, err, sizeof err);
    cr_assert(rm, "readmodel_open after reset: %s", err);
    cr_assert_eq(readmodel_position(rm, W), 0, "wallet position after reset and reopen: %llu",
                 (unsigned long long)readmodel_position(rm, W));
    cr_assert_eq(readmodel_position(rm, A), 0);
    expect_no_wallet("w1");

    /* the same events again give the same rows (the blocks were emptied
     * too: the capture releases exactly the block applied again) */
    wpos = apos = 0;
    w = (struct wstream){ "w1", 0, 0 };
    a = (struct astream){ "acc1", 0 };
    w_topped_up(&w, 100);
    w_authorized(&w, 40, "tx1");
    a_opened(&a, "Ann", "ann@example.com");
    expect_same_rows(before, len, "reset then the same events");
    free(before);
    w_captured(&w, 10, "tx1");
    expect_wallet("w1", "Main wallet", 90, 90, 0, 3);
}

Test(readmodel, reset_inside_a_transaction_drops_it)
{
    struct wstream w = { "w1", 0, 0 };
    w_topped_up(&w, 100);
    begin();
    cr_assert_eq(topup_at("w1", 2, 2, 100, 150), READMODEL_APPLIED, "%s", err);
    cr_assert(readmodel_reset(rm, err, sizeof err) == 0, "readmodel_reset: %s", err);
    cr_assert_eq(readmodel_position(rm, W), 0);
    expect_no_wallet("w1");
    begin();
    cr_assert_eq(topup_at("w1", 1, 1, 0, 100), READMODEL_APPLIED, "%s", err);
    commit();
    expect_wallet("w1", "Main wallet", 100, 100, 0, 1);
}

/* --- bad queries -------------------------------------------------------------- */

Test(readmodel, unknown_query_is_invalid)
{
    uint8_t *out;
    size_t len;
    const char *rtype;
    Wallet__GetWallet q = WALLET__GET_WALLET__INIT;
    q.id = "w1";
    cr_assert_eq(query(W, "GetWalletz", &q.base, &out, &len, &rtype), INVALID);
    cr_assert(err[0]);
    free(out);
    cr_assert_eq(query(W, "", &q.base, &out, &len, &rtype), INVALID);
    free(out);
    /* a query of the other type */
    cr_assert_eq(query(A, "GetWallet", &q.base, &out, &len, &rtype), INVALID);
    free(out);
    Account__FindByEmail f = ACCOUNT__FIND_BY_EMAIL__INIT;
    f.email = "a@b";
    cr_assert_eq(query(W, "FindByEmail", &f.base, &out, &len, &rtype), INVALID);
    free(out);
}

Test(readmodel, payload_that_does_not_decode_is_invalid)
{
    struct wstream w = { "w1", 0, 0 };
    w_topped_up(&w, 1);
    static const struct { const char *name; const char *bytes; size_t len; } bad[] = {
        { "GetWallet", "\xff\xff\xff", 3 },             /* truncated varint key */
        { "GetWallet", "\x0a\x05w1", 4 },               /* string longer than the payload */
        { "GetWallet", "\x0a\x03w\x001", 5 },           /* a NUL byte in the id */
        { "GetWallet", "\x00", 1 },                     /* field number 0 */
        { "ListWallets", "\x10", 1 },                   /* a key without its value */
        { "TotalBalance", "\x0a\x09", 2 },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint8_t *out = NULL;
        size_t len = 0;
        const char *rtype = NULL;
        err[0] = '\0';
        Cqrs__Status st = readmodel_query(rm, W, bad[i].name, (const uint8_t *)bad[i].bytes,
                                          bad[i].len, &out, &len, &rtype, err, sizeof err);
        free(out);
        cr_assert_eq(st, INVALID, "%s with bad payload #%zu: status %d, expected INVALID",
                     bad[i].name, i, (int)st);
        cr_assert(err[0], "no sentence for bad payload #%zu", i);
    }
    expect_wallet("w1", "Main wallet", 1, 1, 0, 1);
}

Test(readmodel, list_limit_above_1000_is_invalid)
{
    Wallet__ListWallets q = WALLET__LIST_WALLETS__INIT;
    uint8_t *out;
    size_t len;
    const char *rtype;
    q.limit = 1001;
    cr_assert_eq(query(W, "ListWallets", &q.base, &out, &len, &rtype), INVALID,
                 "ListWallets limit 1001 not INVALID");
    cr_assert(err[0]);
    free(out);
    q.limit = UINT32_MAX;
    cr_assert_eq(query(W, "ListWallets", &q.base, &out, &len, &rtype), INVALID);
    free(out);
    q.limit = 1000;
    cr_assert_eq(query(W, "ListWallets", &q.base, &out, &len, &rtype), OK, "limit 1000: %s", err);
    free(out);
}

Test(readmodel, get_unknown_wallet_is_not_found)
{
    struct wstream w = { "w1", 0, 0 };
    w_topped_up(&w, 1);
    expect_no_wallet("w2");
    expect_no_wallet("W1");
    expect_no_account("nobody@example.com");
}

Test(readmodel, bad_ids_and_empty_email_are_invalid)
{
    const char *ids[] = { "", ".", "..", "a/b", "with space", NULL };
    for (const char *const *id = ids; *id; id++) {
        Cqrs__Status st;
        Wallet__WalletView *v = get_wallet_st(*id, &st);
        if (v)
            wallet__wallet_view__free_unpacked(v, NULL);
        cr_assert_eq(st, INVALID, "GetWallet \"%s\": status %d, expected INVALID", *id, (int)st);
    }
    char longid[AGG_ID_MAX + 2];
    memset(longid, 'x', sizeof longid - 1);
    longid[sizeof longid - 1] = '\0';
    Cqrs__Status st;
    Wallet__WalletView *v = get_wallet_st(longid, &st);
    if (v)
        wallet__wallet_view__free_unpacked(v, NULL);
    cr_assert_eq(st, INVALID, "GetWallet of a %zu-byte id: status %d", strlen(longid), (int)st);
    Account__AccountView *a = find_by_email_st("", &st);
    if (a)
        account__account_view__free_unpacked(a, NULL);
    cr_assert_eq(st, INVALID, "FindByEmail \"\": status %d, expected INVALID", (int)st);
}

Test(readmodel, empty_payload_is_the_default_message)
{
    /* an empty payload decodes as the message with every field unset:
     * ListWallets{} is min_balance 0, limit 100, from the start */
    make_wallets(3);
    uint8_t *out = NULL;
    size_t len = 0;
    const char *rtype = NULL;
    Cqrs__Status st = readmodel_query(rm, W, "ListWallets", NULL, 0, &out, &len, &rtype, err,
                                      sizeof err);
    cr_assert_eq(st, OK, "ListWallets with an empty payload: %d (%s)", (int)st, err);
    Wallet__WalletList *l = wallet__wallet_list__unpack(NULL, len, out);
    free(out);
    cr_assert(l);
    cr_assert_eq(l->n_wallets, 3);
    wallet__wallet_list__free_unpacked(l, NULL);
}
