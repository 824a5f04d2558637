/*
 * test_fsync_eio — fdatasync failing with EIO, injected with libfiu.
 *
 * cqrsd starts with LD_PRELOAD = fiu_run_preload.so fiu_posix_preload.so
 * (what `fiu-run -x` sets) and FIU_CTRL_FIFO in the test's dir; its
 * workers inherit both. `fiu-ctrl` then enables the failure point
 * posix/io/sync/fdatasync (failinfo = 5: errno EIO) in the wallet worker
 * only, at a chosen moment, and disables it again.
 *
 * With AddressSanitizer the preload needs libasan first in LD_PRELOAD. Without
 * it ASan refuses to start ("ASan runtime does not come first in initial
 * library list"); with ASAN_OPTIONS=verify_asan_link_order=0 it starts and
 * segfaults at address 0: ASan's initialisation calls dlsym, the dynamic
 * loader's malloc resolves to fiu_posix_preload.so's malloc wrapper, and
 * that wrapper's pointer to the real malloc is still NULL (the preload's
 * constructors have not run yet). With libasan first, malloc is ASan's and
 * every other wrapper (fdatasync, pwrite) is fiu's. The libasan loaded into
 * this test program (built with the same flags) is the one used.
 *
 *   - commands while every fdatasync fails get INTERNAL naming the I/O
 *     error, pipelined (one batch) or one by one; a STATE query in the same
 *     batch never shows their events; none of them appears in STATE, in
 *     EVENTS, in the journal or in the logs, during the failure, after it
 *     and after a restart; the journal goes on in a new segment; commands
 *     after the failure succeed with contiguous versions, and a failed
 *     command's id may be used again (it was not applied);
 *   - the checkpoint after such failures deletes old segments (retention
 *     0) but never the segment the journal is writing to: positions go on
 *     after a restart;
 *   - a failed write (pwrite, EIO) instead of a failed sync: the same.
 *
 * When libfiu is missing (scripts/install-deps installs fiu-utils and
 * libfiu-dev) or its preload cannot run cqrsd here, the tests are skipped
 * with the reason.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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

/* worker/journal.h (not on the tests' include path): a checkpoint record */
#define JOURNAL_CHECKPOINT "$checkpoint"
#define FIU_POINT "posix/io/sync/fdatasync"
#define FIU_CTRL_MS 10000

static struct daemon d;
static int lock_fd = -1;

static void setup(void)
{
    lock_fd = open("/tmp/cqrsd-faults-fsync-eio.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    cr_assert(lock_fd >= 0, "lock file: %s", strerror(errno));
    while (flock(lock_fd, LOCK_EX) < 0)
        cr_assert(errno == EINTR, "flock: %s", strerror(errno));
}

static void teardown(void)
{
    unsetenv("LD_PRELOAD");
    unsetenv("FIU_CTRL_FIFO");
    daemon_cleanup(&d);
    if (lock_fd >= 0)
        close(lock_fd);
    lock_fd = -1;
}

TestSuite(fsync_eio, .init = setup, .fini = teardown, .timeout = 240);

/* --- libfiu ------------------------------------------------------------------------ */

static char preload[PATH_MAX * 3];
static char fiu_ctrl_bin[PATH_MAX];

static int find_file(char *out, size_t len, const char *const *candidates)
{
    for (int i = 0; candidates[i]; i++) {
        if (access(candidates[i], R_OK) == 0) {
            snprintf(out, len, "%s", candidates[i]);
            return 0;
        }
    }
    return -1;
}

/* The libasan this program runs with ("" without ASan). */
static void own_libasan(char *out, size_t len)
{
    out[0] = '\0';
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f)
        return;
    char line[PATH_MAX + 128];
    while (fgets(line, sizeof line, f)) {
        char *p = strchr(line, '/');
        if (p && strstr(p, "/libasan.so")) {
            p[strcspn(p, "\n")] = '\0';
            snprintf(out, len, "%s", p);
            break;
        }
    }
    fclose(f);
}

/* Runs `argv` (stdout and stderr to a file in the test dir), bounded;
 * returns its wait status and its output (malloc'd) in *output. */
static int run_captured(char *const argv[], int ms, char **output)
{
    char path[400];
    snprintf(path, sizeof path, "%s/run-out.XXXXXX", d.dir[0] ? d.dir : "/tmp");
    int fd = mkostemp(path, O_CLOEXEC);
    cr_assert(fd >= 0, "mkostemp %s: %s", path, strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        int null = open("/dev/null", O_RDONLY);
        if (null < 0 || dup2(null, 0) < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
            _exit(126);
        execv(argv[0], argv);
        dprintf(2, "cannot exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(fd);
    int status = -1;
    int64_t deadline = harness_ms() + ms;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            break;
        if (harness_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            status = -1;
            break;
        }
        harness_sleep_ms(5);
    }
    *output = NULL;
    FILE *f = fopen(path, "re");
    if (f) {
        size_t cap = 4096, n = 0;
        *output = calloc(1, cap);
        cr_assert(*output, "out of memory");
        n = fread(*output, 1, cap - 1, f);
        (*output)[n] = '\0';
        fclose(f);
    }
    unlink(path);
    return status;
}

/* Finds libfiu and checks that cqrsd runs under its preload; skips the
 * test (with the reason) when it cannot. */
static void fiu_available(void)
{
    static const char *const run_libs[] = { "/usr/lib/fiu/fiu_run_preload.so",
                                            "/usr/lib/x86_64-linux-gnu/fiu/fiu_run_preload.so",
                                            "/usr/local/lib/fiu/fiu_run_preload.so", NULL };
    static const char *const posix_libs[] = { "/usr/lib/fiu/fiu_posix_preload.so",
                                              "/usr/lib/x86_64-linux-gnu/fiu/fiu_posix_preload.so",
                                              "/usr/local/lib/fiu/fiu_posix_preload.so", NULL };
    static const char *const ctrls[] = { "/usr/bin/fiu-ctrl", "/usr/local/bin/fiu-ctrl", NULL };
    char run_lib[PATH_MAX], posix_lib[PATH_MAX], asan[PATH_MAX];
    if (find_file(run_lib, sizeof run_lib, run_libs) < 0 ||
        find_file(posix_lib, sizeof posix_lib, posix_libs) < 0 ||
        find_file(fiu_ctrl_bin, sizeof fiu_ctrl_bin, ctrls) < 0) {
        cr_skip("libfiu is not installed (fiu_run_preload.so, fiu_posix_preload.so or fiu-ctrl "
                "missing; scripts/install-deps installs fiu-utils and libfiu-dev)");
    }
    own_libasan(asan, sizeof asan);
    snprintf(preload, sizeof preload, "%s%s%s %s", asan, asan[0] ? " " : "", run_lib, posix_lib);

    /* the same environment as the daemon will get, on `cqrsd --version` */
    setenv("LD_PRELOAD", preload, 1);
    char *out;
    char *argv[] = { CQRSD_PATH, "--version", NULL };
    int st = run_captured(argv, 10000, &out);
    unsetenv("LD_PRELOAD");
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
        char why[1200];
        snprintf(why, sizeof why, "cqrsd does not run under LD_PRELOAD=\"%.500s\": %s %d; "
                 "output: %.300s",
                 preload, WIFSIGNALED(st) ? "killed by signal" : "wait status",
                 WIFSIGNALED(st) ? WTERMSIG(st) : st, out ? out : "");
        free(out);
        cr_skip("%s", why);
    }
    free(out);
}

/* Starts the prepared daemon with the fiu preload (its workers inherit it). */
static void launch_with_fiu(void)
{
    char fifo[400];
    snprintf(fifo, sizeof fifo, "%s/fiu", d.dir);
    setenv("LD_PRELOAD", preload, 1);
    setenv("FIU_CTRL_FIFO", fifo, 1);
    daemon_launch(&d, NULL);
    unsetenv("LD_PRELOAD");
    unsetenv("FIU_CTRL_FIFO");
}

/* fiu-ctrl -c `cmd` PID; asserts it worked (it prints why when not). */
static void fiu_ctrl(pid_t pid, const char *cmd)
{
    char fifo[400], in[420], pidbuf[16];
    snprintf(fifo, sizeof fifo, "%s/fiu", d.dir);
    snprintf(in, sizeof in, "%s-%d.in", fifo, (int)pid);
    struct stat sb;
    cr_assert(stat(in, &sb) == 0 && S_ISFIFO(sb.st_mode),
              "process %d has no libfiu control fifo %s: %s", (int)pid, in, strerror(errno));
    snprintf(pidbuf, sizeof pidbuf, "%d", (int)pid);
    char *argv[] = { fiu_ctrl_bin, "-f", fifo, "-c", (char *)cmd, pidbuf, NULL };
    char *out;
    int st = run_captured(argv, FIU_CTRL_MS, &out);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0 && out && !out[0],
              "fiu-ctrl -c '%s' %d: wait status 0x%x, output: %s", cmd, (int)pid, st,
              out ? out : "");
    free(out);
}

/* --- the wallets ---------------------------------------------------------------------- */

#define N_WALLETS 3
#define MAX_CMDS 32

struct wallet {
    char id[16];
    int64_t balance;
    uint64_t version;
    char cmds[MAX_CMDS][48];     /* applied command ids, in version order */
};

static struct wallet wallets[N_WALLETS];

static void wallets_init(void)
{
    memset(wallets, 0, sizeof wallets);
    for (int k = 0; k < N_WALLETS; k++)
        snprintf(wallets[k].id, sizeof wallets[k].id, "eio%d", k);
}

static Cqrs__Reply *topup(struct cqrs_client *c, const char *id, int64_t amount,
                          const char *command_id)
{
    Wallet__TopUp t = WALLET__TOP_UP__INIT;
    t.amount = amount;
    return send_cmd(c, "wallet", id, &t.base, command_id, -1);
}

/* A TopUp that must succeed with the next version. */
static void topup_ok(struct cqrs_client *c, struct wallet *w, int64_t amount, const char *cid,
                     const char *when)
{
    Cqrs__Reply *r = topup(c, w->id, amount, cid);
    cr_assert_eq(r->status, CQRS__STATUS__OK, "%s: TopUp %s (%s): %s (%s)", when, w->id, cid,
                 cqrs_status_name(r->status), r->error);
    cr_assert(r->version == w->version + 1 && r->n_events == 1 &&
              strcmp(r->events[0]->command_id, cid) == 0,
              "%s: TopUp %s (%s) got version %llu with %zu events, expected version %llu, one "
              "event of that command", when, w->id, cid, (unsigned long long)r->version,
              r->n_events, (unsigned long long)w->version + 1);
    w->version++;
    w->balance += amount;
    snprintf(w->cmds[w->version - 1], sizeof w->cmds[0], "%s", cid);
    cqrs__reply__free_unpacked(r, NULL);
}

static void expect_io_error(const Cqrs__Reply *r, const char *what)
{
    cr_assert_eq(r->status, CQRS__STATUS__INTERNAL, "%s while fdatasync fails: %s (%s), "
                 "expected INTERNAL", what, cqrs_status_name(r->status), r->error);
    cr_assert(strstr(r->error, strerror(EIO)), "%s: INTERNAL \"%s\" does not name the I/O "
              "error (\"%s\")", what, r->error, strerror(EIO));
}

/* STATE equals what was acknowledged; EVENTS hold exactly those commands. */
static void expect_wallet(struct cqrs_client *c, const struct wallet *w, const char *when)
{
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_state(c, "wallet", w->id, &r) == 0, "STATE: %s", strerror(errno));
    cr_assert_eq(r->status, CQRS__STATUS__OK, "%s: STATE %s: %s (%s)", when, w->id,
                 cqrs_status_name(r->status), r->error);
    Wallet__WalletState *s = wallet__wallet_state__unpack(NULL, r->state.len, r->state.data);
    cr_assert(s, "STATE does not decode");
    cr_assert(s->balance == w->balance && r->version == w->version,
              "%s: STATE %s is balance %lld at version %llu, expected %lld at version %llu "
              "(the acknowledged commands only)", when, w->id, (long long)s->balance,
              (unsigned long long)r->version, (long long)w->balance,
              (unsigned long long)w->version);
    wallet__wallet_state__free_unpacked(s, NULL);
    cqrs__reply__free_unpacked(r, NULL);

    r = NULL;
    cr_assert(cqrs_client_events(c, "wallet", w->id, 1, 0, &r) == 0, "EVENTS: %s",
              strerror(errno));
    cr_assert_eq(r->status, CQRS__STATUS__OK, "%s: EVENTS %s: %s (%s)", when, w->id,
                 cqrs_status_name(r->status), r->error);
    cr_assert_eq(r->n_events, w->version, "%s: EVENTS %s: %zu events, expected %llu", when, w->id,
                 r->n_events, (unsigned long long)w->version);
    for (size_t i = 0; i < r->n_events; i++)
        cr_assert(r->events[i]->version == i + 1 && strcmp(r->events[i]->command_id,
                                                           w->cmds[i]) == 0,
                  "%s: EVENTS %s: event %zu is version %llu of command %s, expected version "
                  "%zu of command %s", when, w->id, i + 1,
                  (unsigned long long)r->events[i]->version, r->events[i]->command_id, i + 1,
                  w->cmds[i]);
    cqrs__reply__free_unpacked(r, NULL);
}

/* --- the journal ------------------------------------------------------------------------ */

struct jscan {
    int segments;
    uint64_t first;              /* the first segment's first position */
    uint64_t events, last_position, bad_position, checkpoint;
    char failed_seen[64];        /* a failed command ("lost-*") found in it */
};

static int jscan_cb(void *arg, const Cqrs__EventRecord *rec, off_t offset, size_t size)
{
    (void)offset; (void)size;
    struct jscan *j = arg;
    if (strcmp(rec->type, JOURNAL_CHECKPOINT) == 0) {
        if (rec->version > j->checkpoint)
            j->checkpoint = rec->version;
        return 0;
    }
    uint64_t expect = j->events ? j->last_position + 1 : j->first;
    j->events++;
    if (rec->position != expect && !j->bad_position)
        j->bad_position = rec->position;
    j->last_position = rec->position;
    if (strncmp(rec->command_id, "lost-", 5) == 0 && !j->failed_seen[0])
        snprintf(j->failed_seen, sizeof j->failed_seen, "%s", rec->command_id);
    return 0;
}

/* Reads every segment in order (names are zero-padded first positions).
 * `live`: the daemon runs, and a segment may go between readdir and open. */
static struct jscan scan_journal_of(int live)
{
    struct jscan j;
    memset(&j, 0, sizeof j);
    j.segments = daemon_journal_replay(&d, "wallet", live, jscan_cb, &j, &j.first);
    if (!j.events && j.first)
        j.last_position = j.first - 1;
    return j;
}

static struct jscan scan_journal(void)
{
    return scan_journal_of(0);
}

/* Polls the journal's files (bounded) until a checkpoint covers `position`,
 * or no segment holds that position any more. */
static void wait_checkpoint(uint64_t position)
{
    int64_t deadline = harness_ms() + 5000;
    for (;;) {
        struct jscan j = scan_journal_of(1);
        if (j.checkpoint >= position || j.last_position < position)
            return;
        cr_assert(harness_ms() < deadline, "no checkpoint covered position %llu within 5 s "
                  "(checkpoint_ms = 50)", (unsigned long long)position);
        harness_sleep_ms(20);
    }
}

/* --- the logs ------------------------------------------------------------------------------ */

struct logscan {
    const struct wallet *w;
    uint64_t n;
    uint64_t max_position;
    char err[300];
};

static int logscan_cb(void *arg, const Cqrs__EventRecord *rec, off_t offset, size_t size)
{
    (void)offset; (void)size;
    struct logscan *ls = arg;
    if (ls->n >= ls->w->version || strcmp(rec->command_id, ls->w->cmds[ls->n]) != 0) {
        snprintf(ls->err, sizeof ls->err, "record %llu is of command %s, expected %s",
                 (unsigned long long)ls->n + 1, rec->command_id,
                 ls->n < ls->w->version ? ls->w->cmds[ls->n] : "nothing more");
        return 1;
    }
    if (rec->position > ls->max_position)
        ls->max_position = rec->position;
    ls->n++;
    return 0;
}

static void expect_log(const struct wallet *w)
{
    char type_dir[PATH_MAX], path[PATH_MAX];
    snprintf(type_dir, sizeof type_dir, "%s/wallet", d.data);
    layout_stream_file(path, sizeof path, type_dir, w->id, ".log");
    struct logscan ls = { w, 0, 0, "" };
    struct evlog *log = NULL;
    struct evlog_open_info info;
    int rc = evlog_open(path, EVLOG_READONLY, logscan_cb, &ls, &log, &info);
    cr_assert(!ls.err[0], "%s: %s", path, ls.err);
    cr_assert(rc == 0, "evlog_open %s: %d %s", path, rc, info.detail);
    cr_assert(ls.n == w->version && info.truncated_bytes == 0,
              "%s holds %llu records (%lld torn bytes), expected %llu", path,
              (unsigned long long)ls.n, (long long)info.truncated_bytes,
              (unsigned long long)w->version);
    evlog_free(log);
}

/* --- the tests ------------------------------------------------------------------------------ */

#define CONF_NO_CHECKPOINT                                                        \
    "[supervisor]\nstandby = false\n\n"                                           \
    "[storage]\nfsync = always\ncheckpoint_ms = 60000\n\n[child wallet]\n"

Test(fsync_eio, a_failed_fdatasync_fails_the_batch_and_keeps_nothing_of_it)
{
    fiu_available();
    wallets_init();
    daemon_prepare(&d, CONF_NO_CHECKPOINT);
    launch_with_fiu();
    struct cqrs_client *c = daemon_connect(&d);
    cqrs_client_set_retries(c, 0);
    char cid[48];

    /* before: two TopUps each */
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < N_WALLETS; k++) {
            snprintf(cid, sizeof cid, "before-%d-%d", k, i);
            topup_ok(c, &wallets[k], 1 + i, cid, "before the failure");
        }
    struct jscan j0 = scan_journal();
    pid_t worker = daemon_child_pid(&d, "wallet");
    fiu_ctrl(worker, "enable name=" FIU_POINT ",failnum=1,failinfo=5");

    /* one pipelined batch: a TopUp and then a STATE for each wallet */
    {
        Wallet__TopUp t = WALLET__TOP_UP__INIT;
        t.amount = 1000;
        uint8_t payload[16];
        size_t plen = wallet__top_up__pack(&t, payload);
        Cqrs__Command cmd[N_WALLETS];
        Cqrs__Query q[N_WALLETS];
        Cqrs__Request req[2 * N_WALLETS];
        char cids[N_WALLETS][48];
        uint64_t ids[2 * N_WALLETS];
        for (int k = 0; k < N_WALLETS; k++) {
            snprintf(cids[k], sizeof cids[k], "lost-batch-%d", k);
            cmd[k] = (Cqrs__Command)CQRS__COMMAND__INIT;
            cmd[k].aggregate_type = "wallet";
            cmd[k].aggregate_id = wallets[k].id;
            cmd[k].name = "TopUp";
            cmd[k].payload.data = payload;
            cmd[k].payload.len = plen;
            cmd[k].command_id = cids[k];
            q[k] = (Cqrs__Query)CQRS__QUERY__INIT;
            q[k].aggregate_type = "wallet";
            q[k].aggregate_id = wallets[k].id;
            q[k].kind = CQRS__QUERY__KIND__STATE;
            req[2 * k] = (Cqrs__Request)CQRS__REQUEST__INIT;
            req[2 * k].body_case = CQRS__REQUEST__BODY_COMMAND;
            req[2 * k].command = &cmd[k];
            req[2 * k + 1] = (Cqrs__Request)CQRS__REQUEST__INIT;
            req[2 * k + 1].body_case = CQRS__REQUEST__BODY_QUERY;
            req[2 * k + 1].query = &q[k];
        }
        for (int i = 0; i < 2 * N_WALLETS; i++)
            cr_assert(cqrs_client_send(c, &req[i], &ids[i]) == 0, "send: %s", strerror(errno));
        for (int k = 0; k < N_WALLETS; k++) {
            Cqrs__Reply *r = NULL;
            cr_assert(cqrs_client_recv(c, ids[2 * k], &r) == 0, "recv: %s", strerror(errno));
            char what[80];
            snprintf(what, sizeof what, "pipelined TopUp %.48s", wallets[k].id);
            expect_io_error(r, what);
            cqrs__reply__free_unpacked(r, NULL);
            r = NULL;
            cr_assert(cqrs_client_recv(c, ids[2 * k + 1], &r) == 0, "recv: %s", strerror(errno));
            if (r->status == CQRS__STATUS__OK) {
                Wallet__WalletState *s = wallet__wallet_state__unpack(NULL, r->state.len,
                                                                      r->state.data);
                cr_assert(s, "STATE does not decode");
                cr_assert(s->balance == wallets[k].balance && r->version == wallets[k].version,
                          "a STATE of %s right after its failing TopUp shows balance %lld at "
                          "version %llu: an event that was never durable (expected %lld at %llu "
                          "or an error)", wallets[k].id, (long long)s->balance,
                          (unsigned long long)r->version, (long long)wallets[k].balance,
                          (unsigned long long)wallets[k].version);
                wallet__wallet_state__free_unpacked(s, NULL);
            } else {
                cr_assert_eq(r->status, CQRS__STATUS__INTERNAL, "STATE %s in the failing batch: "
                             "%s (%s)", wallets[k].id, cqrs_status_name(r->status), r->error);
            }
            cqrs__reply__free_unpacked(r, NULL);
        }
    }
    /* one by one, each its own batch; the state between them is untouched */
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < N_WALLETS; k++) {
            /* "fail-K-0" is sent again after the failure, "lost-K-1" never */
            snprintf(cid, sizeof cid, i == 0 ? "fail-%d-%d" : "lost-%d-%d", k, i);
            Cqrs__Reply *r = topup(c, wallets[k].id, 5000, cid);
            expect_io_error(r, cid);
            cqrs__reply__free_unpacked(r, NULL);
            expect_wallet(c, &wallets[k], "while fdatasync fails");
        }

    fiu_ctrl(worker, "disable name=" FIU_POINT);
    cr_assert_eq(daemon_child_pid(&d, "wallet"), worker, "the wallet worker was restarted");
    for (int k = 0; k < N_WALLETS; k++)
        expect_wallet(c, &wallets[k], "after the failure ended");

    /* after: contiguous versions; a failed command's id is free again */
    for (int k = 0; k < N_WALLETS; k++) {
        snprintf(cid, sizeof cid, "after-%d", k);
        topup_ok(c, &wallets[k], 10, cid, "after the failure");
    }
    for (int k = 0; k < N_WALLETS; k++) {
        snprintf(cid, sizeof cid, "fail-%d-0", k);
        topup_ok(c, &wallets[k], 5000, cid, "a failed command sent again");
    }
    for (int k = 0; k < N_WALLETS; k++)
        expect_wallet(c, &wallets[k], "after the failure, with new commands");
    cqrs_client_free(c);

    struct jscan j1 = scan_journal();
    cr_assert(j1.segments > j0.segments, "the journal did not go on in a new segment after the "
              "failed sync (%d segments before, %d after)", j0.segments, j1.segments);

    int st = daemon_stop(&d);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "cqrsd did not exit 0 (0x%x)", st);
    daemon_restart(&d);   /* without the preload */
    c = daemon_connect(&d);
    for (int k = 0; k < N_WALLETS; k++)
        expect_wallet(c, &wallets[k], "after a restart");
    cqrs_client_free(c);
    st = daemon_stop(&d);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "cqrsd did not exit 0 (0x%x)", st);

    struct jscan j = scan_journal();
    uint64_t total = 0;
    for (int k = 0; k < N_WALLETS; k++)
        total += wallets[k].version;
    cr_assert(!j.bad_position, "journal positions jump to %llu",
              (unsigned long long)j.bad_position);
    cr_assert(j.events == total && j.last_position == total,
              "the journal holds %llu events up to position %llu, expected the %llu "
              "acknowledged ones", (unsigned long long)j.events,
              (unsigned long long)j.last_position, (unsigned long long)total);
    cr_assert(!j.failed_seen[0], "the journal holds an event of %s, a command that failed",
              j.failed_seen);
    /* the failed commands sent again ("fail-K-0") were applied under the
     * same id, as their later, successful event only */
    for (int k = 0; k < N_WALLETS; k++)
        expect_log(&wallets[k]);
}

/* Retention 0: the checkpoint deletes every segment wholly before it, never
 * the one being written. The failed syncs made the journal roll to a new
 * segment more than once with no event in between. */
Test(fsync_eio, checkpoint_after_failed_syncs_keeps_the_segment_being_written)
{
    fiu_available();
    wallets_init();
    daemon_prepare(&d, "[supervisor]\nstandby = false\n\n"
                       "[storage]\nfsync = always\ncheckpoint_ms = 50\n"
                       "journal_retention_mb = 0\njournal_retention_s = 0\n\n[child wallet]\n");
    launch_with_fiu();
    struct cqrs_client *c = daemon_connect(&d);
    cqrs_client_set_retries(c, 0);
    char cid[48];
    struct wallet *w = &wallets[0];
    for (int i = 0; i < 3; i++) {
        snprintf(cid, sizeof cid, "before-%d", i);
        topup_ok(c, w, 1, cid, "before the failure");
    }
    wait_checkpoint(w->version);
    pid_t worker = daemon_child_pid(&d, "wallet");
    fiu_ctrl(worker, "enable name=" FIU_POINT ",failnum=1,failinfo=5");
    for (int i = 0; i < 3; i++) {
        snprintf(cid, sizeof cid, "fail-%d", i);
        Cqrs__Reply *r = topup(c, w->id, 100, cid);
        expect_io_error(r, cid);
        cqrs__reply__free_unpacked(r, NULL);
    }
    fiu_ctrl(worker, "disable name=" FIU_POINT);
    for (int i = 0; i < 3; i++) {
        snprintf(cid, sizeof cid, "after-%d", i);
        topup_ok(c, w, 10, cid, "after the failure");
    }
    wait_checkpoint(w->version);   /* and old segments deleted */
    snprintf(cid, sizeof cid, "after-checkpoint");
    topup_ok(c, w, 20, cid, "after the checkpoint");
    cqrs_client_free(c);

    /* the segment holding the last event must still be there */
    struct jscan j = scan_journal();
    cr_assert(j.segments >= 1 && j.last_position == w->version && !j.bad_position,
              "after the checkpoint the journal directory holds %d segments with events up to "
              "position %llu, but %llu events were acknowledged: the segment being written was "
              "deleted", j.segments, (unsigned long long)j.last_position,
              (unsigned long long)w->version);

    int st = daemon_stop(&d);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "cqrsd did not exit 0 (0x%x)", st);
    daemon_restart(&d);
    c = daemon_connect(&d);
    expect_wallet(c, w, "after a restart");
    snprintf(cid, sizeof cid, "after-restart");
    Cqrs__Reply *r = topup(c, w->id, 30, cid);
    cr_assert_eq(r->status, CQRS__STATUS__OK, "TopUp after restart: %s (%s)",
                 cqrs_status_name(r->status), r->error);
    cr_assert(r->n_events == 1 && r->events[0]->position == w->version + 1,
              "after a restart the next event got position %llu, expected %llu (positions are "
              "the type's global order and must not be given twice)",
              (unsigned long long)(r->n_events ? r->events[0]->position : 0),
              (unsigned long long)w->version + 1);
    cqrs__reply__free_unpacked(r, NULL);
    cqrs_client_free(c);
}

/* The write itself fails (pwrite, EIO): the same promises as a failed sync.
 * Only files are written with pwrite in the worker; replies go out through
 * the socket with other calls. */
Test(fsync_eio, a_failed_journal_write_fails_the_batch_and_keeps_nothing_of_it)
{
    fiu_available();
    wallets_init();
    daemon_prepare(&d, CONF_NO_CHECKPOINT);
    launch_with_fiu();
    struct cqrs_client *c = daemon_connect(&d);
    cqrs_client_set_retries(c, 0);
    char cid[48];
    for (int k = 0; k < N_WALLETS; k++) {
        snprintf(cid, sizeof cid, "before-%d", k);
        topup_ok(c, &wallets[k], 3, cid, "before the failure");
    }
    pid_t worker = daemon_child_pid(&d, "wallet");
    fiu_ctrl(worker, "enable name=posix/io/rw/pwrite,failnum=1,failinfo=5");
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < N_WALLETS; k++) {
            snprintf(cid, sizeof cid, "lost-w-%d-%d", k, i);
            Cqrs__Reply *r = topup(c, wallets[k].id, 700, cid);
            expect_io_error(r, cid);
            cqrs__reply__free_unpacked(r, NULL);
        }
    fiu_ctrl(worker, "disable name=posix/io/rw/pwrite");
    for (int k = 0; k < N_WALLETS; k++)
        expect_wallet(c, &wallets[k], "after the failed writes");
    for (int k = 0; k < N_WALLETS; k++) {
        snprintf(cid, sizeof cid, "after-%d", k);
        topup_ok(c, &wallets[k], 4, cid, "after the failed writes");
    }
    cqrs_client_free(c);
    int st = daemon_stop(&d);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "cqrsd did not exit 0 (0x%x)", st);
    daemon_restart(&d);
    c = daemon_connect(&d);
    for (int k = 0; k < N_WALLETS; k++)
        expect_wallet(c, &wallets[k], "after a restart");
    cqrs_client_free(c);
    st = daemon_stop(&d);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "cqrsd did not exit 0 (0x%x)", st);
    struct jscan j = scan_journal();
    cr_assert(!j.bad_position && !j.failed_seen[0] && j.events == 2 * N_WALLETS,
              "the journal holds %llu events (positions jump at %llu, failed command %s), "
              "expected the %d acknowledged", (unsigned long long)j.events,
              (unsigned long long)j.bad_position, j.failed_seen[0] ? j.failed_seen : "none",
              2 * N_WALLETS);
    for (int k = 0; k < N_WALLETS; k++)
        expect_log(&wallets[k]);
}
