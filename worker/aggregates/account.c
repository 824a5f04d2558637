/*
 * account — the account aggregate type (proto/account.proto): the users who
 * own wallets. An account goes new -> open -> closed, never back: it opens
 * once, changes its email while open, and once closed refuses everything.
 *
 * State: owner and email (heap copies, NULL while new) and the life-cycle
 * stage; a closed account keeps its last owner and email.
 *
 * validate checks payload domains (INVALID); decide checks the rules against
 * the state (REJECTED) and never touches it; evolve applies one event and
 * returns -1 (errno EINVAL) when the event contradicts the state, or -1
 * (errno ENOMEM) when it cannot allocate; the state is unchanged either way.
 * state_unpack (snapshots) rebuilds a state from AccountState and refuses
 * one evolve could never have built: open and closed at once, or a new
 * account with an owner or an email.
 */
#include "types.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "account.pb-c.h"
#include "pbwire.h"

#define ACCOUNT_OWNER_MAX 100   /* bytes */
#define ACCOUNT_EMAIL_MAX 254   /* bytes, the longest address SMTP carries */

enum account_stage {
    ACCOUNT_NEW = 0,
    ACCOUNT_OPEN,
    ACCOUNT_CLOSED,
};

struct account_state {
    char *owner;                /* NULL while new */
    char *email;                /* NULL while new */
    enum account_stage stage;
};

static const ProtobufCMessageDescriptor *const account_commands[] = {
    &account__open_account__descriptor,
    &account__change_email__descriptor,
    &account__close_account__descriptor,
    NULL,
};

static const ProtobufCMessageDescriptor *const account_events[] = {
    &account__account_opened__descriptor,
    &account__email_changed__descriptor,
    &account__account_closed__descriptor,
    NULL,
};

/* protobuf-c gives "" for an unset string; NULL only from hand-built messages. */
static const char *account_str(const char *s)
{
    return s ? s : "";
}

static void *account_state_new(void)
{
    return calloc(1, sizeof(struct account_state));
}

static void account_state_free(void *state)
{
    struct account_state *s = state;
    if (!s)
        return;
    free(s->owner);
    free(s->email);
    free(s);
}

static size_t account_state_pack(const void *state, ProtobufCBuffer *out)
{
    const struct account_state *s = state;
    Account__AccountState msg = ACCOUNT__ACCOUNT_STATE__INIT;
    msg.owner = (char *)account_str(s->owner);
    msg.email = (char *)account_str(s->email);
    msg.open = s->stage == ACCOUNT_OPEN;
    msg.closed = s->stage == ACCOUNT_CLOSED;
    return protobuf_c_message_pack_to_buffer(&msg.base, out);
}

static void *account_state_unpack(const uint8_t *data, size_t len)
{
    if (pbwire_check_strings(&account__account_state__descriptor, data, len) < 0) {
        errno = EINVAL;
        return NULL;
    }
    Account__AccountState *m = account__account_state__unpack(NULL, len, data);
    if (!m) {
        errno = EINVAL;        /* protobuf-c does not tell ENOMEM apart */
        return NULL;
    }
    const char *owner = account_str(m->owner), *email = account_str(m->email);
    struct account_state *s = NULL;
    if ((m->open && m->closed) || (!m->open && !m->closed && (owner[0] || email[0]))) {
        errno = EINVAL;
        goto fail;
    }
    s = account_state_new();
    if (!s)
        goto nomem;
    if (m->open || m->closed) {
        /* evolve takes any owner and email, "" included: so does this */
        if (!(s->owner = strdup(owner)) || !(s->email = strdup(email)))
            goto nomem;
        s->stage = m->open ? ACCOUNT_OPEN : ACCOUNT_CLOSED;
    }
    account__account_state__free_unpacked(m, NULL);
    return s;

nomem:
    errno = ENOMEM;
fail:
    {
        int e = errno;
        account_state_free(s);
        account__account_state__free_unpacked(m, NULL);
        errno = e;
        return NULL;
    }
}

/* --- validate: payload domains ------------------------------------------ */

static int account_check_owner(const char *owner, char *err, size_t errlen)
{
    size_t len = strlen(account_str(owner));
    if (len >= 1 && len <= ACCOUNT_OWNER_MAX)
        return 0;
    snprintf(err, errlen, "owner must be 1 to %d bytes, got %zu", ACCOUNT_OWNER_MAX, len);
    return -1;
}

/* Not RFC 5322: an '@' with something on both sides is all we insist on. */
static int account_check_email(const char *email, char *err, size_t errlen)
{
    email = account_str(email);
    size_t len = strlen(email);
    if (len == 0 || len > ACCOUNT_EMAIL_MAX) {
        snprintf(err, errlen, "email must be 1 to %d bytes, got %zu", ACCOUNT_EMAIL_MAX, len);
        return -1;
    }
    for (size_t i = 1; i + 1 < len; i++)
        if (email[i] == '@')
            return 0;
    snprintf(err, errlen, "email must contain an '@' between a local part and a domain");
    return -1;
}

static int account_validate(const ProtobufCMessage *cmd, char *err, size_t errlen)
{
    const ProtobufCMessageDescriptor *desc = cmd->descriptor;

    if (desc == &account__open_account__descriptor) {
        const Account__OpenAccount *c = (const Account__OpenAccount *)cmd;
        if (account_check_owner(c->owner, err, errlen) < 0)
            return -1;
        return account_check_email(c->email, err, errlen);
    }
    if (desc == &account__change_email__descriptor)
        return account_check_email(((const Account__ChangeEmail *)cmd)->email, err, errlen);
    if (desc == &account__close_account__descriptor)
        return 0;

    snprintf(err, errlen, "unknown account command %s", desc->short_name);
    return -1;
}

/* --- decide: business rules --------------------------------------------- */

static enum agg_verdict account_decide(const void *state, const ProtobufCMessage *cmd,
                                       struct agg_decision *d)
{
    const struct account_state *s = state;
    const ProtobufCMessageDescriptor *desc = cmd->descriptor;

    if (s->stage == ACCOUNT_CLOSED)
        return agg_reject(d, "account is closed");

    if (desc == &account__open_account__descriptor) {
        const Account__OpenAccount *c = (const Account__OpenAccount *)cmd;
        if (s->stage == ACCOUNT_OPEN)
            return agg_reject(d, "account is already open");
        Account__AccountOpened ev = ACCOUNT__ACCOUNT_OPENED__INIT;
        ev.owner = c->owner;
        ev.email = c->email;
        return agg_emit(d, &ev.base);
    }
    if (desc == &account__change_email__descriptor) {
        const Account__ChangeEmail *c = (const Account__ChangeEmail *)cmd;
        if (s->stage != ACCOUNT_OPEN)
            return agg_reject(d, "account is not open");
        if (strcmp(s->email, account_str(c->email)) == 0)
            return AGG_ACCEPT;
        Account__EmailChanged ev = ACCOUNT__EMAIL_CHANGED__INIT;
        ev.from = s->email;
        ev.to = c->email;
        return agg_emit(d, &ev.base);
    }
    if (desc == &account__close_account__descriptor) {
        if (s->stage != ACCOUNT_OPEN)
            return agg_reject(d, "account is not open");
        Account__AccountClosed ev = ACCOUNT__ACCOUNT_CLOSED__INIT;
        return agg_emit(d, &ev.base);
    }
    return agg_reject(d, "unknown account command %s", desc->short_name);
}

/* --- evolve: apply one event -------------------------------------------- */

static int account_contradiction(void)
{
    errno = EINVAL;
    return -1;
}

static int account_evolve_opened(struct account_state *s, const Account__AccountOpened *e)
{
    if (s->stage != ACCOUNT_NEW)
        return account_contradiction();
    char *owner = strdup(account_str(e->owner));
    char *email = strdup(account_str(e->email));
    if (!owner || !email) {
        free(owner);
        free(email);
        return -1;
    }
    s->owner = owner;
    s->email = email;
    s->stage = ACCOUNT_OPEN;
    return 0;
}

static int account_evolve_email_changed(struct account_state *s, const Account__EmailChanged *e)
{
    if (s->stage != ACCOUNT_OPEN || strcmp(s->email, account_str(e->from)) != 0)
        return account_contradiction();
    char *email = strdup(account_str(e->to));
    if (!email)
        return -1;
    free(s->email);
    s->email = email;
    return 0;
}

static int account_evolve(void *state, const ProtobufCMessage *event)
{
    struct account_state *s = state;
    const ProtobufCMessageDescriptor *desc = event->descriptor;

    if (desc == &account__account_opened__descriptor)
        return account_evolve_opened(s, (const Account__AccountOpened *)event);
    if (desc == &account__email_changed__descriptor)
        return account_evolve_email_changed(s, (const Account__EmailChanged *)event);
    if (desc == &account__account_closed__descriptor) {
        if (s->stage != ACCOUNT_OPEN)
            return account_contradiction();
        s->stage = ACCOUNT_CLOSED;
        return 0;
    }
    return account_contradiction();
}

/* --- projection: the read model's accounts ------------------------------- */

static const char *const account_schema[] = {
    "CREATE TABLE IF NOT EXISTS accounts(id TEXT PRIMARY KEY, owner TEXT NOT NULL, "
    "email TEXT NOT NULL, open INTEGER NOT NULL, version INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS accounts_email ON accounts(email, id)",
    NULL,
};
static const char *const account_tables[] = { "accounts", NULL };
/* An account's row comes with AccountOpened; the others find it there. */
static const char *const account_sql_opened[] = {
    "INSERT INTO accounts(id, owner, email, open, version) VALUES(:id, :owner, :email, 1, "
    ":version) ON CONFLICT(id) DO UPDATE SET owner = :owner, email = :email, open = 1, "
    "version = :version",
    NULL,
};
static const char *const account_sql_email[] = {
    "UPDATE accounts SET email = :to, version = :version WHERE id = :id", NULL,
};
static const char *const account_sql_closed[] = {
    "UPDATE accounts SET open = 0, version = :version WHERE id = :id", NULL,
};
static const struct agg_projection_rule account_rules[] = {
    { "AccountOpened", account_sql_opened },
    { "EmailChanged", account_sql_email },
    { "AccountClosed", account_sql_closed },
    { NULL, NULL },
};

static int account_validate_find(const ProtobufCMessage *q, char *err, size_t errlen)
{
    const Account__FindByEmail *f = (const Account__FindByEmail *)q;
    if (!f->email[0]) {
        snprintf(err, errlen, "email must not be empty");
        return -1;
    }
    return 0;
}

static const struct agg_query account_queries[] = {
    { &account__find_by_email__descriptor, &account__account_view__descriptor,
      "SELECT id, owner, email, open, version FROM accounts WHERE email = :email "
      "ORDER BY id LIMIT 1", NULL, account_validate_find },
    { NULL, NULL, NULL, NULL, NULL },
};

static const struct agg_projection account_projection = {
    .version = 1,
    .schema = account_schema,
    .tables = account_tables,
    .rules = account_rules,
    .queries = account_queries,
};

const struct aggregate_type account_type = {
    .name = "account",
    .state_desc = &account__account_state__descriptor,
    .commands = account_commands,
    .events = account_events,
    .state_new = account_state_new,
    .state_free = account_state_free,
    .state_pack = account_state_pack,
    .validate = account_validate,
    .decide = account_decide,
    .evolve = account_evolve,
    .snapshot_version = 1,
    .state_unpack = account_state_unpack,
    .projection = &account_projection,
};
