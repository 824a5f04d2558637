/*
 * test_account — the account decider (worker/aggregates/account.c): given
 * events, when a command, then events or a verdict; plus evolve refusing
 * events that contradict the account's life cycle.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "account.pb-c.h"
#include "decider_helpers.h"

static struct scenario S;

static void account_setup(void)
{
    scenario_init(&S, &account_type);
}

static void account_teardown(void)
{
    scenario_fini(&S);
}

TestSuite(account, .init = account_setup, .fini = account_teardown);

/* --- events, applied from their wire form: return evolve's result ------- */

static int account_opened(const char *owner, const char *email)
{
    Account__AccountOpened e = ACCOUNT__ACCOUNT_OPENED__INIT;
    e.owner = (char *)owner;
    e.email = (char *)email;
    return given_event(&S, &e.base);
}

static int email_changed(const char *from, const char *to)
{
    Account__EmailChanged e = ACCOUNT__EMAIL_CHANGED__INIT;
    e.from = (char *)from;
    e.to = (char *)to;
    return given_event(&S, &e.base);
}

static int account_closed(void)
{
    Account__AccountClosed e = ACCOUNT__ACCOUNT_CLOSED__INIT;
    return given_event(&S, &e.base);
}

/* --- commands ------------------------------------------------------------ */

static enum when_outcome open_account(const char *owner, const char *email)
{
    Account__OpenAccount c = ACCOUNT__OPEN_ACCOUNT__INIT;
    c.owner = (char *)owner;
    c.email = (char *)email;
    return when_command(&S, &c.base);
}

static enum when_outcome change_email(const char *email)
{
    Account__ChangeEmail c = ACCOUNT__CHANGE_EMAIL__INIT;
    c.email = (char *)email;
    return when_command(&S, &c.base);
}

static enum when_outcome close_account(void)
{
    Account__CloseAccount c = ACCOUNT__CLOSE_ACCOUNT__INIT;
    return when_command(&S, &c.base);
}

/* --- then ---------------------------------------------------------------- */

static void then_state_is(const char *owner, const char *email, int open, int closed)
{
    const Account__AccountState *st = (const Account__AccountState *)then_state(&S);
    cr_assert_str_eq(st->owner, owner);
    cr_assert_str_eq(st->email, email);
    cr_assert_eq(!!st->open, open, "open is %d", st->open);
    cr_assert_eq(!!st->closed, closed, "closed is %d", st->closed);
}

static void then_opened(enum when_outcome out, const char *owner, const char *email)
{
    cr_assert_eq(out, WHEN_ACCEPTED, "%s%s", S.err, S.d.error);
    const Account__AccountOpened *e = (const Account__AccountOpened *)
        then_only_event(&S, &account__account_opened__descriptor);
    cr_assert_str_eq(e->owner, owner);
    cr_assert_str_eq(e->email, email);
}

static void then_email_changed(enum when_outcome out, const char *from, const char *to)
{
    cr_assert_eq(out, WHEN_ACCEPTED, "%s%s", S.err, S.d.error);
    const Account__EmailChanged *e = (const Account__EmailChanged *)
        then_only_event(&S, &account__email_changed__descriptor);
    cr_assert_str_eq(e->from, from);
    cr_assert_str_eq(e->to, to);
}

static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);
    cr_assert_not_null(s);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* An address of exactly `len` bytes: "a@" then a domain of 'd's. */
static char *email_of_length(size_t len)
{
    char *s = repeat('d', len);
    s[0] = 'a';
    s[1] = '@';
    return s;
}

/* --- a new account ------------------------------------------------------- */

Test(account, new_account_is_neither_open_nor_closed)
{
    then_state_is("", "", 0, 0);
}

Test(account, open_emits_owner_and_email)
{
    then_opened(open_account("Ada", "ada@example.org"), "Ada", "ada@example.org");
    then_state_is("Ada", "ada@example.org", 1, 0);
}

/* --- validate: INVALID --------------------------------------------------- */

Test(account, owner_must_be_1_to_100_bytes)
{
    char *owner100 = repeat('o', 100);
    char *owner101 = repeat('o', 101);

    then_invalid(&S, open_account("", "a@b"), "owner must be 1 to 100 bytes, got 0");
    then_invalid(&S, open_account(owner101, "a@b"), "got 101");
    then_state_is("", "", 0, 0);
    then_opened(open_account(owner100, "a@b"), owner100, "a@b");

    free(owner100);
    free(owner101);
}

Test(account, email_must_be_1_to_254_bytes)
{
    char *email254 = email_of_length(254);
    char *email255 = email_of_length(255);
    cr_assert_eq(strlen(email254), 254);

    then_invalid(&S, open_account("Ada", ""), "email must be 1 to 254 bytes, got 0");
    then_invalid(&S, open_account("Ada", email255), "got 255");
    then_opened(open_account("Ada", email254), "Ada", email254);
    then_invalid(&S, change_email(""), "got 0");
    then_invalid(&S, change_email(email255), "got 255");
    then_state_is("Ada", email254, 1, 0);

    free(email254);
    free(email255);
}

Test(account, email_needs_an_at_sign_with_something_on_both_sides)
{
    static const char *const bad[] = { "ada.example.org", "@example.org", "ada@", "@", "@@" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        then_invalid(&S, open_account("Ada", bad[i]), "'@'");
        then_invalid(&S, change_email(bad[i]), "'@'");
    }
    then_state_is("", "", 0, 0);
    then_opened(open_account("Ada", "a@b"), "Ada", "a@b");
    then_email_changed(change_email("x@@y"), "a@b", "x@@y");
}

Test(account, payload_is_checked_before_the_rules)
{
    /* Not open (REJECTED) and a bad email (INVALID): INVALID wins. */
    then_invalid(&S, change_email("nope"), "'@'");
    given(account_opened("Ada", "ada@example.org"));
    given(account_closed());
    then_invalid(&S, open_account("", "ada@example.org"), "owner");
}

/* --- OpenAccount --------------------------------------------------------- */

Test(account, an_account_opens_once)
{
    given(account_opened("Ada", "ada@example.org"));
    enum when_outcome out = open_account("Bob", "bob@example.org");
    then_rejected(&S, out, "account is already open");
    cr_assert_str_eq(S.d.error, "account is already open");
    then_state_is("Ada", "ada@example.org", 1, 0);
}

/* --- ChangeEmail --------------------------------------------------------- */

Test(account, change_email_needs_an_open_account)
{
    enum when_outcome out = change_email("ada@example.org");
    then_rejected(&S, out, "account is not open");
    cr_assert_str_eq(S.d.error, "account is not open");
    then_state_is("", "", 0, 0);
}

Test(account, change_email_emits_from_and_to)
{
    given(account_opened("Ada", "ada@example.org"));
    then_email_changed(change_email("ada@lovelace.net"), "ada@example.org", "ada@lovelace.net");
    then_state_is("Ada", "ada@lovelace.net", 1, 0);
    then_email_changed(change_email("a@b"), "ada@lovelace.net", "a@b");
    then_state_is("Ada", "a@b", 1, 0);
}

Test(account, change_to_the_current_email_appends_nothing)
{
    given(account_opened("Ada", "ada@example.org"));
    then_accepted_without_events(&S, change_email("ada@example.org"));
    given(email_changed("ada@example.org", "ada@lovelace.net"));
    then_accepted_without_events(&S, change_email("ada@lovelace.net"));
    then_state_is("Ada", "ada@lovelace.net", 1, 0);
}

/* --- CloseAccount -------------------------------------------------------- */

Test(account, close_needs_an_open_account)
{
    then_rejected(&S, close_account(), "account is not open");
    then_state_is("", "", 0, 0);
}

Test(account, close_emits_account_closed_and_keeps_owner_and_email)
{
    given(account_opened("Ada", "ada@example.org"));
    enum when_outcome out = close_account();
    cr_assert_eq(out, WHEN_ACCEPTED, "%s", S.d.error);
    then_only_event(&S, &account__account_closed__descriptor);
    then_state_is("Ada", "ada@example.org", 0, 1);
}

Test(account, a_closed_account_refuses_everything)
{
    given(account_opened("Ada", "ada@example.org"));
    given(account_closed());

    then_rejected(&S, open_account("Ada", "ada@example.org"), "account is closed");
    cr_assert_str_eq(S.d.error, "account is closed");
    then_rejected(&S, change_email("ada@lovelace.net"), "account is closed");
    then_rejected(&S, change_email("ada@example.org"), "account is closed");
    then_rejected(&S, close_account(), "account is closed");
    then_state_is("Ada", "ada@example.org", 0, 1);
}

/* --- decide purity ------------------------------------------------------- */

Test(account, decide_does_not_change_the_state)
{
    given(account_opened("Ada", "ada@example.org"));
    Account__CloseAccount c = ACCOUNT__CLOSE_ACCOUNT__INIT;
    cr_assert_eq(account_type.decide(S.state, &c.base, &S.d), AGG_ACCEPT);
    cr_assert_eq(S.d.n_events, 1);
    then_state_is("Ada", "ada@example.org", 1, 0);
}

/* --- evolve refuses events that contradict the life cycle ---------------- */

Test(account, evolve_refuses_opening_twice)
{
    given(account_opened("Ada", "ada@example.org"));
    cr_assert_eq(account_opened("Bob", "bob@example.org"), -1);
    then_state_is("Ada", "ada@example.org", 1, 0);
}

Test(account, evolve_refuses_events_before_opening)
{
    cr_assert_eq(email_changed("", "ada@example.org"), -1);
    cr_assert_eq(account_closed(), -1);
    then_state_is("", "", 0, 0);
}

Test(account, evolve_refuses_an_email_change_from_another_email)
{
    given(account_opened("Ada", "ada@example.org"));
    cr_assert_eq(email_changed("bob@example.org", "ada@lovelace.net"), -1);
    then_state_is("Ada", "ada@example.org", 1, 0);
}

Test(account, evolve_refuses_anything_after_closing)
{
    given(account_opened("Ada", "ada@example.org"));
    given(account_closed());
    cr_assert_eq(account_closed(), -1);
    cr_assert_eq(account_opened("Ada", "ada@example.org"), -1);
    cr_assert_eq(email_changed("ada@example.org", "a@b"), -1);
    then_state_is("Ada", "ada@example.org", 0, 1);
}

/* --- the type's declaration ---------------------------------------------- */

Test(account, type_lists_its_commands_events_and_state)
{
    cr_assert_str_eq(account_type.name, "account");
    cr_assert_eq(account_type.state_desc, &account__account_state__descriptor);
    static const char *const commands[] = { "OpenAccount", "ChangeEmail", "CloseAccount" };
    static const char *const events[] = { "AccountOpened", "EmailChanged", "AccountClosed" };
    for (size_t i = 0; i < 3; i++) {
        cr_assert_not_null(agg_find_desc(account_type.commands, commands[i]), "%s", commands[i]);
        cr_assert_not_null(agg_find_desc(account_type.events, events[i]), "%s", events[i]);
    }
    cr_assert_null(account_type.commands[3]);
    cr_assert_null(account_type.events[3]);
}
