/*
 * test_allstream — a type's events in position order (projector/allstream.c)
 * from journal segments and stream files written in the real format
 * (lib/evlog.h) in a mkdtemp directory: ranges across segments and from the
 * middle of one, pages that resume where the last stopped, what lies past
 * the bound (valid records, a torn tail), checkpoint records, the fallback
 * to the stream files once the first segments are deleted, and what is
 * reported as corruption (a missing position, a failed checksum).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "allstream.h"
#include "evlog.h"
#include "frame.h"
#include "journal.h"
#include "layout.h"

/* --- a type folder written like the worker does ------------------------- */

#define MAXS 16

static char ROOT[64];
static char TYPE[128];
static struct {
    unsigned nstreams;
    uint64_t per_segment;       /* events per segment */
    unsigned checkpoint_every;  /* a checkpoint record after every this many events */
    size_t pad;                 /* bytes of 'x' after each event's "payload-<position>" */
    off_t prealloc;             /* segments made this long ahead (zeros), as the journal does */
    struct evlog *seg;
    uint64_t in_seg;
    uint64_t last;
    struct evlog *streams[MAXS];
    uint64_t versions[MAXS];
} W;

static void setup(void)
{
    strcpy(ROOT, "/tmp/test_allstream.XXXXXX");
    cr_assert_not_null(mkdtemp(ROOT), "mkdtemp: %s", strerror(errno));
    snprintf(TYPE, sizeof TYPE, "%s/wallet", ROOT);
    cr_assert_eq(mkdir(TYPE, 0700), 0);
    memset(&W, 0, sizeof W);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void writer_close(void)
{
    evlog_free(W.seg);
    W.seg = NULL;
    for (unsigned s = 0; s < MAXS; s++) {
        evlog_free(W.streams[s]);
        W.streams[s] = NULL;
    }
}

static void teardown(void)
{
    writer_close();
    nftw(ROOT, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(allstream, .init = setup, .fini = teardown);

static unsigned stream_of(uint64_t p)
{
    return (unsigned)(p * 7 % W.nstreams);
}

static void seg_path(char *buf, size_t len, uint64_t first)
{
    snprintf(buf, len, "%s/journal/%020" PRIu64 ".wal", TYPE, first);
}

static void stream_path(char *buf, size_t len, unsigned s)
{
    char id[16];
    snprintf(id, sizeof id, "w%u", s);
    layout_stream_file(buf, len, TYPE, id, ".log");
}

/* Appends one record to the journal, rolling to a new segment (named by the
 * next position) when the current one is full, as journal_append does. */
static void journal_put(const uint8_t *buf, size_t len)
{
    if (!W.seg || W.in_seg >= W.per_segment) {
        char path[PATH_MAX];
        evlog_free(W.seg);
        seg_path(path, sizeof path, W.last + 1);
        cr_assert_eq(evlog_open(path, EVLOG_CREATE | EVLOG_ANY_VERSIONS, NULL, NULL, &W.seg, NULL), 0);
        if (W.prealloc)
            cr_assert_eq(evlog_preallocate(W.seg, W.prealloc), 0, "%s", strerror(errno));
        W.in_seg = 0;
    }
    cr_assert_eq(evlog_append(W.seg, buf, len, 0), 0);
}

/* Events up to position n: each written to its stream's log and to the
 * journal, identical bytes, with a checkpoint record every so often. */
static void write_events(uint64_t n)
{
    char path[PATH_MAX], dir[PATH_MAX];
    snprintf(path, sizeof path, "%s/journal", TYPE);
    mkdir(path, 0700);
    for (uint64_t p = W.last + 1; p <= n; p++) {
        unsigned s = stream_of(p);
        if (!W.streams[s]) {
            char id[16];
            snprintf(id, sizeof id, "w%u", s);
            layout_shard_dir(dir, sizeof dir, TYPE, id);
            mkdir(dir, 0700);
            stream_path(path, sizeof path, s);
            cr_assert_eq(evlog_open(path, EVLOG_CREATE, NULL, NULL, &W.streams[s], NULL), 0);
        }
        char stream[16], cmd[32];
        char *data = malloc(32 + W.pad);
        snprintf(stream, sizeof stream, "w%u", s);
        int n = snprintf(data, 32, "payload-%" PRIu64, p);
        memset(data + n, 'x', W.pad);
        data[n + W.pad] = '\0';
        snprintf(cmd, sizeof cmd, "c%" PRIu64, p);
        Cqrs__EventRecord rec = CQRS__EVENT_RECORD__INIT;
        rec.version = ++W.versions[s];
        rec.timestamp_us = 1700000000000000 + (int64_t)p;
        rec.type = "WalletToppedUp";
        rec.data.data = (uint8_t *)data;
        rec.data.len = strlen(data);
        rec.command_id = cmd;
        rec.position = p;
        rec.stream = stream;
        rec.stream_offset = (uint64_t)evlog_size(W.streams[s]);
        uint8_t *buf = NULL;
        size_t len = 0, cap = 0;
        cr_assert_gt(evlog_encode(&rec, &buf, &len, &cap), 0);
        cr_assert_eq(evlog_append(W.streams[s], buf, len, 0), 0);
        journal_put(buf, len);
        free(buf);
        free(data);
        W.in_seg++;
        W.last = p;
        if (W.checkpoint_every && p % W.checkpoint_every == 0) {
            Cqrs__EventRecord ck = CQRS__EVENT_RECORD__INIT;
            ck.type = JOURNAL_CHECKPOINT;
            ck.version = p;
            buf = NULL;
            len = cap = 0;
            cr_assert_gt(evlog_encode(&ck, &buf, &len, &cap), 0);
            journal_put(buf, len);
            free(buf);
        }
    }
}

static void build(uint64_t n, unsigned nstreams, uint64_t per_segment, unsigned checkpoint_every)
{
    W.nstreams = nstreams;
    W.per_segment = per_segment;
    W.checkpoint_every = checkpoint_every;
    write_events(n);
}

static void remove_segment(uint64_t first)
{
    char path[PATH_MAX];
    seg_path(path, sizeof path, first);
    cr_assert_eq(unlink(path), 0, "unlink %s: %s", path, strerror(errno));
}

static void append_bytes(const char *path, const void *p, size_t len)
{
    int fd = open(path, O_WRONLY | O_APPEND);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, p, len), (ssize_t)len);
    close(fd);
}

/* Byte offset and payload length of the record of `position` in a file. */
static void find_record(const char *path, uint64_t position, off_t *off, uint32_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    uint8_t h[EVLOG_HEADER_LEN];
    long at = EVLOG_MAGIC_LEN;
    fseek(f, at, SEEK_SET);
    while (fread(h, 1, sizeof h, f) == sizeof h) {
        uint32_t n = frame_get32(h);
        uint8_t *p = malloc(n);
        cr_assert_eq(fread(p, 1, n, f), n);
        Cqrs__EventRecord *rec = cqrs__event_record__unpack(NULL, n, p);
        free(p);
        cr_assert_not_null(rec);
        int found = rec->position == position && strcmp(rec->type, JOURNAL_CHECKPOINT) != 0;
        cqrs__event_record__free_unpacked(rec, NULL);
        if (found) {
            fclose(f);
            *off = at;
            *len = n;
            return;
        }
        at += (long)sizeof h + (long)n;
    }
    fclose(f);
    cr_assert_fail("position %" PRIu64 " not in %s", position, path);
}

/* Flips the low bit of the last payload byte of a record (the end of its
 * stream_offset varint: still well-formed, but its CRC fails). */
static void damage_record(const char *path, uint64_t position)
{
    off_t off;
    uint32_t len;
    find_record(path, position, &off, &len);
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0);
    uint8_t b;
    off_t at = off + EVLOG_HEADER_LEN + len - 1;
    cr_assert_eq(pread(fd, &b, 1, at), 1);
    b ^= 1;
    cr_assert_eq(pwrite(fd, &b, 1, at), 1);
    close(fd);
}

/* --- what was delivered -------------------------------------------------- */

struct got {
    uint64_t *pos;
    size_t n, cap;
    size_t stop_after;          /* return 7 after this many (0: never) */
    int bad;                    /* records not what was written */
};

static int collect(void *arg, const Cqrs__EventRecord *rec, const uint8_t *raw, size_t len)
{
    struct got *g = arg;
    char want[32], stream[16];
    size_t n = (size_t)snprintf(want, sizeof want, "payload-%" PRIu64, rec->position);
    snprintf(stream, sizeof stream, "w%u", stream_of(rec->position));
    Cqrs__EventRecord *again = cqrs__event_record__unpack(NULL, len, raw);
    if (!again || again->position != rec->position || strcmp(rec->type, JOURNAL_CHECKPOINT) == 0 ||
        rec->data.len != n + W.pad || memcmp(rec->data.data, want, n) != 0 ||
        (W.pad && rec->data.data[rec->data.len - 1] != 'x') ||
        strcmp(rec->stream, stream) != 0)
        g->bad++;
    cqrs__event_record__free_unpacked(again, NULL);
    if (g->n == g->cap) {
        g->cap = g->cap ? g->cap * 2 : 1024;
        g->pos = realloc(g->pos, g->cap * sizeof *g->pos);
    }
    g->pos[g->n++] = rec->position;
    return g->stop_after && g->n == g->stop_after ? 7 : 0;
}

/* Asserts that exactly positions from..to were delivered, in order. */
static void assert_range(const struct got *g, uint64_t from, uint64_t to)
{
    cr_assert_eq(g->bad, 0, "%d records differ from what was written", g->bad);
    cr_assert_eq(g->n, to - from + 1, "delivered %zu events, expected %" PRIu64 "..%" PRIu64,
                 g->n, from, to);
    for (size_t i = 0; i < g->n; i++)
        cr_assert_eq(g->pos[i], from + i, "event %zu has position %" PRIu64 ", expected %" PRIu64,
                     i, g->pos[i], from + i);
}

static void reset(struct got *g)
{
    g->n = 0;
    g->bad = 0;
}

/* One read by a fresh reader. */
static int read_once(uint64_t from, uint64_t to, struct got *g, int *fallback, char *err,
                     size_t errlen)
{
    struct allstream *as = allstream_open(TYPE);
    cr_assert_not_null(as);
    reset(g);
    int rc = allstream_read(as, from, to, collect, g, fallback, err, errlen);
    allstream_free(as);
    return rc;
}

static void assert_reads(uint64_t from, uint64_t to, int want_fallback)
{
    struct got g = { 0 };
    char err[256];
    int fallback = -1;
    int rc = read_once(from, to, &g, &fallback, err, sizeof err);
    cr_assert_eq(rc, 0, "read %" PRIu64 "..%" PRIu64 ": %d %s (%s)", from, to, rc, err,
                 strerror(errno));
    assert_range(&g, from, to);
    cr_assert_eq(fallback, want_fallback, "fallback %d for %" PRIu64 "..%" PRIu64, fallback, from,
                 to);
    free(g.pos);
}

/* --- the journal ---------------------------------------------------------- */

Test(allstream, reads_a_range_across_segments)
{
    build(1000, 10, 100, 30);
    assert_reads(1, 1000, 0);
    assert_reads(250, 730, 0);
    assert_reads(100, 101, 0);
}

/* The journal's segments run on in zeros after their records (preallocated;
 * a full one is cut back, unless a crash came first): the zeros end a
 * segment's records, they are not a damaged record. */
Test(allstream, reads_preallocated_segments)
{
    W.prealloc = 1 << 20;
    build(1000, 10, 100, 30);
    assert_reads(1, 1000, 0);
    assert_reads(250, 730, 0);
    assert_reads(990, 1000, 0);

    /* past the last record: the position is missing, not a record damaged */
    struct got g = { 0 };
    char err[256];
    cr_assert_eq(read_once(990, 1001, &g, NULL, err, sizeof err), EVLOG_CORRUPT);
    cr_assert_not_null(strstr(err, "position 1001 is missing from the journal"), "%s", err);
    free(g.pos);
}

Test(allstream, starts_in_the_middle_of_a_segment)
{
    build(1000, 10, 100, 0);
    assert_reads(355, 355, 0);
    assert_reads(199, 201, 0);
    assert_reads(999, 1000, 0);

    struct got g = { 0 };
    char err[256];
    cr_assert_eq(read_once(0, 3, &g, NULL, err, sizeof err), 0);   /* from 0 is 1 */
    assert_range(&g, 1, 3);
    cr_assert_eq(read_once(10, 9, &g, NULL, err, sizeof err), 0);
    cr_assert_eq(g.n, 0);
    free(g.pos);
}

Test(allstream, pages_resume_where_the_last_stopped)
{
    build(1000, 10, 100, 25);
    struct allstream *as = allstream_open(TYPE);
    cr_assert_not_null(as);
    struct got g = { 0 };
    char err[256];
    for (uint64_t from = 1; from <= 1000; from += 37) {
        uint64_t to = from + 36 > 1000 ? 1000 : from + 36;
        int fallback = -1;
        cr_assert_eq(allstream_read(as, from, to, collect, &g, &fallback, err, sizeof err), 0,
                     "%s", err);
        cr_assert_eq(fallback, 0);
    }
    assert_range(&g, 1, 1000);

    /* a stop by the callback is returned; the next page goes on after it */
    reset(&g);
    g.stop_after = 10;
    cr_assert_eq(allstream_read(as, 1, 1000, collect, &g, NULL, err, sizeof err), 7);
    g.stop_after = 0;
    cr_assert_eq(allstream_read(as, 11, 1000, collect, &g, NULL, err, sizeof err), 0, "%s", err);
    assert_range(&g, 1, 1000);
    allstream_free(as);

    /* Damage the length of position 120's record in segment 101: a reader
     * that stopped after 150 goes on without walking over it again; a fresh
     * one must walk from the segment's start and finds it. */
    as = allstream_open(TYPE);
    reset(&g);
    cr_assert_eq(allstream_read(as, 1, 150, collect, &g, NULL, err, sizeof err), 0, "%s", err);
    char path[PATH_MAX];
    off_t off;
    uint32_t len;
    seg_path(path, sizeof path, 101);
    find_record(path, 120, &off, &len);
    int fd = open(path, O_RDWR);
    uint8_t bad[4] = { 0xff, 0xff, 0xff, 0xff };
    cr_assert_eq(pwrite(fd, bad, sizeof bad, off), 4);
    close(fd);
    cr_assert_eq(allstream_read(as, 151, 160, collect, &g, NULL, err, sizeof err), 0, "%s", err);
    assert_range(&g, 1, 160);
    allstream_free(as);

    cr_assert_eq(read_once(151, 160, &g, NULL, err, sizeof err), EVLOG_CORRUPT);
    cr_assert_not_null(strstr(err, "impossible length"), "%s", err);
    cr_assert_eq(g.n, 0);
    free(g.pos);
}

Test(allstream, a_reader_remembers_marks_inside_a_segment)
{
    build(5000, 10, 5000, 0);
    struct allstream *as = allstream_open(TYPE);
    cr_assert_not_null(as);
    struct got g = { 0 };
    char err[256];
    cr_assert_eq(allstream_read(as, 1, 5000, collect, &g, NULL, err, sizeof err), 0, "%s", err);

    /* With the length of position 3000's record damaged, a reader that has
     * been through the segment starts near 4500 (a mark every 1024
     * positions); a fresh one walks from the start and finds the damage. */
    char path[PATH_MAX];
    off_t off;
    uint32_t len;
    seg_path(path, sizeof path, 1);
    find_record(path, 3000, &off, &len);
    int fd = open(path, O_RDWR);
    uint8_t bad[4] = { 0xff, 0xff, 0xff, 0xff };
    cr_assert_eq(pwrite(fd, bad, sizeof bad, off), 4);
    close(fd);
    reset(&g);
    cr_assert_eq(allstream_read(as, 4500, 4510, collect, &g, NULL, err, sizeof err), 0, "%s", err);
    assert_range(&g, 4500, 4510);
    cr_assert_eq(allstream_read(as, 2000, 3000, collect, &g, NULL, err, sizeof err), EVLOG_CORRUPT);
    allstream_free(as);

    cr_assert_eq(read_once(4500, 4510, &g, NULL, err, sizeof err), EVLOG_CORRUPT);
    cr_assert_not_null(strstr(err, "impossible length"), "%s", err);
    free(g.pos);
}

Test(allstream, ignores_a_torn_tail_past_the_bound)
{
    build(105, 5, 1000, 0);
    char path[PATH_MAX];
    seg_path(path, sizeof path, 1);
    /* a last record torn while being written: 500 bytes announced, 20 there */
    uint8_t torn[28] = { 0, 0, 1, 0xf4, 1, 2, 3, 4, 0x08, 0x01 };
    append_bytes(path, torn, sizeof torn);

    assert_reads(1, 100, 0);      /* valid records past the bound too */
    assert_reads(90, 105, 0);

    /* a position past the journal's end is not there to read */
    struct got g = { 0 };
    char err[256];
    cr_assert_eq(read_once(100, 106, &g, NULL, err, sizeof err), EVLOG_CORRUPT);
    cr_assert_not_null(strstr(err, "position 106 is missing from the journal"), "%s", err);
    assert_range(&g, 100, 105);
    free(g.pos);
}

Test(allstream, ignores_a_bad_checksum_past_the_bound)
{
    build(100, 5, 1000, 0);
    char path[PATH_MAX];
    seg_path(path, sizeof path, 1);
    damage_record(path, 100);     /* a whole last record, its CRC failing */
    assert_reads(1, 99, 0);
    assert_reads(99, 99, 0);
}

Test(allstream, skips_checkpoint_records)
{
    /* checkpoints every 25 events; segment 51 begins with one */
    build(300, 4, 50, 25);
    char path[PATH_MAX];
    seg_path(path, sizeof path, 51);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    uint8_t h[EVLOG_MAGIC_LEN + EVLOG_HEADER_LEN], p[64];
    cr_assert_eq(fread(h, 1, sizeof h, f), sizeof h);
    uint32_t n = frame_get32(h + EVLOG_MAGIC_LEN);
    cr_assert_leq(n, sizeof p);
    cr_assert_eq(fread(p, 1, n, f), n);
    fclose(f);
    Cqrs__EventRecord *first = cqrs__event_record__unpack(NULL, n, p);
    cr_assert_not_null(first);
    cr_assert_str_eq(first->type, JOURNAL_CHECKPOINT);
    cqrs__event_record__free_unpacked(first, NULL);

    assert_reads(1, 300, 0);
    assert_reads(51, 51, 0);
    assert_reads(26, 76, 0);
}

Test(allstream, a_gap_between_segments_is_corruption)
{
    build(1000, 10, 100, 0);
    remove_segment(201);
    struct got g = { 0 };
    char err[256];
    cr_assert_eq(read_once(150, 350, &g, NULL, err, sizeof err), EVLOG_CORRUPT);
    cr_assert_not_null(strstr(err, "position 201 is missing from the journal"), "%s", err);
    assert_range(&g, 150, 200);
    free(g.pos);
}

Test(allstream, a_bad_checksum_inside_the_range_is_corruption)
{
    build(1000, 10, 100, 0);
    char path[PATH_MAX];
    seg_path(path, sizeof path, 501);
    damage_record(path, 555);

    struct got g = { 0 };
    char err[256];
    cr_assert_eq(read_once(500, 600, &g, NULL, err, sizeof err), EVLOG_CORRUPT);
    cr_assert_not_null(strstr(err, "(position 555) fails its checksum"), "%s", err);
    cr_assert_not_null(strstr(err, "00000000000000000501.wal"), "%s", err);
    assert_range(&g, 500, 554);
    free(g.pos);

    /* only the records delivered are checked */
    assert_reads(1, 554, 0);
    assert_reads(556, 600, 0);
}

/* --- the stream files ------------------------------------------------------ */

static void write_file(const char *path, const void *p, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
    cr_assert_eq(write(fd, p, len), (ssize_t)len);
    close(fd);
}

static void copy_file(const char *from, const char *to)
{
    FILE *f = fopen(from, "rb");
    cr_assert_not_null(f);
    static uint8_t buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    write_file(to, buf, n);
}

Test(allstream, falls_back_to_the_stream_files_beyond_retention)
{
    build(1000, 10, 100, 0);
    writer_close();
    remove_segment(1);
    remove_segment(101);

    /* Not stream logs, so not read: a snapshot, and a torn tail kept aside
     * (here a whole copy of w3's log, which would repeat its positions). A
     * torn tail still on a log is the end of that log. */
    char path[PATH_MAX], other[PATH_MAX + 32];
    stream_path(path, sizeof path, 3);
    snprintf(other, sizeof other, "%.*s.snap", (int)(strlen(path) - 4), path);
    write_file(other, "CQRSSNP1 not a log", 18);
    snprintf(other, sizeof other, "%s.torn-1700000000000000", path);
    copy_file(path, other);
    uint8_t torn[12] = { 0, 0, 0, 40, 9, 9, 9, 9, 0x08 };
    stream_path(path, sizeof path, 4);
    append_bytes(path, torn, sizeof torn);

    assert_reads(50, 450, 1);
    assert_reads(1, 1000, 1);
    assert_reads(1, 1, 1);
    assert_reads(200, 201, 1);
    assert_reads(300, 400, 0);

    /* no journal at all */
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/journal", TYPE);
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    assert_reads(1, 1000, 1);
    assert_reads(777, 800, 1);
}

Test(allstream, pages_beyond_retention_and_retention_moving_on)
{
    build(1000, 10, 100, 0);
    writer_close();
    struct allstream *as = allstream_open(TYPE);
    cr_assert_not_null(as);
    struct got g = { 0 };
    char err[256];

    /* the reader stopped inside segment 101, which retention then deletes */
    cr_assert_eq(allstream_read(as, 1, 150, collect, &g, NULL, err, sizeof err), 0, "%s", err);
    remove_segment(1);
    remove_segment(101);
    remove_segment(201);
    int fallback = -1;
    cr_assert_eq(allstream_read(as, 151, 250, collect, &g, &fallback, err, sizeof err), 0, "%s",
                 err);
    cr_assert_eq(fallback, 1);
    assert_range(&g, 1, 250);

    /* pages from the start, through the stream files, then the journal */
    reset(&g);
    for (uint64_t from = 1; from <= 1000; from += 50) {
        cr_assert_eq(allstream_read(as, from, from + 49, collect, &g, &fallback, err, sizeof err),
                     0, "%s", err);
        cr_assert_eq(fallback, from <= 400, "page from %" PRIu64, from);
        if (from == 251)
            remove_segment(301);    /* retention moves on between pages */
    }
    assert_range(&g, 1, 1000);
    allstream_free(as);
    free(g.pos);
}

Test(allstream, a_position_in_no_file_is_corruption)
{
    build(1000, 10, 100, 0);
    writer_close();
    remove_segment(1);
    remove_segment(101);
    char path[PATH_MAX];
    stream_path(path, sizeof path, 3);   /* w3 holds positions 9, 19, 29, ... */
    cr_assert_eq(unlink(path), 0);

    struct got g = { 0 };
    char err[256];
    int fallback = -1;
    cr_assert_eq(read_once(1, 300, &g, &fallback, err, sizeof err), EVLOG_CORRUPT);
    cr_assert_not_null(strstr(err, "position 9 is in neither the journal nor the stream files"),
                       "%s", err);
    cr_assert_eq(fallback, 1);
    assert_range(&g, 1, 8);
    assert_reads(1, 8, 1);
    assert_reads(201, 300, 0);
    free(g.pos);
}

Test(allstream, a_bad_checksum_in_a_stream_file_is_corruption)
{
    build(1000, 10, 100, 0);
    writer_close();
    remove_segment(1);
    char path[PATH_MAX];
    stream_path(path, sizeof path, stream_of(42));
    damage_record(path, 42);

    struct got g = { 0 };
    char err[256];
    cr_assert_eq(read_once(1, 100, &g, NULL, err, sizeof err), EVLOG_CORRUPT);
    cr_assert_not_null(strstr(err, "position 42 "), "%s", err);
    cr_assert_not_null(strstr(err, "fails its checksum"), "%s", err);
    assert_range(&g, 1, 41);
    free(g.pos);
}

Test(allstream, large_records_beyond_retention)
{
    /* 60 events of 200 KB: more than one scan keeps in memory, so the
     * later ones are read again from their files */
    W.pad = 200000;
    build(60, 3, 1000, 0);
    writer_close();
    remove_segment(1);
    assert_reads(1, 60, 1);
    assert_reads(55, 60, 1);
}

Test(allstream, first_layout_files_and_duplicates)
{
    build(300, 10, 100, 0);
    writer_close();
    remove_segment(1);
    remove_segment(101);

    /* a log still in the first layout, <type>/<id>.log, is read */
    char path[PATH_MAX], old[PATH_MAX];
    stream_path(path, sizeof path, 3);
    snprintf(old, sizeof old, "%s/w3.log", TYPE);
    cr_assert_eq(rename(path, old), 0);
    assert_reads(1, 300, 1);

    /* the same position in two logs is not taken from either */
    copy_file(old, path);
    struct got g = { 0 };
    char err[256];
    cr_assert_eq(read_once(1, 200, &g, NULL, err, sizeof err), EVLOG_CORRUPT);
    cr_assert_not_null(strstr(err, "position 9 is in "), "%s", err);
    cr_assert_not_null(strstr(err, "and another stream file"), "%s", err);
    assert_range(&g, 1, 8);
    free(g.pos);
}
