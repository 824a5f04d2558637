/*
 * test_aggregate — the helpers every aggregate type shares (lib/aggregate.c)
 * and the registry: aggregate id validation (ids become file names), command
 * lookup by short name, emitting packed events, rejections, the event limit.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "aggregate.h"
#include "aggregates/types.h"
#include "wallet.pb-c.h"

static struct agg_decision D;

static void decision_setup(void)
{
    memset(&D, 0, sizeof D);
}

static void decision_teardown(void)
{
    agg_decision_clear(&D);
}

TestSuite(agg_id);
TestSuite(agg_desc);
TestSuite(agg_decision, .init = decision_setup, .fini = decision_teardown);
TestSuite(registry);

/* --- agg_id_valid ------------------------------------------------------- */

static int id_ok(const char *s)
{
    return agg_id_valid(s, strlen(s));
}

Test(agg_id, accepts_plain_ids)
{
    cr_assert_eq(id_ok("w1"), 0);
    cr_assert_eq(id_ok("a.b_c-D9"), 0);
    cr_assert_eq(id_ok("x"), 0);
    cr_assert_eq(id_ok("..."), 0, "only \".\" and \"..\" are reserved");
    cr_assert_eq(id_ok(".hidden"), 0);
    cr_assert_eq(id_ok("ABCxyz0123456789"), 0);
}

Test(agg_id, length_limit_is_128)
{
    char id[AGG_ID_MAX + 2];
    memset(id, 'a', sizeof id);
    cr_assert_eq(agg_id_valid(id, 128), 0, "128 chars must be valid");
    cr_assert_eq(agg_id_valid(id, 129), -1, "129 chars must be refused");
    cr_assert_eq(agg_id_valid(id, 1), 0);
}

Test(agg_id, rejects_empty_and_path_like_ids)
{
    cr_assert_eq(agg_id_valid("", 0), -1);
    cr_assert_eq(id_ok("a/b"), -1);
    cr_assert_eq(id_ok("/"), -1);
    cr_assert_eq(id_ok("../x"), -1);
    cr_assert_eq(id_ok("."), -1);
    cr_assert_eq(id_ok(".."), -1);
}

Test(agg_id, rejects_characters_outside_the_set)
{
    const char *bad[] = { "a b", "a*", "a\\b", "a:b", "é", "a\n", "a\tb", "a?", "~" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(id_ok(bad[i]), -1, "\"%s\" accepted", bad[i]);
}

Test(agg_id, embedded_nul_is_caught_by_length)
{
    cr_assert_eq(agg_id_valid("w1\0x", 4), -1);
    cr_assert_eq(agg_id_valid("\0", 1), -1);
    cr_assert_eq(agg_id_valid(".\0", 2), -1);
    cr_assert_eq(agg_id_valid("w1\0x", 2), 0, "the first 2 bytes alone are a valid id");
}

/* --- agg_find_desc ------------------------------------------------------ */

Test(agg_desc, finds_a_wallet_command_by_short_name)
{
    const struct aggregate_type *w = aggregate_lookup("wallet");
    cr_assert_not_null(w);
    const ProtobufCMessageDescriptor *d = agg_find_desc(w->commands, "TopUp");
    cr_assert_eq(d, &wallet__top_up__descriptor);
    cr_assert_str_eq(d->short_name, "TopUp");
}

Test(agg_desc, finds_a_wallet_event_by_short_name)
{
    const struct aggregate_type *w = aggregate_lookup("wallet");
    cr_assert_not_null(w);
    cr_assert_eq(agg_find_desc(w->events, "WalletToppedUp"), &wallet__wallet_topped_up__descriptor);
}

Test(agg_desc, unknown_or_misspelled_names_give_null)
{
    const struct aggregate_type *w = aggregate_lookup("wallet");
    cr_assert_not_null(w);
    cr_assert_null(agg_find_desc(w->commands, "Nope"));
    cr_assert_null(agg_find_desc(w->commands, "topup"), "lookup is case-sensitive");
    cr_assert_null(agg_find_desc(w->commands, ""));
    cr_assert_null(agg_find_desc(w->commands, "wallet.TopUp"), "short names only");
    cr_assert_null(agg_find_desc(w->commands, "WalletToppedUp"), "an event is not a command");
    cr_assert_null(agg_find_desc(NULL, "TopUp"));
}

/* --- agg_emit / agg_reject / agg_decision_clear -------------------------- */

Test(agg_decision, emit_packs_the_event)
{
    Wallet__WalletToppedUp e = WALLET__WALLET_TOPPED_UP__INIT;
    e.from = 5;
    e.to = -1234567890123LL;
    cr_assert_eq(agg_emit(&D, &e.base), AGG_ACCEPT);
    e.from = 999;   /* packed at once: later changes do not leak in */
    cr_assert_eq(D.n_events, 1);
    cr_assert_eq(D.events[0].desc, &wallet__wallet_topped_up__descriptor);
    cr_assert_not_null(D.events[0].data);

    Wallet__WalletToppedUp *u =
        wallet__wallet_topped_up__unpack(NULL, D.events[0].len, D.events[0].data);
    cr_assert_not_null(u, "emitted bytes do not decode");
    int64_t from = u->from, to = u->to;
    wallet__wallet_topped_up__free_unpacked(u, NULL);
    cr_assert_eq(from, 5);
    cr_assert_eq(to, -1234567890123LL);
}

Test(agg_decision, emit_keeps_events_in_order)
{
    Wallet__FundsAuthorized a = WALLET__FUNDS_AUTHORIZED__INIT;
    a.amount = 40;
    a.tx_id = "t-1";
    Wallet__WalletRenamed r = WALLET__WALLET_RENAMED__INIT;
    r.name = "savings";
    cr_assert_eq(agg_emit(&D, &a.base), AGG_ACCEPT);
    cr_assert_eq(agg_emit(&D, &r.base), AGG_ACCEPT);
    cr_assert_eq(D.n_events, 2);
    cr_assert_eq(D.events[0].desc, &wallet__funds_authorized__descriptor);
    cr_assert_eq(D.events[1].desc, &wallet__wallet_renamed__descriptor);

    Wallet__FundsAuthorized *ua =
        wallet__funds_authorized__unpack(NULL, D.events[0].len, D.events[0].data);
    cr_assert_not_null(ua);
    int ok_a = ua->amount == 40 && strcmp(ua->tx_id, "t-1") == 0;
    wallet__funds_authorized__free_unpacked(ua, NULL);
    cr_assert(ok_a, "first event is not FundsAuthorized{40, t-1}");

    Wallet__WalletRenamed *ur = wallet__wallet_renamed__unpack(NULL, D.events[1].len, D.events[1].data);
    cr_assert_not_null(ur);
    int ok_r = strcmp(ur->name, "savings") == 0;
    wallet__wallet_renamed__free_unpacked(ur, NULL);
    cr_assert(ok_r, "second event is not WalletRenamed{savings}");
}

Test(agg_decision, emit_of_an_all_default_event_is_accepted)
{
    /* proto3 defaults pack to zero bytes; still one event */
    Wallet__WalletRenamed r = WALLET__WALLET_RENAMED__INIT;
    cr_assert_eq(agg_emit(&D, &r.base), AGG_ACCEPT);
    cr_assert_eq(D.n_events, 1);
    cr_assert_eq(D.events[0].len, 0);
    Wallet__WalletRenamed *u = wallet__wallet_renamed__unpack(NULL, 0, D.events[0].data);
    cr_assert_not_null(u);
    int empty = u->name[0] == '\0';
    wallet__wallet_renamed__free_unpacked(u, NULL);
    cr_assert(empty);
}

Test(agg_decision, reject_clears_emitted_events_and_formats_the_sentence)
{
    Wallet__WalletToppedUp e = WALLET__WALLET_TOPPED_UP__INIT;
    e.to = 10;
    cr_assert_eq(agg_emit(&D, &e.base), AGG_ACCEPT);
    cr_assert_eq(agg_emit(&D, &e.base), AGG_ACCEPT);
    cr_assert_eq(agg_reject(&D, "balance %d is below %s", 7, "the amount"), AGG_REJECT);
    cr_assert_eq(D.n_events, 0, "a rejection must carry no events");
    cr_assert_str_eq(D.error, "balance 7 is below the amount");
}

Test(agg_decision, reject_truncates_a_long_sentence)
{
    char long_word[AGG_ERROR_MAX * 2];
    memset(long_word, 'x', sizeof long_word - 1);
    long_word[sizeof long_word - 1] = '\0';
    cr_assert_eq(agg_reject(&D, "%s", long_word), AGG_REJECT);
    cr_assert_eq(strlen(D.error), AGG_ERROR_MAX - 1);
}

Test(agg_decision, more_than_max_events_rejects)
{
    Wallet__WalletToppedUp e = WALLET__WALLET_TOPPED_UP__INIT;
    for (int i = 0; i < AGG_MAX_EVENTS; i++) {
        e.to = i;
        cr_assert_eq(agg_emit(&D, &e.base), AGG_ACCEPT, "event %d of %d refused", i + 1,
                     AGG_MAX_EVENTS);
    }
    cr_assert_eq(D.n_events, AGG_MAX_EVENTS);
    cr_assert_eq(agg_emit(&D, &e.base), AGG_REJECT);
    cr_assert_eq(D.n_events, 0, "the rejected command must carry no events");
    cr_assert_neq(D.error[0], '\0', "the rejection needs a sentence");
}

Test(agg_decision, clear_resets_events_and_error)
{
    Wallet__WalletToppedUp e = WALLET__WALLET_TOPPED_UP__INIT;
    agg_reject(&D, "no");
    cr_assert_eq(agg_emit(&D, &e.base), AGG_ACCEPT);
    agg_decision_clear(&D);
    cr_assert_eq(D.n_events, 0);
    cr_assert_str_empty(D.error);
    /* the decision is reusable */
    cr_assert_eq(agg_emit(&D, &e.base), AGG_ACCEPT);
    cr_assert_eq(D.n_events, 1);
}

/* --- registry ------------------------------------------------------------ */

Test(registry, lookup_by_type_name)
{
    const struct aggregate_type *w = aggregate_lookup("wallet");
    const struct aggregate_type *a = aggregate_lookup("account");
    cr_assert_eq(w, &wallet_type);
    cr_assert_eq(a, &account_type);
    cr_assert_str_eq(w->name, "wallet");
    cr_assert_str_eq(a->name, "account");
}

Test(registry, unknown_type_is_null)
{
    cr_assert_null(aggregate_lookup("nope"));
    cr_assert_null(aggregate_lookup(""));
    cr_assert_null(aggregate_lookup("Wallet"), "type names are case-sensitive");
    cr_assert_null(aggregate_lookup(NULL));
}

Test(registry, every_type_is_complete_and_listed_once)
{
    size_t n = 0;
    for (const struct aggregate_type *const *t = aggregate_registry; *t; t++, n++) {
        const struct aggregate_type *ty = *t;
        cr_assert_not_null(ty->name);
        cr_assert_eq(aggregate_lookup(ty->name), ty, "%s is shadowed by an earlier type", ty->name);
        cr_assert(ty->state_desc && ty->commands && ty->events, "%s lacks descriptors", ty->name);
        cr_assert(ty->state_new && ty->state_free && ty->state_pack && ty->validate &&
                  ty->decide && ty->evolve, "%s lacks a function", ty->name);
        cr_assert_not_null(ty->commands[0], "%s has no commands", ty->name);
        cr_assert_not_null(ty->events[0], "%s has no events", ty->name);
    }
    cr_assert_geq(n, 2);
}
