/*
 * test_verify — the read-only check of event logs (lib/verify.c) on a data
 * dir of wallet streams written through lib/evlog at their layout paths:
 * a clean stream, a flipped payload bit in the middle, a torn tail, events
 * that contradict the rules, an event payload that does not decode, an
 * event type wallet does not have, a version gap, a misplaced file and a
 * file whose name is not an id. Each problem must be reported once, saying
 * what, the clean stream never, and no byte of the data dir may change.
 * Every test works in its own mkdtemp directory.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "aggregate.h"
#include "crc32c.h"
#include "evlog.h"
#include "layout.h"
#include "verify.h"
#include "wallet.pb-c.h"

static char DIR_[64];
static char TYPE_DIR[128];
static const struct aggregate_type *WALLET;

/* --- problems reported --------------------------------------------------- */

#define MAX_PROBLEMS 64

static struct problem {
    char path[PATH_MAX];
    char text[1024];
} PROBLEMS[MAX_PROBLEMS];
static size_t N_PROBLEMS;

static void on_problem(void *arg, const char *path, const char *problem)
{
    (void)arg;
    cr_assert_lt(N_PROBLEMS, MAX_PROBLEMS, "too many problems");
    snprintf(PROBLEMS[N_PROBLEMS].path, sizeof PROBLEMS[0].path, "%s", path);
    snprintf(PROBLEMS[N_PROBLEMS].text, sizeof PROBLEMS[0].text, "%s", problem);
    N_PROBLEMS++;
}

static void show_problems(void)
{
    for (size_t i = 0; i < N_PROBLEMS; i++)
        fprintf(stderr, "  %s: %s\n", PROBLEMS[i].path, PROBLEMS[i].text);
}

/* How many problems name `path`; *text gets the last one. */
static size_t problems_of(const char *path, const char **text)
{
    size_t n = 0;
    for (size_t i = 0; i < N_PROBLEMS; i++)
        if (strcmp(PROBLEMS[i].path, path) == 0) {
            n++;
            if (text)
                *text = PROBLEMS[i].text;
        }
    return n;
}

/* Exactly one problem for `path`, containing `what`. */
static void expect_one(const char *path, const char *what)
{
    const char *text = NULL;
    size_t n = problems_of(path, &text);
    if (n != 1 || !strstr(text, what))
        show_problems();
    cr_assert_eq(n, 1, "%zu problems reported for %s, expected 1", n, path);
    cr_assert(strstr(text, what), "problem for %s is \"%s\", expected it to say \"%s\"", path,
              text, what);
}

/* --- the data dir ---------------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void dir_setup(void)
{
    strcpy(DIR_, "/tmp/test_verify.XXXXXX");
    cr_assert_not_null(mkdtemp(DIR_), "mkdtemp: %s", strerror(errno));
    snprintf(TYPE_DIR, sizeof TYPE_DIR, "%s/wallet", DIR_);
    cr_assert_eq(mkdir(TYPE_DIR, 0700), 0);
    WALLET = aggregate_lookup("wallet");
    cr_assert_not_null(WALLET);
    N_PROBLEMS = 0;
}

static void dir_teardown(void)
{
    nftw(DIR_, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

TestSuite(verify, .init = dir_setup, .fini = dir_teardown);

static void mkdirs(const char *path)
{
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            cr_assert(mkdir(buf, 0700) == 0 || errno == EEXIST, "mkdir %s: %s", buf,
                      strerror(errno));
            *p = '/';
        }
    cr_assert(mkdir(buf, 0700) == 0 || errno == EEXIST, "mkdir %s: %s", buf, strerror(errno));
}

/* Where layout puts stream `id` (its shard folder made). */
static void stream_path(char *buf, size_t len, const char *id)
{
    char shard[PATH_MAX];
    layout_shard_dir(shard, sizeof shard, TYPE_DIR, id);
    mkdirs(shard);
    layout_stream_file(buf, len, TYPE_DIR, id, ".log");
}

/* One event to write: a wallet message, or raw bytes under a type name. */
struct ev {
    const char *type;                   /* NULL: msg's short name */
    const ProtobufCMessage *msg;        /* NULL: raw */
    const uint8_t *raw;
    size_t raw_len;
    uint64_t version;                   /* 0: its place in the list */
};

/* Writes the events as records at `path` through evlog; returns the file
 * offset of each record in offs[] (may be NULL) and the encoded size. */
static size_t write_stream(const char *path, const struct ev *evs, size_t n, off_t *offs)
{
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    uint8_t data[256];
    for (size_t i = 0; i < n; i++) {
        Cqrs__EventRecord rec = CQRS__EVENT_RECORD__INIT;
        rec.version = evs[i].version ? evs[i].version : i + 1;
        rec.timestamp_us = 1700000000000000LL + (int64_t)i;
        rec.command_id = "cmd";
        if (evs[i].msg) {
            size_t dl = protobuf_c_message_get_packed_size(evs[i].msg);
            cr_assert_leq(dl, sizeof data);
            protobuf_c_message_pack(evs[i].msg, data);
            rec.type = (char *)(evs[i].type ? evs[i].type : evs[i].msg->descriptor->short_name);
            rec.data.data = data;
            rec.data.len = dl;
        } else {
            rec.type = (char *)evs[i].type;
            rec.data.data = (uint8_t *)evs[i].raw;
            rec.data.len = evs[i].raw_len;
        }
        if (offs)
            offs[i] = EVLOG_MAGIC_LEN + (off_t)len;
        cr_assert_gt(evlog_encode(&rec, &buf, &len, &cap), 0);
    }
    struct evlog *log;
    cr_assert_eq(evlog_open(path, EVLOG_CREATE, NULL, NULL, &log, NULL), 0, "evlog_open %s: %s",
                 path, strerror(errno));
    cr_assert_eq(evlog_append(log, buf, len, 0), 0);
    evlog_free(log);
    free(buf);
    return len;
}

static void append_bytes(const char *path, const void *p, size_t n)
{
    int fd = open(path, O_WRONLY | O_APPEND);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, p, n), (ssize_t)n);
    close(fd);
}

static void flip_bit(const char *path, off_t at, int bit)
{
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0);
    uint8_t b;
    cr_assert_eq(pread(fd, &b, 1, at), 1);
    b ^= (uint8_t)(1u << bit);
    cr_assert_eq(pwrite(fd, &b, 1, at), 1);
    close(fd);
}

static void write_file(const char *path, const void *p, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
    cr_assert_eq(write(fd, p, n), (ssize_t)n);
    close(fd);
}

/* --- wallet events --------------------------------------------------------- */

static Wallet__WalletToppedUp topped(int64_t from, int64_t to)
{
    Wallet__WalletToppedUp e = WALLET__WALLET_TOPPED_UP__INIT;
    e.from = from;
    e.to = to;
    return e;
}

static Wallet__FundsAuthorized authorized(int64_t amount, char *tx)
{
    Wallet__FundsAuthorized e = WALLET__FUNDS_AUTHORIZED__INIT;
    e.amount = amount;
    e.tx_id = tx;
    return e;
}

static Wallet__FundsCaptured captured(int64_t amount, char *tx)
{
    Wallet__FundsCaptured e = WALLET__FUNDS_CAPTURED__INIT;
    e.amount = amount;
    e.tx_id = tx;
    return e;
}

/* The talk's scenario, valid from a new wallet. */
static size_t clean_stream(const char *path, off_t *offs)
{
    Wallet__WalletToppedUp t1 = topped(0, 100), t2 = topped(92, 142);
    Wallet__WalletRenamed rn = WALLET__WALLET_RENAMED__INIT;
    rn.name = "Savings";
    Wallet__FundsAuthorized a = authorized(10, "123");
    Wallet__FundsCaptured c = captured(8, "123");
    const struct ev evs[] = {
        { .msg = &t1.base }, { .msg = &rn.base }, { .msg = &a.base }, { .msg = &c.base },
        { .msg = &t2.base },
    };
    return write_stream(path, evs, sizeof evs / sizeof evs[0], offs);
}

/* --- snapshot of every file, to prove nothing changed ---------------------- */

#define MAX_FILES 64

static struct file_snap {
    char path[PATH_MAX];
    mode_t mode;
    size_t len;
    uint8_t *data;
} *SNAP_AT;
static size_t *SNAP_N_AT;

static int snap_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)flag, (void)ftw;
    cr_assert_lt(*SNAP_N_AT, MAX_FILES);
    struct file_snap *f = &SNAP_AT[(*SNAP_N_AT)++];
    snprintf(f->path, sizeof f->path, "%s", path);
    f->mode = st->st_mode;
    f->len = 0;
    f->data = NULL;
    if (S_ISREG(st->st_mode)) {
        f->len = (size_t)st->st_size;
        f->data = malloc(f->len + 1);
        int fd = open(path, O_RDONLY);
        cr_assert_geq(fd, 0);
        cr_assert_eq(read(fd, f->data, f->len), (ssize_t)f->len);
        close(fd);
    }
    return 0;
}

static size_t snapshot(struct file_snap *files)
{
    size_t n = 0;
    SNAP_AT = files;
    SNAP_N_AT = &n;
    cr_assert_eq(nftw(DIR_, snap_entry, 8, FTW_PHYS), 0);
    return n;
}

static void snapshot_free(struct file_snap *files, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(files[i].data);
}

/* Every file as it was: same names, kinds, sizes and bytes. */
static void expect_unchanged(struct file_snap *before, size_t nb)
{
    static struct file_snap after[MAX_FILES];
    size_t na = snapshot(after);
    cr_assert_eq(na, nb, "the data dir had %zu entries, now %zu", nb, na);
    for (size_t i = 0; i < nb; i++) {
        size_t j;
        for (j = 0; j < na && strcmp(after[j].path, before[i].path) != 0; j++)
            ;
        cr_assert_lt(j, na, "%s is gone", before[i].path);
        cr_assert_eq(after[j].mode, before[i].mode, "%s changed mode", before[i].path);
        cr_assert_eq(after[j].len, before[i].len, "%s changed size", before[i].path);
        cr_assert(before[i].len == 0 || memcmp(after[j].data, before[i].data, before[i].len) == 0,
                  "%s changed", before[i].path);
    }
    snapshot_free(after, na);
}

/* --- tests ------------------------------------------------------------------ */

Test(verify, every_problem_reported_once_and_nothing_changed)
{
    char clean[PATH_MAX], corrupt[PATH_MAX], torn[PATH_MAX], contra[PATH_MAX],
         undec[PATH_MAX], unknown[PATH_MAX], gap[PATH_MAX], moved[PATH_MAX],
         badname[PATH_MAX], right[PATH_MAX];

    /* clean */
    stream_path(clean, sizeof clean, "w-clean");
    clean_stream(clean, NULL);

    /* a flipped payload bit in the 3rd of 5 records: followed by good ones */
    off_t offs[8];
    stream_path(corrupt, sizeof corrupt, "w-corrupt");
    clean_stream(corrupt, offs);
    flip_bit(corrupt, offs[2] + EVLOG_HEADER_LEN + 3, 4);
    char at[64];
    snprintf(at, sizeof at, "record at byte %lld fails its checksum", (long long)offs[2]);

    /* a torn tail: the header and part of a 6th record */
    stream_path(torn, sizeof torn, "w-torn");
    clean_stream(torn, NULL);
    char torn_what[64];
    {
        Wallet__WalletToppedUp t = topped(142, 200);
        const struct ev evs[] = { { .msg = &t.base, .version = 6 } };
        char scratch[PATH_MAX];
        snprintf(scratch, sizeof scratch, "%s/scratch.bin", DIR_);
        size_t len = write_stream(scratch, evs, 1, NULL);
        uint8_t rec[256];
        int fd = open(scratch, O_RDONLY);
        cr_assert_eq(pread(fd, rec, len, EVLOG_MAGIC_LEN), (ssize_t)len);
        close(fd);
        unlink(scratch);
        append_bytes(torn, rec, len - 5);
        snprintf(torn_what, sizeof torn_what, "torn tail of %zu bytes at the end", len - 5);
    }

    /* a capture of a transaction never authorized, then more events that
     * would fail too from there: one problem, not a cascade */
    stream_path(contra, sizeof contra, "w-contra");
    {
        Wallet__WalletToppedUp t = topped(0, 100);
        Wallet__FundsCaptured c = captured(5, "never");
        Wallet__FundsCaptured c2 = captured(5, "never");
        const struct ev evs[] = { { .msg = &t.base }, { .msg = &c.base }, { .msg = &c2.base } };
        write_stream(contra, evs, 3, NULL);
    }

    /* a known type whose data is not that message (field 1, wire type 7) */
    stream_path(undec, sizeof undec, "w-undec");
    {
        static const uint8_t junk[] = { 0x0f, 0xff, 0xff };
        Wallet__WalletToppedUp t = topped(0, 100), t2 = topped(100, 130);
        const struct ev evs[] = {
            { .msg = &t.base }, { .type = "WalletToppedUp", .raw = junk, .raw_len = sizeof junk },
            { .msg = &t2.base },
        };
        write_stream(undec, evs, 3, NULL);
    }

    /* an event type wallet does not have */
    stream_path(unknown, sizeof unknown, "w-unknown");
    {
        Wallet__WalletToppedUp t = topped(0, 100);
        const struct ev evs[] = { { .msg = &t.base }, { .type = "AccountOpened", .msg = &t.base } };
        write_stream(unknown, evs, 2, NULL);
    }

    /* versions 1, 2, 4 */
    stream_path(gap, sizeof gap, "w-gap");
    {
        Wallet__WalletToppedUp t1 = topped(0, 1), t2 = topped(1, 2), t3 = topped(2, 3);
        const struct ev evs[] = { { .msg = &t1.base }, { .msg = &t2.base },
                                  { .msg = &t3.base, .version = 4 } };
        write_stream(gap, evs, 3, NULL);
    }

    /* a clean stream in the wrong shard folder */
    {
        char shard[256];
        layout_stream_file(right, sizeof right, TYPE_DIR, "w-moved", ".log");
        unsigned real = crc32c(0, "w-moved", 7) & 0xff;
        snprintf(shard, sizeof shard, "%s/%02x", TYPE_DIR, (real + 1) & 0xff);
        mkdirs(shard);
        snprintf(moved, sizeof moved, "%s/w-moved.log", shard);
        clean_stream(moved, NULL);
    }

    /* a *.log whose name is not an aggregate id */
    {
        char shard[256];
        snprintf(shard, sizeof shard, "%s/00", TYPE_DIR);
        mkdirs(shard);
        snprintf(badname, sizeof badname, "%s/bad name!.log", shard);
        clean_stream(badname, NULL);
    }

    /* what verify must skip: the journal, snapshots, temp files, kept tails */
    {
        char p[PATH_MAX + 64];
        snprintf(p, sizeof p, "%s/journal", TYPE_DIR);
        mkdirs(p);
        snprintf(p, sizeof p, "%s/journal/00000001.log", TYPE_DIR);
        write_file(p, "not a log", 9);
        snprintf(p, sizeof p, "%s.torn-1700000000000000", clean);
        write_file(p, "\1\2\3", 3);
        layout_stream_file(p, sizeof p, TYPE_DIR, "w-clean", ".snap");
        write_file(p, "junk", 4);
        layout_stream_file(p, sizeof p, TYPE_DIR, "w-clean", ".log.tmp");
        write_file(p, "junk", 4);
    }

    struct file_snap before[MAX_FILES];
    size_t nb = snapshot(before);

    size_t streams = 0;
    int rc = verify_type_counted(WALLET, TYPE_DIR, NULL, on_problem, NULL, &streams);

    cr_assert_eq(problems_of(clean, NULL), 0, "the clean stream has problems");
    expect_one(corrupt, at);
    expect_one(torn, torn_what);
    expect_one(contra, "event 2 (FundsCaptured) contradicts the state before it");
    expect_one(undec, "event 2 (WalletToppedUp) does not decode as wallet.WalletToppedUp");
    expect_one(unknown, "event 2 (AccountOpened) is not a wallet event");
    expect_one(gap, "out of version sequence");
    expect_one(moved, right);
    expect_one(moved, "misplaced");
    expect_one(badname, "\"bad name!\" is not a valid aggregate id");
    if ((size_t)rc != N_PROBLEMS)
        show_problems();
    cr_assert_eq(rc, 8, "verify_type found %d problems, expected 8", rc);
    cr_assert_eq(N_PROBLEMS, 8);
    cr_assert_eq(streams, 9, "%zu streams met, expected 9", streams);

    /* problems come sorted by path, whatever readdir's order */
    for (size_t i = 1; i < N_PROBLEMS; i++)
        cr_assert_leq(strcmp(PROBLEMS[i - 1].path, PROBLEMS[i].path), 0);

    expect_unchanged(before, nb);
    snapshot_free(before, nb);
}

Test(verify, clean_stream_has_no_problem)
{
    char path[PATH_MAX];
    stream_path(path, sizeof path, "w1");
    clean_stream(path, NULL);
    cr_assert_eq(verify_stream(WALLET, path, on_problem, NULL), 0);
    cr_assert_eq(verify_type(WALLET, TYPE_DIR, "w1", on_problem, NULL), 0);
    cr_assert_eq(verify_type(WALLET, TYPE_DIR, NULL, on_problem, NULL), 0);
    cr_assert_eq(N_PROBLEMS, 0);
}

Test(verify, torn_tail_is_reported_not_cut)
{
    char path[PATH_MAX];
    stream_path(path, sizeof path, "w1");
    size_t len = clean_stream(path, NULL);
    static const uint8_t zeros[16];
    append_bytes(path, zeros, 3);          /* a torn header */

    struct file_snap before[MAX_FILES];
    size_t nb = snapshot(before);
    cr_assert_eq(verify_type(WALLET, TYPE_DIR, "w1", on_problem, NULL), 1);
    expect_one(path, "torn tail of 3 bytes at the end");
    expect_unchanged(before, nb);        /* no .torn-* file, no truncation */
    snapshot_free(before, nb);

    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_size, (off_t)(EVLOG_MAGIC_LEN + len + 3));
}

Test(verify, one_id_checks_only_that_stream)
{
    char good[PATH_MAX], bad[PATH_MAX];
    stream_path(good, sizeof good, "w-good");
    clean_stream(good, NULL);
    stream_path(bad, sizeof bad, "w-bad");
    off_t offs[8];
    clean_stream(bad, offs);
    flip_bit(bad, offs[1] + EVLOG_HEADER_LEN, 0);

    cr_assert_eq(verify_type(WALLET, TYPE_DIR, "w-good", on_problem, NULL), 0);
    cr_assert_eq(N_PROBLEMS, 0);
    cr_assert_eq(verify_type(WALLET, TYPE_DIR, "w-bad", on_problem, NULL), 1);
    expect_one(bad, "fails its checksum");
}

Test(verify, missing_stream_and_bad_id_are_problems)
{
    char path[PATH_MAX];
    layout_stream_file(path, sizeof path, TYPE_DIR, "nobody", ".log");
    cr_assert_eq(verify_type(WALLET, TYPE_DIR, "nobody", on_problem, NULL), 1);
    expect_one(path, "no such stream");

    N_PROBLEMS = 0;
    cr_assert_eq(verify_type(WALLET, TYPE_DIR, "../x", on_problem, NULL), 1);
    expect_one(TYPE_DIR, "is not a valid aggregate id");
}

Test(verify, missing_type_folder_holds_no_streams)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/account", DIR_);
    size_t streams = 7;
    cr_assert_eq(verify_type_counted(aggregate_lookup("account"), dir, NULL, on_problem, NULL,
                                     &streams), 0);
    cr_assert_eq(streams, 7);
    cr_assert_eq(N_PROBLEMS, 0);
}

Test(verify, unreadable_file_is_an_error)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/none.log", TYPE_DIR);
    errno = 0;
    cr_assert_eq(verify_stream(WALLET, path, on_problem, NULL), -1);
    cr_assert_eq(errno, ENOENT);
    expect_one(path, "cannot read it");
}

Test(verify, fifo_and_symlink_are_not_opened)
{
    char fifo[PATH_MAX], link[PATH_MAX], target[PATH_MAX];
    stream_path(fifo, sizeof fifo, "w-fifo");
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    stream_path(link, sizeof link, "w-link");
    snprintf(target, sizeof target, "%s/elsewhere.log", DIR_);
    clean_stream(target, NULL);
    cr_assert_eq(symlink(target, link), 0);

    cr_assert_eq(verify_type(WALLET, TYPE_DIR, NULL, on_problem, NULL), 2);
    expect_one(fifo, "not a regular file");
    expect_one(link, "symbolic link");
}

Test(verify, type_folder_given_with_trailing_slash)
{
    char path[PATH_MAX], dir[PATH_MAX];
    stream_path(path, sizeof path, "w1");
    clean_stream(path, NULL);
    snprintf(dir, sizeof dir, "%s//", TYPE_DIR);
    cr_assert_eq(verify_type(WALLET, dir, NULL, on_problem, NULL), 0, "a trailing slash made "
                 "a well-placed stream look misplaced");
}
