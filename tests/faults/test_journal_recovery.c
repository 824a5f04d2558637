/*
 * test_journal_recovery — a power cut that lost the unsynced stream writes.
 *
 * A batch is durable in the write-ahead journal before its replies leave;
 * its stream files are written without a sync, and only a checkpoint syncs
 * them. With checkpoint_ms = 60000 no checkpoint happens, so every
 * acknowledged event lives in the journal after the last checkpoint. The
 * test acknowledges commands to several wallets, SIGKILLs cqrsd (the
 * workers die with it, PR_SET_PDEATHSIG), then does to the stream files
 * what a power cut may do to unsynced data:
 *
 *   a  cut to the bare magic          e  cut to 0 bytes (a crash at creation)
 *   b  deleted                        f  its shard folder deleted with it
 *   c  cut inside a record            g  its last records' bytes zeroed
 *   d  left as it was                    (the size survived, the data not)
 *
 * and starts cqrsd again. Every acknowledged event must be back: STATE and
 * EVENTS equal exactly the acknowledged commands (each record equal, byte
 * for byte once packed, to the one its command's reply carried: version,
 * timestamp, type, data, command id, position, stream, offset), versions
 * contiguous, and each log file byte-for-byte the magic followed by exactly
 * those records (read back with evlog_open, and compared whole). A retry of
 * an acknowledged command id after the recovery gets its first outcome and
 * appends nothing. The recovery is checkpointed soon (100 ms; a crash loop would
 * otherwise check the same journal again at every restart).
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
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

#define CONF "[storage]\nfsync = always\ncheckpoint_ms = 60000\n\n[child wallet]\n"
/* worker/journal.h (not on the tests' include path): a checkpoint record */
#define JOURNAL_CHECKPOINT "$checkpoint"

#define N_WALLETS 7
#define PER_WALLET 8

static struct daemon d;
static int lock_fd = -1;

static void setup(void)
{
    lock_fd = open("/tmp/cqrsd-faults-journal-recovery.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
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

TestSuite(journal_recovery, .init = setup, .fini = teardown, .timeout = 240);

/* --- what was acknowledged ------------------------------------------------------ */

struct ack {
    char command_id[64];
    int64_t amount;
    uint64_t version;
    uint8_t *packed;        /* the EventRecord of the reply, packed */
    size_t len;
};

struct wallet {
    char id[32];
    struct ack acks[PER_WALLET];
    int64_t balance;
    char path[PATH_MAX];
};

static struct wallet wallets[N_WALLETS];

static uint8_t *pack_record(const Cqrs__EventRecord *rec, size_t *len)
{
    *len = cqrs__event_record__get_packed_size(rec);
    uint8_t *buf = malloc(*len ? *len : 1);
    cr_assert(buf, "out of memory");
    cqrs__event_record__pack(rec, buf);
    return buf;
}

static void describe(const Cqrs__EventRecord *rec, char *buf, size_t len)
{
    snprintf(buf, len, "version %llu, %s, command %s, position %llu, stream %s at %llu, ts %lld",
             (unsigned long long)rec->version, rec->type, rec->command_id,
             (unsigned long long)rec->position, rec->stream,
             (unsigned long long)rec->stream_offset, (long long)rec->timestamp_us);
}

/* `rec` must be the acknowledged record `a`, byte for byte once packed. */
static void expect_same_record(const struct ack *a, const Cqrs__EventRecord *rec,
                               const char *where)
{
    size_t len;
    uint8_t *p = pack_record(rec, &len);
    int same = len == a->len && memcmp(p, a->packed, len) == 0;
    free(p);
    if (!same) {
        char got[400], want[400];
        describe(rec, got, sizeof got);
        Cqrs__EventRecord *w = cqrs__event_record__unpack(NULL, a->len, a->packed);
        cr_assert(w, "acknowledged record does not decode");
        describe(w, want, sizeof want);
        cqrs__event_record__free_unpacked(w, NULL);
        cr_assert_fail("%s: record differs from the acknowledged one\n  got:  %s\n  want: %s",
                       where, got, want);
    }
}

static Cqrs__Reply *topup(struct cqrs_client *c, const char *id, int64_t amount,
                          const char *command_id)
{
    Wallet__TopUp t = WALLET__TOP_UP__INIT;
    t.amount = amount;
    return send_cmd(c, "wallet", id, &t.base, command_id, -1);
}

static void expect_state(struct cqrs_client *c, const struct wallet *w, const char *when)
{
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_state(c, "wallet", w->id, &r) == 0, "STATE %s: %s", w->id,
              strerror(errno));
    cr_assert_eq(r->status, CQRS__STATUS__OK, "%s: STATE %s: %s (%s)", when, w->id,
                 cqrs_status_name(r->status), r->error);
    Wallet__WalletState *s = wallet__wallet_state__unpack(NULL, r->state.len, r->state.data);
    cr_assert(s, "STATE %s does not decode", w->id);
    cr_assert(s->balance == w->balance && r->version == PER_WALLET,
              "%s: STATE %s is balance %lld at version %llu, expected %lld at version %d", when,
              w->id, (long long)s->balance, (unsigned long long)r->version,
              (long long)w->balance, PER_WALLET);
    wallet__wallet_state__free_unpacked(s, NULL);
    cqrs__reply__free_unpacked(r, NULL);
}

static void expect_events(struct cqrs_client *c, const struct wallet *w, const char *when)
{
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_events(c, "wallet", w->id, 1, 0, &r) == 0, "EVENTS %s: %s", w->id,
              strerror(errno));
    cr_assert_eq(r->status, CQRS__STATUS__OK, "%s: EVENTS %s: %s (%s)", when, w->id,
                 cqrs_status_name(r->status), r->error);
    cr_assert_eq(r->n_events, PER_WALLET, "%s: EVENTS %s returned %zu events, expected %d", when,
                 w->id, r->n_events, PER_WALLET);
    for (size_t i = 0; i < r->n_events; i++) {
        char where[160];
        snprintf(where, sizeof where, "%s: EVENTS %s, event %zu", when, w->id, i + 1);
        expect_same_record(&w->acks[i], r->events[i], where);
    }
    cqrs__reply__free_unpacked(r, NULL);
}

/* --- the files ------------------------------------------------------------------- */

static void file_bytes(const char *path, uint8_t **buf, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    cr_assert(fd >= 0, "open %s: %s", path, strerror(errno));
    struct stat sb;
    cr_assert(fstat(fd, &sb) == 0, "fstat %s", path);
    *buf = malloc((size_t)sb.st_size + 1);
    cr_assert(*buf, "out of memory");
    ssize_t n = pread(fd, *buf, (size_t)sb.st_size, 0);
    cr_assert(n == sb.st_size, "read %s: %s", path, strerror(errno));
    *len = (size_t)n;
    close(fd);
}

struct readback {
    const struct wallet *w;
    size_t n;
    char err[600];
};

static int readback_cb(void *arg, const Cqrs__EventRecord *rec, off_t offset, size_t size)
{
    (void)size;
    struct readback *rb = arg;
    if (rb->n >= PER_WALLET) {
        snprintf(rb->err, sizeof rb->err, "more than %d records (one at byte %lld)", PER_WALLET,
                 (long long)offset);
        return 1;
    }
    const struct ack *a = &rb->w->acks[rb->n];
    size_t len;
    uint8_t *p = pack_record(rec, &len);
    int same = len == a->len && memcmp(p, a->packed, len) == 0;
    free(p);
    if (!same) {
        char got[400];
        describe(rec, got, sizeof got);
        snprintf(rb->err, sizeof rb->err, "record %zu (at byte %lld) is not the acknowledged "
                 "one: %s", rb->n + 1, (long long)offset, got);
        return 1;
    }
    rb->n++;
    return 0;
}

/* The log is the magic and exactly the acknowledged records. */
static void expect_complete_log(const struct wallet *w)
{
    struct readback rb = { w, 0, "" };
    struct evlog *log = NULL;
    struct evlog_open_info info;
    int rc = evlog_open(w->path, EVLOG_READONLY, readback_cb, &rb, &log, &info);
    cr_assert(!rb.err[0], "%s: %s", w->path, rb.err);
    cr_assert(rc == 0, "evlog_open %s: %d (%s) %s", w->path, rc, rc == -1 ? strerror(errno) : "",
              info.detail);
    cr_assert(rb.n == PER_WALLET && info.truncated_bytes == 0,
              "%s holds %zu records and %lld torn bytes, expected the %d acknowledged ones",
              w->path, rb.n, (long long)info.truncated_bytes, PER_WALLET);
    evlog_free(log);

    uint8_t *want = NULL;
    size_t want_len = 0, cap = 0;
    for (int i = 0; i < PER_WALLET; i++) {
        Cqrs__EventRecord *rec = cqrs__event_record__unpack(NULL, w->acks[i].len,
                                                            w->acks[i].packed);
        cr_assert(rec && evlog_encode(rec, &want, &want_len, &cap) > 0, "cannot encode");
        cqrs__event_record__free_unpacked(rec, NULL);
    }
    uint8_t *got;
    size_t got_len;
    file_bytes(w->path, &got, &got_len);
    cr_assert(got_len == EVLOG_MAGIC_LEN + want_len &&
              memcmp(got, EVLOG_MAGIC, EVLOG_MAGIC_LEN) == 0 &&
              memcmp(got + EVLOG_MAGIC_LEN, want, want_len) == 0,
              "%s is not byte for byte the magic and the %d acknowledged records (%zu bytes, "
              "expected %zu)", w->path, PER_WALLET, got_len, EVLOG_MAGIC_LEN + want_len);
    free(got);
    free(want);
}

struct jscan {
    uint64_t events, checkpoint;
};

static int jscan_cb(void *arg, const Cqrs__EventRecord *rec, off_t offset, size_t size)
{
    (void)offset; (void)size;
    struct jscan *j = arg;
    if (strcmp(rec->type, JOURNAL_CHECKPOINT) == 0) {
        if (rec->version > j->checkpoint)
            j->checkpoint = rec->version;
    } else {
        j->events++;
    }
    return 0;
}

static struct jscan scan_journal(void)
{
    struct jscan j = { 0, 0 };
    uint64_t first;
    daemon_journal_replay(&d, "wallet", 0, jscan_cb, &j, &first);
    return j;
}

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    cr_assert(remove(path) == 0, "remove %s: %s", path, strerror(errno));
    return 0;
}

/* --- the power cut ------------------------------------------------------------------ */

/* cqrsd and its workers SIGKILLed: nothing flushed, nothing checkpointed. */
static void power_cut(void)
{
    cr_assert(d.pid > 0, "cqrsd is not running");
    cr_assert(kill(d.pid, SIGKILL) == 0, "kill: %s", strerror(errno));
    int st;
    cr_assert(daemon_wait_exit(&d, 10000, &st), "cqrsd survived SIGKILL");
    pid_t left = 0;
    int n = pgrp_wait_dead(daemon_last_pgid(&d), 10000, &left);
    cr_assert_eq(n, 0, "%d processes of cqrsd's group (e.g. pid %d) outlived it", n, (int)left);
}

/* The shard folder of wallet `k` holds no other wallet of the test. */
static int shard_alone(int k)
{
    char mine[PATH_MAX], other[PATH_MAX];
    layout_shard_dir(mine, sizeof mine, "", wallets[k].id);
    for (int i = 0; i < N_WALLETS; i++) {
        layout_shard_dir(other, sizeof other, "", wallets[i].id);
        if (i != k && strcmp(mine, other) == 0)
            return 0;
    }
    return 1;
}

Test(journal_recovery, every_acknowledged_event_survives_lost_stream_writes)
{
    const char *names[N_WALLETS] = { "wa", "wb", "wc", "wd", "we", "", "wg" };
    for (int i = 0; i < N_WALLETS; i++)
        snprintf(wallets[i].id, sizeof wallets[i].id, "%s", names[i]);
    /* wallet f must be alone in its shard folder, which is deleted */
    for (int k = 0; k < 1000; k++) {
        snprintf(wallets[5].id, sizeof wallets[5].id, "wf%d", k);
        if (shard_alone(5))
            break;
    }
    cr_assert(shard_alone(5), "no id for wallet f alone in its shard");

    daemon_start_conf(&d, CONF, NULL);
    struct cqrs_client *c = daemon_connect(&d);
    /* interleaved, so positions interleave across the streams */
    for (int i = 0; i < PER_WALLET; i++) {
        for (int k = 0; k < N_WALLETS; k++) {
            struct wallet *w = &wallets[k];
            struct ack *a = &w->acks[i];
            snprintf(a->command_id, sizeof a->command_id, "jr-w%d-%d", k, i);
            a->amount = 1 + k * 100 + i * 7;
            Cqrs__Reply *r = topup(c, w->id, a->amount, a->command_id);
            cr_assert_eq(r->status, CQRS__STATUS__OK, "TopUp %s: %s (%s)", w->id,
                         cqrs_status_name(r->status), r->error);
            cr_assert(r->version == (uint64_t)i + 1 && r->n_events == 1,
                      "TopUp %s: version %llu with %zu events", w->id,
                      (unsigned long long)r->version, r->n_events);
            a->version = r->version;
            a->packed = pack_record(r->events[0], &a->len);
            w->balance += a->amount;
            cqrs__reply__free_unpacked(r, NULL);
        }
    }
    cqrs_client_free(c);
    power_cut();

    struct jscan j = scan_journal();
    cr_assert(j.checkpoint == 0 && j.events == N_WALLETS * PER_WALLET,
              "precondition: the journal holds %llu events and a checkpoint at %llu; expected "
              "%d events and no checkpoint (checkpoint_ms = 60000)",
              (unsigned long long)j.events, (unsigned long long)j.checkpoint,
              N_WALLETS * PER_WALLET);

    char type_dir[PATH_MAX];
    snprintf(type_dir, sizeof type_dir, "%s/wallet", d.data);
    for (int k = 0; k < N_WALLETS; k++)
        layout_stream_file(wallets[k].path, sizeof wallets[k].path, type_dir, wallets[k].id,
                           ".log");
    /* a: the bare magic */
    cr_assert(truncate(wallets[0].path, EVLOG_MAGIC_LEN) == 0, "truncate: %s", strerror(errno));
    /* b: gone */
    cr_assert(unlink(wallets[1].path) == 0, "unlink: %s", strerror(errno));
    /* c: cut 10 bytes into its fifth record */
    {
        uint8_t *buf;
        size_t len;
        file_bytes(wallets[2].path, &buf, &len);
        size_t at = EVLOG_MAGIC_LEN;
        for (int i = 0; i < 4; i++)
            at += wallets[2].acks[i].len + EVLOG_HEADER_LEN;
        cr_assert(len > at + 10, "%s is too short", wallets[2].path);
        free(buf);
        cr_assert(truncate(wallets[2].path, (off_t)at + 10) == 0, "truncate: %s",
                  strerror(errno));
    }
    /* d: untouched; e: empty */
    cr_assert(truncate(wallets[4].path, 0) == 0, "truncate: %s", strerror(errno));
    /* f: its shard folder deleted */
    {
        char dir[PATH_MAX];
        layout_shard_dir(dir, sizeof dir, type_dir, wallets[5].id);
        cr_assert(nftw(dir, rm_cb, 8, FTW_DEPTH | FTW_PHYS) == 0, "rm %s", dir);
    }
    /* g: its last two records zeroed, the size kept */
    {
        uint8_t *buf;
        size_t len;
        file_bytes(wallets[6].path, &buf, &len);
        size_t tail = wallets[6].acks[PER_WALLET - 1].len + wallets[6].acks[PER_WALLET - 2].len +
                      2 * EVLOG_HEADER_LEN;
        cr_assert(len > tail, "%s is too short", wallets[6].path);
        int fd = open(wallets[6].path, O_WRONLY | O_CLOEXEC);
        cr_assert(fd >= 0, "open: %s", strerror(errno));
        memset(buf, 0, tail);
        cr_assert(pwrite(fd, buf, tail, (off_t)(len - tail)) == (ssize_t)tail, "pwrite: %s",
                  strerror(errno));
        close(fd);
        free(buf);
    }

    daemon_restart(&d);
    {
        char *log = daemon_log(&d);
        const char *line = strstr(log, "recovery:");
        if (line)
            cr_log_info("%.*s", (int)strcspn(line, "\n"), line);
        free(log);
    }
    c = daemon_connect(&d);
    for (int k = 0; k < N_WALLETS; k++) {
        char when[80];
        snprintf(when, sizeof when, "after the power cut (wallet %c)", 'a' + k);
        expect_state(c, &wallets[k], when);
        expect_events(c, &wallets[k], when);
    }

    /* the recovery is checkpointed soon, not checkpoint_ms (60 s) later:
     * a worker killed again right away has nothing to check again */
    struct jscan after = scan_journal();
    for (int64_t until = harness_ms() + 10000;
         after.checkpoint < N_WALLETS * PER_WALLET && harness_ms() < until;
         after = scan_journal())
        harness_sleep_ms(20);
    cr_assert_eq(after.checkpoint, N_WALLETS * PER_WALLET,
                 "no checkpoint of the recovered events (the journal's last is at %llu)",
                 (unsigned long long)after.checkpoint);

    /* retries of acknowledged command ids: the first outcome, nothing new,
     * whatever the retry carries (here another amount) */
    for (int k = 0; k < N_WALLETS; k++) {
        struct wallet *w = &wallets[k];
        static const int which[2] = { 2, PER_WALLET - 1 };
        for (int x = 0; x < 2; x++) {
            const struct ack *a = &w->acks[which[x]];
            Cqrs__Reply *r = topup(c, w->id, 999999, a->command_id);
            cr_assert_eq(r->status, CQRS__STATUS__OK, "retry of %s: %s (%s)", a->command_id,
                         cqrs_status_name(r->status), r->error);
            cr_assert(r->version == a->version && r->n_events == 1,
                      "retry of %s after the recovery: version %llu with %zu events, expected "
                      "the first outcome (version %llu, one event)", a->command_id,
                      (unsigned long long)r->version, r->n_events,
                      (unsigned long long)a->version);
            char where[120];
            snprintf(where, sizeof where, "retry of %s", a->command_id);
            expect_same_record(a, r->events[0], where);
            cqrs__reply__free_unpacked(r, NULL);
        }
        expect_state(c, w, "after the retries");
    }
    cqrs_client_free(c);
    int st = daemon_stop(&d);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "cqrsd did not exit 0 (0x%x)", st);

    for (int k = 0; k < N_WALLETS; k++)
        expect_complete_log(&wallets[k]);
    for (int k = 0; k < N_WALLETS; k++)
        for (int i = 0; i < PER_WALLET; i++)
            free(wallets[k].acks[i].packed);
}
