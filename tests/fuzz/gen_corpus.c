/*
 * gen_corpus — writes the seed corpora of tests/fuzz/corpus/ (run once; its
 * outputs are committed). Built by -DCQRS_FUZZ=ON as fuzz-gen-corpus:
 *
 *   build-fuzz/fuzz-gen-corpus tests/fuzz/corpus
 *
 * Each seed is a valid input of its harness (see the input layout at the
 * top of each tests/fuzz/fuzz_*.c), plus a few near misses.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "account.pb-c.h"
#include "cqrs.pb-c.h"
#include "evlog.h"
#include "frame.h"
#include "wallet.pb-c.h"

static const char *OUT;

struct bytes {
    uint8_t *p;
    size_t len, cap;
};

static void put(struct bytes *b, const void *p, size_t len)
{
    if (b->len + len > b->cap) {
        b->cap = (b->len + len) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p)
            abort();
    }
    if (len)
        memcpy(b->p + b->len, p, len);
    b->len += len;
}

static void put_byte(struct bytes *b, uint8_t c)
{
    put(b, &c, 1);
}

static void put_msg(struct bytes *b, const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *p = malloc(n ? n : 1);
    protobuf_c_message_pack(m, p);
    put(b, p, n);
    free(p);
}

static void save(const char *target, const char *name, const struct bytes *b)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", OUT, target);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/%s/%s", OUT, target, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b->p, 1, b->len, f) != b->len || fclose(f) != 0) {
        fprintf(stderr, "gen_corpus: %s: %s\n", path, strerror(errno));
        exit(1);
    }
}

/* --- requests ------------------------------------------------------------- */

static struct bytes request(const Cqrs__Request *r)
{
    struct bytes b = { 0 };
    put_msg(&b, &r->base);
    return b;
}

static struct bytes cmd_request(uint64_t id, const char *type, const char *agg, const char *name,
                                const ProtobufCMessage *payload, const char *command_id,
                                int expect, uint64_t expected, size_t n_md,
                                Cqrs__Command__MetadataEntry **md)
{
    struct bytes pl = { 0 };
    if (payload)
        put_msg(&pl, payload);
    Cqrs__Command c = CQRS__COMMAND__INIT;
    c.aggregate_type = (char *)type;
    c.aggregate_id = (char *)agg;
    c.name = (char *)name;
    c.payload.data = pl.p;
    c.payload.len = pl.len;
    c.command_id = (char *)command_id;
    if (expect) {
        c.expected_case = CQRS__COMMAND__EXPECTED_EXPECTED_VERSION;
        c.expected_version = expected;
    }
    c.n_metadata = n_md;
    c.metadata = md;
    Cqrs__Request r = CQRS__REQUEST__INIT;
    r.id = id;
    r.body_case = CQRS__REQUEST__BODY_COMMAND;
    r.command = &c;
    struct bytes b = request(&r);
    free(pl.p);
    return b;
}

static struct bytes query_request(uint64_t id, const char *type, const char *agg,
                                  Cqrs__Query__Kind kind, uint64_t from, uint32_t max)
{
    Cqrs__Query q = CQRS__QUERY__INIT;
    q.aggregate_type = (char *)type;
    q.aggregate_id = (char *)agg;
    q.kind = kind;
    q.from_version = from;
    q.max_count = max;
    Cqrs__Request r = CQRS__REQUEST__INIT;
    r.id = id;
    r.body_case = CQRS__REQUEST__BODY_QUERY;
    r.query = &q;
    return request(&r);
}

static struct bytes control_request(uint64_t id, Cqrs__Control__Op op, const char *child)
{
    Cqrs__Control c = CQRS__CONTROL__INIT;
    c.op = op;
    c.child = (char *)child;
    Cqrs__Request r = CQRS__REQUEST__INIT;
    r.id = id;
    r.body_case = CQRS__REQUEST__BODY_CONTROL;
    r.control = &c;
    return request(&r);
}

#define N_REQ 10
static struct bytes REQ[N_REQ];
static const char *REQ_NAME[N_REQ] = {
    "command_topup", "command_expected_metadata", "command_account_open", "query_state",
    "query_events", "query_verify_type", "control_status", "control_kill",
    "command_nul_in_id", "command_no_name",
};

static void make_requests(void)
{
    Wallet__TopUp top = WALLET__TOP_UP__INIT;
    top.amount = 100;
    REQ[0] = cmd_request(1, "wallet", "w1", "TopUp", &top.base, "c-1", 0, 0, 0, NULL);

    Wallet__AuthorizeFunds auth = WALLET__AUTHORIZE_FUNDS__INIT;
    auth.amount = 10;
    auth.tx_id = "123";
    Cqrs__Command__MetadataEntry e1 = CQRS__COMMAND__METADATA_ENTRY__INIT;
    e1.key = "correlation_id";
    e1.value = "abc";
    Cqrs__Command__MetadataEntry e2 = CQRS__COMMAND__METADATA_ENTRY__INIT;
    e2.key = "user";
    e2.value = "alice";
    Cqrs__Command__MetadataEntry *md[] = { &e1, &e2 };
    REQ[1] = cmd_request(2, "wallet", "w-2.x_y", "AuthorizeFunds", &auth.base, "c-2", 1, 3, 2, md);

    Account__OpenAccount open = ACCOUNT__OPEN_ACCOUNT__INIT;
    open.owner = "alice";
    open.email = "alice@example.com";
    REQ[2] = cmd_request(3, "account", "a1", "OpenAccount", &open.base, "", 1, 0, 0, NULL);

    REQ[3] = query_request(4, "wallet", "w1", CQRS__QUERY__KIND__STATE, 0, 0);
    REQ[4] = query_request(5, "wallet", "w1", CQRS__QUERY__KIND__EVENTS, 1, 10);
    REQ[5] = query_request(6, "wallet", "", CQRS__QUERY__KIND__VERIFY, 0, 0);
    REQ[6] = control_request(7, CQRS__CONTROL__OP__STATUS, "");
    REQ[7] = control_request(8, CQRS__CONTROL__OP__KILL, "wallet");
    REQ[8] = cmd_request(9, "wallet", "w1", "TopUp", &top.base, "", 0, 0, 0, NULL);
    /* "w1" -> "w\0": the NUL check's case (same length, so no re-encoding) */
    for (size_t i = 2; i + 1 < REQ[8].len; i++)
        if (REQ[8].p[i - 2] == 0x12 && REQ[8].p[i - 1] == 2 && REQ[8].p[i] == 'w' &&
            REQ[8].p[i + 1] == '1') {
            REQ[8].p[i + 1] = 0;
            break;
        }
    REQ[9] = cmd_request(10, "wallet", "w1", "", &top.base, "", 0, 0, 0, NULL);
}

static void gen_request(void)
{
    for (int i = 0; i < N_REQ; i++)
        save("fuzz_request", REQ_NAME[i], &REQ[i]);
}

/* --- frames --------------------------------------------------------------- */

static void put_frame(struct bytes *b, const uint64_t *tag, const struct bytes *body)
{
    uint8_t hdr[FRAME_HEADER_LEN + FRAME_TAG_LEN];
    size_t len = body->len + (tag ? FRAME_TAG_LEN : 0);
    frame_set32(hdr, (uint32_t)len);
    if (tag)
        frame_set64(hdr + FRAME_HEADER_LEN, *tag);
    put(b, hdr, FRAME_HEADER_LEN + (tag ? FRAME_TAG_LEN : 0));
    put(b, body->p, body->len);
}

static void gen_frame(void)
{
    /* mode 0: one chunk size (8 bytes at a time), copied, default limit */
    struct bytes b = { 0 };
    put_byte(&b, 0x00);
    put_byte(&b, 7);
    for (int i = 0; i < 4; i++)
        put_frame(&b, NULL, &REQ[i]);
    save("fuzz_frame", "client_frames", &b);

    /* tagged (cqrsd <-> worker), chunks 1, 3, 200 by reference */
    b.len = 0;
    put_byte(&b, 0x02 | 0x08 | 0x10);
    put_byte(&b, 0);
    put_byte(&b, 2);
    put_byte(&b, 199);
    for (uint64_t t = 0; t < 4; t++)
        put_frame(&b, &t, &REQ[3 + t]);
    struct bytes empty = { 0 };
    put_frame(&b, NULL, &empty);    /* a body shorter than a tag */
    save("fuzz_frame", "worker_frames_tagged", &b);

    /* limit 16: a small frame, then one over the limit */
    b.len = 0;
    put_byte(&b, 0x40);
    put_byte(&b, 255);
    put_frame(&b, NULL, &REQ[6]);
    put_frame(&b, NULL, &REQ[1]);
    save("fuzz_frame", "over_limit", &b);

    /* a header announcing 2 MiB under the default limit, then a torn frame */
    b.len = 0;
    put_byte(&b, 0x01);
    put_byte(&b, 3);
    put_byte(&b, 5);
    put_frame(&b, NULL, &REQ[0]);
    uint8_t big[4];
    frame_set32(big, 2u << 20);
    put(&b, big, 4);
    save("fuzz_frame", "too_big", &b);

    b.len = 0;
    put_byte(&b, 0x00);
    put_byte(&b, 63);
    put_frame(&b, NULL, &REQ[2]);
    put(&b, REQ[2].p, 6);            /* header and part of a body: NEED_MORE at the end */
    save("fuzz_frame", "torn_end", &b);
    free(b.p);
}

/* --- event logs ----------------------------------------------------------- */

static void put_record(struct bytes *b, uint64_t version, const char *type,
                       const ProtobufCMessage *ev, const char *command_id)
{
    struct bytes data = { 0 };
    put_msg(&data, ev);
    Cqrs__EventRecord rec = CQRS__EVENT_RECORD__INIT;
    rec.version = version;
    rec.timestamp_us = 1700000000000000 + (int64_t)version;
    rec.type = (char *)type;
    rec.data.data = data.p;
    rec.data.len = data.len;
    rec.command_id = (char *)command_id;
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    if (evlog_encode(&rec, &buf, &len, &cap) < 0)
        abort();
    put(b, buf, len);
    free(buf);
    free(data.p);
}

/* The talk's scenario: top up 100, rename, authorize 10, capture 8.
 * *boundary: the offset (in the file) of the record of version 3. */
static void wallet_log(struct bytes *b, off_t *boundary)
{
    Wallet__WalletToppedUp up = WALLET__WALLET_TOPPED_UP__INIT;
    up.from = 0;
    up.to = 100;
    put_record(b, 1, "WalletToppedUp", &up.base, "c-1");
    Wallet__WalletRenamed ren = WALLET__WALLET_RENAMED__INIT;
    ren.name = "Savings";
    put_record(b, 2, "WalletRenamed", &ren.base, "c-2");
    *boundary = (off_t)(b->len - 4 + EVLOG_MAGIC_LEN);   /* b starts with 4 header bytes */
    Wallet__FundsAuthorized auth = WALLET__FUNDS_AUTHORIZED__INIT;
    auth.amount = 10;
    auth.tx_id = "123";
    put_record(b, 3, "FundsAuthorized", &auth.base, "c-3");
    Wallet__FundsCaptured cap = WALLET__FUNDS_CAPTURED__INIT;
    cap.amount = 8;
    cap.tx_id = "123";
    put_record(b, 4, "FundsCaptured", &cap.base, "c-4");
}

static void evlog_header(struct bytes *b, uint8_t mode, uint16_t start, uint8_t start_version)
{
    put_byte(b, mode);
    put_byte(b, (uint8_t)(start >> 8));
    put_byte(b, (uint8_t)start);
    put_byte(b, start_version);
}

static void gen_evlog(void)
{
    struct bytes b = { 0 };
    off_t boundary;
    evlog_header(&b, 0x01, 0, 0);
    wallet_log(&b, &boundary);
    /* start at the record of version 3, after version 2 */
    b.p[1] = (uint8_t)(boundary >> 8);
    b.p[2] = (uint8_t)boundary;
    b.p[3] = 2;
    b.p[0] = 0x05;                     /* checksums rewritten by the harness */
    save("fuzz_evlog", "wallet_log", &b);
    b.p[0] = 0x01;

    size_t whole = b.len;
    b.len = whole - 5;                 /* the last record torn */
    save("fuzz_evlog", "torn_tail", &b);

    b.len = whole;
    b.p[whole - 1] ^= 0x40;            /* the last record's checksum fails */
    save("fuzz_evlog", "bad_crc_last", &b);
    b.p[whole - 1] ^= 0x40;

    b.p[boundary - EVLOG_MAGIC_LEN + 4 + EVLOG_HEADER_LEN + 3] ^= 0x01;   /* inside version 3 */
    save("fuzz_evlog", "bad_crc_middle", &b);
    b.p[boundary - EVLOG_MAGIC_LEN + 4 + EVLOG_HEADER_LEN + 3] ^= 0x01;

    uint8_t zeros[16] = { 0 };
    put(&b, zeros, sizeof zeros);
    save("fuzz_evlog", "zero_tail", &b);

    /* the magic written by the input itself, and the journal's flag */
    b.len = 0;
    evlog_header(&b, 0x02, 0, 0);
    put(&b, EVLOG_MAGIC, EVLOG_MAGIC_LEN);
    wallet_log(&b, &boundary);
    save("fuzz_evlog", "raw_any_versions", &b);

    b.len = 0;
    evlog_header(&b, 0x00, EVLOG_MAGIC_LEN, 0);
    put(&b, "CQRS", 4);                /* torn while being created */
    save("fuzz_evlog", "magic_prefix", &b);
    free(b.p);
}

/* --- cqrsctl fields ------------------------------------------------------- */

static void gen_pbtext(void)
{
    static const struct { const char *name, *text; } seeds[] = {
        { "topup", "amount=100" },
        { "authorize", "amount=10\ntx_id=123" },
        { "rename", "name=Savings" },
        { "open_account", "owner=alice\nemail=alice@example.com" },
        { "out_of_range", "amount=99999999999999999999\ntx_id=" },
        { "negative_twice", "amount=-5\namount=+7" },
        { "unknown_field", "nope=1\n=x\nnoequals" },
    };
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
        struct bytes b = { 0 };
        put_byte(&b, (uint8_t)(40 + i));   /* error buffer size */
        put(&b, seeds[i].text, strlen(seeds[i].text));
        save("fuzz_pbtext", seeds[i].name, &b);
        free(b.p);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
        return 2;
    }
    OUT = argv[1];
    mkdir(OUT, 0755);
    make_requests();
    gen_request();
    gen_frame();
    gen_evlog();
    gen_pbtext();
    for (int i = 0; i < N_REQ; i++)
        free(REQ[i].p);
    return 0;
}
