/*
 * wallet — the wallet aggregate type (proto/wallet.proto): funds topped up,
 * authorized (blocked), captured or released, and a label.
 *
 * State, kept small because a worker holds many wallets in memory:
 *   label    NULL while the wallet has the default label "Main wallet",
 *            otherwise a heap copy of its name;
 *   balance  integer minor units, never negative;
 *   blocked  the funds authorized and neither captured nor released, in
 *            authorization order, one entry per tx_id; NULL when empty.
 * Invariant, enforced by evolve on every event read from a log:
 *   0 <= sum(blocked amounts) <= balance <= INT64_MAX
 * so available = balance - sum(blocked) never overflows.
 *
 * validate checks payload domains (INVALID); decide checks the rules against
 * the state (REJECTED) and never touches it; evolve applies one event and
 * returns -1 (errno EINVAL) when the event contradicts the state, or -1
 * (errno ENOMEM) when it cannot allocate; the state is unchanged either way.
 * state_unpack (snapshots) rebuilds a state from WalletState and refuses one
 * that evolve could never have built: a negative balance or block, an empty
 * or repeated tx_id, blocks above the balance.
 */
#include "types.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pbwire.h"
#include "wallet.pb-c.h"

#define WALLET_DEFAULT_LABEL "Main wallet"
#define WALLET_NAME_MAX 100     /* bytes */
#define WALLET_TX_ID_MAX 128    /* bytes */

struct wallet_block {
    char *tx_id;
    int64_t amount;             /* > 0 */
};

struct wallet_state {
    char *label;                /* NULL: WALLET_DEFAULT_LABEL */
    int64_t balance;
    struct wallet_block *blocked;
    uint32_t n_blocked;
    uint32_t cap_blocked;
};

static const ProtobufCMessageDescriptor *const wallet_commands[] = {
    &wallet__rename_wallet__descriptor,
    &wallet__top_up__descriptor,
    &wallet__authorize_funds__descriptor,
    &wallet__capture_funds__descriptor,
    &wallet__release_funds__descriptor,
    NULL,
};

static const ProtobufCMessageDescriptor *const wallet_events[] = {
    &wallet__wallet_renamed__descriptor,
    &wallet__wallet_topped_up__descriptor,
    &wallet__funds_authorized__descriptor,
    &wallet__funds_captured__descriptor,
    &wallet__funds_released__descriptor,
    NULL,
};

/* protobuf-c gives "" for an unset string; NULL only from hand-built messages. */
static size_t wallet_strlen(const char *s)
{
    return s ? strlen(s) : 0;
}

static const char *wallet_label(const struct wallet_state *s)
{
    return s->label ? s->label : WALLET_DEFAULT_LABEL;
}

static struct wallet_block *wallet_find(const struct wallet_state *s, const char *tx_id)
{
    if (!tx_id)
        return NULL;
    for (uint32_t i = 0; i < s->n_blocked; i++)
        if (strcmp(s->blocked[i].tx_id, tx_id) == 0)
            return &s->blocked[i];
    return NULL;
}

static int64_t wallet_available(const struct wallet_state *s)
{
    int64_t blocked = 0;
    for (uint32_t i = 0; i < s->n_blocked; i++)
        blocked += s->blocked[i].amount;
    return s->balance - blocked;
}

/* Removes a block, keeping the others in authorization order. */
static void wallet_unblock(struct wallet_state *s, struct wallet_block *b)
{
    size_t i = (size_t)(b - s->blocked);
    free(b->tx_id);
    memmove(&s->blocked[i], &s->blocked[i + 1],
            (s->n_blocked - i - 1) * sizeof *s->blocked);
    if (--s->n_blocked == 0) {
        free(s->blocked);
        s->blocked = NULL;
        s->cap_blocked = 0;
    }
}

static void *wallet_state_new(void)
{
    return calloc(1, sizeof(struct wallet_state));
}

static void wallet_state_free(void *state)
{
    struct wallet_state *s = state;
    if (!s)
        return;
    for (uint32_t i = 0; i < s->n_blocked; i++)
        free(s->blocked[i].tx_id);
    free(s->blocked);
    free(s->label);
    free(s);
}

/*
 * Packs WalletState without allocating: the label and balance first, then
 * each block as a message holding only that one repeated entry. protobuf-c
 * writes fields in number order and a repeated message field as one record
 * per entry, so the concatenation is byte for byte the packing of the whole
 * message.
 */
static size_t wallet_state_pack(const void *state, ProtobufCBuffer *out)
{
    const struct wallet_state *s = state;
    Wallet__WalletState head = WALLET__WALLET_STATE__INIT;
    head.label = (char *)wallet_label(s);
    head.balance = s->balance;
    size_t n = protobuf_c_message_pack_to_buffer(&head.base, out);

    for (uint32_t i = 0; i < s->n_blocked; i++) {
        Wallet__BlockedFunds bf = WALLET__BLOCKED_FUNDS__INIT;
        bf.tx_id = s->blocked[i].tx_id;
        bf.amount = s->blocked[i].amount;
        Wallet__BlockedFunds *one = &bf;
        Wallet__WalletState part = WALLET__WALLET_STATE__INIT;
        part.n_blocked = 1;
        part.blocked = &one;
        n += protobuf_c_message_pack_to_buffer(&part.base, out);
    }
    return n;
}

static int wallet_cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* 0 if no two blocks share a tx_id; sorting keeps a large state O(n log n). */
static int wallet_tx_ids_unique(const Wallet__WalletState *m)
{
    if (m->n_blocked < 2)
        return 0;
    const char **ids = malloc(m->n_blocked * sizeof *ids);
    if (!ids)
        return -1;
    for (size_t i = 0; i < m->n_blocked; i++)
        ids[i] = m->blocked[i]->tx_id;
    qsort(ids, m->n_blocked, sizeof *ids, wallet_cmp_str);
    int rc = 0;
    for (size_t i = 1; i < m->n_blocked && rc == 0; i++)
        if (strcmp(ids[i - 1], ids[i]) == 0) {
            errno = EINVAL;
            rc = -1;
        }
    free(ids);
    return rc;
}

/* The invariants evolve keeps, checked on a decoded message: 0 or -1 with
 * errno (EINVAL, or ENOMEM from the tx_id check). */
static int wallet_state_check(const Wallet__WalletState *m)
{
    errno = EINVAL;
    if (m->balance < 0 || m->n_blocked > UINT32_MAX)
        return -1;
    int64_t room = m->balance;         /* balance - sum(blocks so far) */
    for (size_t i = 0; i < m->n_blocked; i++) {
        const Wallet__BlockedFunds *b = m->blocked[i];
        if (wallet_strlen(b->tx_id) == 0 || b->amount <= 0 || b->amount > room)
            return -1;
        room -= b->amount;
    }
    return wallet_tx_ids_unique(m);
}

static void *wallet_state_unpack(const uint8_t *data, size_t len)
{
    if (pbwire_check_strings(&wallet__wallet_state__descriptor, data, len) < 0) {
        errno = EINVAL;
        return NULL;
    }
    Wallet__WalletState *m = wallet__wallet_state__unpack(NULL, len, data);
    if (!m) {
        errno = EINVAL;        /* protobuf-c does not tell ENOMEM apart */
        return NULL;
    }
    struct wallet_state *s = NULL;
    if (wallet_state_check(m) < 0)
        goto fail;
    s = wallet_state_new();
    if (!s)
        goto nomem;
    const char *label = m->label ? m->label : "";
    if (strcmp(label, WALLET_DEFAULT_LABEL) != 0 && !(s->label = strdup(label)))
        goto nomem;
    s->balance = m->balance;
    if (m->n_blocked) {
        s->blocked = malloc(m->n_blocked * sizeof *s->blocked);
        if (!s->blocked)
            goto nomem;
        s->cap_blocked = (uint32_t)m->n_blocked;
        for (size_t i = 0; i < m->n_blocked; i++) {
            char *tx_id = strdup(m->blocked[i]->tx_id);
            if (!tx_id)
                goto nomem;
            s->blocked[s->n_blocked++] = (struct wallet_block){ tx_id, m->blocked[i]->amount };
        }
    }
    wallet__wallet_state__free_unpacked(m, NULL);
    return s;

nomem:
    errno = ENOMEM;
fail:
    {
        int e = errno;
        wallet_state_free(s);
        wallet__wallet_state__free_unpacked(m, NULL);
        errno = e;
        return NULL;
    }
}

/* --- validate: payload domains ------------------------------------------ */

static int wallet_check_amount(int64_t amount, char *err, size_t errlen)
{
    if (amount > 0)
        return 0;
    snprintf(err, errlen, "amount must be positive, got %" PRId64, amount);
    return -1;
}

static int wallet_check_tx_id(const char *tx_id, char *err, size_t errlen)
{
    size_t len = wallet_strlen(tx_id);
    if (len >= 1 && len <= WALLET_TX_ID_MAX)
        return 0;
    snprintf(err, errlen, "tx_id must be 1 to %d bytes, got %zu", WALLET_TX_ID_MAX, len);
    return -1;
}

static int wallet_validate(const ProtobufCMessage *cmd, char *err, size_t errlen)
{
    const ProtobufCMessageDescriptor *desc = cmd->descriptor;

    if (desc == &wallet__rename_wallet__descriptor) {
        size_t len = wallet_strlen(((const Wallet__RenameWallet *)cmd)->name);
        if (len >= 1 && len <= WALLET_NAME_MAX)
            return 0;
        snprintf(err, errlen, "name must be 1 to %d bytes, got %zu", WALLET_NAME_MAX, len);
        return -1;
    }
    if (desc == &wallet__top_up__descriptor)
        return wallet_check_amount(((const Wallet__TopUp *)cmd)->amount, err, errlen);
    if (desc == &wallet__authorize_funds__descriptor) {
        const Wallet__AuthorizeFunds *c = (const Wallet__AuthorizeFunds *)cmd;
        if (wallet_check_amount(c->amount, err, errlen) < 0)
            return -1;
        return wallet_check_tx_id(c->tx_id, err, errlen);
    }
    if (desc == &wallet__capture_funds__descriptor) {
        const Wallet__CaptureFunds *c = (const Wallet__CaptureFunds *)cmd;
        if (wallet_check_amount(c->amount, err, errlen) < 0)
            return -1;
        return wallet_check_tx_id(c->tx_id, err, errlen);
    }
    if (desc == &wallet__release_funds__descriptor)
        return wallet_check_tx_id(((const Wallet__ReleaseFunds *)cmd)->tx_id, err, errlen);

    snprintf(err, errlen, "unknown wallet command %s", desc->short_name);
    return -1;
}

/* --- decide: business rules --------------------------------------------- */

static enum agg_verdict wallet_decide_rename(const struct wallet_state *s,
                                             const Wallet__RenameWallet *c,
                                             struct agg_decision *d)
{
    if (strcmp(wallet_label(s), c->name) == 0)
        return AGG_ACCEPT;
    Wallet__WalletRenamed ev = WALLET__WALLET_RENAMED__INIT;
    ev.name = c->name;
    return agg_emit(d, &ev.base);
}

static enum agg_verdict wallet_decide_top_up(const struct wallet_state *s,
                                             const Wallet__TopUp *c,
                                             struct agg_decision *d)
{
    if (s->balance > INT64_MAX - c->amount)
        return agg_reject(d, "top-up of %" PRId64 " would overflow the balance of %" PRId64,
                          c->amount, s->balance);
    Wallet__WalletToppedUp ev = WALLET__WALLET_TOPPED_UP__INIT;
    ev.from = s->balance;
    ev.to = s->balance + c->amount;
    return agg_emit(d, &ev.base);
}

static enum agg_verdict wallet_decide_authorize(const struct wallet_state *s,
                                                const Wallet__AuthorizeFunds *c,
                                                struct agg_decision *d)
{
    if (wallet_find(s, c->tx_id))
        return agg_reject(d, "transaction %s already has funds authorized", c->tx_id);
    int64_t available = wallet_available(s);
    if (available < c->amount)
        return agg_reject(d, "insufficient available funds: %" PRId64 " available, %"
                          PRId64 " requested", available, c->amount);
    Wallet__FundsAuthorized ev = WALLET__FUNDS_AUTHORIZED__INIT;
    ev.amount = c->amount;
    ev.tx_id = c->tx_id;
    return agg_emit(d, &ev.base);
}

static enum agg_verdict wallet_decide_capture(const struct wallet_state *s,
                                              const Wallet__CaptureFunds *c,
                                              struct agg_decision *d)
{
    const struct wallet_block *b = wallet_find(s, c->tx_id);
    if (!b)
        return agg_reject(d, "no funds are authorized for transaction %s", c->tx_id);
    if (c->amount > b->amount)
        return agg_reject(d, "capture of %" PRId64 " exceeds the %" PRId64
                          " authorized for transaction %s", c->amount, b->amount, c->tx_id);
    /* One event: the capture removes the whole block, releasing any rest. */
    Wallet__FundsCaptured ev = WALLET__FUNDS_CAPTURED__INIT;
    ev.amount = c->amount;
    ev.tx_id = c->tx_id;
    return agg_emit(d, &ev.base);
}

static enum agg_verdict wallet_decide_release(const struct wallet_state *s,
                                              const Wallet__ReleaseFunds *c,
                                              struct agg_decision *d)
{
    const struct wallet_block *b = wallet_find(s, c->tx_id);
    if (!b)
        return agg_reject(d, "no funds are authorized for transaction %s", c->tx_id);
    Wallet__FundsReleased ev = WALLET__FUNDS_RELEASED__INIT;
    ev.amount = b->amount;
    ev.tx_id = c->tx_id;
    return agg_emit(d, &ev.base);
}

static enum agg_verdict wallet_decide(const void *state, const ProtobufCMessage *cmd,
                                      struct agg_decision *d)
{
    const struct wallet_state *s = state;
    const ProtobufCMessageDescriptor *desc = cmd->descriptor;

    if (desc == &wallet__rename_wallet__descriptor)
        return wallet_decide_rename(s, (const Wallet__RenameWallet *)cmd, d);
    if (desc == &wallet__top_up__descriptor)
        return wallet_decide_top_up(s, (const Wallet__TopUp *)cmd, d);
    if (desc == &wallet__authorize_funds__descriptor)
        return wallet_decide_authorize(s, (const Wallet__AuthorizeFunds *)cmd, d);
    if (desc == &wallet__capture_funds__descriptor)
        return wallet_decide_capture(s, (const Wallet__CaptureFunds *)cmd, d);
    if (desc == &wallet__release_funds__descriptor)
        return wallet_decide_release(s, (const Wallet__ReleaseFunds *)cmd, d);
    return agg_reject(d, "unknown wallet command %s", desc->short_name);
}

/* --- evolve: apply one event -------------------------------------------- */

static int wallet_contradiction(void)
{
    errno = EINVAL;
    return -1;
}

static int wallet_evolve_renamed(struct wallet_state *s, const Wallet__WalletRenamed *e)
{
    const char *name = e->name ? e->name : "";
    char *label = NULL;
    if (strcmp(name, WALLET_DEFAULT_LABEL) != 0) {
        label = strdup(name);
        if (!label)
            return -1;
    }
    free(s->label);
    s->label = label;
    return 0;
}

static int wallet_evolve_topped_up(struct wallet_state *s, const Wallet__WalletToppedUp *e)
{
    /* A `to` not above `from` is a top-up that wrapped around or took funds. */
    if (e->from != s->balance || e->to <= e->from)
        return wallet_contradiction();
    s->balance = e->to;
    return 0;
}

static int wallet_evolve_authorized(struct wallet_state *s, const Wallet__FundsAuthorized *e)
{
    if (e->amount <= 0 || wallet_strlen(e->tx_id) == 0 || wallet_find(s, e->tx_id) ||
        e->amount > wallet_available(s))
        return wallet_contradiction();

    if (s->n_blocked == s->cap_blocked) {
        if (s->cap_blocked > UINT32_MAX / 2) {
            errno = ENOMEM;
            return -1;
        }
        uint32_t cap = s->cap_blocked ? s->cap_blocked * 2 : 2;
        struct wallet_block *grown = realloc(s->blocked, cap * sizeof *grown);
        if (!grown)
            return -1;
        s->blocked = grown;
        s->cap_blocked = cap;
    }
    char *tx_id = strdup(e->tx_id);
    if (!tx_id)
        return -1;
    s->blocked[s->n_blocked++] = (struct wallet_block){ tx_id, e->amount };
    return 0;
}

static int wallet_evolve_captured(struct wallet_state *s, const Wallet__FundsCaptured *e)
{
    struct wallet_block *b = wallet_find(s, e->tx_id);
    if (!b || e->amount <= 0 || e->amount > b->amount)
        return wallet_contradiction();
    /* amount <= block <= sum(blocked) <= balance: no underflow. */
    s->balance -= e->amount;
    wallet_unblock(s, b);
    return 0;
}

static int wallet_evolve_released(struct wallet_state *s, const Wallet__FundsReleased *e)
{
    struct wallet_block *b = wallet_find(s, e->tx_id);
    if (!b || e->amount != b->amount)
        return wallet_contradiction();
    wallet_unblock(s, b);
    return 0;
}

static int wallet_evolve(void *state, const ProtobufCMessage *event)
{
    struct wallet_state *s = state;
    const ProtobufCMessageDescriptor *desc = event->descriptor;

    if (desc == &wallet__wallet_renamed__descriptor)
        return wallet_evolve_renamed(s, (const Wallet__WalletRenamed *)event);
    if (desc == &wallet__wallet_topped_up__descriptor)
        return wallet_evolve_topped_up(s, (const Wallet__WalletToppedUp *)event);
    if (desc == &wallet__funds_authorized__descriptor)
        return wallet_evolve_authorized(s, (const Wallet__FundsAuthorized *)event);
    if (desc == &wallet__funds_captured__descriptor)
        return wallet_evolve_captured(s, (const Wallet__FundsCaptured *)event);
    if (desc == &wallet__funds_released__descriptor)
        return wallet_evolve_released(s, (const Wallet__FundsReleased *)event);
    return wallet_contradiction();
}

/* --- projection: the read model's wallets -------------------------------- */

/* wallets holds each wallet's view; wallet_blocks its open authorizations,
 * so a capture knows how much of its block it releases. Sums are grouped
 * so that no intermediate value leaves int64 (SQLite would silently turn
 * it into a float): available + (to - from) <= to. */
static const char *const wallet_schema[] = {
    "CREATE TABLE IF NOT EXISTS wallets(id TEXT PRIMARY KEY, label TEXT NOT NULL, "
    "balance INTEGER NOT NULL, available INTEGER NOT NULL, blocked_count INTEGER NOT NULL, "
    "version INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS wallet_blocks(wallet_id TEXT NOT NULL, tx_id TEXT NOT NULL, "
    "amount INTEGER NOT NULL, PRIMARY KEY(wallet_id, tx_id)) WITHOUT ROWID",
    NULL,
};
static const char *const wallet_tables[] = { "wallets", "wallet_blocks", NULL };
/* One statement where one does: a new wallet's row comes with its first
 * event (a top-up or a rename: the others need funds), every other event
 * finds it there. */
static const char *const wallet_sql_renamed[] = {
    "INSERT INTO wallets(id, label, balance, available, blocked_count, version) "
    "VALUES(:id, :name, 0, 0, 0, :version) ON CONFLICT(id) DO UPDATE "
    "SET label = :name, version = :version",
    NULL,
};
static const char *const wallet_sql_topped_up[] = {
    "INSERT INTO wallets(id, label, balance, available, blocked_count, version) "
    "VALUES(:id, '" WALLET_DEFAULT_LABEL "', :to, :to, 0, :version) ON CONFLICT(id) DO UPDATE "
    "SET balance = :to, available = available + (:to - :from), version = :version",
    NULL,
};
static const char *const wallet_sql_authorized[] = {
    "INSERT INTO wallet_blocks(wallet_id, tx_id, amount) VALUES(:id, :tx_id, :amount)",
    "UPDATE wallets SET available = available - :amount, blocked_count = blocked_count + 1, "
    "version = :version WHERE id = :id",
    NULL,
};
static const char *const wallet_sql_captured[] = {
    "UPDATE wallets SET balance = balance - :amount, available = available + "
    "((SELECT amount FROM wallet_blocks WHERE wallet_id = :id AND tx_id = :tx_id) - :amount), "
    "blocked_count = blocked_count - 1, version = :version WHERE id = :id",
    "DELETE FROM wallet_blocks WHERE wallet_id = :id AND tx_id = :tx_id",
    NULL,
};
static const char *const wallet_sql_released[] = {
    "UPDATE wallets SET available = available + :amount, blocked_count = blocked_count - 1, "
    "version = :version WHERE id = :id",
    "DELETE FROM wallet_blocks WHERE wallet_id = :id AND tx_id = :tx_id",
    NULL,
};
static const struct agg_projection_rule wallet_rules[] = {
    { "WalletRenamed", wallet_sql_renamed },
    { "WalletToppedUp", wallet_sql_topped_up },
    { "FundsAuthorized", wallet_sql_authorized },
    { "FundsCaptured", wallet_sql_captured },
    { "FundsReleased", wallet_sql_released },
    { NULL, NULL },
};

#define WALLET_LIST_MAX 1000

static int wallet_validate_get(const ProtobufCMessage *q, char *err, size_t errlen)
{
    const Wallet__GetWallet *g = (const Wallet__GetWallet *)q;
    if (agg_id_valid(g->id, strlen(g->id)) < 0) {
        snprintf(err, errlen, "id must be 1 to %d of [A-Za-z0-9._-]", AGG_ID_MAX);
        return -1;
    }
    return 0;
}

static int wallet_validate_list(const ProtobufCMessage *q, char *err, size_t errlen)
{
    const Wallet__ListWallets *l = (const Wallet__ListWallets *)q;
    if (l->limit > WALLET_LIST_MAX) {
        snprintf(err, errlen, "limit must be at most %d (0: 100)", WALLET_LIST_MAX);
        return -1;
    }
    return 0;
}

#define WALLET_VIEW_COLUMNS "id, label, balance, available, blocked_count, version"

static const struct agg_query wallet_queries[] = {
    { &wallet__get_wallet__descriptor, &wallet__wallet_view__descriptor,
      "SELECT " WALLET_VIEW_COLUMNS " FROM wallets WHERE id = :id", NULL, wallet_validate_get },
    { &wallet__list_wallets__descriptor, &wallet__wallet_list__descriptor,
      "SELECT " WALLET_VIEW_COLUMNS " FROM wallets WHERE balance >= :min_balance AND id > "
      ":after_id ORDER BY id LIMIT CASE WHEN :limit = 0 THEN 100 ELSE :limit END",
      "wallets", wallet_validate_list },
    { &wallet__total_balance__descriptor, &wallet__total__descriptor,
      "SELECT coalesce(sum(balance), 0) AS balance, count(*) AS wallets FROM wallets", NULL,
      NULL },
    { NULL, NULL, NULL, NULL, NULL },
};

static const struct agg_projection wallet_projection = {
    .version = 1,
    .schema = wallet_schema,
    .tables = wallet_tables,
    .rules = wallet_rules,
    .queries = wallet_queries,
};

const struct aggregate_type wallet_type = {
    .name = "wallet",
    .state_desc = &wallet__wallet_state__descriptor,
    .commands = wallet_commands,
    .events = wallet_events,
    .state_new = wallet_state_new,
    .state_free = wallet_state_free,
    .state_pack = wallet_state_pack,
    .validate = wallet_validate,
    .decide = wallet_decide,
    .evolve = wallet_evolve,
    .snapshot_version = 1,
    .state_unpack = wallet_state_unpack,
    .projection = &wallet_projection,
};
