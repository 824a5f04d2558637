/*
 * test_disk_full — the data dir runs out of space.
 *
 * The data dir is a 2 MiB tmpfs (in a private mount namespace of the test
 * process, so that the mount can never outlive the test, and unmounted in
 * the teardown all the same), nearly filled with a filler file first. TopUps
 * with command ids flow to three wallets until the replies turn INTERNAL.
 * Every OK reply must carry the next contiguous version; every non-OK
 * reply must be INTERNAL and name the cause, ENOSPC (checked last, so that
 * a misnamed cause does not hide the other checks).
 *
 * No phantom events: while the disk is full, a STATE is either INTERNAL or
 * exactly the acknowledged commands. Once the filler is deleted, appends go
 * on with the next contiguous version (without a restart); after a restart
 * STATE and EVENTS are exactly the acknowledged commands, in order, the
 * logs hold exactly them, the journal's positions are contiguous, and
 * appends go on again.
 *
 * Without the right to mount (EPERM), the test is skipped with the reason.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "evlog.h"
#include "harness.h"
#include "layout.h"
#include "wallet.pb-c.h"

/* worker/journal.h (not on the tests' include path): a checkpoint record */
#define JOURNAL_CHECKPOINT "$checkpoint"
#define CONF                                                                      \
    "[supervisor]\nstandby = false\n\n"                                           \
    "[storage]\nfsync = always\ncheckpoint_ms = 100\n\n[child wallet]\n"
#define TMPFS_OPTS "size=2m"
#define LEFT_FREE (128 << 10)      /* bytes left for the daemon */
#define N_WALLETS 3
#define MAX_PER_WALLET 20000
#define MAX_COMMANDS 30000
#define FULL_STREAK 60             /* non-OK replies in a row: the disk is full */

static struct daemon d;
static int lock_fd = -1;
static int mounted;

static void setup(void)
{
    lock_fd = open("/tmp/cqrsd-faults-disk-full.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    cr_assert(lock_fd >= 0, "lock file: %s", strerror(errno));
    while (flock(lock_fd, LOCK_EX) < 0)
        cr_assert(errno == EINTR, "flock: %s", strerror(errno));
}

static void teardown(void)
{
    if (mounted && umount2(d.data, 0) < 0 && umount2(d.data, MNT_DETACH) < 0)
        fprintf(stderr, "test_disk_full: cannot unmount %s: %s\n", d.data, strerror(errno));
    mounted = 0;
    daemon_cleanup(&d);
    if (lock_fd >= 0)
        close(lock_fd);
    lock_fd = -1;
}

TestSuite(disk_full, .init = setup, .fini = teardown, .timeout = 240);

/* --- the wallets -------------------------------------------------------------------- */

struct wallet {
    char id[16];
    uint64_t acked;                  /* acknowledged TopUps (amount 1 each) */
    uint32_t *cmd;                   /* cmd[v-1]: number of the command of version v */
};

static struct wallet wallets[N_WALLETS];

static void command_id(int n, char *buf, size_t len)
{
    snprintf(buf, len, "df-%d", n);
}

static Cqrs__Reply *topup(struct cqrs_client *c, const char *id, const char *cid)
{
    Wallet__TopUp t = WALLET__TOP_UP__INIT;
    t.amount = 1;
    return send_cmd(c, "wallet", id, &t.base, cid, -1);
}

/* The first INTERNAL reply that did not name ENOSPC: asserted at the end,
 * after everything else was checked. */
static char misnamed[400];

/* Sends command number `n` to wallet `w`: 1 when OK (with the next version),
 * 0 when INTERNAL (*first_error gets the first error). */
static int send_one(struct cqrs_client *c, struct wallet *w, int n, char *first_error,
                    size_t len)
{
    char cid[32];
    command_id(n, cid, sizeof cid);
    Cqrs__Reply *r = topup(c, w->id, cid);
    Cqrs__Status st = r->status;
    uint64_t version = r->version;
    size_t n_events = r->n_events;
    char error[300];
    snprintf(error, sizeof error, "%s", r->error);
    cqrs__reply__free_unpacked(r, NULL);
    if (st == CQRS__STATUS__OK) {
        cr_assert(version == w->acked + 1 && n_events == 1,
                  "TopUp %s (%s): OK at version %llu, expected the next version %llu", w->id,
                  cid, (unsigned long long)version, (unsigned long long)w->acked + 1);
        cr_assert(w->acked < MAX_PER_WALLET, "too many commands");
        w->cmd[w->acked++] = (uint32_t)n;
        return 1;
    }
    cr_assert_eq(st, CQRS__STATUS__INTERNAL, "TopUp %s (%s): %s (%s), expected OK or INTERNAL",
                 w->id, cid, cqrs_status_name(st), error);
    if (!strstr(error, strerror(ENOSPC)) && !misnamed[0])
        snprintf(misnamed, sizeof misnamed, "TopUp %s (%s): INTERNAL \"%s\"", w->id, cid, error);
    if (!first_error[0])
        snprintf(first_error, len, "%s", error);
    return 0;
}

/* STATE is exactly the acknowledged commands (or, when `may_fail`, an
 * INTERNAL error); EVENTS too, when `events`. */
static void expect_wallet(struct cqrs_client *c, const struct wallet *w, int may_fail,
                          int events, const char *when)
{
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_state(c, "wallet", w->id, &r) == 0, "STATE: %s", strerror(errno));
    if (may_fail && r->status == CQRS__STATUS__INTERNAL) {
        cqrs__reply__free_unpacked(r, NULL);
        return;
    }
    cr_assert_eq(r->status, CQRS__STATUS__OK, "%s: STATE %s: %s (%s)", when, w->id,
                 cqrs_status_name(r->status), r->error);
    Wallet__WalletState *s = wallet__wallet_state__unpack(NULL, r->state.len, r->state.data);
    cr_assert(s, "STATE does not decode");
    cr_assert(s->balance == (int64_t)w->acked && r->version == w->acked,
              "%s: STATE %s is balance %lld at version %llu, but %llu TopUps of 1 were "
              "acknowledged: %s", when, w->id, (long long)s->balance,
              (unsigned long long)r->version, (unsigned long long)w->acked,
              r->version > w->acked ? "phantom events" : "acknowledged events lost");
    wallet__wallet_state__free_unpacked(s, NULL);
    cqrs__reply__free_unpacked(r, NULL);
    if (!events)
        return;

    uint64_t from = 1;
    while (from <= w->acked) {
        r = NULL;
        cr_assert(cqrs_client_events(c, "wallet", w->id, from, 0, &r) == 0, "EVENTS: %s",
                  strerror(errno));
        cr_assert_eq(r->status, CQRS__STATUS__OK, "%s: EVENTS %s: %s (%s)", when, w->id,
                     cqrs_status_name(r->status), r->error);
        cr_assert(r->n_events > 0, "%s: EVENTS %s from %llu: none", when, w->id,
                  (unsigned long long)from);
        for (size_t i = 0; i < r->n_events; i++, from++) {
            char cid[32];
            command_id((int)w->cmd[from - 1], cid, sizeof cid);
            cr_assert(r->events[i]->version == from && strcmp(r->events[i]->command_id, cid) == 0,
                      "%s: EVENTS %s: version %llu is of command %s, expected version %llu of "
                      "command %s", when, w->id, (unsigned long long)r->events[i]->version,
                      r->events[i]->command_id, (unsigned long long)from, cid);
        }
        cqrs__reply__free_unpacked(r, NULL);
    }
}

/* --- files ---------------------------------------------------------------------------- */

struct logscan {
    const struct wallet *w;
    uint64_t n;
    char err[200];
};

static int logscan_cb(void *arg, const Cqrs__EventRecord *rec, off_t offset, size_t size)
{
    (void)offset; (void)size;
    struct logscan *ls = arg;
    char cid[32] = "nothing more";
    if (ls->n < ls->w->acked)
        command_id((int)ls->w->cmd[ls->n], cid, sizeof cid);
    if (ls->n >= ls->w->acked || strcmp(rec->command_id, cid) != 0) {
        snprintf(ls->err, sizeof ls->err, "record %llu is of command %s, expected %s",
                 (unsigned long long)ls->n + 1, rec->command_id, cid);
        return 1;
    }
    ls->n++;
    return 0;
}

static void expect_log(const struct wallet *w)
{
    char type_dir[PATH_MAX], path[PATH_MAX];
    snprintf(type_dir, sizeof type_dir, "%s/wallet", d.data);
    layout_stream_file(path, sizeof path, type_dir, w->id, ".log");
    struct logscan ls = { w, 0, "" };
    struct evlog *log = NULL;
    struct evlog_open_info info;
    int rc = evlog_open(path, EVLOG_READONLY, logscan_cb, &ls, &log, &info);
    cr_assert(!ls.err[0], "%s: %s", path, ls.err);
    cr_assert(rc == 0, "evlog_open %s: %d %s", path, rc, info.detail);
    cr_assert(ls.n == w->acked && info.truncated_bytes == 0,
              "%s holds %llu records (%lld torn bytes), expected the %llu acknowledged", path,
              (unsigned long long)ls.n, (long long)info.truncated_bytes,
              (unsigned long long)w->acked);
    evlog_free(log);
}

struct jscan {
    uint64_t events, last, bad;
    uint64_t first;              /* the first segment's first position */
};

static int jscan_cb(void *arg, const Cqrs__EventRecord *rec, off_t offset, size_t size)
{
    (void)offset; (void)size;
    struct jscan *j = arg;
    if (strcmp(rec->type, JOURNAL_CHECKPOINT) == 0)
        return 0;
    uint64_t expect = j->events ? j->last + 1 : j->first;
    if (rec->position != expect && !j->bad)
        j->bad = rec->position;
    j->last = rec->position;
    j->events++;
    return 0;
}

static struct jscan scan_journal(void)
{
    struct jscan j = { 0, 0, 0, 0 };
    daemon_journal_replay(&d, "wallet", 0, jscan_cb, &j, &j.first);
    if (!j.events && j.first)
        j.last = j.first - 1;
    return j;
}

/* Fills the tmpfs but for LEFT_FREE bytes, with `path`. */
static void fill(const char *path)
{
    struct statvfs sv;
    cr_assert(statvfs(d.data, &sv) == 0, "statvfs: %s", strerror(errno));
    long long avail = (long long)sv.f_bavail * (long long)sv.f_frsize;
    cr_assert(avail > LEFT_FREE, "only %lld bytes free on the new tmpfs", avail);
    long long want = avail - LEFT_FREE;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    cr_assert(fd >= 0, "create %s: %s", path, strerror(errno));
    static char block[65536];
    memset(block, 0xa5, sizeof block);
    while (want > 0) {
        size_t n = want > (long long)sizeof block ? sizeof block : (size_t)want;
        ssize_t w = write(fd, block, n);
        cr_assert(w > 0, "write %s: %s", path, strerror(errno));
        want -= w;
    }
    close(fd);
}

Test(disk_full, enospc_fails_commands_without_phantom_events_and_appends_go_on)
{
    /* a private mount namespace: the tmpfs is gone with this process */
    if (unshare(CLONE_NEWNS) < 0)
        cr_skip("unshare(CLONE_NEWNS): %s: the test needs root (CAP_SYS_ADMIN) to mount a "
                "small tmpfs", strerror(errno));
    cr_assert(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0,
              "making the mounts private: %s", strerror(errno));
    daemon_prepare(&d, CONF);
    cr_assert(mkdir(d.data, 0700) == 0, "mkdir %s: %s", d.data, strerror(errno));
    if (mount("tmpfs", d.data, "tmpfs", MS_NOSUID | MS_NODEV, TMPFS_OPTS) < 0) {
        int e = errno;
        if (e == EPERM)
            cr_skip("mount -t tmpfs -o %s %s: %s (not allowed here)", TMPFS_OPTS, d.data,
                    strerror(e));
        cr_assert_fail("mount -t tmpfs -o %s %s: %s", TMPFS_OPTS, d.data, strerror(e));
    }
    mounted = 1;
    char filler[PATH_MAX];
    snprintf(filler, sizeof filler, "%s/filler", d.data);
    fill(filler);

    memset(wallets, 0, sizeof wallets);
    for (int k = 0; k < N_WALLETS; k++) {
        snprintf(wallets[k].id, sizeof wallets[k].id, "df%d", k);
        wallets[k].cmd = calloc(MAX_PER_WALLET, sizeof *wallets[k].cmd);
        cr_assert(wallets[k].cmd, "out of memory");
    }

    daemon_launch(&d, NULL);
    struct cqrs_client *c = daemon_connect(&d);
    cqrs_client_set_retries(c, 0);
    char first_error[400] = "";
    int n = 0, streak = 0, failed = 0, ok_after_failure = 0;
    while (streak < FULL_STREAK && n < MAX_COMMANDS) {
        int k = n % N_WALLETS;
        int ok = send_one(c, &wallets[k], n, first_error, sizeof first_error);
        n++;
        if (ok) {
            ok_after_failure += failed > 0;
            streak = 0;
        } else {
            failed++;
            streak++;
        }
    }
    uint64_t acked = 0;
    for (int k = 0; k < N_WALLETS; k++)
        acked += wallets[k].acked;
    cr_assert(first_error[0], "%d commands (%llu acknowledged) never ran out of space on a %s "
              "tmpfs", n, (unsigned long long)acked, TMPFS_OPTS);
    cr_assert(acked > 0, "no command was acknowledged before the disk was full");
    cr_log_info("%d commands: %llu acknowledged, %d INTERNAL (%d OK after the first failure); "
                "first error: %s", n, (unsigned long long)acked, failed, ok_after_failure,
                first_error);

    /* full: no phantom event in any answer */
    for (int k = 0; k < N_WALLETS; k++)
        expect_wallet(c, &wallets[k], 1, 0, "while the disk is full");

    /* space again: appends go on, contiguous, without a restart */
    cr_assert(unlink(filler) == 0, "unlink %s: %s", filler, strerror(errno));
    for (int k = 0; k < N_WALLETS; k++) {
        char err[400] = "";
        cr_assert(send_one(c, &wallets[k], n++, err, sizeof err),
                  "TopUp %s once space is back: %s", wallets[k].id, err);
    }
    for (int k = 0; k < N_WALLETS; k++)
        expect_wallet(c, &wallets[k], 0, 1, "once space is back");
    cqrs_client_free(c);

    int st = daemon_stop(&d);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "cqrsd did not exit 0 (0x%x)", st);
    daemon_restart(&d);
    c = daemon_connect(&d);
    cqrs_client_set_retries(c, 0);
    for (int k = 0; k < N_WALLETS; k++)
        expect_wallet(c, &wallets[k], 0, 1, "after a restart");
    for (int k = 0; k < N_WALLETS; k++) {
        char err[400] = "";
        cr_assert(send_one(c, &wallets[k], n++, err, sizeof err),
                  "TopUp %s after the restart: %s", wallets[k].id, err);
    }
    cqrs_client_free(c);
    st = daemon_stop(&d);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "cqrsd did not exit 0 (0x%x)", st);

    acked = 0;
    for (int k = 0; k < N_WALLETS; k++) {
        expect_log(&wallets[k]);
        acked += wallets[k].acked;
    }
    struct jscan j = scan_journal();
    cr_assert(!j.bad, "journal positions jump to %llu", (unsigned long long)j.bad);
    cr_assert(j.last == acked, "the journal's last position is %llu, but %llu events were "
              "acknowledged", (unsigned long long)j.last, (unsigned long long)acked);
    for (int k = 0; k < N_WALLETS; k++)
        free(wallets[k].cmd);
    cr_assert(!misnamed[0], "every INTERNAL reply must name the cause, ENOSPC (\"%s\"); this one "
              "does not: %s", strerror(ENOSPC), misnamed);
}
