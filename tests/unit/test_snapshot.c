/*
 * test_snapshot — snapshot files (worker/snapshot.c) against the format and
 * write protocol at the top of snapshot.h: round trip, every single-byte
 * corruption and every truncation refused, lengths out of bounds caught
 * even under a good CRC, stale snapshot_version, absent file, a leftover
 * temp file, a failed write; and state_unpack of the wallet and account
 * types (exact round trips, refusal of states evolve could never build).
 * Every snapshot test works in its own mkdtemp directory.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "account.pb-c.h"
#include "aggregates/types.h"
#include "crc32c.h"
#include "frame.h"
#include "snapshot.h"
#include "wallet.pb-c.h"

/* --- per-test directory -------------------------------------------------- */

static char DIR_[64];
static char PATH[128];          /* the snapshot */
static char TMP[160];           /* PATH.tmp */
static char WHY[200];

static void dir_setup(void)
{
    strcpy(DIR_, "/tmp/test_snapshot.XXXXXX");
    cr_assert_not_null(mkdtemp(DIR_), "mkdtemp: %s", strerror(errno));
    snprintf(PATH, sizeof PATH, "%s/w1.snap", DIR_);
    snprintf(TMP, sizeof TMP, "%s.tmp", PATH);
    WHY[0] = '\0';
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void dir_teardown(void)
{
    nftw(DIR_, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

TestSuite(snapshot, .init = dir_setup, .fini = dir_teardown);
TestSuite(state_unpack);

/* --- files ---------------------------------------------------------------- */

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "open %s: %s", path, strerror(errno));
    cr_assert_eq(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    cr_assert_geq(n, 0);
    rewind(f);
    uint8_t *buf = malloc((size_t)n + 1);
    cr_assert_not_null(buf);
    *len = fread(buf, 1, (size_t)n, f);
    cr_assert_eq(*len, (size_t)n);
    fclose(f);
    return buf;
}

static void spit(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "create %s: %s", path, strerror(errno));
    cr_assert_eq(fwrite(data, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
}

/* --- states -------------------------------------------------------------- */

/* Packs a state with the type's state_pack; caller frees. */
static uint8_t *pack_state(const struct aggregate_type *t, const void *state, size_t *len)
{
    uint8_t init[64];
    ProtobufCBufferSimple buf = PROTOBUF_C_BUFFER_SIMPLE_INIT(init);
    size_t n = t->state_pack(state, &buf.base);
    cr_assert_eq(n, buf.len);
    uint8_t *out = malloc(n ? n : 1);
    cr_assert_not_null(out);
    memcpy(out, buf.data, n);
    PROTOBUF_C_BUFFER_SIMPLE_CLEAR(&buf);
    *len = n;
    return out;
}

/* Packs any message (for hand-built states); caller frees. */
static uint8_t *pack_msg(const ProtobufCMessage *m, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    uint8_t *out = malloc(*len ? *len : 1);
    cr_assert_not_null(out);
    protobuf_c_message_pack(m, out);
    return out;
}

static void evolve(const struct aggregate_type *t, void *state, const ProtobufCMessage *ev)
{
    cr_assert_eq(t->evolve(state, ev), 0, "%s did not apply", ev->descriptor->short_name);
}

static void w_topped_up(void *s, int64_t from, int64_t to)
{
    Wallet__WalletToppedUp e = WALLET__WALLET_TOPPED_UP__INIT;
    e.from = from;
    e.to = to;
    evolve(&wallet_type, s, &e.base);
}

static void w_renamed(void *s, const char *name)
{
    Wallet__WalletRenamed e = WALLET__WALLET_RENAMED__INIT;
    e.name = (char *)name;
    evolve(&wallet_type, s, &e.base);
}

static void w_authorized(void *s, int64_t amount, const char *tx_id)
{
    Wallet__FundsAuthorized e = WALLET__FUNDS_AUTHORIZED__INIT;
    e.amount = amount;
    e.tx_id = (char *)tx_id;
    evolve(&wallet_type, s, &e.base);
}

static void w_captured(void *s, int64_t amount, const char *tx_id)
{
    Wallet__FundsCaptured e = WALLET__FUNDS_CAPTURED__INIT;
    e.amount = amount;
    e.tx_id = (char *)tx_id;
    evolve(&wallet_type, s, &e.base);
}

static void a_opened(void *s, const char *owner, const char *email)
{
    Account__AccountOpened e = ACCOUNT__ACCOUNT_OPENED__INIT;
    e.owner = (char *)owner;
    e.email = (char *)email;
    evolve(&account_type, s, &e.base);
}

static void a_email_changed(void *s, const char *from, const char *to)
{
    Account__EmailChanged e = ACCOUNT__EMAIL_CHANGED__INIT;
    e.from = (char *)from;
    e.to = (char *)to;
    evolve(&account_type, s, &e.base);
}

static void a_closed(void *s)
{
    Account__AccountClosed e = ACCOUNT__ACCOUNT_CLOSED__INIT;
    evolve(&account_type, s, &e.base);
}

/* A wallet after four events: 100 topped up, renamed, two blocks. */
static void *sample_wallet(void)
{
    void *s = wallet_type.state_new();
    cr_assert_not_null(s);
    w_topped_up(s, 0, 100);
    w_renamed(s, "Savings");
    w_authorized(s, 30, "tx-b");
    w_authorized(s, 20, "tx-a");
    return s;
}

/* --- a sample snapshot ---------------------------------------------------- */

static char ID0[] = "cmd-0", ID1[] = "cmd-1", ID2[] = "a-much-longer-command-id-2";

/* The sample wallet at version 4, its log offset, and a window of 3 ids;
 * snap.state is the caller's to free. */
static struct snapshot sample_snapshot(struct snapshot_cmd cmds[3])
{
    void *w = sample_wallet();
    struct snapshot snap = { .snapshot_version = wallet_type.snapshot_version,
                             .version = 4, .log_offset = 321 };
    snap.state = pack_state(&wallet_type, w, &snap.state_len);
    wallet_type.state_free(w);
    cmds[0] = (struct snapshot_cmd){ ID0, 1, 1 };
    cmds[1] = (struct snapshot_cmd){ ID1, 2, 1 };
    cmds[2] = (struct snapshot_cmd){ ID2, 3, 2 };
    snap.cmds = cmds;
    snap.n_cmds = 3;
    return snap;
}

/* Writes the sample snapshot at PATH; returns the file's bytes. */
static uint8_t *write_sample(size_t *len)
{
    struct snapshot_cmd cmds[3];
    struct snapshot snap = sample_snapshot(cmds);
    cr_assert_eq(snapshot_write(PATH, &snap), 0, "snapshot_write: %s", strerror(errno));
    free(snap.state);
    return slurp(PATH, len);
}

/* snapshot_read must refuse PATH with EINVAL and a reason. */
static void expect_invalid(uint32_t expected, const char *what)
{
    struct snapshot *out = (struct snapshot *)&out;   /* must be reset to NULL */
    WHY[0] = '\0';
    errno = 0;
    int rc = snapshot_read(PATH, expected, &out, WHY, sizeof WHY);
    int e = errno;
    if (rc == 0)
        snapshot_free(out);
    cr_assert_eq(rc, -1, "%s: accepted", what);
    cr_assert_eq(e, EINVAL, "%s: errno %d (%s), why \"%s\"", what, e, strerror(e), WHY);
    cr_assert_null(out, "%s: *out was not reset", what);
    cr_assert_neq(WHY[0], '\0', "%s: no reason given", what);
}

/* --- round trip ------------------------------------------------------------ */

Test(snapshot, round_trip_of_a_wallet_with_a_window_of_three_command_ids)
{
    struct snapshot_cmd cmds[3];
    struct snapshot snap = sample_snapshot(cmds);
    cr_assert_eq(snapshot_write(PATH, &snap), 0, "snapshot_write: %s", strerror(errno));

    struct snapshot *got = NULL;
    cr_assert_eq(snapshot_read(PATH, wallet_type.snapshot_version, &got, WHY, sizeof WHY), 0,
                 "snapshot_read: %s", WHY);
    cr_assert_eq(got->snapshot_version, 1);
    cr_assert_eq(got->version, 4);
    cr_assert_eq(got->log_offset, 321);
    cr_assert_eq(got->state_len, snap.state_len);
    cr_assert_arr_eq(got->state, snap.state, snap.state_len);
    cr_assert_eq(got->n_cmds, 3);
    for (size_t i = 0; i < 3; i++) {
        cr_assert_str_eq(got->cmds[i].command_id, cmds[i].command_id, "cmd #%zu out of order", i);
        cr_assert_eq(got->cmds[i].first, cmds[i].first);
        cr_assert_eq(got->cmds[i].count, cmds[i].count);
    }

    /* the state comes back as the same wallet */
    void *w = wallet_type.state_unpack(got->state, got->state_len);
    cr_assert_not_null(w, "state_unpack: %s", strerror(errno));
    size_t len;
    uint8_t *again = pack_state(&wallet_type, w, &len);
    cr_assert_eq(len, snap.state_len);
    cr_assert_arr_eq(again, snap.state, len);
    free(again);
    wallet_type.state_free(w);

    /* what was read writes the same file again: encode and decode mirror */
    size_t first_len, second_len;
    uint8_t *first = slurp(PATH, &first_len);
    cr_assert_eq(snapshot_write(PATH, got), 0);
    uint8_t *second = slurp(PATH, &second_len);
    cr_assert_eq(first_len, second_len);
    cr_assert_arr_eq(first, second, first_len);
    free(first);
    free(second);

    cr_assert_eq(access(TMP, F_OK), -1, "a successful write leaves no %s", TMP);
    struct stat st;
    cr_assert_eq(stat(PATH, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600);
    snapshot_free(got);
    free(snap.state);
}

Test(snapshot, file_starts_with_the_magic_and_big_endian_header)
{
    size_t len;
    uint8_t *buf = write_sample(&len);
    cr_assert_arr_eq(buf, "CQRSSNP1", 8);
    cr_assert_eq(frame_get32(buf + 8), 1, "snapshot_version");
    cr_assert_eq(frame_get64(buf + 12), 4, "version");
    cr_assert_eq(frame_get64(buf + 20), 321, "log_offset");
    cr_assert_eq(frame_get32(buf + len - 4), crc32c(0, buf, len - 4), "trailing CRC32C");
    free(buf);
}

Test(snapshot, empty_state_and_no_command_ids)
{
    struct snapshot snap = { .snapshot_version = 7, .version = 1, .log_offset = 9 };
    cr_assert_eq(snapshot_write(PATH, &snap), 0, "snapshot_write: %s", strerror(errno));
    struct snapshot *got = NULL;
    cr_assert_eq(snapshot_read(PATH, 7, &got, WHY, sizeof WHY), 0, "%s", WHY);
    cr_assert_eq(got->state_len, 0);
    cr_assert_eq(got->n_cmds, 0);
    snapshot_free(got);
}

/* --- damaged files ------------------------------------------------------- */

Test(snapshot, every_single_byte_corruption_is_rejected)
{
    size_t len;
    uint8_t *good = write_sample(&len);
    uint8_t *bad = malloc(len);
    cr_assert_not_null(bad);
    const uint8_t flips[] = { 0x01, 0x80, 0xff };
    for (size_t i = 0; i < len; i++) {
        for (size_t f = 0; f < sizeof flips; f++) {
            memcpy(bad, good, len);
            bad[i] ^= flips[f];
            spit(PATH, bad, len);
            char what[64];
            snprintf(what, sizeof what, "byte %zu ^ 0x%02x", i, flips[f]);
            expect_invalid(1, what);
        }
    }
    free(bad);
    free(good);
}

Test(snapshot, truncation_at_every_length_is_rejected)
{
    size_t len;
    uint8_t *good = write_sample(&len);
    for (size_t n = 0; n < len; n++) {
        spit(PATH, good, n);
        char what[64];
        snprintf(what, sizeof what, "first %zu of %zu bytes", n, len);
        expect_invalid(1, what);
    }
    free(good);
}

Test(snapshot, bytes_appended_after_the_crc_are_rejected)
{
    size_t len;
    uint8_t *good = write_sample(&len);
    uint8_t *longer = calloc(1, len + 1);
    memcpy(longer, good, len);
    spit(PATH, longer, len + 1);
    expect_invalid(1, "one byte more");
    free(longer);
    free(good);
}

Test(snapshot, stale_snapshot_version_is_rejected_with_its_reason)
{
    size_t len;
    free(write_sample(&len));
    expect_invalid(2, "written under 1, read under 2");
    cr_assert_not_null(strstr(WHY, "snapshot_version"), "reason \"%s\" lacks snapshot_version", WHY);
    cr_assert_not_null(strstr(WHY, "stale"), "reason \"%s\"", WHY);
}

Test(snapshot, absent_file_is_enoent)
{
    struct snapshot *out = (struct snapshot *)&out;
    errno = 0;
    cr_assert_eq(snapshot_read(PATH, 1, &out, WHY, sizeof WHY), -1);
    cr_assert_eq(errno, ENOENT);
    cr_assert_null(out);
}

Test(snapshot, a_file_that_is_not_a_snapshot_is_rejected)
{
    const char junk[] = "CQRSLOG1 this is an event log, not a snapshot, at all....";
    spit(PATH, junk, sizeof junk);
    expect_invalid(1, "an event log");
    cr_assert_not_null(strstr(WHY, "magic"), "reason \"%s\"", WHY);
}

Test(snapshot, a_file_over_the_limit_is_rejected_before_reading)
{
    int fd = open(PATH, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert_geq(fd, 0);
    cr_assert_eq(ftruncate(fd, (off_t)SNAPSHOT_MAX_BYTES + 1), 0);   /* sparse */
    close(fd);
    expect_invalid(1, "over the limit");
    cr_assert_not_null(strstr(WHY, "limit"), "reason \"%s\"", WHY);
}

/* --- lengths out of bounds under a good CRC ------------------------------ */

/* A file built by hand: magic, header, then `rest` as given, then the CRC
 * of it all, so only the length checks can catch what is wrong. */
static void spit_crafted(uint32_t snapshot_version, uint64_t version, const uint8_t *rest,
                         size_t rest_len)
{
    size_t len = 28 + rest_len + 4;
    uint8_t *buf = malloc(len);
    cr_assert_not_null(buf);
    memcpy(buf, "CQRSSNP1", 8);
    frame_set32(buf + 8, snapshot_version);
    frame_set64(buf + 12, version);
    frame_set64(buf + 20, 100);
    memcpy(buf + 28, rest, rest_len);
    frame_set32(buf + 28 + rest_len, crc32c(0, buf, 28 + rest_len));
    spit(PATH, buf, len);
    free(buf);
}

Test(snapshot, crafted_file_is_accepted_when_consistent)
{
    /* state "ab", one command "x" at 1+1 */
    const uint8_t rest[] = { 0, 0, 0, 2, 'a', 'b', 0, 0, 0, 1,
                             0, 0, 0, 1, 'x', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1 };
    spit_crafted(1, 1, rest, sizeof rest);
    struct snapshot *got = NULL;
    cr_assert_eq(snapshot_read(PATH, 1, &got, WHY, sizeof WHY), 0, "%s", WHY);
    cr_assert_eq(got->state_len, 2);
    cr_assert_str_eq(got->cmds[0].command_id, "x");
    snapshot_free(got);
}

Test(snapshot, state_length_past_the_end_is_rejected)
{
    const uint8_t rest[] = { 0xff, 0xff, 0xff, 0xff, 'a', 'b', 0, 0, 0, 0 };
    spit_crafted(1, 1, rest, sizeof rest);
    expect_invalid(1, "state length 4 GiB");
}

Test(snapshot, command_count_beyond_the_bytes_is_rejected)
{
    const uint8_t rest[] = { 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
                             0, 0, 0, 1, 'x', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1 };
    spit_crafted(1, 1, rest, sizeof rest);
    expect_invalid(1, "4 billion command ids");
}

Test(snapshot, command_id_length_out_of_bounds_is_rejected)
{
    const uint8_t too_long[] = { 0, 0, 0, 0, 0, 0, 0, 1,
                                 0, 0, 0, 2, 'x', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1 };
    spit_crafted(1, 1, too_long, sizeof too_long);
    expect_invalid(1, "id length one past its bytes");

    const uint8_t huge[] = { 0, 0, 0, 0, 0, 0, 0, 1,
                             0xff, 0xff, 0xff, 0xf0, 'x', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1 };
    spit_crafted(1, 1, huge, sizeof huge);
    expect_invalid(1, "id length near 4 GiB");

    const uint8_t empty[] = { 0, 0, 0, 0, 0, 0, 0, 1,
                              0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0 };
    spit_crafted(1, 1, empty, sizeof empty);
    expect_invalid(1, "empty id");
}

Test(snapshot, bytes_after_the_last_command_id_are_rejected)
{
    const uint8_t rest[] = { 0, 0, 0, 0, 0, 0, 0, 1,
                             0, 0, 0, 1, 'x', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0 };
    spit_crafted(1, 1, rest, sizeof rest);
    expect_invalid(1, "one byte before the CRC too many");
}

Test(snapshot, command_id_with_a_nul_byte_is_rejected)
{
    const uint8_t rest[] = { 0, 0, 0, 0, 0, 0, 0, 1,
                             0, 0, 0, 3, 'x', 0, 'y', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1 };
    spit_crafted(1, 1, rest, sizeof rest);
    expect_invalid(1, "NUL in an id");
}

Test(snapshot, command_versions_beyond_the_snapshot_are_rejected)
{
    /* version 1, command claims 1+2 */
    const uint8_t rest[] = { 0, 0, 0, 0, 0, 0, 0, 1,
                             0, 0, 0, 1, 'x', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2 };
    spit_crafted(1, 1, rest, sizeof rest);
    expect_invalid(1, "command beyond the version");
}

Test(snapshot, version_zero_is_rejected)
{
    const uint8_t rest[] = { 0, 0, 0, 0, 0, 0, 0, 0 };
    spit_crafted(1, 0, rest, sizeof rest);
    expect_invalid(1, "version 0");
}

/* --- writes ----------------------------------------------------------------- */

Test(snapshot, write_refuses_a_snapshot_that_read_would_refuse)
{
    struct snapshot_cmd cmds[3];
    struct snapshot snap = sample_snapshot(cmds);
    struct snapshot bad;

    bad = snap;
    bad.snapshot_version = 0;
    errno = 0;
    cr_assert_eq(snapshot_write(PATH, &bad), -1, "snapshot_version 0");
    cr_assert_eq(errno, EINVAL);

    bad = snap;
    bad.version = 0;
    cr_assert_eq(snapshot_write(PATH, &bad), -1, "version 0");
    cr_assert_eq(errno, EINVAL);

    bad = snap;
    bad.version = 3;              /* cmd-2 covers versions 3 and 4 */
    cr_assert_eq(snapshot_write(PATH, &bad), -1, "command beyond the version");
    cr_assert_eq(errno, EINVAL);

    struct snapshot_cmd dup[3] = { cmds[0], cmds[1], { ID0, 3, 2 } };
    bad = snap;
    bad.cmds = dup;
    cr_assert_eq(snapshot_write(PATH, &bad), -1, "the same command id twice");
    cr_assert_eq(errno, EINVAL);

    cr_assert_eq(access(PATH, F_OK), -1, "a refused write created the snapshot");
    cr_assert_eq(access(TMP, F_OK), -1, "a refused write left %s", TMP);
    free(snap.state);
}

Test(snapshot, leftover_temp_file_does_not_affect_reading_and_is_replaced)
{
    size_t len;
    free(write_sample(&len));
    /* a crash in the middle of the next write left half a file behind */
    const char half[] = "CQRSSNP1\0\0\0\1\0\0";
    spit(TMP, half, sizeof half - 1);

    struct snapshot *got = NULL;
    cr_assert_eq(snapshot_read(PATH, 1, &got, WHY, sizeof WHY), 0, "%s", WHY);
    cr_assert_eq(got->version, 4);
    snapshot_free(got);

    struct snapshot next = { .snapshot_version = 1, .version = 9, .log_offset = 999 };
    cr_assert_eq(snapshot_write(PATH, &next), 0, "snapshot_write: %s", strerror(errno));
    cr_assert_eq(access(TMP, F_OK), -1, "%s is still there", TMP);
    cr_assert_eq(snapshot_read(PATH, 1, &got, WHY, sizeof WHY), 0, "%s", WHY);
    cr_assert_eq(got->version, 9);
    cr_assert_eq(got->log_offset, 999);
    cr_assert_eq(got->n_cmds, 0);
    snapshot_free(got);
}

Test(snapshot, failed_write_keeps_the_previous_state_and_removes_its_temp_file)
{
    /* the rename fails: the target is a non-empty directory */
    cr_assert_eq(mkdir(PATH, 0700), 0);
    char inside[200];
    snprintf(inside, sizeof inside, "%s/x", PATH);
    spit(inside, "x", 1);

    struct snapshot_cmd cmds[3];
    struct snapshot snap = sample_snapshot(cmds);
    errno = 0;
    cr_assert_eq(snapshot_write(PATH, &snap), -1);
    cr_assert_neq(errno, 0);
    cr_assert_eq(access(TMP, F_OK), -1, "a failed write left %s", TMP);
    struct stat st;
    cr_assert_eq(stat(PATH, &st), 0);
    cr_assert(S_ISDIR(st.st_mode), "the target was replaced");
    free(snap.state);

    /* and reading a directory is a bad snapshot, not a crash */
    struct snapshot *out = NULL;
    cr_assert_eq(snapshot_read(PATH, 1, &out, WHY, sizeof WHY), -1);
    cr_assert_null(out);
}

Test(snapshot, write_into_a_missing_directory_fails_cleanly)
{
    char missing[200];
    snprintf(missing, sizeof missing, "%s/no/such/dir/w1.snap", DIR_);
    struct snapshot snap = { .snapshot_version = 1, .version = 1, .log_offset = 20 };
    errno = 0;
    cr_assert_eq(snapshot_write(missing, &snap), -1);
    cr_assert_eq(errno, ENOENT);
}

/* --- state_unpack: exact round trips --------------------------------------- */

/* pack(unpack(pack(s))) == pack(s); returns the unpacked state. */
static void *assert_round_trip(const struct aggregate_type *t, const void *state)
{
    size_t len, len2;
    uint8_t *packed = pack_state(t, state, &len);
    void *back = t->state_unpack(packed, len);
    cr_assert_not_null(back, "%s state_unpack refused its own state_pack: %s", t->name,
                       strerror(errno));
    uint8_t *again = pack_state(t, back, &len2);
    cr_assert_eq(len2, len, "%s: %zu bytes became %zu", t->name, len, len2);
    cr_assert_arr_eq(again, packed, len, "%s: round trip is not exact", t->name);
    free(again);
    free(packed);
    return back;
}

Test(state_unpack, types_declare_a_snapshot_version)
{
    cr_assert_eq(wallet_type.snapshot_version, 1);
    cr_assert_eq(account_type.snapshot_version, 1);
    cr_assert_not_null(wallet_type.state_unpack);
    cr_assert_not_null(account_type.state_unpack);
}

Test(state_unpack, new_wallet_round_trips)
{
    void *s = wallet_type.state_new();
    void *back = assert_round_trip(&wallet_type, s);
    wallet_type.state_free(back);
    wallet_type.state_free(s);
}

Test(state_unpack, wallet_with_label_and_blocks_in_order_round_trips_and_lives_on)
{
    void *s = wallet_type.state_new();
    w_topped_up(s, 0, 1000);
    w_renamed(s, "Holidays");
    w_authorized(s, 300, "tx-z");
    w_authorized(s, 100, "tx-a");
    w_authorized(s, 200, "tx-m");
    void *back = assert_round_trip(&wallet_type, s);

    const Wallet__WalletState *st;
    size_t len;
    uint8_t *packed = pack_state(&wallet_type, back, &len);
    st = wallet__wallet_state__unpack(NULL, len, packed);
    cr_assert_not_null(st);
    cr_assert_str_eq(st->label, "Holidays");
    cr_assert_eq(st->balance, 1000);
    cr_assert_eq(st->n_blocked, 3);
    cr_assert_str_eq(st->blocked[0]->tx_id, "tx-z");
    cr_assert_str_eq(st->blocked[1]->tx_id, "tx-a");
    cr_assert_str_eq(st->blocked[2]->tx_id, "tx-m");
    wallet__wallet_state__free_unpacked((Wallet__WalletState *)st, NULL);
    free(packed);

    /* the unpacked state is a live one: evolve goes on exactly as on the original */
    w_captured(s, 50, "tx-a");
    w_captured(back, 50, "tx-a");
    w_authorized(s, 400, "tx-n");
    w_authorized(back, 400, "tx-n");
    size_t la, lb;
    uint8_t *a = pack_state(&wallet_type, s, &la);
    uint8_t *b = pack_state(&wallet_type, back, &lb);
    cr_assert_eq(la, lb);
    cr_assert_arr_eq(a, b, la);
    free(a);
    free(b);
    cr_assert_neq(wallet_type.evolve(back, &(Wallet__FundsAuthorized){
                      .base = PROTOBUF_C_MESSAGE_INIT(&wallet__funds_authorized__descriptor),
                      .amount = 1, .tx_id = "tx-z" }.base), 0,
                  "the unpacked state forgot that tx-z is blocked");

    wallet_type.state_free(back);
    wallet_type.state_free(s);
}

Test(state_unpack, wallet_renamed_back_to_the_default_or_to_empty_round_trips)
{
    void *s = wallet_type.state_new();
    w_renamed(s, "Other");
    w_renamed(s, "Main wallet");
    wallet_type.state_free(assert_round_trip(&wallet_type, s));
    w_renamed(s, "");
    wallet_type.state_free(assert_round_trip(&wallet_type, s));
    wallet_type.state_free(s);
}

Test(state_unpack, account_in_every_stage_round_trips)
{
    void *s = account_type.state_new();
    account_type.state_free(assert_round_trip(&account_type, s));
    a_opened(s, "Ada", "ada@example.com");
    account_type.state_free(assert_round_trip(&account_type, s));
    a_email_changed(s, "ada@example.com", "ada@lovelace.org");
    account_type.state_free(assert_round_trip(&account_type, s));
    a_closed(s);
    void *back = assert_round_trip(&account_type, s);

    size_t len;
    uint8_t *packed = pack_state(&account_type, back, &len);
    Account__AccountState *st = account__account_state__unpack(NULL, len, packed);
    cr_assert_not_null(st);
    cr_assert_str_eq(st->owner, "Ada");
    cr_assert_str_eq(st->email, "ada@lovelace.org");
    cr_assert(!st->open && st->closed);
    account__account_state__free_unpacked(st, NULL);
    free(packed);

    /* closed stays closed: evolve refuses anything more */
    Account__AccountClosed e = ACCOUNT__ACCOUNT_CLOSED__INIT;
    cr_assert_neq(account_type.evolve(back, &e.base), 0);
    account_type.state_free(back);
    account_type.state_free(s);
}

Test(state_unpack, open_account_can_change_its_email_after_unpacking)
{
    void *s = account_type.state_new();
    a_opened(s, "Bob", "bob@example.com");
    void *back = assert_round_trip(&account_type, s);
    a_email_changed(back, "bob@example.com", "bob@example.org");
    account_type.state_free(back);
    account_type.state_free(s);
}

/* --- state_unpack: refusals ------------------------------------------------ */

static void expect_refused(const struct aggregate_type *t, const uint8_t *data, size_t len,
                           const char *what)
{
    errno = 0;
    void *s = t->state_unpack(data, len);
    int e = errno;
    if (s)
        t->state_free(s);
    cr_assert_null(s, "%s %s: accepted", t->name, what);
    cr_assert_eq(e, EINVAL, "%s %s: errno %d", t->name, what, e);
}

/* A WalletState built by hand with `n` blocks. */
static void expect_wallet_refused(int64_t balance, size_t n, const char *const *tx_ids,
                                  const int64_t *amounts, const char *what)
{
    Wallet__BlockedFunds bf[4], *bfp[4];
    cr_assert_leq(n, 4);
    for (size_t i = 0; i < n; i++) {
        wallet__blocked_funds__init(&bf[i]);
        bf[i].tx_id = (char *)tx_ids[i];
        bf[i].amount = amounts[i];
        bfp[i] = &bf[i];
    }
    Wallet__WalletState m = WALLET__WALLET_STATE__INIT;
    m.label = "Main wallet";
    m.balance = balance;
    m.n_blocked = n;
    m.blocked = bfp;
    size_t len;
    uint8_t *buf = pack_msg(&m.base, &len);
    expect_refused(&wallet_type, buf, len, what);
    free(buf);
}

Test(state_unpack, wallet_hand_built_consistent_state_is_accepted)
{
    Wallet__BlockedFunds a = WALLET__BLOCKED_FUNDS__INIT, b = WALLET__BLOCKED_FUNDS__INIT;
    a.tx_id = "a";
    a.amount = 60;
    b.tx_id = "b";
    b.amount = 40;
    Wallet__BlockedFunds *bp[] = { &a, &b };
    Wallet__WalletState m = WALLET__WALLET_STATE__INIT;
    m.label = "x";
    m.balance = 100;              /* blocked sum == balance: allowed */
    m.n_blocked = 2;
    m.blocked = bp;
    size_t len;
    uint8_t *buf = pack_msg(&m.base, &len);
    void *s = wallet_type.state_unpack(buf, len);
    cr_assert_not_null(s, "%s", strerror(errno));
    wallet_type.state_free(s);
    free(buf);
}

Test(state_unpack, wallet_refuses_states_evolve_could_not_build)
{
    const char *ab[] = { "a", "b" }, *aa[] = { "a", "a" }, *empty[] = { "" };
    expect_wallet_refused(100, 2, ab, (const int64_t[]){ 60, 41 }, "blocked sum above balance");
    expect_wallet_refused(-1, 0, NULL, NULL, "negative balance");
    expect_wallet_refused(100, 2, ab, (const int64_t[]){ INT64_MAX, INT64_MAX },
                          "blocked sum that overflows");
    expect_wallet_refused(100, 1, ab, (const int64_t[]){ 0 }, "block of 0");
    expect_wallet_refused(100, 1, ab, (const int64_t[]){ -5 }, "negative block");
    expect_wallet_refused(100, 1, empty, (const int64_t[]){ 5 }, "empty tx_id");
    expect_wallet_refused(100, 2, aa, (const int64_t[]){ 5, 5 }, "the same tx_id twice");
}

Test(state_unpack, undecodable_bytes_are_refused)
{
    const uint8_t junk[] = { 0xff, 0xff, 0xff };
    const uint8_t cut[] = { 0x0a, 0x05, 'a', 'b' };       /* label of 5, 2 given */
    expect_refused(&wallet_type, junk, sizeof junk, "junk");
    expect_refused(&wallet_type, cut, sizeof cut, "cut string");
    expect_refused(&account_type, junk, sizeof junk, "junk");
    expect_refused(&account_type, cut, sizeof cut, "cut string");
}

Test(state_unpack, strings_with_a_nul_byte_are_refused)
{
    const uint8_t label[] = { 0x0a, 0x03, 'a', 0, 'b' };
    expect_refused(&wallet_type, label, sizeof label, "label with a NUL");
    const uint8_t owner[] = { 0x0a, 0x03, 'a', 0, 'b', 0x18, 0x01 };
    expect_refused(&account_type, owner, sizeof owner, "owner with a NUL");
}

Test(state_unpack, account_refuses_states_evolve_could_not_build)
{
    Account__AccountState m = ACCOUNT__ACCOUNT_STATE__INIT;
    size_t len;
    uint8_t *buf;

    m.owner = "Ada";
    m.email = "ada@example.com";
    m.open = 1;
    m.closed = 1;
    buf = pack_msg(&m.base, &len);
    expect_refused(&account_type, buf, len, "open and closed");
    free(buf);

    m.open = 0;
    m.closed = 0;
    buf = pack_msg(&m.base, &len);
    expect_refused(&account_type, buf, len, "new with an owner and email");
    free(buf);

    m.owner = "";
    buf = pack_msg(&m.base, &len);
    expect_refused(&account_type, buf, len, "new with an email");
    free(buf);
}
