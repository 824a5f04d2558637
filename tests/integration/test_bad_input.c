/*
 * test_bad_input — hostile and malformed input against the real daemon.
 *
 * Every case must get an INVALID reply (or, for garbage at the framing
 * level, a closed connection), must leave the data dir exactly as it was
 * (no file for the bad id or type, no stream log grown), and must leave the
 * daemon serving: a second connection still gets OK on a TopUp.
 *
 * Raw cases build frames by hand: 4-byte big-endian length, then protobuf.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "account.pb-c.h"
#include "harness.h"
#include "wallet.pb-c.h"

#define OK CQRS__STATUS__OK
#define INVALID CQRS__STATUS__INVALID
#define NOT_FOUND CQRS__STATUS__NOT_FOUND

#define IO_TIMEOUT_MS 5000

static struct daemon d;
static char *before;     /* the data dir before the bad input */

static char *snapshot(void);

static void setup(void)
{
    daemon_start(&d, NULL);
    before = snapshot();
}

static void teardown(void)
{
    free(before);
    before = NULL;
    daemon_cleanup(&d);
}

TestSuite(bad_input, .init = setup, .fini = teardown, .timeout = 60);

/* --- the data dir, as sorted "path size" lines ----------------------------- */

static char **snap_lines;
static size_t snap_n, snap_cap;

static int snap_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)ftw;
    const char *rel = path + strlen(d.data);
    char line[PATH_MAX + 40];
    /* Stream logs must not grow; the journal (if any) may be rewritten by
     * housekeeping, and the read model catches up with earlier commands
     * whenever it does, so only their file names count. */
    if (flag == FTW_F && !strstr(rel, "/journal/") && strncmp(rel, "/readmodel.db", 13) != 0)
        snprintf(line, sizeof line, "%s %lld", rel, (long long)sb->st_size);
    else
        snprintf(line, sizeof line, "%s%s", rel, flag == FTW_D ? "/" : "");
    if (snap_n == snap_cap) {
        snap_cap = snap_cap ? snap_cap * 2 : 64;
        snap_lines = realloc(snap_lines, snap_cap * sizeof *snap_lines);
        cr_assert(snap_lines, "out of memory");
    }
    snap_lines[snap_n] = strdup(line);
    cr_assert(snap_lines[snap_n], "out of memory");
    snap_n++;
    return 0;
}

static int snap_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *snapshot(void)
{
    snap_n = 0;
    nftw(d.data, snap_cb, 16, FTW_PHYS);
    qsort(snap_lines, snap_n, sizeof *snap_lines, snap_cmp);
    size_t len = 1;
    for (size_t i = 0; i < snap_n; i++)
        len += strlen(snap_lines[i]) + 1;
    char *s = malloc(len), *p = s;
    cr_assert(s, "out of memory");
    for (size_t i = 0; i < snap_n; i++) {
        p += sprintf(p, "%s\n", snap_lines[i]);
        free(snap_lines[i]);
    }
    *p = '\0';
    free(snap_lines);
    snap_lines = NULL;
    snap_n = snap_cap = 0;
    return s;
}

static void expect_data_unchanged(const char *what)
{
    char *after = snapshot();
    cr_assert_str_eq(after, before, "%s changed the data dir:\nbefore:\n%s\nafter:\n%s", what,
                     before, after);
    free(after);
}

/* A second connection still gets OK on a TopUp; then the snapshot is
 * retaken, as that TopUp writes. */
static void expect_still_serving(const char *what)
{
    struct cqrs_client *c = daemon_connect(&d);
    Wallet__TopUp m = WALLET__TOP_UP__INIT;
    m.amount = 1;
    Cqrs__Reply *r = send_cmd(c, "wallet", "good", &m.base, NULL, -1);
    cr_assert_eq(r->status, OK, "after %s, a TopUp on a new connection got %s (%s)", what,
                 cqrs_status_name(r->status), r->error);
    cr_assert_eq(r->n_events, 1);
    cqrs__reply__free_unpacked(r, NULL);
    cqrs_client_free(c);
    free(before);
    before = snapshot();
}

static void finish(void)
{
    int st = daemon_stop(&d);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "cqrsd did not exit 0 on SIGTERM (wait status 0x%x)", st);
}

/* --- bad commands through the client library -------------------------------- */

static void check_invalid(const Cqrs__Reply *r, const char *what)
{
    cr_assert_eq(r->status, INVALID, "%s: expected INVALID, got %s (%s)", what,
                 cqrs_status_name(r->status), r->error);
    cr_assert(r->error[0], "%s: INVALID without an error sentence", what);
    cr_assert_eq(r->n_events, 0, "%s: INVALID with %zu events", what, r->n_events);
}

static void bad_command(const char *type, const char *id, const char *name,
                        const uint8_t *payload, size_t len, const char *what)
{
    struct cqrs_client *c = daemon_connect(&d);
    Cqrs__Reply *r = NULL;
    int rc = cqrs_client_command(c, type, id, name, payload, len, "bad-cmd", -1, &r);
    cr_assert(rc == 0, "%s: no reply (%s)", what, strerror(errno));
    check_invalid(r, what);
    cqrs__reply__free_unpacked(r, NULL);
    cqrs_client_free(c);
    expect_data_unchanged(what);
    expect_still_serving(what);
}

static void bad_message(const char *type, const char *id, const ProtobufCMessage *msg,
                        const char *what)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(len ? len : 1);
    cr_assert(buf, "out of memory");
    protobuf_c_message_pack(msg, buf);
    bad_command(type, id, msg->descriptor->short_name, buf, len, what);
    free(buf);
}

static void bad_topup_id(const char *id, const char *what)
{
    Wallet__TopUp m = WALLET__TOP_UP__INIT;
    m.amount = 1;
    bad_message("wallet", id, &m.base, what);

    /* queries check the id too: INVALID, not NOT_FOUND */
    struct cqrs_client *c = daemon_connect(&d);
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_state(c, "wallet", id, &r) == 0, "%s: STATE: no reply", what);
    check_invalid(r, what);
    cqrs__reply__free_unpacked(r, NULL);
    cr_assert(cqrs_client_events(c, "wallet", id, 1, 0, &r) == 0, "%s: EVENTS: no reply", what);
    check_invalid(r, what);
    cqrs__reply__free_unpacked(r, NULL);
    cqrs_client_free(c);
    expect_data_unchanged(what);
}

Test(bad_input, unknown_aggregate_type)
{
    Wallet__TopUp m = WALLET__TOP_UP__INIT;
    m.amount = 1;
    bad_message("nosuchtype", "w1", &m.base, "a command for an unknown type");
    bad_message("", "w1", &m.base, "a command with an empty type");
    bad_message("Wallet", "w1", &m.base, "a command for a type spelt with a capital");
    bad_message("../wallet", "w1", &m.base, "a command for the type ../wallet");

    struct cqrs_client *c = daemon_connect(&d);
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_state(c, "nosuchtype", "w1", &r) == 0, "STATE: no reply");
    check_invalid(r, "STATE of an unknown type");
    cqrs__reply__free_unpacked(r, NULL);
    cqrs_client_free(c);
    expect_data_unchanged("STATE of an unknown type");
    finish();
}

Test(bad_input, unknown_command_name)
{
    static const uint8_t amount1[] = { 0x08, 0x01 };
    bad_command("wallet", "w1", "Withdraw", amount1, sizeof amount1, "unknown command Withdraw");
    bad_command("wallet", "w1", "", amount1, sizeof amount1, "empty command name");
    bad_command("wallet", "w1", "topup", amount1, sizeof amount1, "command name in lower case");
    bad_command("wallet", "w1", "WalletToppedUp", amount1, sizeof amount1,
                "an event name sent as a command");
    bad_command("wallet", "w1", "wallet.TopUp", amount1, sizeof amount1,
                "a full name instead of the short name");
    Account__OpenAccount oa = ACCOUNT__OPEN_ACCOUNT__INIT;
    oa.owner = "Ann";
    oa.email = "ann@example.com";
    bad_message("wallet", "w1", &oa.base, "another type's command (OpenAccount to a wallet)");
    finish();
}

Test(bad_input, id_empty)
{
    bad_topup_id("", "an empty id");
    finish();
}

Test(bad_input, id_of_129_bytes)
{
    char id[130];
    memset(id, 'a', 129);
    id[129] = '\0';
    bad_topup_id(id, "an id of 129 bytes");

    /* 128 bytes is the longest valid id */
    id[128] = '\0';
    struct cqrs_client *c = daemon_connect(&d);
    Wallet__TopUp m = WALLET__TOP_UP__INIT;
    m.amount = 1;
    Cqrs__Reply *r = send_cmd(c, "wallet", id, &m.base, NULL, -1);
    cr_assert_eq(r->status, OK, "an id of 128 bytes got %s (%s)", cqrs_status_name(r->status),
                 r->error);
    cqrs__reply__free_unpacked(r, NULL);
    cqrs_client_free(c);
    finish();
}

Test(bad_input, id_with_slash)
{
    bad_topup_id("a/b", "an id with a slash");
    bad_topup_id("../account/x", "an id that climbs out of its type's directory");
    bad_topup_id("/tmp/x", "an absolute path as id");
    finish();
}

Test(bad_input, id_with_space_or_star)
{
    bad_topup_id("a b", "an id with a space");
    bad_topup_id("a*", "an id with a star");
    bad_topup_id("*", "the id *");
    bad_topup_id("w\n1", "an id with a newline");
    bad_topup_id("w\xc3\xa9", "an id with a non-ASCII letter");
    finish();
}

Test(bad_input, id_dot_and_dotdot)
{
    bad_topup_id(".", "the id .");
    bad_topup_id("..", "the id ..");
    finish();
}

Test(bad_input, payload_that_does_not_decode)
{
    static const uint8_t junk[] = { 0xff, 0xff, 0xff };
    bad_command("wallet", "w1", "TopUp", junk, sizeof junk, "TopUp with payload ff ff ff");
    bad_command("account", "a1", "OpenAccount", junk, sizeof junk,
                "OpenAccount with payload ff ff ff");
    static const uint8_t truncated[] = { 0x0a, 0x05, 'a', 'b' };   /* name: 5 bytes, 2 there */
    bad_command("wallet", "w1", "RenameWallet", truncated, sizeof truncated,
                "RenameWallet with a truncated string");
    finish();
}

Test(bad_input, payload_field_out_of_domain)
{
    Wallet__TopUp t = WALLET__TOP_UP__INIT;
    t.amount = 0;
    bad_message("wallet", "w1", &t.base, "TopUp amount 0");
    t.amount = -5;
    bad_message("wallet", "w1", &t.base, "TopUp amount -5");
    bad_command("wallet", "w1", "TopUp", NULL, 0, "TopUp with an empty payload (amount 0)");

    Wallet__RenameWallet rn = WALLET__RENAME_WALLET__INIT;
    rn.name = "";
    bad_message("wallet", "w1", &rn.base, "RenameWallet to an empty name");
    char name[102];
    memset(name, 'n', 101);
    name[101] = '\0';
    rn.name = name;
    bad_message("wallet", "w1", &rn.base, "RenameWallet to a name of 101 bytes");

    Wallet__AuthorizeFunds af = WALLET__AUTHORIZE_FUNDS__INIT;
    af.amount = 1;
    af.tx_id = "";
    bad_message("wallet", "w1", &af.base, "AuthorizeFunds with an empty tx_id");

    Account__OpenAccount oa = ACCOUNT__OPEN_ACCOUNT__INIT;
    oa.owner = "Ann";
    oa.email = "";
    bad_message("account", "a1", &oa.base, "OpenAccount with an empty email");
    oa.owner = "";
    oa.email = "ann@example.com";
    bad_message("account", "a1", &oa.base, "OpenAccount with an empty owner");

    /* 100 bytes is the longest valid name */
    name[100] = '\0';
    struct cqrs_client *c = daemon_connect(&d);
    Cqrs__Reply *r = send_cmd(c, "wallet", "w1", &rn.base, NULL, -1);
    cr_assert_eq(r->status, OK, "RenameWallet to 100 bytes got %s (%s)",
                 cqrs_status_name(r->status), r->error);
    cqrs__reply__free_unpacked(r, NULL);
    cqrs_client_free(c);
    finish();
}

/* --- raw frames ------------------------------------------------------------------ */

static void raw_send(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        cr_assert(n > 0, "send to the daemon: %s", strerror(errno));
        p += n;
        len -= (size_t)n;
    }
}

/* Reads exactly `len` bytes: 1, 0 on EOF (or reset) before the first byte,
 * -1 on timeout, -2 on EOF in the middle. */
static int raw_read(int fd, uint8_t *buf, size_t len, int timeout_ms)
{
    size_t got = 0;
    while (got < len) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        int n = poll(&p, 1, timeout_ms);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0)
            return -1;
        ssize_t r = recv(fd, buf + got, len - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno != ECONNRESET)
            cr_assert_fail("recv from the daemon: %s", strerror(errno));
        if (r <= 0)
            return got ? -2 : 0;
        got += (size_t)r;
    }
    return 1;
}

/* The next reply frame: 1 with *out set, 0 when the daemon closed the
 * connection; asserts on a timeout or a frame that is not a Reply. */
static int raw_reply(int fd, Cqrs__Reply **out, const char *what)
{
    uint8_t hdr[4];
    int rc = raw_read(fd, hdr, 4, IO_TIMEOUT_MS);
    cr_assert(rc != -1, "%s: the daemon neither answered nor closed within %d ms", what,
              IO_TIMEOUT_MS);
    cr_assert(rc != -2, "%s: the daemon closed in the middle of a reply header", what);
    if (rc == 0)
        return 0;
    uint32_t len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | hdr[3];
    cr_assert(len <= (1u << 20), "%s: a reply frame of %u bytes", what, len);
    uint8_t *body = malloc(len ? len : 1);
    cr_assert(body, "out of memory");
    rc = raw_read(fd, body, len, IO_TIMEOUT_MS);
    cr_assert(rc == 1 || len == 0, "%s: reply body of %u bytes not received (%d)", what, len, rc);
    *out = cqrs__reply__unpack(NULL, len, body);
    free(body);
    cr_assert(*out, "%s: the daemon's reply does not decode as a Reply", what);
    return 1;
}

static void raw_expect_invalid(int fd, const char *what)
{
    Cqrs__Reply *r = NULL;
    cr_assert(raw_reply(fd, &r, what) == 1, "%s: connection closed without an INVALID reply", what);
    check_invalid(r, what);
    cqrs__reply__free_unpacked(r, NULL);
}

static void raw_expect_closed(int fd, const char *what)
{
    Cqrs__Reply *r = NULL;
    int rc = raw_reply(fd, &r, what);
    if (rc == 1) {
        int st = r->status;
        cqrs__reply__free_unpacked(r, NULL);
        cr_assert_fail("%s: expected the connection closed, got another reply (%s)", what,
                       cqrs_status_name(st));
    }
}

/* Sends one frame holding `len` bytes of body. */
static void raw_frame(int fd, const uint8_t *body, size_t len)
{
    uint8_t hdr[4] = { (uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8),
                       (uint8_t)len };
    raw_send(fd, hdr, 4);
    if (len)
        raw_send(fd, body, len);
}

/* Packs `req` into a malloc'd body. */
static uint8_t *pack_request(const Cqrs__Request *req, size_t *len)
{
    *len = cqrs__request__get_packed_size(req);
    uint8_t *buf = malloc(*len ? *len : 1);
    cr_assert(buf, "out of memory");
    cqrs__request__pack(req, buf);
    return buf;
}

/* A packed TopUp request; `payload_buf` must hold 16 bytes. */
static void topup_request(Cqrs__Request *req, Cqrs__Command *cmd, uint8_t *payload_buf,
                          const char *type, const char *id, int64_t amount)
{
    Wallet__TopUp t = WALLET__TOP_UP__INIT;
    t.amount = amount;
    cmd->aggregate_type = (char *)type;
    cmd->aggregate_id = (char *)id;
    cmd->name = "TopUp";
    cmd->payload.len = wallet__top_up__pack(&t, payload_buf);
    cmd->payload.data = payload_buf;
    req->id = 42;
    req->body_case = CQRS__REQUEST__BODY_COMMAND;
    req->command = cmd;
}

/* Replaces the first `marker` byte inside the string `field` of `buf` by NUL. */
static void poke_nul(uint8_t *buf, size_t len, const char *field, char marker)
{
    uint8_t *p = memmem(buf, len, field, strlen(field));
    cr_assert(p, "cannot find %s in the packed request", field);
    uint8_t *m = memchr(p, marker, strlen(field));
    cr_assert(m);
    *m = '\0';
}

static void expect_wallet_untouched(const char *id, int64_t balance, uint64_t version)
{
    struct cqrs_client *c = daemon_connect(&d);
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_state(c, "wallet", id, &r) == 0, "STATE: no reply");
    cr_assert_eq(r->status, OK, "STATE %s: %s (%s)", id, cqrs_status_name(r->status), r->error);
    cr_assert_eq(r->version, version, "wallet %s moved to version %llu", id,
                 (unsigned long long)r->version);
    Wallet__WalletState *s = wallet__wallet_state__unpack(NULL, r->state.len, r->state.data);
    cr_assert(s, "state does not decode");
    cr_assert_eq(s->balance, balance, "wallet %s balance became %lld", id, (long long)s->balance);
    wallet__wallet_state__free_unpacked(s, NULL);
    cqrs__reply__free_unpacked(r, NULL);
    cqrs_client_free(c);
}

Test(bad_input, id_with_nul_byte)
{
    /* w1 exists: a daemon that cuts the id at the NUL would act on it */
    struct cqrs_client *c = daemon_connect(&d);
    Wallet__TopUp t = WALLET__TOP_UP__INIT;
    t.amount = 5;
    Cqrs__Reply *r = send_cmd(c, "wallet", "w1", &t.base, NULL, -1);
    cr_assert_eq(r->status, OK);
    cqrs__reply__free_unpacked(r, NULL);
    cqrs_client_free(c);
    free(before);
    before = snapshot();

    Cqrs__Request req = CQRS__REQUEST__INIT;
    Cqrs__Command cmd = CQRS__COMMAND__INIT;
    uint8_t payload[16];
    topup_request(&req, &cmd, payload, "wallet", "w1Zx", 7);
    size_t len;
    uint8_t *body = pack_request(&req, &len);
    poke_nul(body, len, "w1Zx", 'Z');
    int fd = daemon_connect_raw(&d);
    raw_frame(fd, body, len);
    raw_expect_invalid(fd, "TopUp on the id \"w1\\0x\"");
    free(body);
    close(fd);
    expect_data_unchanged("TopUp on the id \"w1\\0x\"");
    expect_wallet_untouched("w1", 5, 1);

    /* the same id in a query must not read w1 */
    Cqrs__Query q = CQRS__QUERY__INIT;
    q.aggregate_type = "wallet";
    q.aggregate_id = "w1Zx";
    q.kind = CQRS__QUERY__KIND__STATE;
    Cqrs__Request qreq = CQRS__REQUEST__INIT;
    qreq.id = 43;
    qreq.body_case = CQRS__REQUEST__BODY_QUERY;
    qreq.query = &q;
    body = pack_request(&qreq, &len);
    poke_nul(body, len, "w1Zx", 'Z');
    fd = daemon_connect_raw(&d);
    raw_frame(fd, body, len);
    raw_expect_invalid(fd, "STATE of the id \"w1\\0x\"");
    free(body);
    close(fd);

    /* and a NUL in the type must not reach the wallet worker */
    topup_request(&req, &cmd, payload, "walletZx", "w1", 7);
    body = pack_request(&req, &len);
    poke_nul(body, len, "walletZx", 'Z');
    fd = daemon_connect_raw(&d);
    raw_frame(fd, body, len);
    raw_expect_invalid(fd, "TopUp for the type \"wallet\\0x\"");
    free(body);
    close(fd);

    /* nor a NUL inside the payload's string */
    Wallet__RenameWallet rn = WALLET__RENAME_WALLET__INIT;
    rn.name = "SavingsZevil";
    uint8_t rnbuf[32];
    size_t rnlen = wallet__rename_wallet__pack(&rn, rnbuf);
    poke_nul(rnbuf, rnlen, "SavingsZevil", 'Z');
    cmd.name = "RenameWallet";
    cmd.aggregate_type = "wallet";
    cmd.aggregate_id = "w1";
    cmd.payload.data = rnbuf;
    cmd.payload.len = rnlen;
    body = pack_request(&req, &len);
    fd = daemon_connect_raw(&d);
    raw_frame(fd, body, len);
    raw_expect_invalid(fd, "RenameWallet to \"Savings\\0evil\"");
    free(body);
    close(fd);

    expect_data_unchanged("requests with NUL bytes");
    expect_wallet_untouched("w1", 5, 1);
    expect_still_serving("requests with NUL bytes");
    finish();
}

/* A tiny protobuf writer, for encodings protobuf-c itself never produces. */
struct pb {
    uint8_t buf[512];
    size_t len;
};

static void pb_varint(struct pb *b, uint64_t v)
{
    do {
        cr_assert(b->len < sizeof b->buf);
        b->buf[b->len++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
}

static void pb_bytes(struct pb *b, unsigned field, const void *data, size_t n)
{
    pb_varint(b, field << 3 | 2);
    pb_varint(b, n);
    cr_assert(b->len + n <= sizeof b->buf);
    memcpy(b->buf + b->len, data, n);
    b->len += n;
}

static void pb_str(struct pb *b, unsigned field, const char *s)
{
    pb_bytes(b, field, s, strlen(s));
}

Test(bad_input, nul_check_accepts_map_entries_as_other_encoders_write_them)
{
    /* protobuf C++ and Go (among others) write both key and value of every
     * map entry, empty or not; protobuf-c leaves an empty value out. The NUL
     * defence (a request whose repacked size differs is refused) must not
     * refuse such a request: it holds no NUL and is valid protobuf. */
    struct pb entry = { .len = 0 }, cmd = { .len = 0 }, req = { .len = 0 };
    pb_str(&entry, 1, "causation_id");
    pb_str(&entry, 2, "");
    pb_str(&cmd, 1, "wallet");
    pb_str(&cmd, 2, "m1");
    pb_str(&cmd, 3, "TopUp");
    static const uint8_t amount1[] = { 0x08, 0x01 };
    pb_bytes(&cmd, 4, amount1, sizeof amount1);
    pb_bytes(&cmd, 7, entry.buf, entry.len);
    pb_varint(&req, 1 << 3 | 0);
    pb_varint(&req, 9);
    pb_bytes(&req, 2, cmd.buf, cmd.len);

    /* it is a valid Request: protobuf-c itself decodes it */
    Cqrs__Request *check = cqrs__request__unpack(NULL, req.len, req.buf);
    cr_assert(check, "the hand-made request does not decode");
    cr_assert_eq(check->command->n_metadata, 1);
    cr_assert_str_eq(check->command->metadata[0]->value, "");
    cqrs__request__free_unpacked(check, NULL);

    int fd = daemon_connect_raw(&d);
    raw_frame(fd, req.buf, req.len);
    Cqrs__Reply *r = NULL;
    cr_assert(raw_reply(fd, &r, "TopUp with metadata causation_id=\"\"") == 1,
              "the daemon closed the connection");
    cr_assert_eq(r->status, OK,
                 "TopUp with metadata {causation_id: \"\"} as protobuf C++ and Go encode it: "
                 "%s (%s)", cqrs_status_name(r->status), r->error);
    cr_assert_eq(r->id, 9);
    cr_assert_eq(r->version, 1);
    cqrs__reply__free_unpacked(r, NULL);
    close(fd);
    finish();
}

static void oversized_header(uint32_t announced)
{
    char what[80];
    snprintf(what, sizeof what, "a frame header announcing %u bytes", announced);
    int fd = daemon_connect_raw(&d);
    uint8_t hdr[4] = { (uint8_t)(announced >> 24), (uint8_t)(announced >> 16),
                       (uint8_t)(announced >> 8), (uint8_t)announced };
    raw_send(fd, hdr, 4);
    /* no body follows: the daemon must decide from the header alone */
    raw_expect_invalid(fd, what);
    raw_expect_closed(fd, what);
    close(fd);
    expect_data_unchanged(what);
    expect_still_serving(what);
}

Test(bad_input, frame_over_the_limit)
{
    oversized_header(0x7fffffffu);
    oversized_header(0xffffffffu);
    oversized_header((1u << 20) + 1);
    finish();
}

Test(bad_input, frame_of_exactly_the_limit_is_read)
{
    /* A request of exactly 1 MiB is within the limit: it is read and
     * answered (INVALID: unknown command) and the connection stays open. */
    const uint32_t limit = 1u << 20;
    Cqrs__Request req = CQRS__REQUEST__INIT;
    Cqrs__Command cmd = CQRS__COMMAND__INIT;
    cmd.aggregate_type = "wallet";
    cmd.aggregate_id = "big";
    cmd.name = "NoSuchCommand";
    req.id = 7;
    req.body_case = CQRS__REQUEST__BODY_COMMAND;
    req.command = &cmd;
    uint8_t *pad = calloc(1, limit);
    cr_assert(pad, "out of memory");
    cmd.payload.data = pad;
    cmd.payload.len = limit - 64;
    for (int i = 0; i < 8; i++) {
        size_t size = cqrs__request__get_packed_size(&req);
        if (size >= limit)
            break;
        cmd.payload.len += limit - size;
    }
    size_t len;
    uint8_t *body = pack_request(&req, &len);
    cr_assert_eq(len, limit, "could not build a request of exactly %u bytes (%zu)", limit, len);

    int fd = daemon_connect_raw(&d);
    raw_frame(fd, body, len);
    raw_expect_invalid(fd, "a 1 MiB command with an unknown name");
    free(body);
    free(pad);

    Cqrs__Command ok = CQRS__COMMAND__INIT;
    uint8_t payload[16];
    topup_request(&req, &ok, payload, "wallet", "good", 1);
    body = pack_request(&req, &len);
    raw_frame(fd, body, len);
    free(body);
    Cqrs__Reply *r = NULL;
    cr_assert(raw_reply(fd, &r, "TopUp after a 1 MiB frame") == 1,
              "the daemon closed the connection after a frame of exactly the limit");
    cr_assert_eq(r->status, OK, "TopUp after a 1 MiB frame: %s (%s)", cqrs_status_name(r->status),
                 r->error);
    cr_assert_eq(r->id, 42);
    cqrs__reply__free_unpacked(r, NULL);
    close(fd);
    finish();
}

/* A small deterministic generator, so that a failing case can be replayed. */
static uint32_t xorshift32(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

Test(bad_input, garbage_bytes)
{
    for (uint32_t seed = 1; seed <= 16; seed++) {
        char what[64];
        snprintf(what, sizeof what, "64 random bytes (seed %u)", seed);
        uint8_t junk[64];
        uint32_t s = seed * 2654435761u;
        for (size_t i = 0; i < sizeof junk; i++)
            junk[i] = (uint8_t)xorshift32(&s);
        if (seed % 2 == 0)   /* half the cases announce at most 255 bytes */
            junk[0] = junk[1] = junk[2] = 0;

        int fd = daemon_connect_raw(&d);
        raw_send(fd, junk, sizeof junk);
        shutdown(fd, SHUT_WR);
        /* whatever the daemon makes of it: INVALID replies, then close */
        Cqrs__Reply *r = NULL;
        int n = 0;
        while (raw_reply(fd, &r, what) == 1) {
            int st = r->status;
            cqrs__reply__free_unpacked(r, NULL);
            cr_assert_eq(st, INVALID, "%s: a reply with status %s", what, cqrs_status_name(st));
            cr_assert(++n < 64, "%s: more replies than bytes", what);
        }
        close(fd);
        expect_data_unchanged(what);
        expect_still_serving(what);
    }
    finish();
}

Test(bad_input, disconnect_mid_frame)
{
    for (int round = 0; round < 3; round++) {
        /* a header announcing 100 bytes, and 50 of them */
        int fd = daemon_connect_raw(&d);
        uint8_t half[4 + 50] = { 0, 0, 0, 100 };
        memset(half + 4, 0x08, 50);
        raw_send(fd, half, sizeof half);
        close(fd);

        /* the first half of a valid TopUp: it must not be applied */
        Cqrs__Request req = CQRS__REQUEST__INIT;
        Cqrs__Command cmd = CQRS__COMMAND__INIT;
        uint8_t payload[16];
        topup_request(&req, &cmd, payload, "wallet", "half", 1);
        size_t len;
        uint8_t *body = pack_request(&req, &len);
        fd = daemon_connect_raw(&d);
        uint8_t hdr[4] = { 0, 0, 0, (uint8_t)len };
        raw_send(fd, hdr, 4);
        raw_send(fd, body, len / 2);
        close(fd);
        free(body);

        /* only a header */
        fd = daemon_connect_raw(&d);
        raw_send(fd, hdr, 2);
        close(fd);

        expect_still_serving("a client that disconnects mid-frame");
    }
    struct cqrs_client *c = daemon_connect(&d);
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_state(c, "wallet", "half", &r) == 0, "STATE: no reply");
    cr_assert_eq(r->status, NOT_FOUND, "half a TopUp frame was applied: STATE half is %s",
                 cqrs_status_name(r->status));
    cqrs__reply__free_unpacked(r, NULL);
    cqrs_client_free(c);
    expect_data_unchanged("a client that disconnects mid-frame");
    finish();
}

static void bad_body(const uint8_t *body, size_t len, const char *what)
{
    int fd = daemon_connect_raw(&d);
    raw_frame(fd, body, len);
    raw_expect_invalid(fd, what);
    close(fd);
    expect_data_unchanged(what);
    expect_still_serving(what);
}

Test(bad_input, frame_that_is_not_a_request)
{
    static const uint8_t ff[] = { 0xff, 0xff, 0xff, 0xff };
    bad_body(ff, sizeof ff, "a frame of ff ff ff ff");
    static const uint8_t short_sub[] = { 0x12, 0x10, 0x0a };   /* command: 16 bytes, 1 there */
    bad_body(short_sub, sizeof short_sub, "a frame with a truncated command");
    static const uint8_t past[] = { 0x12, 0x04, 0x0a, 0x03, 'w', 'a' };   /* type: 3 bytes, 2 there */
    bad_body(past, sizeof past, "a frame whose command has a string running past its end");
    static const uint8_t wire[] = { 0x10, 0x01 };   /* command sent as a varint */
    bad_body(wire, sizeof wire, "a frame with the command field of the wrong wire type");
    static const uint8_t varint[] = { 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
    bad_body(varint, sizeof varint, "a frame with an over-long varint");
    /* these decode, but say nothing: no command, query or control */
    bad_body(NULL, 0, "an empty frame");
    static const uint8_t id_only[] = { 0x08, 0x05 };
    bad_body(id_only, sizeof id_only, "a request with an id and no body");

    /* the same garbage in the middle of a pipelined connection answers only
     * itself: the good request after it still gets its OK */
    int fd = daemon_connect_raw(&d);
    raw_frame(fd, ff, sizeof ff);
    Cqrs__Request req = CQRS__REQUEST__INIT;
    Cqrs__Command cmd = CQRS__COMMAND__INIT;
    uint8_t payload[16];
    topup_request(&req, &cmd, payload, "wallet", "good", 1);
    size_t len;
    uint8_t *body = pack_request(&req, &len);
    raw_frame(fd, body, len);
    free(body);
    /* two replies, in either order: INVALID for the garbage, OK for id 42;
     * closing the connection after the INVALID is allowed too */
    int invalid = 0, ok = 0;
    Cqrs__Reply *r = NULL;
    while (invalid + ok < 2 && raw_reply(fd, &r, "ff ff ff ff before a good request") == 1) {
        if (r->id == 42) {
            cr_assert_eq(r->status, OK, "TopUp after garbage: %s (%s)",
                         cqrs_status_name(r->status), r->error);
            ok++;
        } else {
            check_invalid(r, "ff ff ff ff before a good request");
            invalid++;
        }
        cqrs__reply__free_unpacked(r, NULL);
    }
    cr_assert_eq(invalid, 1, "ff ff ff ff before a good request: %d INVALID replies", invalid);
    close(fd);
    expect_still_serving("a frame that is not a request");
    finish();
}
