/*
 * test_wallet — the wallet decider (worker/aggregates/wallet.c): given
 * events, when a command, then events or a verdict; plus evolve refusing
 * events that contradict the state, and the registry lookup.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "decider_helpers.h"
#include "wallet.pb-c.h"

static struct scenario S;

static void wallet_setup(void)
{
    scenario_init(&S, &wallet_type);
}

static void wallet_teardown(void)
{
    scenario_fini(&S);
}

TestSuite(wallet, .init = wallet_setup, .fini = wallet_teardown);

/* --- events, applied from their wire form: return evolve's result ------- */

static int wallet_renamed(const char *name)
{
    Wallet__WalletRenamed e = WALLET__WALLET_RENAMED__INIT;
    e.name = (char *)name;
    return given_event(&S, &e.base);
}

static int topped_up(int64_t from, int64_t to)
{
    Wallet__WalletToppedUp e = WALLET__WALLET_TOPPED_UP__INIT;
    e.from = from;
    e.to = to;
    return given_event(&S, &e.base);
}

static int funds_authorized(int64_t amount, const char *tx_id)
{
    Wallet__FundsAuthorized e = WALLET__FUNDS_AUTHORIZED__INIT;
    e.amount = amount;
    e.tx_id = (char *)tx_id;
    return given_event(&S, &e.base);
}

static int funds_captured(int64_t amount, const char *tx_id)
{
    Wallet__FundsCaptured e = WALLET__FUNDS_CAPTURED__INIT;
    e.amount = amount;
    e.tx_id = (char *)tx_id;
    return given_event(&S, &e.base);
}

static int funds_released(int64_t amount, const char *tx_id)
{
    Wallet__FundsReleased e = WALLET__FUNDS_RELEASED__INIT;
    e.amount = amount;
    e.tx_id = (char *)tx_id;
    return given_event(&S, &e.base);
}

/* --- commands: validate, decide, evolve what was accepted --------------- */

static enum when_outcome rename_wallet(const char *name)
{
    Wallet__RenameWallet c = WALLET__RENAME_WALLET__INIT;
    c.name = (char *)name;
    return when_command(&S, &c.base);
}

static enum when_outcome top_up(int64_t amount)
{
    Wallet__TopUp c = WALLET__TOP_UP__INIT;
    c.amount = amount;
    return when_command(&S, &c.base);
}

static enum when_outcome authorize_funds(int64_t amount, const char *tx_id)
{
    Wallet__AuthorizeFunds c = WALLET__AUTHORIZE_FUNDS__INIT;
    c.amount = amount;
    c.tx_id = (char *)tx_id;
    return when_command(&S, &c.base);
}

static enum when_outcome capture_funds(int64_t amount, const char *tx_id)
{
    Wallet__CaptureFunds c = WALLET__CAPTURE_FUNDS__INIT;
    c.amount = amount;
    c.tx_id = (char *)tx_id;
    return when_command(&S, &c.base);
}

static enum when_outcome release_funds(const char *tx_id)
{
    Wallet__ReleaseFunds c = WALLET__RELEASE_FUNDS__INIT;
    c.tx_id = (char *)tx_id;
    return when_command(&S, &c.base);
}

/* --- then ---------------------------------------------------------------- */

static const Wallet__WalletState *state(void)
{
    return (const Wallet__WalletState *)then_state(&S);
}

static void then_topped_up(enum when_outcome out, int64_t from, int64_t to)
{
    cr_assert_eq(out, WHEN_ACCEPTED, "%s%s", S.err, S.d.error);
    const Wallet__WalletToppedUp *e = (const Wallet__WalletToppedUp *)
        then_only_event(&S, &wallet__wallet_topped_up__descriptor);
    cr_assert_eq(e->from, from);
    cr_assert_eq(e->to, to);
}

static void then_renamed(enum when_outcome out, const char *name)
{
    cr_assert_eq(out, WHEN_ACCEPTED, "%s%s", S.err, S.d.error);
    const Wallet__WalletRenamed *e = (const Wallet__WalletRenamed *)
        then_only_event(&S, &wallet__wallet_renamed__descriptor);
    cr_assert_str_eq(e->name, name);
}

/* FundsAuthorized, FundsCaptured and FundsReleased share {amount, tx_id}. */
static void then_funds_event(enum when_outcome out, const ProtobufCMessageDescriptor *desc,
                             int64_t amount, const char *tx_id)
{
    cr_assert_eq(out, WHEN_ACCEPTED, "%s%s", S.err, S.d.error);
    const ProtobufCMessage *m = then_only_event(&S, desc);
    int64_t got_amount;
    const char *got_tx;
    if (desc == &wallet__funds_authorized__descriptor) {
        got_amount = ((const Wallet__FundsAuthorized *)m)->amount;
        got_tx = ((const Wallet__FundsAuthorized *)m)->tx_id;
    } else if (desc == &wallet__funds_captured__descriptor) {
        got_amount = ((const Wallet__FundsCaptured *)m)->amount;
        got_tx = ((const Wallet__FundsCaptured *)m)->tx_id;
    } else {
        cr_assert_eq(desc, &wallet__funds_released__descriptor);
        got_amount = ((const Wallet__FundsReleased *)m)->amount;
        got_tx = ((const Wallet__FundsReleased *)m)->tx_id;
    }
    cr_assert_eq(got_amount, amount, "amount %lld, expected %lld",
                 (long long)got_amount, (long long)amount);
    cr_assert_str_eq(got_tx, tx_id);
}

static void then_balance(int64_t balance, size_t n_blocked)
{
    const Wallet__WalletState *st = state();
    cr_assert_eq(st->balance, balance, "balance %lld, expected %lld",
                 (long long)st->balance, (long long)balance);
    cr_assert_eq(st->n_blocked, n_blocked, "%zu blocks, expected %zu", st->n_blocked, n_blocked);
}

static void then_blocked(size_t i, const char *tx_id, int64_t amount)
{
    const Wallet__WalletState *st = state();
    cr_assert_lt(i, st->n_blocked);
    cr_assert_str_eq(st->blocked[i]->tx_id, tx_id);
    cr_assert_eq(st->blocked[i]->amount, amount);
}

static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);
    cr_assert_not_null(s);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* --- a new wallet, and the talk's scenario ------------------------------- */

Test(wallet, new_wallet_is_main_wallet_with_nothing)
{
    const Wallet__WalletState *st = state();
    cr_assert_str_eq(st->label, "Main wallet");
    cr_assert_eq(st->balance, 0);
    cr_assert_eq(st->n_blocked, 0);
}

Test(wallet, talk_scenario_top_up_rename_authorize_capture)
{
    then_topped_up(top_up(100), 0, 100);
    then_renamed(rename_wallet("Savings"), "Savings");
    then_funds_event(authorize_funds(10, "123"), &wallet__funds_authorized__descriptor, 10, "123");
    then_balance(100, 1);
    then_funds_event(capture_funds(8, "123"), &wallet__funds_captured__descriptor, 8, "123");

    const Wallet__WalletState *st = state();
    cr_assert_str_eq(st->label, "Savings");
    cr_assert_eq(st->balance, 92);
    cr_assert_eq(st->n_blocked, 0);
}

Test(wallet, talk_scenario_replayed_from_events_gives_same_state)
{
    given(topped_up(0, 100));
    given(wallet_renamed("Savings"));
    given(funds_authorized(10, "123"));
    given(funds_captured(8, "123"));

    const Wallet__WalletState *st = state();
    cr_assert_str_eq(st->label, "Savings");
    cr_assert_eq(st->balance, 92);
    cr_assert_eq(st->n_blocked, 0);
}

/* --- validate: INVALID --------------------------------------------------- */

Test(wallet, amount_must_be_positive)
{
    then_invalid(&S, top_up(0), "amount must be positive");
    then_invalid(&S, top_up(-5), "got -5");
    then_invalid(&S, authorize_funds(0, "t1"), "amount must be positive");
    then_invalid(&S, authorize_funds(-1, "t1"), "amount must be positive");
    then_invalid(&S, capture_funds(0, "t1"), "amount must be positive");
    then_invalid(&S, capture_funds(INT64_MIN, "t1"), "amount must be positive");
    then_balance(0, 0);
}

Test(wallet, name_must_be_1_to_100_bytes)
{
    char *name100 = repeat('n', 100);
    char *name101 = repeat('n', 101);

    then_invalid(&S, rename_wallet(""), "name must be 1 to 100 bytes, got 0");
    then_invalid(&S, rename_wallet(name101), "got 101");
    cr_assert_str_eq(state()->label, "Main wallet");
    then_renamed(rename_wallet(name100), name100);
    cr_assert_str_eq(state()->label, name100);

    free(name100);
    free(name101);
}

Test(wallet, tx_id_must_be_1_to_128_bytes)
{
    char *tx128 = repeat('t', 128);
    char *tx129 = repeat('t', 129);
    given(topped_up(0, 100));

    then_invalid(&S, authorize_funds(10, ""), "tx_id must be 1 to 128 bytes, got 0");
    then_invalid(&S, capture_funds(10, ""), "tx_id must be");
    then_invalid(&S, release_funds(""), "tx_id must be");
    then_invalid(&S, authorize_funds(10, tx129), "got 129");
    then_invalid(&S, capture_funds(10, tx129), "got 129");
    then_invalid(&S, release_funds(tx129), "got 129");
    then_balance(100, 0);

    then_funds_event(authorize_funds(10, tx128), &wallet__funds_authorized__descriptor, 10, tx128);
    then_blocked(0, tx128, 10);

    free(tx128);
    free(tx129);
}

Test(wallet, payload_is_checked_before_the_rules)
{
    /* Both an empty tx_id and insufficient funds: INVALID wins. */
    then_invalid(&S, authorize_funds(10, ""), "tx_id");
}

/* --- TopUp ---------------------------------------------------------------- */

Test(wallet, top_up_emits_old_and_new_balance)
{
    given(topped_up(0, 100));
    then_topped_up(top_up(50), 100, 150);
    then_balance(150, 0);
}

Test(wallet, top_up_that_would_overflow_is_rejected)
{
    given(topped_up(0, INT64_MAX - 5));

    then_rejected(&S, top_up(6), "would overflow the balance of 9223372036854775802");
    then_rejected(&S, top_up(INT64_MAX), "overflow");
    then_balance(INT64_MAX - 5, 0);

    then_topped_up(top_up(5), INT64_MAX - 5, INT64_MAX);
    then_rejected(&S, top_up(1), "overflow");
    then_balance(INT64_MAX, 0);
}

/* --- AuthorizeFunds ------------------------------------------------------ */

Test(wallet, authorize_blocks_funds_without_touching_balance)
{
    given(topped_up(0, 100));
    then_funds_event(authorize_funds(30, "t1"), &wallet__funds_authorized__descriptor, 30, "t1");
    then_balance(100, 1);
    then_blocked(0, "t1", 30);
}

Test(wallet, authorize_more_than_available_is_rejected)
{
    given(topped_up(0, 5));
    enum when_outcome out = authorize_funds(10, "t1");
    then_rejected(&S, out, "insufficient available funds");
    cr_assert_str_eq(S.d.error, "insufficient available funds: 5 available, 10 requested");
    then_balance(5, 0);
}

Test(wallet, authorize_on_a_new_wallet_is_rejected)
{
    then_rejected(&S, authorize_funds(1, "t1"), "0 available, 1 requested");
}

Test(wallet, authorize_counts_available_not_balance)
{
    given(topped_up(0, 100));
    given(funds_authorized(60, "a"));

    /* balance is 100, but only 40 is available */
    then_rejected(&S, authorize_funds(50, "b"), "40 available, 50 requested");
    then_funds_event(authorize_funds(40, "b"), &wallet__funds_authorized__descriptor, 40, "b");
    then_rejected(&S, authorize_funds(1, "c"), "0 available, 1 requested");
    then_balance(100, 2);
}

Test(wallet, authorize_a_tx_id_already_blocked_is_rejected)
{
    given(topped_up(0, 100));
    given(funds_authorized(10, "123"));

    then_rejected(&S, authorize_funds(5, "123"), "transaction 123 already has funds authorized");
    then_balance(100, 1);
    then_blocked(0, "123", 10);
}

Test(wallet, tx_id_can_be_authorized_again_once_released_or_captured)
{
    given(topped_up(0, 100));
    given(funds_authorized(10, "123"));
    given(funds_released(10, "123"));
    then_funds_event(authorize_funds(20, "123"), &wallet__funds_authorized__descriptor, 20, "123");
    given(funds_captured(20, "123"));
    then_funds_event(authorize_funds(30, "123"), &wallet__funds_authorized__descriptor, 30, "123");
    then_balance(80, 1);
}

/* --- CaptureFunds -------------------------------------------------------- */

Test(wallet, capture_of_unknown_tx_is_rejected)
{
    given(topped_up(0, 100));
    given(funds_authorized(10, "123"));
    then_rejected(&S, capture_funds(5, "999"), "no funds are authorized for transaction 999");
    then_balance(100, 1);
}

Test(wallet, capture_more_than_blocked_is_rejected)
{
    given(topped_up(0, 100));
    given(funds_authorized(10, "123"));
    enum when_outcome out = capture_funds(11, "123");
    then_rejected(&S, out, "exceeds");
    cr_assert_str_eq(S.d.error, "capture of 11 exceeds the 10 authorized for transaction 123");
    then_balance(100, 1);
    then_blocked(0, "123", 10);
}

Test(wallet, capture_of_the_whole_block)
{
    given(topped_up(0, 100));
    given(funds_authorized(10, "123"));
    then_funds_event(capture_funds(10, "123"), &wallet__funds_captured__descriptor, 10, "123");
    then_balance(90, 0);
}

Test(wallet, capture_less_releases_the_rest_with_one_event)
{
    given(topped_up(0, 100));
    given(funds_authorized(10, "123"));

    then_funds_event(capture_funds(8, "123"), &wallet__funds_captured__descriptor, 8, "123");
    then_balance(92, 0);
    /* the 2 not captured are available again: all 92 can be authorized */
    then_funds_event(authorize_funds(92, "456"), &wallet__funds_authorized__descriptor, 92, "456");
    then_rejected(&S, capture_funds(1, "123"), "no funds are authorized for transaction 123");
}

Test(wallet, capture_leaves_other_blocks_in_order)
{
    given(topped_up(0, 100));
    given(funds_authorized(10, "a"));
    given(funds_authorized(20, "b"));
    given(funds_authorized(30, "c"));
    then_funds_event(capture_funds(5, "a"), &wallet__funds_captured__descriptor, 5, "a");
    then_balance(95, 2);
    then_blocked(0, "b", 20);
    then_blocked(1, "c", 30);
}

/* --- ReleaseFunds -------------------------------------------------------- */

Test(wallet, release_of_unknown_tx_is_rejected)
{
    given(topped_up(0, 100));
    then_rejected(&S, release_funds("123"), "no funds are authorized for transaction 123");
    then_balance(100, 0);
}

Test(wallet, release_emits_the_blocked_amount_and_frees_it)
{
    given(topped_up(0, 100));
    given(funds_authorized(70, "123"));
    then_funds_event(release_funds("123"), &wallet__funds_released__descriptor, 70, "123");
    then_balance(100, 0);
    then_funds_event(authorize_funds(100, "x"), &wallet__funds_authorized__descriptor, 100, "x");
}

Test(wallet, release_keeps_other_blocks_in_insertion_order)
{
    given(topped_up(0, 100));
    given(funds_authorized(10, "a"));
    given(funds_authorized(20, "b"));
    given(funds_authorized(30, "c"));
    then_funds_event(release_funds("b"), &wallet__funds_released__descriptor, 20, "b");
    then_balance(100, 2);
    then_blocked(0, "a", 10);
    then_blocked(1, "c", 30);
}

/* --- RenameWallet -------------------------------------------------------- */

Test(wallet, rename_emits_the_new_name)
{
    then_renamed(rename_wallet("Savings"), "Savings");
    cr_assert_str_eq(state()->label, "Savings");
}

Test(wallet, rename_to_the_current_name_appends_nothing)
{
    then_accepted_without_events(&S, rename_wallet("Main wallet"));
    given(wallet_renamed("Savings"));
    then_accepted_without_events(&S, rename_wallet("Savings"));
    cr_assert_str_eq(state()->label, "Savings");
}

Test(wallet, rename_back_to_the_default_name)
{
    given(wallet_renamed("Savings"));
    then_renamed(rename_wallet("Main wallet"), "Main wallet");
    cr_assert_str_eq(state()->label, "Main wallet");
    then_accepted_without_events(&S, rename_wallet("Main wallet"));
}

/* --- state and decide purity -------------------------------------------- */

Test(wallet, state_lists_blocks_in_insertion_order)
{
    given(topped_up(0, 1000));
    static const char *const ids[] = { "z", "a", "m", "b", "y" };
    for (int i = 0; i < 5; i++)
        given(funds_authorized(10 * (i + 1), ids[i]));
    then_balance(1000, 5);
    for (int i = 0; i < 5; i++)
        then_blocked((size_t)i, ids[i], 10 * (i + 1));
}

Test(wallet, decide_does_not_change_the_state)
{
    given(topped_up(0, 100));
    given(funds_authorized(10, "123"));

    Wallet__CaptureFunds c = WALLET__CAPTURE_FUNDS__INIT;
    c.amount = 10;
    c.tx_id = "123";
    cr_assert_eq(wallet_type.decide(S.state, &c.base, &S.d), AGG_ACCEPT);
    cr_assert_eq(S.d.n_events, 1);
    then_balance(100, 1);
}

/* --- evolve refuses events that contradict the state --------------------- */

Test(wallet, evolve_refuses_capture_of_unknown_tx)
{
    given(topped_up(0, 100));
    cr_assert_eq(funds_captured(5, "123"), -1);
    then_balance(100, 0);
}

Test(wallet, evolve_refuses_capture_beyond_the_block)
{
    given(topped_up(0, 100));
    given(funds_authorized(10, "123"));
    cr_assert_eq(funds_captured(11, "123"), -1);
    then_balance(100, 1);
}

Test(wallet, evolve_refuses_a_top_up_from_another_balance)
{
    given(topped_up(0, 100));
    cr_assert_eq(topped_up(50, 150), -1);
    then_balance(100, 0);
}

Test(wallet, evolve_refuses_a_balance_that_wrapped_around)
{
    given(topped_up(0, INT64_MAX));
    cr_assert_eq(topped_up(INT64_MAX, INT64_MIN), -1);
    cr_assert_eq(topped_up(INT64_MAX, INT64_MAX), -1);
    then_balance(INT64_MAX, 0);
}

Test(wallet, evolve_refuses_authorizing_beyond_available_or_twice)
{
    given(topped_up(0, 100));
    cr_assert_eq(funds_authorized(101, "a"), -1);
    given(funds_authorized(60, "a"));
    cr_assert_eq(funds_authorized(41, "b"), -1);
    cr_assert_eq(funds_authorized(10, "a"), -1);
    cr_assert_eq(funds_authorized(0, "c"), -1);
    then_balance(100, 1);
    then_blocked(0, "a", 60);
}

Test(wallet, evolve_refuses_a_release_of_another_amount_or_tx)
{
    given(topped_up(0, 100));
    given(funds_authorized(10, "123"));
    cr_assert_eq(funds_released(9, "123"), -1);
    cr_assert_eq(funds_released(10, "999"), -1);
    then_balance(100, 1);
}

/* --- the type's declaration and the registry ----------------------------- */

Test(wallet, type_lists_its_commands_events_and_state)
{
    cr_assert_str_eq(wallet_type.name, "wallet");
    cr_assert_eq(wallet_type.state_desc, &wallet__wallet_state__descriptor);
    static const char *const commands[] = {
        "RenameWallet", "TopUp", "AuthorizeFunds", "CaptureFunds", "ReleaseFunds" };
    static const char *const events[] = {
        "WalletRenamed", "WalletToppedUp", "FundsAuthorized", "FundsCaptured", "FundsReleased" };
    for (size_t i = 0; i < 5; i++) {
        cr_assert_not_null(agg_find_desc(wallet_type.commands, commands[i]), "%s", commands[i]);
        cr_assert_not_null(agg_find_desc(wallet_type.events, events[i]), "%s", events[i]);
    }
    cr_assert_null(agg_find_desc(wallet_type.commands, "WalletToppedUp"));
    cr_assert_null(agg_find_desc(wallet_type.events, "TopUp"));
    cr_assert_null(wallet_type.commands[5]);
    cr_assert_null(wallet_type.events[5]);
}

Test(wallet, registry_finds_each_type_by_name)
{
    cr_assert_eq(aggregate_lookup("wallet"), &wallet_type);
    cr_assert_eq(aggregate_lookup("account"), &account_type);
    cr_assert_null(aggregate_lookup("Wallet"));
    cr_assert_null(aggregate_lookup(""));
    cr_assert_null(aggregate_lookup(NULL));
    size_t n = 0;
    while (aggregate_registry[n])
        n++;
    cr_assert_eq(n, 2);
}
