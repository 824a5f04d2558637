/*
 * test_evlog — the per-stream event log file (lib/evlog.c) against the format
 * and recovery rules written at the top of evlog.h: round trip, torn tails
 * cut at every byte, bad checksums at the end and in the middle, bad magic,
 * a file torn while being created, zero-filled tails, version gaps, a missing
 * file, and durable appends. Every test works in its own mkdtemp directory.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <dirent.h>
#include <ftw.h>

#include "crc32c.h"
#include "evlog.h"
#include "frame.h"

/* --- per-test directory and buffers ------------------------------------- */

static char DIR_[64];
static char PATH[128];
static uint8_t *ENC;            /* evlog_encode's growing buffer */
static size_t ENC_LEN, ENC_CAP;
static struct evlog *LOG;
static uint8_t *SNAP;           /* file snapshot for "left as it is" checks */

static void dir_setup(void)
{
    strcpy(DIR_, "/tmp/test_evlog.XXXXXX");
    cr_assert_not_null(mkdtemp(DIR_), "mkdtemp: %s", strerror(errno));
    snprintf(PATH, sizeof PATH, "%s/stream.log", DIR_);
    ENC = NULL;
    ENC_LEN = ENC_CAP = 0;
    LOG = NULL;
    SNAP = NULL;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* The bytes of the one <PATH>.torn-* file, which the test then removes;
 * NULL when there is none. */
static uint8_t *take_torn_file(size_t *len)
{
    DIR *d = opendir(DIR_);
    cr_assert_not_null(d);
    struct dirent *e;
    char found[600] = "";
    int n = 0;
    while ((e = readdir(d)) != NULL)
        if (strncmp(e->d_name, "stream.log.torn-", 16) == 0) {
            snprintf(found, sizeof found, "%s/%s", DIR_, e->d_name);
            n++;
        }
    closedir(d);
    cr_assert_leq(n, 1, "more than one torn file");
    if (!n)
        return NULL;
    struct stat st;
    cr_assert_eq(stat(found, &st), 0);
    uint8_t *buf = malloc((size_t)st.st_size + 1);
    FILE *f = fopen(found, "rb");
    cr_assert_not_null(f);
    *len = fread(buf, 1, (size_t)st.st_size, f);
    fclose(f);
    unlink(found);
    return buf;
}

static void dir_teardown(void)
{
    evlog_free(LOG);
    LOG = NULL;
    free(ENC);
    ENC = NULL;
    free(SNAP);
    SNAP = NULL;
    nftw(DIR_, rm_entry, 8, FTW_DEPTH | FTW_PHYS);   /* .torn-* files too */
}

TestSuite(evlog, .init = dir_setup, .fini = dir_teardown);

/* --- records ------------------------------------------------------------- */

/* The test record for `version`; its content depends on `variant` so that a
 * record rewritten after recovery can be told from the one it replaces.
 * Some records are larger than 512 bytes (evlog_read's stack buffer). */
struct recspec {
    char type[32];
    char cmd[32];
    uint8_t data[1500];
    size_t data_len;
    Cqrs__EventRecord__MetadataEntry meta;
    Cqrs__EventRecord__MetadataEntry *metap;
    Cqrs__EventRecord rec;
};

static void make_record(struct recspec *s, uint64_t version, int variant)
{
    Cqrs__EventRecord init = CQRS__EVENT_RECORD__INIT;
    Cqrs__EventRecord__MetadataEntry minit = CQRS__EVENT_RECORD__METADATA_ENTRY__INIT;
    s->rec = init;
    s->meta = minit;
    snprintf(s->type, sizeof s->type, "Event%d", variant);
    snprintf(s->cmd, sizeof s->cmd, "cmd-%llu-%d", (unsigned long long)version, variant);
    s->data_len = (version * 131 + (uint64_t)variant * 17) % sizeof s->data;
    for (size_t i = 0; i < s->data_len; i++)
        s->data[i] = (uint8_t)(version * 7 + i * 13 + (size_t)variant);
    s->rec.version = version;
    s->rec.timestamp_us = 1700000000000000LL + (int64_t)version * 1000 + variant;
    s->rec.type = s->type;
    s->rec.command_id = s->cmd;
    s->rec.data.data = s->data;
    s->rec.data.len = s->data_len;
    s->meta.key = "user";
    s->meta.value = s->cmd;
    s->metap = &s->meta;
    s->rec.n_metadata = 1;
    s->rec.metadata = &s->metap;
}

/* 1 if `got` is the record make_record(version, variant) builds. */
static int record_is(const Cqrs__EventRecord *got, uint64_t version, int variant)
{
    struct recspec s;
    make_record(&s, version, variant);
    return got->version == version && got->timestamp_us == s.rec.timestamp_us &&
           strcmp(got->type, s.type) == 0 && strcmp(got->command_id, s.cmd) == 0 &&
           got->data.len == s.data_len &&
           (s.data_len == 0 || memcmp(got->data.data, s.data, s.data_len) == 0) &&
           got->n_metadata == 1 && strcmp(got->metadata[0]->key, "user") == 0 &&
           strcmp(got->metadata[0]->value, s.cmd) == 0;
}

/* Encodes the record onto ENC; returns its size. */
static size_t encode(uint64_t version, int variant)
{
    struct recspec s;
    make_record(&s, version, variant);
    size_t before = ENC_LEN;
    ssize_t n = evlog_encode(&s.rec, &ENC, &ENC_LEN, &ENC_CAP);
    cr_assert_gt(n, 0, "evlog_encode: %s", strerror(errno));
    cr_assert_eq(ENC_LEN, before + (size_t)n);
    return (size_t)n;
}

/* --- replay ---------------------------------------------------------------- */

#define MAX_SEEN 256

struct seen {
    size_t n;
    uint64_t version[MAX_SEEN];
    int ok[MAX_SEEN];           /* record_is(variant) held */
    off_t offset[MAX_SEEN];
    size_t size[MAX_SEEN];
    int variant[MAX_SEEN];      /* expected variant per version (input) */
    int stop_after;             /* return 7 after this many (0: never) */
};

static int on_record(void *arg, const Cqrs__EventRecord *rec, off_t offset, size_t size)
{
    struct seen *s = arg;
    if (s->n >= MAX_SEEN)
        return 99;
    size_t i = s->n++;
    s->version[i] = rec->version;
    s->ok[i] = rec->version >= 1 && rec->version <= MAX_SEEN &&
               record_is(rec, rec->version, s->variant[rec->version - 1]);
    s->offset[i] = offset;
    s->size[i] = size;
    if (s->stop_after && (int)s->n == s->stop_after)
        return 7;
    return 0;
}

/* --- files ------------------------------------------------------------------ */

static void write_file(const void *p, size_t n)
{
    int fd = open(PATH, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert_geq(fd, 0, "open %s: %s", PATH, strerror(errno));
    cr_assert_eq(write(fd, p, n), (ssize_t)n);
    close(fd);
}

static off_t file_size(void)
{
    struct stat st;
    cr_assert_eq(stat(PATH, &st), 0);
    return st.st_size;
}

/* Reads the whole file into a new buffer (caller frees); *n its size. */
static uint8_t *read_file(size_t *n)
{
    *n = (size_t)file_size();
    uint8_t *p = malloc(*n ? *n : 1);
    cr_assert_not_null(p);
    int fd = open(PATH, O_RDONLY);
    cr_assert_geq(fd, 0);
    cr_assert_eq(read(fd, p, *n), (ssize_t)*n);
    close(fd);
    return p;
}

/* Writes magic + ENC as the whole file. */
static void write_log_of_enc(void)
{
    uint8_t *p = malloc(EVLOG_MAGIC_LEN + ENC_LEN);
    cr_assert_not_null(p);
    memcpy(p, EVLOG_MAGIC, EVLOG_MAGIC_LEN);
    memcpy(p + EVLOG_MAGIC_LEN, ENC, ENC_LEN);
    write_file(p, EVLOG_MAGIC_LEN + ENC_LEN);
    free(p);
}

/* Opens PATH (no create) expecting EVLOG_CORRUPT and an unchanged file. */
static void expect_corrupt_untouched(const char *what)
{
    size_t before_n;
    SNAP = read_file(&before_n);
    struct evlog_open_info info;
    int rc = evlog_open(PATH, 0, NULL, NULL, &LOG, &info);
    cr_assert_eq(rc, EVLOG_CORRUPT, "%s: evlog_open returned %d", what, rc);
    cr_assert_null(LOG, "%s: no log on corruption", what);
    cr_assert_neq(info.detail[0], '\0', "%s: corruption needs a detail message", what);
    size_t after_n;
    uint8_t *after = read_file(&after_n);
    int same = after_n == before_n && memcmp(after, SNAP, before_n) == 0;
    free(after);
    cr_assert(same, "%s: the file was modified (%zu -> %zu bytes)", what, before_n, after_n);
}

/* --- round trip ------------------------------------------------------------ */

Test(evlog, create_append_reopen_replays_the_same_records)
{
    enum { N = 100 };
    struct evlog_open_info info;
    cr_assert_eq(evlog_open(PATH, 1, NULL, NULL, &LOG, &info), 0, "create: %s", strerror(errno));
    cr_assert_eq(info.records, 0);
    cr_assert_eq(evlog_size(LOG), EVLOG_MAGIC_LEN);

    off_t offsets[N];
    size_t sizes[N];
    for (int v = 1; v <= N; v++) {
        off_t at = evlog_size(LOG);
        ENC_LEN = 0;
        size_t n = encode((uint64_t)v, 0);
        cr_assert_eq(evlog_append(LOG, ENC, ENC_LEN, 0), 0, "append %d: %s", v, strerror(errno));
        cr_assert_eq(evlog_size(LOG), at + (off_t)n);
        offsets[v - 1] = at;
        sizes[v - 1] = n;
    }
    off_t end = evlog_size(LOG);
    evlog_free(LOG);
    LOG = NULL;
    cr_assert_eq(file_size(), end);

    struct seen s = { 0 };
    cr_assert_eq(evlog_open(PATH, 0, on_record, &s, &LOG, &info), 0);
    cr_assert_eq(info.records, N);
    cr_assert_eq(info.truncated_bytes, 0);
    cr_assert_eq(evlog_size(LOG), end);
    cr_assert_eq(s.n, N);
    for (size_t i = 0; i < N; i++) {
        cr_assert_eq(s.version[i], i + 1, "replay out of order at %zu", i);
        cr_assert(s.ok[i], "record %zu replayed with different content", i + 1);
        cr_assert_eq(s.offset[i], offsets[i], "record %zu offset", i + 1);
        cr_assert_eq(s.size[i], sizes[i], "record %zu size", i + 1);

        Cqrs__EventRecord *r = NULL;
        cr_assert_eq(evlog_read(LOG, s.offset[i], s.size[i], NULL, &r), 0,
                     "evlog_read(%lld, %zu): %s", (long long)s.offset[i], s.size[i], strerror(errno));
        int same = record_is(r, i + 1, 0);
        cqrs__event_record__free_unpacked(r, NULL);
        cr_assert(same, "evlog_read of record %zu gave different content", i + 1);
    }
}

Test(evlog, one_append_of_a_batch_replays_every_record)
{
    cr_assert_eq(evlog_open(PATH, 1, NULL, NULL, &LOG, NULL), 0);
    for (int v = 1; v <= 5; v++)
        encode((uint64_t)v, 3);
    cr_assert_eq(evlog_append(LOG, ENC, ENC_LEN, 1), 0);
    cr_assert_eq(evlog_size(LOG), EVLOG_MAGIC_LEN + (off_t)ENC_LEN);
    evlog_free(LOG);
    LOG = NULL;

    struct seen s = { 0 };
    for (int i = 0; i < MAX_SEEN; i++)
        s.variant[i] = 3;
    struct evlog_open_info info;
    cr_assert_eq(evlog_open(PATH, 0, on_record, &s, &LOG, &info), 0);
    cr_assert_eq(info.records, 5);
    cr_assert_eq(s.n, 5);
    for (size_t i = 0; i < 5; i++)
        cr_assert(s.ok[i] && s.version[i] == i + 1, "record %zu", i + 1);
}

Test(evlog, new_file_is_the_bare_magic)
{
    cr_assert_eq(evlog_open(PATH, 1, NULL, NULL, &LOG, NULL), 0);
    size_t n;
    SNAP = read_file(&n);
    cr_assert_eq(n, EVLOG_MAGIC_LEN);
    cr_assert_eq(memcmp(SNAP, "CQRSLOG1", 8), 0);
    struct stat st;
    cr_assert_eq(stat(PATH, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600, "mode %o", st.st_mode & 0777);
}

Test(evlog, encoded_record_layout_is_length_crc_payload)
{
    struct recspec s;
    make_record(&s, 1, 0);
    size_t n = encode(1, 0);
    size_t plen = cqrs__event_record__get_packed_size(&s.rec);
    cr_assert_eq(n, EVLOG_HEADER_LEN + plen);
    cr_assert_eq(frame_get32(ENC), plen, "length field");
    Cqrs__EventRecord *u = cqrs__event_record__unpack(NULL, plen, ENC + EVLOG_HEADER_LEN);
    cr_assert_not_null(u, "payload is not an EventRecord");
    int same = record_is(u, 1, 0);
    cqrs__event_record__free_unpacked(u, NULL);
    cr_assert(same);
}

Test(evlog, replay_stops_on_a_callback_error_and_returns_it)
{
    for (int v = 1; v <= 4; v++)
        encode((uint64_t)v, 0);
    write_log_of_enc();
    struct seen s = { 0 };
    s.stop_after = 2;
    int rc = evlog_open(PATH, 0, on_record, &s, &LOG, NULL);
    cr_assert_eq(rc, 7, "the callback's return value must come back (got %d)", rc);
    cr_assert_null(LOG);
    cr_assert_eq(s.n, 2, "replay went on after the callback said stop");
}

Test(evlog, append_with_sync_persists)
{
    cr_assert_eq(evlog_open(PATH, 1, NULL, NULL, &LOG, NULL), 0);
    encode(1, 5);
    cr_assert_eq(evlog_append(LOG, ENC, ENC_LEN, 1), 0, "sync append: %s", strerror(errno));
    ENC_LEN = 0;
    encode(2, 5);
    cr_assert_eq(evlog_append(LOG, ENC, ENC_LEN, 1), 0);
    evlog_free(LOG);
    LOG = NULL;

    struct seen s = { 0 };
    s.variant[0] = s.variant[1] = 5;
    struct evlog_open_info info;
    cr_assert_eq(evlog_open(PATH, 0, on_record, &s, &LOG, &info), 0);
    cr_assert_eq(info.records, 2);
    cr_assert(s.ok[0] && s.ok[1]);
}

Test(evlog, read_refuses_a_wrong_size_or_range)
{
    cr_assert_eq(evlog_open(PATH, 1, NULL, NULL, &LOG, NULL), 0);
    size_t n = encode(1, 0);
    cr_assert_eq(evlog_append(LOG, ENC, ENC_LEN, 0), 0);
    Cqrs__EventRecord *r = NULL;
    cr_assert_eq(evlog_read(LOG, EVLOG_MAGIC_LEN, n - 1, NULL, &r), -1, "a size off by one must fail");
    cr_assert_null(r);
    cr_assert_eq(evlog_read(LOG, EVLOG_MAGIC_LEN + 1, n, NULL, &r), -1, "past the end must fail");
    cr_assert_null(r);
    cr_assert_eq(evlog_read(LOG, EVLOG_MAGIC_LEN, n, NULL, &r), 0);
    cqrs__event_record__free_unpacked(r, NULL);
}

Test(evlog, encode_refuses_an_oversized_record)
{
    Cqrs__EventRecord rec = CQRS__EVENT_RECORD__INIT;
    rec.version = 1;
    rec.data.len = EVLOG_MAX_RECORD + 1;
    rec.data.data = calloc(1, rec.data.len);
    cr_assert_not_null(rec.data.data);
    errno = 0;
    ssize_t n = evlog_encode(&rec, &ENC, &ENC_LEN, &ENC_CAP);
    int e = errno;
    free(rec.data.data);
    cr_assert_eq(n, -1);
    cr_assert_eq(e, EFBIG);
    cr_assert_eq(ENC_LEN, 0, "nothing appended to the buffer");
}

/* --- torn tails ------------------------------------------------------------ */

Test(evlog, torn_last_record_cut_at_every_byte)
{
    size_t n1 = encode(1, 0), n2 = encode(2, 0), n3 = encode(3, 0);
    size_t full = EVLOG_MAGIC_LEN + ENC_LEN;
    size_t start3 = EVLOG_MAGIC_LEN + n1 + n2;
    cr_assert_eq(start3 + n3, full);
    uint8_t *image = malloc(full);
    cr_assert_not_null(image);
    memcpy(image, EVLOG_MAGIC, EVLOG_MAGIC_LEN);
    memcpy(image + EVLOG_MAGIC_LEN, ENC, ENC_LEN);

    for (size_t cut = start3 + 1; cut < full; cut++) {
        write_file(image, cut);
        struct seen s = { 0 };
        struct evlog_open_info info;
        int rc = evlog_open(PATH, 0, on_record, &s, &LOG, &info);
        cr_assert_eq(rc, 0, "cut at %zu: evlog_open returned %d (%s)", cut, rc, info.detail);
        cr_assert_eq(info.records, 2, "cut at %zu", cut);
        cr_assert_eq(s.n, 2, "cut at %zu", cut);
        cr_assert_eq(info.truncated_bytes, (off_t)(cut - start3), "cut at %zu: truncated %lld",
                     cut, (long long)info.truncated_bytes);
        cr_assert_eq(file_size(), (off_t)start3, "cut at %zu: file not cut back to 2 records", cut);
        cr_assert_eq(evlog_size(LOG), (off_t)start3);
        /* the cut bytes are kept beside the log, exactly */
        size_t torn_len = 0;
        uint8_t *torn = take_torn_file(&torn_len);
        cr_assert_not_null(torn, "cut at %zu: no .torn file", cut);
        cr_assert_eq(torn_len, cut - start3, "cut at %zu", cut);
        cr_assert_eq(memcmp(torn, image + start3, torn_len), 0, "cut at %zu: torn bytes differ", cut);
        free(torn);

        /* the stream goes on from version 3 */
        ENC_LEN = 0;
        size_t n = encode(3, 1);
        cr_assert_eq(evlog_append(LOG, ENC, ENC_LEN, 0), 0, "cut at %zu: append", cut);
        evlog_free(LOG);
        LOG = NULL;

        struct seen t = { 0 };
        t.variant[2] = 1;
        rc = evlog_open(PATH, 0, on_record, &t, &LOG, &info);
        cr_assert_eq(rc, 0, "cut at %zu: reopen after append returned %d (%s)", cut, rc, info.detail);
        cr_assert_eq(info.records, 3, "cut at %zu", cut);
        cr_assert_eq(info.truncated_bytes, 0);
        cr_assert(t.ok[0] && t.ok[1] && t.ok[2], "cut at %zu: replayed content differs", cut);
        cr_assert_eq(t.offset[2], (off_t)start3);
        cr_assert_eq(t.size[2], n);
        evlog_free(LOG);
        LOG = NULL;
    }
    free(image);
}

Test(evlog, bad_crc_in_the_last_record_is_a_torn_tail)
{
    size_t n1 = encode(1, 0), n2 = encode(2, 0), n3 = encode(3, 0);
    size_t start3 = n1 + n2;            /* offsets within ENC */
    ENC[start3 + EVLOG_HEADER_LEN + (n3 - EVLOG_HEADER_LEN) / 2] ^= 0x10;   /* a payload bit */
    write_log_of_enc();

    struct seen s = { 0 };
    struct evlog_open_info info;
    int rc = evlog_open(PATH, 0, on_record, &s, &LOG, &info);
    cr_assert_eq(rc, 0, "evlog_open returned %d (%s)", rc, info.detail);
    cr_assert_eq(info.records, 2);
    cr_assert_eq(s.n, 2);
    cr_assert_eq(info.truncated_bytes, (off_t)n3);
    cr_assert_eq(file_size(), (off_t)(EVLOG_MAGIC_LEN + start3));
}

Test(evlog, bad_crc_in_a_middle_record_is_corruption_and_the_file_is_kept)
{
    size_t n1 = encode(1, 0), n2 = encode(2, 0);
    encode(3, 0);
    size_t start2 = n1;
    ENC[start2 + EVLOG_HEADER_LEN + (n2 - EVLOG_HEADER_LEN) / 3] ^= 0x01;   /* a payload bit */
    write_log_of_enc();
    expect_corrupt_untouched("bad CRC in record 2 of 3");

    /* "what and where": the detail names the byte offset of record 2 */
    struct evlog_open_info info;
    cr_assert_eq(evlog_open(PATH, 0, NULL, NULL, &LOG, &info), EVLOG_CORRUPT);
    char where[32];
    snprintf(where, sizeof where, "%zu", EVLOG_MAGIC_LEN + start2);
    cr_assert_not_null(strstr(info.detail, where), "detail \"%s\" does not say byte %s",
                       info.detail, where);
}

Test(evlog, damaged_length_in_a_middle_record_is_corruption_not_a_torn_tail)
{
    /* record 2's length now points past the end of the file: read alone it
     * looks torn, but record 3 follows intact, so cutting would lose it */
    size_t n1 = encode(1, 0);
    encode(2, 0);
    encode(3, 0);
    frame_set32(ENC + n1, 0x00ffffff);
    write_log_of_enc();
    expect_corrupt_untouched("damaged length of record 2 of 3");
}

Test(evlog, bad_magic_is_corruption)
{
    encode(1, 0);
    write_log_of_enc();
    int fd = open(PATH, O_WRONLY);
    cr_assert_geq(fd, 0);
    cr_assert_eq(pwrite(fd, "CQRSLOG2", 8, 0), 8);
    close(fd);
    expect_corrupt_untouched("bad magic");
}

Test(evlog, short_file_that_is_not_a_magic_prefix_is_corruption)
{
    write_file("CQX", 3);
    expect_corrupt_untouched("3 bytes that are not a magic prefix");
}

Test(evlog, magic_only_is_an_empty_stream)
{
    write_file(EVLOG_MAGIC, EVLOG_MAGIC_LEN);
    struct seen s = { 0 };
    struct evlog_open_info info;
    cr_assert_eq(evlog_open(PATH, 0, on_record, &s, &LOG, &info), 0);
    cr_assert_eq(info.records, 0);
    cr_assert_eq(info.truncated_bytes, 0);
    cr_assert_eq(s.n, 0);
    cr_assert_eq(file_size(), EVLOG_MAGIC_LEN);
}

Test(evlog, a_prefix_of_the_magic_is_an_empty_stream)
{
    for (size_t n = 0; n < EVLOG_MAGIC_LEN; n++) {
        write_file(EVLOG_MAGIC, n);
        struct seen s = { 0 };
        struct evlog_open_info info;
        int rc = evlog_open(PATH, 0, on_record, &s, &LOG, &info);
        cr_assert_eq(rc, 0, "%zu-byte prefix: evlog_open returned %d (%s)", n, rc, info.detail);
        cr_assert_eq(info.records, 0);
        cr_assert_eq(s.n, 0);
        cr_assert_eq(evlog_size(LOG), EVLOG_MAGIC_LEN);
        size_t len;
        uint8_t *p = read_file(&len);
        int is_magic = len == EVLOG_MAGIC_LEN && memcmp(p, EVLOG_MAGIC, EVLOG_MAGIC_LEN) == 0;
        free(p);
        cr_assert(is_magic, "%zu-byte prefix: not reset to the bare magic", n);

        /* and it is a working log */
        ENC_LEN = 0;
        encode(1, 0);
        cr_assert_eq(evlog_append(LOG, ENC, ENC_LEN, 0), 0);
        evlog_free(LOG);
        LOG = NULL;
        struct seen t = { 0 };
        cr_assert_eq(evlog_open(PATH, 0, on_record, &t, &LOG, &info), 0);
        cr_assert_eq(t.n, 1);
        cr_assert(t.ok[0]);
        evlog_free(LOG);
        LOG = NULL;
    }
}

Test(evlog, zero_filled_tail_is_cut_away)
{
    const size_t zeros_lens[] = { 1, 7, 8, 9, 4096 };
    for (size_t k = 0; k < sizeof zeros_lens / sizeof zeros_lens[0]; k++) {
        size_t zeros = zeros_lens[k];
        ENC_LEN = 0;
        encode(1, 0);
        encode(2, 0);
        size_t good = EVLOG_MAGIC_LEN + ENC_LEN;
        uint8_t *img = calloc(1, good + zeros);
        cr_assert_not_null(img);
        memcpy(img, EVLOG_MAGIC, EVLOG_MAGIC_LEN);
        memcpy(img + EVLOG_MAGIC_LEN, ENC, ENC_LEN);
        write_file(img, good + zeros);
        free(img);

        struct seen s = { 0 };
        struct evlog_open_info info;
        int rc = evlog_open(PATH, 0, on_record, &s, &LOG, &info);
        cr_assert_eq(rc, 0, "%zu zeros: evlog_open returned %d (%s)", zeros, rc, info.detail);
        cr_assert_eq(info.records, 2);
        cr_assert(s.ok[0] && s.ok[1]);
        cr_assert_eq(info.truncated_bytes, (off_t)zeros, "%zu zeros", zeros);
        cr_assert_eq(file_size(), (off_t)good, "%zu zeros not cut away", zeros);
        evlog_free(LOG);
        LOG = NULL;
    }
}

/* --- preallocated files (the journal's segments) --------------------------- */

/* magic + records 1..n, then `zeros` zero bytes: unwritten (fallocate) or
 * written, as a preallocated or crash-grown file holds them. */
static off_t write_log_with_zeros(uint64_t n, size_t zeros, int fallocated)
{
    ENC_LEN = 0;
    for (uint64_t v = 1; v <= n; v++)
        encode(v, 0);
    off_t good = (off_t)(EVLOG_MAGIC_LEN + ENC_LEN);
    int fd = open(PATH, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, EVLOG_MAGIC, EVLOG_MAGIC_LEN), EVLOG_MAGIC_LEN);
    cr_assert_eq(write(fd, ENC, ENC_LEN), (ssize_t)ENC_LEN);
    if (fallocated) {
        cr_assert_eq(fallocate(fd, 0, 0, good + (off_t)zeros), 0, "fallocate: %s", strerror(errno));
    } else {
        uint8_t *z = calloc(1, zeros);
        cr_assert_eq(write(fd, z, zeros), (ssize_t)zeros);
        free(z);
    }
    close(fd);
    return good;
}

Test(evlog, preallocated_zeros_are_room_for_appends_not_a_torn_tail)
{
    for (int fallocated = 0; fallocated <= 1; fallocated++) {
        off_t good = write_log_with_zeros(3, 1 << 20, fallocated);
        off_t size = file_size();
        struct seen s = { 0 };
        struct evlog_open_info info;
        cr_assert_eq(evlog_open(PATH, EVLOG_PREALLOCATED, on_record, &s, &LOG, &info), 0, "%s",
                     info.detail);
        cr_assert_eq(s.n, 3);
        cr_assert_eq(info.truncated_bytes, 0, "zeros counted as torn (fallocated %d)", fallocated);
        cr_assert_eq(file_size(), size, "the room was cut away");
        cr_assert_eq(evlog_size(LOG), good);

        /* an append lands after the records, in the room; a reopen sees it */
        ENC_LEN = 0;
        encode(4, 0);
        cr_assert_eq(evlog_append(LOG, ENC, ENC_LEN, 1), 0, "%s", strerror(errno));
        cr_assert_eq(file_size(), size);
        evlog_free(LOG);
        LOG = NULL;
        struct seen again = { 0 };
        cr_assert_eq(evlog_open(PATH, EVLOG_PREALLOCATED, on_record, &again, &LOG, &info), 0);
        cr_assert_eq(again.n, 4);
        cr_assert_eq(again.version[3], 4);
        cr_assert_eq(evlog_size(LOG), good + (off_t)ENC_LEN);
        evlog_free(LOG);
        LOG = NULL;
    }
}

/* A batch torn by a crash inside a preallocated file is followed by zeros,
 * not by the end of the file: still a torn tail, cut (room and all). */
Test(evlog, torn_record_followed_by_zeros_is_a_torn_tail)
{
    for (int flags = 0; flags <= EVLOG_PREALLOCATED; flags += EVLOG_PREALLOCATED) {
        ENC_LEN = 0;
        encode(1, 0);
        encode(2, 0);
        size_t good = EVLOG_MAGIC_LEN + ENC_LEN;
        size_t third = encode(3, 0);
        size_t zeros = 64 << 10, n = good + third + zeros;
        uint8_t *img = calloc(1, n);
        memcpy(img, EVLOG_MAGIC, EVLOG_MAGIC_LEN);
        memcpy(img + EVLOG_MAGIC_LEN, ENC, ENC_LEN);
        img[good + third - 1] ^= 0xff;   /* its last bytes never reached the disk */
        write_file(img, n);
        free(img);
        struct seen s = { 0 };
        struct evlog_open_info info;
        int rc = evlog_open(PATH, flags, on_record, &s, &LOG, &info);
        cr_assert_eq(rc, 0, "flags %d: %d (%s)", flags, rc, info.detail);
        cr_assert_eq(s.n, 2);
        cr_assert_eq(info.truncated_bytes, (off_t)(flags ? third : third + zeros));
        cr_assert_eq(file_size(), (off_t)good);
        evlog_free(LOG);
        LOG = NULL;
    }
}

/* Zeros where a record should start, with a record after them: not room,
 * a damaged file, left as it is. */
Test(evlog, zeros_before_a_record_are_corruption_even_preallocated)
{
    ENC_LEN = 0;
    encode(1, 0);
    size_t first = ENC_LEN;
    encode(2, 0);
    size_t n = EVLOG_MAGIC_LEN + ENC_LEN + 16;
    uint8_t *img = calloc(1, n);
    memcpy(img, EVLOG_MAGIC, EVLOG_MAGIC_LEN);
    memcpy(img + EVLOG_MAGIC_LEN, ENC, first);
    memcpy(img + EVLOG_MAGIC_LEN + first + 16, ENC + first, ENC_LEN - first);
    write_file(img, n);
    free(img);
    struct evlog_open_info info;
    cr_assert_eq(evlog_open(PATH, EVLOG_PREALLOCATED, NULL, NULL, &LOG, &info), EVLOG_CORRUPT);
    cr_assert_null(LOG);
    cr_assert_eq(file_size(), (off_t)n, "a damaged file was changed");
}

Test(evlog, preallocate_then_trim)
{
    struct evlog_open_info info;
    cr_assert_eq(evlog_open(PATH, EVLOG_CREATE, NULL, NULL, &LOG, &info), 0);
    cr_assert_eq(evlog_preallocate(LOG, 1 << 20), 0, "%s", strerror(errno));
    cr_assert_eq(file_size(), 1 << 20);
    ENC_LEN = 0;
    encode(1, 0);
    cr_assert_eq(evlog_append(LOG, ENC, ENC_LEN, 1), 0);
    cr_assert_eq(evlog_trim(LOG), 0);
    cr_assert_eq(file_size(), (off_t)(EVLOG_MAGIC_LEN + ENC_LEN));
    evlog_free(LOG);
    LOG = NULL;
    struct seen s = { 0 };
    cr_assert_eq(evlog_open(PATH, 0, on_record, &s, &LOG, &info), 0);
    cr_assert_eq(s.n, 1);
    cr_assert_eq(info.truncated_bytes, 0);
}

Test(evlog, version_gap_is_corruption)
{
    encode(1, 0);
    encode(3, 0);
    write_log_of_enc();
    expect_corrupt_untouched("versions 1, 3");
}

Test(evlog, first_version_must_be_1)
{
    encode(2, 0);
    encode(3, 0);
    write_log_of_enc();
    expect_corrupt_untouched("versions 2, 3");
}

Test(evlog, repeated_version_is_corruption)
{
    encode(1, 0);
    encode(2, 0);
    encode(2, 1);
    encode(3, 0);
    write_log_of_enc();
    expect_corrupt_untouched("versions 1, 2, 2, 3");
}

Test(evlog, undecodable_payload_with_a_good_crc_is_corruption)
{
    encode(1, 0);
    /* a record whose CRC is right but whose payload is not protobuf */
    static const uint8_t junk[] = { 0xFF, 0xFF, 0xFF, 0xFF, 0xFF };
    uint8_t rec[EVLOG_HEADER_LEN + sizeof junk];
    frame_set32(rec, sizeof junk);
    frame_set32(rec + 4, crc32c(0, junk, sizeof junk));
    memcpy(rec + EVLOG_HEADER_LEN, junk, sizeof junk);
    size_t need = ENC_LEN + sizeof rec;
    if (need > ENC_CAP) {
        ENC = realloc(ENC, need);
        cr_assert_not_null(ENC);
        ENC_CAP = need;
    }
    memcpy(ENC + ENC_LEN, rec, sizeof rec);
    ENC_LEN = need;
    write_log_of_enc();
    expect_corrupt_untouched("undecodable payload");
}

Test(evlog, missing_file_without_create_is_enoent)
{
    errno = 0;
    struct evlog_open_info info;
    cr_assert_eq(evlog_open(PATH, 0, NULL, NULL, &LOG, &info), -1);
    cr_assert_eq(errno, ENOENT, "errno %d (%s)", errno, strerror(errno));
    cr_assert_null(LOG);
    cr_assert_eq(access(PATH, F_OK), -1, "open without create made a file");
}

Test(evlog, replay_start_inside_a_log_shorter_than_the_magic_is_corruption)
{
    /* found by fuzz_evlog: an empty file opened from byte 1 */
    write_file((const uint8_t *)"", 0);
    struct evlog_open_info info;
    cr_assert_eq(evlog_open_at(PATH, 0, 1, 0, NULL, NULL, &LOG, &info), EVLOG_CORRUPT);
    cr_assert_eq(evlog_open_at(PATH, 0, EVLOG_MAGIC_LEN, 5, NULL, NULL, &LOG, &info), EVLOG_CORRUPT);
    cr_assert_eq(evlog_open_at(PATH, 0, EVLOG_MAGIC_LEN, 0, NULL, NULL, &LOG, &info), 0,
                 "a new log opened from the start is fine");
}
