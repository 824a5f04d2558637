/*
 * test_domain — the example domain end to end through the real daemon: the
 * talk's wallet scenario, the account life cycle, the two kinds of "no"
 * (REJECTED appends nothing), streams without events, idempotent retries,
 * expected_version, restarts, and what the log files hold afterwards.
 *
 * Every test starts its own cqrsd in a temp dir (criterion runs tests in
 * parallel processes) and ends by stopping it: it must exit 0 on SIGTERM.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "account.pb-c.h"
#include "evlog.h"
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

TestSuite(domain, .init = setup, .fini = teardown, .timeout = 60);

#define OK CQRS__STATUS__OK
#define REJECTED CQRS__STATUS__REJECTED
#define INVALID CQRS__STATUS__INVALID
#define CONFLICT CQRS__STATUS__CONFLICT
#define NOT_FOUND CQRS__STATUS__NOT_FOUND

/* A refusal: the status, a sentence saying why, and no events. */
#define check_refused(r, st, what)                                                     \
    do {                                                                               \
        check_status(r, st, what);                                                     \
        cr_assert((r)->error[0], "%s: %s without an error sentence", (what),           \
                  cqrs_status_name(st));                                               \
        cr_assert_eq((r)->n_events, 0, "%s: a refusal carries %zu events", (what),     \
                     (r)->n_events);                                                   \
    } while (0)

/* Stops the daemon at the end of a test: SIGTERM must give exit 0. */
static void finish(void)
{
    cqrs_client_free(c);
    c = NULL;
    int st = daemon_stop(&d);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "cqrsd did not exit 0 on SIGTERM (wait status 0x%x)", st);
}

static void restart(void)
{
    cqrs_client_free(c);
    c = NULL;
    int st = daemon_stop(&d);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "cqrsd did not exit 0 on SIGTERM (wait status 0x%x)", st);
    daemon_restart(&d);
    c = daemon_connect(&d);
}

/* --- commands ------------------------------------------------------------ */

static Cqrs__Reply *w_topup(const char *id, int64_t amount, const char *cid, long long ev)
{
    Wallet__TopUp m = WALLET__TOP_UP__INIT;
    m.amount = amount;
    return send_cmd(c, "wallet", id, &m.base, cid, ev);
}

static Cqrs__Reply *w_rename(const char *id, const char *name, const char *cid)
{
    Wallet__RenameWallet m = WALLET__RENAME_WALLET__INIT;
    m.name = (char *)name;
    return send_cmd(c, "wallet", id, &m.base, cid, -1);
}

static Cqrs__Reply *w_authorize(const char *id, int64_t amount, const char *tx, const char *cid)
{
    Wallet__AuthorizeFunds m = WALLET__AUTHORIZE_FUNDS__INIT;
    m.amount = amount;
    m.tx_id = (char *)tx;
    return send_cmd(c, "wallet", id, &m.base, cid, -1);
}

static Cqrs__Reply *w_capture(const char *id, int64_t amount, const char *tx)
{
    Wallet__CaptureFunds m = WALLET__CAPTURE_FUNDS__INIT;
    m.amount = amount;
    m.tx_id = (char *)tx;
    return send_cmd(c, "wallet", id, &m.base, NULL, -1);
}

static Cqrs__Reply *w_release(const char *id, const char *tx)
{
    Wallet__ReleaseFunds m = WALLET__RELEASE_FUNDS__INIT;
    m.tx_id = (char *)tx;
    return send_cmd(c, "wallet", id, &m.base, NULL, -1);
}

static Cqrs__Reply *a_open(const char *id, const char *owner, const char *email, long long ev)
{
    Account__OpenAccount m = ACCOUNT__OPEN_ACCOUNT__INIT;
    m.owner = (char *)owner;
    m.email = (char *)email;
    return send_cmd(c, "account", id, &m.base, NULL, ev);
}

static Cqrs__Reply *a_change(const char *id, const char *email)
{
    Account__ChangeEmail m = ACCOUNT__CHANGE_EMAIL__INIT;
    m.email = (char *)email;
    return send_cmd(c, "account", id, &m.base, NULL, -1);
}

static Cqrs__Reply *a_close(const char *id)
{
    Account__CloseAccount m = ACCOUNT__CLOSE_ACCOUNT__INIT;
    return send_cmd(c, "account", id, &m.base, NULL, -1);
}

/* Sends, expects `st` and, for OK, `version` in the reply; frees the reply. */
static void expect(Cqrs__Reply *r, Cqrs__Status st, long long version, const char *what)
{
    if (st == OK)
        check_status(r, st, what);
    else
        check_refused(r, st, what);
    if (version >= 0)
        cr_assert_eq(r->version, (uint64_t)version, "%s: version %llu, expected %lld", what,
                     (unsigned long long)r->version, version);
    cqrs__reply__free_unpacked(r, NULL);
}

/* --- queries ------------------------------------------------------------- */

static Cqrs__Reply *q_state(const char *type, const char *id)
{
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_state(c, type, id, &r) == 0, "STATE %s %s: no reply", type, id);
    return r;
}

static Cqrs__Reply *q_events(const char *type, const char *id, uint64_t from, uint32_t max)
{
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_events(c, type, id, from, max, &r) == 0, "EVENTS %s %s: no reply",
              type, id);
    return r;
}

static void expect_not_found(const char *type, const char *id)
{
    Cqrs__Reply *r = q_state(type, id);
    check_status(r, NOT_FOUND, "STATE of a stream without events");
    cqrs__reply__free_unpacked(r, NULL);
    r = q_events(type, id, 1, 0);
    check_status(r, NOT_FOUND, "EVENTS of a stream without events");
    cr_assert_eq(r->n_events, 0);
    cqrs__reply__free_unpacked(r, NULL);
}

/* The wallet's state as STATE reports it; *version is the stream's. */
static Wallet__WalletState *wallet_state(const char *id, uint64_t *version)
{
    Cqrs__Reply *r = q_state("wallet", id);
    check_status(r, OK, "STATE wallet");
    cr_assert_str_eq(r->state_type, "WalletState");
    Wallet__WalletState *s = wallet__wallet_state__unpack(NULL, r->state.len, r->state.data);
    cr_assert(s, "STATE wallet %s: state does not decode as WalletState", id);
    *version = r->version;
    cqrs__reply__free_unpacked(r, NULL);
    return s;
}

/* Asserts label, balance, number of blocked entries and version. */
static void expect_wallet(const char *id, const char *label, int64_t balance, size_t n_blocked,
                          uint64_t version)
{
    uint64_t v;
    Wallet__WalletState *s = wallet_state(id, &v);
    cr_assert_str_eq(s->label, label, "wallet %s label", id);
    cr_assert_eq(s->balance, balance, "wallet %s balance %lld, expected %lld", id,
                 (long long)s->balance, (long long)balance);
    cr_assert_eq(s->n_blocked, n_blocked, "wallet %s has %zu blocked entries, expected %zu", id,
                 s->n_blocked, n_blocked);
    cr_assert_eq(v, version, "wallet %s at version %llu, expected %llu", id,
                 (unsigned long long)v, (unsigned long long)version);
    wallet__wallet_state__free_unpacked(s, NULL);
}

static Account__AccountState *account_state(const char *id, uint64_t *version)
{
    Cqrs__Reply *r = q_state("account", id);
    check_status(r, OK, "STATE account");
    cr_assert_str_eq(r->state_type, "AccountState");
    Account__AccountState *s = account__account_state__unpack(NULL, r->state.len, r->state.data);
    cr_assert(s, "STATE account %s: state does not decode as AccountState", id);
    *version = r->version;
    cqrs__reply__free_unpacked(r, NULL);
    return s;
}

static size_t count_events(const char *type, const char *id)
{
    Cqrs__Reply *r = q_events(type, id, 1, 0);
    check_status(r, OK, "EVENTS");
    size_t n = r->n_events;
    cqrs__reply__free_unpacked(r, NULL);
    return n;
}

/* --- events -------------------------------------------------------------- */

static void check_event(const Cqrs__EventRecord *e, uint64_t version, const char *type)
{
    cr_assert_eq(e->version, version, "event version %llu, expected %llu",
                 (unsigned long long)e->version, (unsigned long long)version);
    cr_assert_str_eq(e->type, type, "event %llu", (unsigned long long)version);
    cr_assert(e->timestamp_us > 0, "event %llu has no timestamp", (unsigned long long)version);
}

/* The single event of a command reply, checked. */
static const Cqrs__EventRecord *only_event(const Cqrs__Reply *r, uint64_t version, const char *type)
{
    cr_assert_eq(r->version, version, "reply version %llu, expected %llu",
                 (unsigned long long)r->version, (unsigned long long)version);
    cr_assert_eq(r->n_events, 1, "%s: %zu events in the reply, expected 1", type, r->n_events);
    check_event(r->events[0], version, type);
    return r->events[0];
}

static void same_event(const Cqrs__EventRecord *a, const Cqrs__EventRecord *b)
{
    cr_assert_eq(a->version, b->version, "versions %llu and %llu differ",
                 (unsigned long long)a->version, (unsigned long long)b->version);
    cr_assert_str_eq(a->type, b->type, "event %llu type", (unsigned long long)a->version);
    cr_assert_eq(a->data.len, b->data.len, "event %llu data length", (unsigned long long)a->version);
    cr_assert(a->data.len == 0 || memcmp(a->data.data, b->data.data, a->data.len) == 0,
              "event %llu data differs", (unsigned long long)a->version);
    cr_assert_str_eq(a->command_id, b->command_id, "event %llu command_id",
                     (unsigned long long)a->version);
    cr_assert_eq(a->timestamp_us, b->timestamp_us, "event %llu timestamp",
                 (unsigned long long)a->version);
}

static void same_events(const Cqrs__Reply *a, const Cqrs__Reply *b)
{
    cr_assert_eq(a->n_events, b->n_events, "%zu events vs %zu", a->n_events, b->n_events);
    for (size_t i = 0; i < a->n_events; i++)
        same_event(a->events[i], b->events[i]);
}

static void check_topped_up(const Cqrs__EventRecord *e, int64_t from, int64_t to)
{
    Wallet__WalletToppedUp *t = wallet__wallet_topped_up__unpack(NULL, e->data.len, e->data.data);
    cr_assert(t, "WalletToppedUp does not decode");
    cr_assert_eq(t->from, from, "WalletToppedUp from %lld, expected %lld", (long long)t->from,
                 (long long)from);
    cr_assert_eq(t->to, to, "WalletToppedUp to %lld, expected %lld", (long long)t->to,
                 (long long)to);
    wallet__wallet_topped_up__free_unpacked(t, NULL);
}

/* --- the talk's scenario ------------------------------------------------- */

static const char *const talk_types[] = {
    "WalletToppedUp", "WalletRenamed", "FundsAuthorized", "FundsCaptured",
};

/* Runs the talk's scenario on wallet `id`; returns the four OK replies. */
static void talk_scenario(const char *id, Cqrs__Reply *acks[4])
{
    Cqrs__Reply *r = w_topup(id, 100, "talk-1", -1);
    check_status(r, OK, "TopUp 100");
    check_topped_up(only_event(r, 1, "WalletToppedUp"), 0, 100);
    cr_assert_str_eq(r->events[0]->command_id, "talk-1");
    acks[0] = r;

    r = w_rename(id, "Savings", "talk-2");
    check_status(r, OK, "RenameWallet Savings");
    const Cqrs__EventRecord *e = only_event(r, 2, "WalletRenamed");
    Wallet__WalletRenamed *wr = wallet__wallet_renamed__unpack(NULL, e->data.len, e->data.data);
    cr_assert(wr, "WalletRenamed does not decode");
    cr_assert_str_eq(wr->name, "Savings");
    wallet__wallet_renamed__free_unpacked(wr, NULL);
    acks[1] = r;

    r = w_authorize(id, 10, "123", "talk-3");
    check_status(r, OK, "AuthorizeFunds 10 tx 123");
    e = only_event(r, 3, "FundsAuthorized");
    Wallet__FundsAuthorized *fa = wallet__funds_authorized__unpack(NULL, e->data.len, e->data.data);
    cr_assert(fa, "FundsAuthorized does not decode");
    cr_assert_eq(fa->amount, 10);
    cr_assert_str_eq(fa->tx_id, "123");
    wallet__funds_authorized__free_unpacked(fa, NULL);
    acks[2] = r;

    /* authorizing blocks funds: the balance is unchanged */
    uint64_t v;
    Wallet__WalletState *s = wallet_state(id, &v);
    cr_assert_eq(v, 3);
    cr_assert_eq(s->balance, 100, "authorizing changed the balance to %lld", (long long)s->balance);
    cr_assert_eq(s->n_blocked, 1, "%zu blocked entries after one authorization", s->n_blocked);
    cr_assert_str_eq(s->blocked[0]->tx_id, "123");
    cr_assert_eq(s->blocked[0]->amount, 10);
    wallet__wallet_state__free_unpacked(s, NULL);

    r = w_capture(id, 8, "123");
    check_status(r, OK, "CaptureFunds 8 tx 123");
    e = only_event(r, 4, "FundsCaptured");
    Wallet__FundsCaptured *fc = wallet__funds_captured__unpack(NULL, e->data.len, e->data.data);
    cr_assert(fc, "FundsCaptured does not decode");
    cr_assert_eq(fc->amount, 8);
    cr_assert_str_eq(fc->tx_id, "123");
    wallet__funds_captured__free_unpacked(fc, NULL);
    acks[3] = r;
}

static void free_acks(Cqrs__Reply **acks, size_t n)
{
    for (size_t i = 0; i < n; i++)
        cqrs__reply__free_unpacked(acks[i], NULL);
}

/* STATE and EVENTS of a wallet after the talk's scenario. */
static void check_after_talk(const char *id, Cqrs__Reply *acks[4])
{
    expect_wallet(id, "Savings", 92, 0, 4);

    Cqrs__Reply *r = q_events("wallet", id, 1, 0);
    check_status(r, OK, "EVENTS after the scenario");
    cr_assert_eq(r->version, 4);
    cr_assert_eq(r->n_events, 4, "EVENTS returned %zu events, expected 4", r->n_events);
    for (size_t i = 0; i < 4; i++) {
        check_event(r->events[i], i + 1, talk_types[i]);
        same_event(r->events[i], acks[i]->events[0]);
    }
    cqrs__reply__free_unpacked(r, NULL);
}

Test(domain, talk_scenario)
{
    Cqrs__Reply *acks[4];
    talk_scenario("w1", acks);
    check_after_talk("w1", acks);

    /* EVENTS honours from_version and max_count */
    Cqrs__Reply *r = q_events("wallet", "w1", 3, 1);
    check_status(r, OK, "EVENTS from 3, at most 1");
    cr_assert_eq(r->n_events, 1, "EVENTS from 3 max 1 returned %zu events", r->n_events);
    same_event(r->events[0], acks[2]->events[0]);
    cqrs__reply__free_unpacked(r, NULL);
    r = q_events("wallet", "w1", 2, 0);
    check_status(r, OK, "EVENTS from 2");
    cr_assert_eq(r->n_events, 3, "EVENTS from 2 returned %zu events", r->n_events);
    cr_assert_eq(r->events[0]->version, 2);
    cqrs__reply__free_unpacked(r, NULL);

    free_acks(acks, 4);
    finish();
}

Test(domain, state_survives_restart)
{
    Cqrs__Reply *acks[4];
    talk_scenario("w1", acks);
    expect(a_open("acc1", "alice", "alice@example.com", -1), OK, 1, "OpenAccount");
    Cqrs__Reply *before = q_events("wallet", "w1", 1, 0);
    check_status(before, OK, "EVENTS before the restart");

    restart();

    check_after_talk("w1", acks);
    Cqrs__Reply *after = q_events("wallet", "w1", 1, 0);
    check_status(after, OK, "EVENTS after the restart");
    same_events(before, after);
    cqrs__reply__free_unpacked(before, NULL);
    cqrs__reply__free_unpacked(after, NULL);

    uint64_t v;
    Account__AccountState *as = account_state("acc1", &v);
    cr_assert_eq(v, 1);
    cr_assert(as->open && !as->closed, "account acc1 not open after a restart");
    cr_assert_str_eq(as->owner, "alice");
    cr_assert_str_eq(as->email, "alice@example.com");
    account__account_state__free_unpacked(as, NULL);

    /* the streams go on from where they were, with the rules' state intact */
    Cqrs__Reply *r = w_topup("w1", 1, NULL, -1);
    check_status(r, OK, "TopUp after the restart");
    check_topped_up(only_event(r, 5, "WalletToppedUp"), 92, 93);
    cqrs__reply__free_unpacked(r, NULL);
    expect(w_capture("w1", 1, "123"), REJECTED, -1, "capture of a tx captured before the restart");
    expect(a_open("acc1", "alice", "alice@example.com", -1), REJECTED, -1,
           "OpenAccount on an account opened before the restart");
    expect_wallet("w1", "Savings", 93, 0, 5);

    free_acks(acks, 4);
    finish();
}

/* --- account life cycle -------------------------------------------------- */

Test(domain, account_life_cycle)
{
    /* nothing but OpenAccount works on an account that was never opened */
    expect(a_change("alice", "a@example.com"), REJECTED, -1, "ChangeEmail before OpenAccount");
    expect(a_close("alice"), REJECTED, -1, "CloseAccount before OpenAccount");
    expect_not_found("account", "alice");

    Cqrs__Reply *r = a_open("alice", "Alice", "alice@example.com", -1);
    check_status(r, OK, "OpenAccount");
    const Cqrs__EventRecord *e = only_event(r, 1, "AccountOpened");
    Account__AccountOpened *ao = account__account_opened__unpack(NULL, e->data.len, e->data.data);
    cr_assert(ao, "AccountOpened does not decode");
    cr_assert_str_eq(ao->owner, "Alice");
    cr_assert_str_eq(ao->email, "alice@example.com");
    account__account_opened__free_unpacked(ao, NULL);
    cqrs__reply__free_unpacked(r, NULL);

    expect(a_open("alice", "Mallory", "m@example.com", -1), REJECTED, -1,
           "a second OpenAccount on an open account");

    r = a_change("alice", "alice@work.example");
    check_status(r, OK, "ChangeEmail");
    e = only_event(r, 2, "EmailChanged");
    Account__EmailChanged *ec = account__email_changed__unpack(NULL, e->data.len, e->data.data);
    cr_assert(ec, "EmailChanged does not decode");
    cr_assert_str_eq(ec->from, "alice@example.com");
    cr_assert_str_eq(ec->to, "alice@work.example");
    account__email_changed__free_unpacked(ec, NULL);
    cqrs__reply__free_unpacked(r, NULL);

    /* changing to the current email appends nothing */
    r = a_change("alice", "alice@work.example");
    check_status(r, OK, "ChangeEmail to the current email");
    cr_assert_eq(r->n_events, 0, "ChangeEmail to the current email appended %zu events",
                 r->n_events);
    cr_assert_eq(r->version, 2);
    cqrs__reply__free_unpacked(r, NULL);

    uint64_t v;
    Account__AccountState *s = account_state("alice", &v);
    cr_assert_eq(v, 2, "account at version %llu after a rejected OpenAccount and a no-op change",
                 (unsigned long long)v);
    cr_assert_str_eq(s->owner, "Alice", "the rejected OpenAccount changed the owner");
    cr_assert_str_eq(s->email, "alice@work.example");
    cr_assert(s->open && !s->closed, "an open account reads open=%d closed=%d", s->open, s->closed);
    account__account_state__free_unpacked(s, NULL);

    r = a_close("alice");
    check_status(r, OK, "CloseAccount");
    only_event(r, 3, "AccountClosed");
    cqrs__reply__free_unpacked(r, NULL);

    /* a closed account refuses everything */
    expect(a_open("alice", "Alice", "alice@example.com", -1), REJECTED, -1,
           "OpenAccount on a closed account");
    expect(a_change("alice", "new@example.com"), REJECTED, -1, "ChangeEmail on a closed account");
    expect(a_change("alice", "alice@work.example"), REJECTED, -1,
           "ChangeEmail to the current email on a closed account");
    expect(a_close("alice"), REJECTED, -1, "CloseAccount on a closed account");

    s = account_state("alice", &v);
    cr_assert_eq(v, 3, "closed account at version %llu, expected 3", (unsigned long long)v);
    cr_assert(!s->open, "a closed account reads open=true");
    cr_assert(s->closed, "a closed account reads closed=false");
    cr_assert_str_eq(s->owner, "Alice");
    cr_assert_str_eq(s->email, "alice@work.example");
    account__account_state__free_unpacked(s, NULL);

    r = q_events("account", "alice", 1, 0);
    check_status(r, OK, "EVENTS account");
    cr_assert_eq(r->n_events, 3, "closed account has %zu events, expected 3", r->n_events);
    check_event(r->events[0], 1, "AccountOpened");
    check_event(r->events[1], 2, "EmailChanged");
    check_event(r->events[2], 3, "AccountClosed");
    cqrs__reply__free_unpacked(r, NULL);

    /* another account is not affected */
    expect(a_open("bob", "Bob", "bob@example.com", -1), OK, 1, "OpenAccount bob");
    finish();
}

/* --- REJECTED appends nothing -------------------------------------------- */

Test(domain, rejected_appends_nothing)
{
    expect(w_topup("w", 10, NULL, -1), OK, 1, "TopUp 10");
    expect(w_authorize("w", 5, "a", NULL), OK, 2, "AuthorizeFunds 5 tx a");

    expect(w_authorize("w", 6, "b", NULL), REJECTED, -1, "AuthorizeFunds above the available 5");
    expect(w_authorize("w", 1, "a", NULL), REJECTED, -1, "AuthorizeFunds of a blocked tx_id");
    expect(w_capture("w", 6, "a"), REJECTED, -1, "CaptureFunds above the blocked amount");
    expect(w_capture("w", 1, "zz"), REJECTED, -1, "CaptureFunds of an unknown tx_id");
    expect(w_release("w", "zz"), REJECTED, -1, "ReleaseFunds of an unknown tx_id");
    expect(w_topup("w", INT64_MAX, NULL, -1), REJECTED, -1, "TopUp that overflows the balance");

    expect_wallet("w", "Main wallet", 10, 1, 2);
    cr_assert_eq(count_events("wallet", "w"), 2, "rejected commands appended events");

    /* and the stream carries on from version 2 */
    Cqrs__Reply *r = w_release("w", "a");
    check_status(r, OK, "ReleaseFunds tx a");
    const Cqrs__EventRecord *e = only_event(r, 3, "FundsReleased");
    Wallet__FundsReleased *fr = wallet__funds_released__unpack(NULL, e->data.len, e->data.data);
    cr_assert(fr, "FundsReleased does not decode");
    cr_assert_eq(fr->amount, 5);
    cr_assert_str_eq(fr->tx_id, "a");
    wallet__funds_released__free_unpacked(fr, NULL);
    cqrs__reply__free_unpacked(r, NULL);
    expect(w_authorize("w", 10, "b", NULL), OK, 4, "AuthorizeFunds of the whole released balance");
    expect_wallet("w", "Main wallet", 10, 1, 4);

    /* a capture below the blocked amount releases the rest with it */
    expect(w_capture("w", 4, "b"), OK, 5, "CaptureFunds 4 of 10");
    expect_wallet("w", "Main wallet", 6, 0, 5);
    expect(w_authorize("w", 6, "c", NULL), OK, 6, "AuthorizeFunds of all that is left");
    finish();
}

/* --- a stream without events does not exist ------------------------------ */

Test(domain, stream_without_events_is_not_found)
{
    expect_not_found("wallet", "fresh");
    expect_not_found("account", "fresh");

    Cqrs__Reply *r = w_rename("fresh", "Main wallet", NULL);
    check_status(r, OK, "RenameWallet to the default name on a new wallet");
    cr_assert_eq(r->version, 0, "version %llu after a command that appended nothing",
                 (unsigned long long)r->version);
    cr_assert_eq(r->n_events, 0, "RenameWallet to the current name appended %zu events",
                 r->n_events);
    cqrs__reply__free_unpacked(r, NULL);
    expect_not_found("wallet", "fresh");

    expect(w_authorize("fresh2", 1, "t", NULL), REJECTED, -1, "AuthorizeFunds on an empty wallet");
    expect_not_found("wallet", "fresh2");
    expect(a_close("fresh"), REJECTED, -1, "CloseAccount on a new account");
    expect_not_found("account", "fresh");

    /* the first real event is version 1 */
    r = w_topup("fresh", 3, NULL, -1);
    check_status(r, OK, "TopUp on the wallet that had a no-op");
    check_topped_up(only_event(r, 1, "WalletToppedUp"), 0, 3);
    cqrs__reply__free_unpacked(r, NULL);

    /* renaming to the current name appends nothing on an existing stream too */
    expect(w_rename("fresh", "Main wallet", NULL), OK, 1, "RenameWallet to the current name");
    expect_wallet("fresh", "Main wallet", 3, 0, 1);
    finish();
}

/* --- idempotency ---------------------------------------------------------- */

Test(domain, idempotent_retry)
{
    Cqrs__Reply *first = w_topup("w", 10, "c1", -1);
    check_status(first, OK, "TopUp 10 c1");
    check_topped_up(only_event(first, 1, "WalletToppedUp"), 0, 10);
    cr_assert_str_eq(first->events[0]->command_id, "c1");

    Cqrs__Reply *r = w_topup("w", 10, "c1", -1);
    check_status(r, OK, "retry of c1");
    cr_assert_eq(r->version, 1, "retry of c1 answered version %llu", (unsigned long long)r->version);
    same_events(first, r);
    cqrs__reply__free_unpacked(r, NULL);
    expect_wallet("w", "Main wallet", 10, 0, 1);

    expect(w_topup("w", 5, "c2", -1), OK, 2, "TopUp 5 c2");

    /* later retries still get the first outcome, whatever they carry */
    r = w_topup("w", 10, "c1", -1);
    check_status(r, OK, "retry of c1 after c2");
    cr_assert_eq(r->version, 1, "retry of c1 after c2 answered version %llu",
                 (unsigned long long)r->version);
    same_events(first, r);
    cqrs__reply__free_unpacked(r, NULL);

    r = w_topup("w", 999, "c1", -1);
    check_status(r, OK, "c1 again with another amount");
    cr_assert_eq(r->version, 1);
    same_events(first, r);
    cqrs__reply__free_unpacked(r, NULL);

    r = w_rename("w", "Other", "c1");
    check_status(r, OK, "c1 again as another command");
    cr_assert_eq(r->version, 1);
    same_events(first, r);
    cqrs__reply__free_unpacked(r, NULL);

    r = w_topup("w", 10, "c1", 0);
    check_status(r, OK, "c1 again with a stale expected_version");
    cr_assert_eq(r->version, 1);
    same_events(first, r);
    cqrs__reply__free_unpacked(r, NULL);

    expect_wallet("w", "Main wallet", 15, 0, 2);
    cr_assert_eq(count_events("wallet", "w"), 2, "retries appended events");

    /* command ids are per stream */
    expect(w_topup("w-other", 7, "c1", -1), OK, 1, "c1 on another wallet");
    expect_wallet("w-other", "Main wallet", 7, 0, 1);

    cqrs__reply__free_unpacked(first, NULL);
    finish();
}

Test(domain, refused_command_id_can_be_reused)
{
    expect(w_topup("w", 10, NULL, -1), OK, 1, "TopUp 10");

    expect(w_authorize("w", 100, "t", "c3"), REJECTED, -1, "AuthorizeFunds 100 c3");
    Cqrs__Reply *r = w_topup("w", 1, "c3", -1);
    check_status(r, OK, "c3 reused after a rejection");
    check_topped_up(only_event(r, 2, "WalletToppedUp"), 10, 11);
    cqrs__reply__free_unpacked(r, NULL);
    expect(w_topup("w", 1, "c3", -1), OK, 2, "retry of the c3 that succeeded");
    expect_wallet("w", "Main wallet", 11, 0, 2);

    expect(w_topup("w", 0, "c4", -1), INVALID, -1, "TopUp 0 c4");
    expect(w_topup("w", 2, "c4", -1), OK, 3, "c4 reused after INVALID");

    expect(w_topup("w", 1, "c5", 99), CONFLICT, -1, "TopUp c5 expecting version 99");
    expect(w_topup("w", 1, "c5", -1), OK, 4, "c5 reused after CONFLICT");

    expect_wallet("w", "Main wallet", 14, 0, 4);
    finish();
}

Test(domain, idempotency_survives_restart)
{
    Cqrs__Reply *first = w_topup("w", 10, "c1", -1);
    check_status(first, OK, "TopUp 10 c1");
    expect(w_topup("w", 5, "c2", -1), OK, 2, "TopUp 5 c2");

    restart();

    Cqrs__Reply *r = w_topup("w", 10, "c1", -1);
    check_status(r, OK, "retry of c1 after a restart");
    cr_assert_eq(r->version, 1, "retry of c1 after a restart answered version %llu",
                 (unsigned long long)r->version);
    same_events(first, r);
    cqrs__reply__free_unpacked(r, NULL);
    expect_wallet("w", "Main wallet", 15, 0, 2);

    cqrs__reply__free_unpacked(first, NULL);
    finish();
}

/* --- expected_version ------------------------------------------------------ */

Test(domain, expected_version)
{
    expect(w_topup("w", 10, NULL, 0), OK, 1, "TopUp expecting 0 on a new stream");
    expect(w_topup("w", 1, NULL, 1), OK, 2, "TopUp expecting the current version 1");

    expect(w_topup("w", 1, NULL, 1), CONFLICT, -1, "TopUp expecting the stale version 1");
    expect(w_topup("w", 1, NULL, 0), CONFLICT, -1, "TopUp expecting 0 on an existing stream");
    expect(w_topup("w", 1, NULL, 7), CONFLICT, -1, "TopUp expecting a future version");
    expect_wallet("w", "Main wallet", 11, 0, 2);
    cr_assert_eq(count_events("wallet", "w"), 2, "a CONFLICT appended events");

    expect(w_topup("w", 1, NULL, 2), OK, 3, "TopUp expecting the current version 2");
    expect_wallet("w", "Main wallet", 12, 0, 3);

    /* a new stream is at version 0, whatever its type */
    expect(w_topup("w-new", 1, NULL, 1), CONFLICT, -1, "TopUp expecting 1 on a new stream");
    expect_not_found("wallet", "w-new");
    expect(a_open("acc", "Ann", "ann@example.com", 0), OK, 1, "OpenAccount expecting 0");
    expect(a_open("acc2", "Ann", "ann@example.com", 3), CONFLICT, -1, "OpenAccount expecting 3");
    expect_not_found("account", "acc2");
    finish();
}

/* --- the log files on disk --------------------------------------------------- */

static char found_log[PATH_MAX];
static const char *found_want;

static int find_log_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    if (flag == FTW_F && strcmp(path + ftw->base, found_want) == 0 &&
        !strstr(path, "/journal/")) {
        snprintf(found_log, sizeof found_log, "%s", path);
        return 1;
    }
    return 0;
}

/* The stream file <data>/<type>/.../<id>.log (sharding allowed); 0 if found. */
static int find_log(const char *type, const char *id, char *out, size_t len)
{
    char dir[PATH_MAX], want[200];
    snprintf(dir, sizeof dir, "%s/%s", d.data, type);
    snprintf(want, sizeof want, "%s.log", id);
    found_want = want;
    found_log[0] = '\0';
    int rc = nftw(dir, find_log_cb, 16, FTW_PHYS);
    found_want = NULL;
    if (rc != 1)
        return -1;
    snprintf(out, len, "%s", found_log);
    return 0;
}

struct log_check {
    Cqrs__EventRecord *const *want;   /* the acknowledged events, in order */
    size_t n_want;
    size_t seen;
};

static int log_check_cb(void *arg, const Cqrs__EventRecord *rec, off_t offset, size_t size)
{
    (void)offset; (void)size;
    struct log_check *lc = arg;
    cr_assert(lc->seen < lc->n_want, "the log holds more records than the %zu acknowledged",
              lc->n_want);
    cr_assert_eq(rec->version, lc->seen + 1, "record %zu has version %llu", lc->seen + 1,
                 (unsigned long long)rec->version);
    same_event(rec, lc->want[lc->seen]);
    lc->seen++;
    return 0;
}

/* Opens the stream file and checks it holds exactly `want`, in order. */
static void check_log(const char *type, const char *id, Cqrs__EventRecord *const *want, size_t n)
{
    char path[PATH_MAX];
    cr_assert(find_log(type, id, path, sizeof path) == 0, "no log file for %s %s under %s", type,
              id, d.data);
    struct log_check lc = { want, n, 0 };
    struct evlog *log = NULL;
    struct evlog_open_info info;
    int rc = evlog_open(path, 0, log_check_cb, &lc, &log, &info);
    cr_assert(rc == 0, "evlog_open %s: %d (%s) %s", path, rc, rc == -1 ? strerror(errno) : "",
              info.detail);
    cr_assert_eq(info.truncated_bytes, 0, "%s had a torn tail", path);
    cr_assert_eq(info.records, n, "%s holds %llu records, %zu were acknowledged", path,
                 (unsigned long long)info.records, n);
    cr_assert_eq(lc.seen, n);
    evlog_free(log);
}

Test(domain, log_holds_exactly_the_acknowledged_events)
{
    Cqrs__Reply *acks[8];
    size_t n = 0;
    talk_scenario("w1", acks);
    n = 4;

    /* refusals, retries and no-ops in between add nothing */
    expect(w_capture("w1", 1, "123"), REJECTED, -1, "capture of a captured tx");
    expect(w_topup("w1", 0, NULL, -1), INVALID, -1, "TopUp 0");
    expect(w_topup("w1", 1, NULL, 1), CONFLICT, -1, "stale expected_version");
    expect(w_topup("w1", 100, "talk-1", -1), OK, 1, "retry of talk-1");
    expect(w_rename("w1", "Savings", NULL), OK, 4, "rename to the current name");

    acks[n] = w_topup("w1", 8, "more", 4);
    check_status(acks[n], OK, "TopUp 8 expecting 4");
    check_topped_up(only_event(acks[n], 5, "WalletToppedUp"), 92, 100);
    n++;

    Cqrs__EventRecord *want[8];
    for (size_t i = 0; i < n; i++)
        want[i] = acks[i]->events[0];
    check_log("wallet", "w1", want, n);

    /* the same holds for the other type, and EVENTS agrees with the file */
    expect(a_open("acc", "Ann", "ann@example.com", -1), OK, 1, "OpenAccount");
    expect(a_open("acc", "Ann", "ann@example.com", -1), REJECTED, -1, "second OpenAccount");
    expect(a_close("acc"), OK, 2, "CloseAccount");
    expect(a_change("acc", "x@example.com"), REJECTED, -1, "ChangeEmail on a closed account");
    Cqrs__Reply *ev = q_events("account", "acc", 1, 0);
    check_status(ev, OK, "EVENTS account");
    cr_assert_eq(ev->n_events, 2);
    check_log("account", "acc", ev->events, ev->n_events);
    cqrs__reply__free_unpacked(ev, NULL);

    finish();

    /* and after a clean stop the file still holds exactly that */
    check_log("wallet", "w1", want, n);
    free_acks(acks, n);
}
