/*
 * test_torn — damaged stream logs on a stopped daemon's data dir, loaded by
 * the real daemon afterwards.
 *
 * The journal repairs a stream file from every journal event after the
 * last checkpoint, so each case first lets a checkpoint cover the wallet's
 * events (checkpoint_ms = 50; the journal's files are polled, up to 5 s,
 * until a checkpoint record covers the last event; then a clean SIGTERM)
 * and checks again after the stop: then the stream file is the only copy, and a
 * damaged last record is a torn tail (README, "The log format"):
 *
 *   - the file cut at every byte inside its last record (one daemon start
 *     per cut): STATE is the state of version 4, a `<id>.log.torn-<µs>` file
 *     beside the log holds exactly the cut bytes, a new TopUp gets version 5
 *     and the log then holds versions 1..5;
 *   - one bit flipped in each byte of the last record's CRC: the same, the
 *     torn file holding the whole (flipped) record;
 *   - a flipped bit in a middle record (its payload, or another wallet's
 *     CRC): CORRUPT for that wallet's STATE, EVENTS and commands, its file
 *     never modified and no torn file made; another wallet is fine.
 *
 * Wallet amounts are powers of two, so every balance names exactly the
 * events it holds. Tests of this file run one at a time (a lock file):
 * each starts daemons many times.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "evlog.h"
#include "harness.h"
#include "layout.h"
#include "wallet.pb-c.h"

#define CONF                                                                      \
    "[supervisor]\nstandby = false\n\n"                                           \
    "[storage]\nfsync = always\ncheckpoint_ms = 50\n\n"                           \
    "[child wallet]\n"
#define CHECKPOINT_WAIT_MS 5000     /* bound of the poll for a checkpoint */
#define RECORDS 5
/* worker/journal.h (not on the tests' include path): a checkpoint record */
#define JOURNAL_CHECKPOINT "$checkpoint"

static struct daemon d;
static int lock_fd = -1;

/* Runs the tests of this file one at a time, whatever --jobs says. */
static void setup(void)
{
    lock_fd = open("/tmp/cqrsd-faults-torn.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    cr_assert(lock_fd >= 0, "lock file: %s", strerror(errno));
    while (flock(lock_fd, LOCK_EX) < 0)
        cr_assert(errno == EINTR, "flock: %s", strerror(errno));
}

static void teardown(void)
{
    daemon_cleanup(&d);
    if (lock_fd >= 0)
        close(lock_fd);
    lock_fd = -1;
}

TestSuite(torn, .init = setup, .fini = teardown, .timeout = 240);

/* --- small helpers ----------------------------------------------------------- */

static void finish(void)
{
    int st = daemon_stop(&d);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "cqrsd did not exit 0 on SIGTERM (wait status 0x%x)", st);
}

static Cqrs__Reply *topup(struct cqrs_client *c, const char *id, int64_t amount)
{
    Wallet__TopUp t = WALLET__TOP_UP__INIT;
    t.amount = amount;
    return send_cmd(c, "wallet", id, &t.base, NULL, -1);
}

static void topup_ok(struct cqrs_client *c, const char *id, int64_t amount, uint64_t version,
                     const char *when)
{
    Cqrs__Reply *r = topup(c, id, amount);
    cr_assert_eq(r->status, CQRS__STATUS__OK, "%s: TopUp %s: %s (%s)", when, id,
                 cqrs_status_name(r->status), r->error);
    cr_assert_eq(r->version, version, "%s: TopUp %s got version %llu, expected %llu", when, id,
                 (unsigned long long)r->version, (unsigned long long)version);
    cqrs__reply__free_unpacked(r, NULL);
}

/* STATE of wallet `id`: its status, and balance and version when OK. */
static Cqrs__Status wallet_state(struct cqrs_client *c, const char *id, int64_t *balance,
                                 uint64_t *version, char *err, size_t errlen)
{
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_state(c, "wallet", id, &r) == 0, "STATE %s: %s", id, strerror(errno));
    Cqrs__Status st = r->status;
    snprintf(err, errlen, "%s", r->error);
    if (st == CQRS__STATUS__OK) {
        Wallet__WalletState *s = wallet__wallet_state__unpack(NULL, r->state.len, r->state.data);
        cr_assert(s, "STATE %s does not decode", id);
        *balance = s->balance;
        *version = r->version;
        wallet__wallet_state__free_unpacked(s, NULL);
    }
    cqrs__reply__free_unpacked(r, NULL);
    return st;
}

static void expect_state(struct cqrs_client *c, const char *id, int64_t balance,
                         uint64_t version, const char *when)
{
    int64_t b = 0;
    uint64_t v = 0;
    char err[300];
    Cqrs__Status st = wallet_state(c, id, &b, &v, err, sizeof err);
    cr_assert_eq(st, CQRS__STATUS__OK, "%s: STATE %s: %s (%s)", when, id, cqrs_status_name(st),
                 err);
    cr_assert(b == balance && v == version,
              "%s: STATE %s is balance %lld at version %llu, expected %lld at version %llu", when,
              id, (long long)b, (unsigned long long)v, (long long)balance,
              (unsigned long long)version);
}

static uint8_t *slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    cr_assert(fd >= 0, "open %s: %s", path, strerror(errno));
    struct stat sb;
    cr_assert(fstat(fd, &sb) == 0, "fstat %s: %s", path, strerror(errno));
    uint8_t *buf = malloc((size_t)sb.st_size + 1);
    cr_assert(buf, "out of memory");
    size_t got = 0;
    while (got < (size_t)sb.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)sb.st_size - got);
        cr_assert(n > 0 || (n < 0 && errno == EINTR), "read %s: %s", path,
                  n == 0 ? "short file" : strerror(errno));
        if (n > 0)
            got += (size_t)n;
    }
    close(fd);
    *len = got;
    return buf;
}

static void spit(const char *path, const uint8_t *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    cr_assert(fd >= 0, "create %s: %s", path, strerror(errno));
    size_t put = 0;
    while (put < len) {
        ssize_t n = write(fd, buf + put, len - put);
        cr_assert(n > 0 || (n < 0 && errno == EINTR), "write %s: %s", path, strerror(errno));
        if (n > 0)
            put += (size_t)n;
    }
    cr_assert(close(fd) == 0, "close %s: %s", path, strerror(errno));
}

static void log_path(const char *id, char *buf, size_t len)
{
    char type_dir[PATH_MAX];
    snprintf(type_dir, sizeof type_dir, "%s/wallet", d.data);
    layout_stream_file(buf, len, type_dir, id, ".log");
}

/* --- copies of the data dir ------------------------------------------------- */

static const char *copy_from, *copy_to;

static int copy_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)ftw;
    char dst[PATH_MAX];
    snprintf(dst, sizeof dst, "%s%s", copy_to, path + strlen(copy_from));
    if (flag == FTW_D) {
        cr_assert(mkdir(dst, sb->st_mode & 07777) == 0 || errno == EEXIST, "mkdir %s: %s", dst,
                  strerror(errno));
    } else if (flag == FTW_F) {
        size_t len;
        uint8_t *buf = slurp(path, &len);
        spit(dst, buf, len);
        free(buf);
    }
    return 0;
}

static void copy_tree(const char *from, const char *to)
{
    copy_from = from;
    copy_to = to;
    cr_assert(nftw(from, copy_cb, 16, FTW_PHYS) == 0, "copy %s: %s", from, strerror(errno));
}

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    cr_assert(remove(path) == 0, "remove %s: %s", path, strerror(errno));
    return 0;
}

static void rm_tree(const char *dir)
{
    if (access(dir, F_OK) == 0)
        cr_assert(nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS) == 0, "rm %s", dir);
}

/* --- reading the files ---------------------------------------------------------- */

struct recs {
    size_t n;
    off_t offset[64];
    size_t size[64];
    uint64_t version[64];
};

static int recs_cb(void *arg, const Cqrs__EventRecord *rec, off_t offset, size_t size)
{
    struct recs *r = arg;
    if (r->n < 64) {
        r->offset[r->n] = offset;
        r->size[r->n] = size;
        r->version[r->n] = rec->version;
    }
    r->n++;
    return 0;
}

/* Reads a stream log read-only (a torn tail is reported, not cut). */
static void read_log(const char *path, struct recs *r, off_t *torn)
{
    memset(r, 0, sizeof *r);
    struct evlog *log = NULL;
    struct evlog_open_info info;
    int rc = evlog_open(path, EVLOG_READONLY, recs_cb, r, &log, &info);
    cr_assert(rc == 0, "evlog_open %s: %d (%s) %s", path, rc, rc == -1 ? strerror(errno) : "",
              info.detail);
    *torn = info.truncated_bytes;
    evlog_free(log);
}

struct jscan {
    uint64_t last_position, checkpoint;
};

static int jscan_cb(void *arg, const Cqrs__EventRecord *rec, off_t offset, size_t size)
{
    (void)offset; (void)size;
    struct jscan *j = arg;
    if (strcmp(rec->type, JOURNAL_CHECKPOINT) == 0) {
        if (rec->version > j->checkpoint)
            j->checkpoint = rec->version;
    } else if (rec->position > j->last_position) {
        j->last_position = rec->position;
    }
    return 0;
}

/* The journal's last event and last checkpoint, read from its files. */
static struct jscan journal_scan(void)
{
    struct jscan j = { 0, 0 };
    uint64_t first;
    daemon_journal_replay(&d, "wallet", 0, jscan_cb, &j, &first);
    return j;
}

/* The precondition of every case: a checkpoint covers every journal event
 * (`events` of them), so recovery will not write the wallet's records back.
 * Polled while the daemon runs (checkpoint_ms = 50), then checked again
 * once it has stopped. */
static void wait_checkpointed(uint64_t events)
{
    int64_t deadline = harness_ms() + CHECKPOINT_WAIT_MS;
    struct jscan j;
    for (;;) {
        j = journal_scan();
        if (j.last_position == events && j.checkpoint >= events)
            break;
        cr_assert(harness_ms() < deadline, "precondition: %d ms after the last command "
                  "(checkpoint_ms = 50) the journal's last checkpoint covers position %llu, its "
                  "last event is %llu (%llu expected): the stream file is not the only copy",
                  CHECKPOINT_WAIT_MS, (unsigned long long)j.checkpoint,
                  (unsigned long long)j.last_position, (unsigned long long)events);
        harness_sleep_ms(20);
    }
}

static void expect_checkpointed(uint64_t events)
{
    struct jscan j = journal_scan();
    cr_assert(j.last_position == events && j.checkpoint >= events,
              "after a clean stop the journal's last checkpoint covers position %llu, its last "
              "event is %llu (%llu expected)", (unsigned long long)j.checkpoint,
              (unsigned long long)j.last_position, (unsigned long long)events);
}

/* The `<id>.log.torn-*` files beside the log; the first one's path. */
static int torn_files(const char *id, char *first, size_t len)
{
    char path[PATH_MAX], dir[PATH_MAX], prefix[200];
    log_path(id, path, sizeof path);
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = '\0';
    snprintf(prefix, sizeof prefix, "%s.log.torn-", id);
    DIR *dp = opendir(dir);
    cr_assert(dp, "opendir %s: %s", dir, strerror(errno));
    int n = 0;
    for (struct dirent *e; (e = readdir(dp)) != NULL;) {
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0)
            continue;
        if (n++ == 0)
            snprintf(first, len, "%.3000s/%.255s", dir, e->d_name);
    }
    closedir(dp);
    return n;
}

/* --- the torn-tail cases ------------------------------------------------------- */

#define TORN_ID "torn"
#define OTHER_ID "other"

/* The stopped daemon's data dir: wallet TORN_ID with RECORDS TopUps of
 * 1, 2, 4, 8, 16 and wallet OTHER_ID with two, checkpointed. Its copy is
 * kept in <dir>/pristine; `orig` gets the stream file's bytes, `last` the
 * offset and size of its last record. */
static uint8_t *prepare(size_t *orig_len, off_t *last_off, size_t *last_size)
{
    daemon_start_conf(&d, CONF, NULL);
    struct cqrs_client *c = daemon_connect(&d);
    for (int i = 0; i < RECORDS; i++)
        topup_ok(c, TORN_ID, (int64_t)1 << i, (uint64_t)i + 1, "setup");
    topup_ok(c, OTHER_ID, 100, 1, "setup");
    topup_ok(c, OTHER_ID, 200, 2, "setup");
    cqrs_client_free(c);
    wait_checkpointed(RECORDS + 2);
    finish();
    expect_checkpointed(RECORDS + 2);

    char path[PATH_MAX];
    log_path(TORN_ID, path, sizeof path);
    struct recs r;
    off_t torn;
    read_log(path, &r, &torn);
    cr_assert(r.n == RECORDS && torn == 0, "%s holds %zu records (%lld torn bytes), expected %d",
              path, r.n, (long long)torn, RECORDS);
    *last_off = r.offset[RECORDS - 1];
    *last_size = r.size[RECORDS - 1];
    uint8_t *orig = slurp(path, orig_len);
    cr_assert((off_t)*orig_len == *last_off + (off_t)*last_size, "%s has bytes after its last "
              "record", path);

    char pristine[PATH_MAX];
    snprintf(pristine, sizeof pristine, "%s/pristine", d.dir);
    copy_tree(d.data, pristine);
    return orig;
}

static void restore(void)
{
    char pristine[PATH_MAX];
    snprintf(pristine, sizeof pristine, "%s/pristine", d.dir);
    rm_tree(d.data);
    copy_tree(pristine, d.data);
}

/* The stream file now holds `bytes`; a daemon start must cut `torn` bytes
 * from its end (kept in the torn file), show version 4, and append 5. */
static void expect_torn_tail(const char *what, const uint8_t *bytes, size_t len,
                             const uint8_t *torn, size_t torn_len)
{
    char path[PATH_MAX];
    log_path(TORN_ID, path, sizeof path);
    spit(path, bytes, len);
    daemon_restart(&d);
    struct cqrs_client *c = daemon_connect(&d);
    /* balance of versions 1..4: 1 + 2 + 4 + 8 */
    expect_state(c, TORN_ID, 15, RECORDS - 1, what);

    char tpath[PATH_MAX] = "";
    int n = torn_files(TORN_ID, tpath, sizeof tpath);
    cr_assert_eq(n, 1, "%s: %d files %s.log.torn-* beside the log, expected one", what, n,
                 TORN_ID);
    size_t got_len;
    uint8_t *got = slurp(tpath, &got_len);
    cr_assert(got_len == torn_len && memcmp(got, torn, torn_len) == 0,
              "%s: %s holds %zu bytes, not the %zu bytes cut from the log", what, tpath, got_len,
              torn_len);
    free(got);

    topup_ok(c, TORN_ID, 32, RECORDS, what);
    expect_state(c, TORN_ID, 15 + 32, RECORDS, what);
    expect_state(c, OTHER_ID, 300, 2, what);
    cqrs_client_free(c);
    finish();

    struct recs r;
    off_t t;
    read_log(path, &r, &t);
    cr_assert(r.n == RECORDS && t == 0, "%s: after the new TopUp %s holds %zu records "
              "(%lld torn bytes), expected versions 1..%d", what, path, r.n, (long long)t,
              RECORDS);
    cr_assert(len - torn_len == (size_t)r.offset[RECORDS - 1],
              "%s: the new record starts at byte %lld, not where the cut left the file (%zu)",
              what, (long long)r.offset[RECORDS - 1], len - torn_len);
}

Test(torn, every_cut_inside_the_last_record_is_a_torn_tail)
{
    size_t len, size;
    off_t off;
    uint8_t *orig = prepare(&len, &off, &size);
    cr_log_info("last record: %zu bytes at offset %lld; %zu daemon starts", size,
                (long long)off, size - 1);
    for (size_t k = 1; k < size; k++) {
        char what[120];
        snprintf(what, sizeof what, "log cut %zu bytes into its last record (of %zu)", k, size);
        restore();
        expect_torn_tail(what, orig, (size_t)off + k, orig + off, k);
    }
    free(orig);
}

Test(torn, a_flipped_bit_in_the_crc_of_the_last_record_is_a_torn_tail)
{
    size_t len, size;
    off_t off;
    uint8_t *orig = prepare(&len, &off, &size);
    /* one bit in each byte of the CRC (bytes 4..7 of the record header) */
    static const int bits[4] = { 0, 3, 5, 7 };
    uint8_t *bad = malloc(len);
    cr_assert(bad, "out of memory");
    for (int i = 0; i < 4; i++) {
        char what[120];
        snprintf(what, sizeof what, "bit %d of CRC byte %d of the last record flipped", bits[i],
                 i);
        memcpy(bad, orig, len);
        bad[off + 4 + i] ^= (uint8_t)(1u << bits[i]);
        restore();
        expect_torn_tail(what, bad, len, bad + off, size);
    }
    free(bad);
    free(orig);
}

/* --- corruption in the middle ------------------------------------------------------ */

static void expect_corrupt(struct cqrs_client *c, const char *id)
{
    int64_t b;
    uint64_t v;
    char err[300];
    Cqrs__Status st = wallet_state(c, id, &b, &v, err, sizeof err);
    cr_assert_eq(st, CQRS__STATUS__CORRUPT, "STATE %s: %s (%s), expected CORRUPT", id,
                 cqrs_status_name(st), err);
    cr_assert(err[0], "STATE %s: CORRUPT without a reason", id);

    Cqrs__Reply *r = topup(c, id, 1000);
    cr_assert_eq(r->status, CQRS__STATUS__CORRUPT, "TopUp %s: %s (%s), expected CORRUPT", id,
                 cqrs_status_name(r->status), r->error);
    cqrs__reply__free_unpacked(r, NULL);

    r = NULL;
    cr_assert(cqrs_client_events(c, "wallet", id, 1, 0, &r) == 0, "EVENTS %s: %s", id,
              strerror(errno));
    cr_assert_eq(r->status, CQRS__STATUS__CORRUPT, "EVENTS %s: %s (%s), expected CORRUPT", id,
                 cqrs_status_name(r->status), r->error);
    cqrs__reply__free_unpacked(r, NULL);
}

Test(torn, a_flipped_bit_in_a_middle_record_quarantines_only_that_wallet)
{
    daemon_start_conf(&d, CONF, NULL);
    struct cqrs_client *c = daemon_connect(&d);
    for (int i = 0; i < RECORDS; i++) {
        topup_ok(c, "mid", (int64_t)1 << i, (uint64_t)i + 1, "setup");
        topup_ok(c, "mid2", (int64_t)1 << i, (uint64_t)i + 1, "setup");
    }
    topup_ok(c, OTHER_ID, 100, 1, "setup");
    topup_ok(c, OTHER_ID, 200, 2, "setup");
    cqrs_client_free(c);
    wait_checkpointed(2 * RECORDS + 2);
    finish();
    expect_checkpointed(2 * RECORDS + 2);

    /* "mid": one bit in the middle of record 3's payload; "mid2": one bit of
     * record 2's CRC. Both are followed by good records. */
    char path[2][PATH_MAX];
    size_t len[2];
    uint8_t *bytes[2];
    const char *ids[2] = { "mid", "mid2" };
    for (int w = 0; w < 2; w++) {
        log_path(ids[w], path[w], sizeof path[w]);
        struct recs r;
        off_t t;
        read_log(path[w], &r, &t);
        cr_assert(r.n == RECORDS && t == 0, "%s holds %zu records", path[w], r.n);
        bytes[w] = slurp(path[w], &len[w]);
        off_t at = w == 0 ? r.offset[2] + EVLOG_HEADER_LEN +
                                (off_t)(r.size[2] - EVLOG_HEADER_LEN) / 2
                          : r.offset[1] + 5;
        bytes[w][at] ^= 0x10;
        spit(path[w], bytes[w], len[w]);
    }

    daemon_restart(&d);
    c = daemon_connect(&d);
    for (int w = 0; w < 2; w++)
        expect_corrupt(c, ids[w]);
    expect_state(c, OTHER_ID, 300, 2, "beside two quarantined wallets");
    topup_ok(c, OTHER_ID, 400, 3, "beside two quarantined wallets");
    expect_state(c, OTHER_ID, 700, 3, "beside two quarantined wallets");
    /* still quarantined on a second look (and after the other wallet's commit) */
    for (int w = 0; w < 2; w++)
        expect_corrupt(c, ids[w]);
    cqrs_client_free(c);
    finish();

    for (int w = 0; w < 2; w++) {
        size_t now_len;
        uint8_t *now = slurp(path[w], &now_len);
        cr_assert(now_len == len[w] && memcmp(now, bytes[w], len[w]) == 0,
                  "the quarantined log %s was modified (%zu bytes, was %zu)", path[w], now_len,
                  len[w]);
        free(now);
        char tpath[PATH_MAX];
        cr_assert_eq(torn_files(ids[w], tpath, sizeof tpath), 0,
                     "a torn file %s was made for a quarantined log", tpath);
        free(bytes[w]);
    }
}
