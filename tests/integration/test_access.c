/*
 * test_access — access control and the limits of [server], against the
 * real cqrsd:
 *
 *   - SO_PEERCRED: a uid outside allow_uids is accepted and closed at once
 *     (cqrsctl run as `nobody` fails, the log names the uid); admin_uids
 *     keeps KILL from a peer that may otherwise talk;
 *   - file modes whatever the caller's umask; root refuses a data dir that
 *     belongs to another uid;
 *   - max_connections, max_frame_bytes, max_inflight_per_conn (backpressure
 *     while the worker is stopped), worker_queue (BUSY beyond it),
 *     read_timeout_ms (slowloris), string and metadata limits;
 *   - a worker that answers with a malformed frame is killed and replaced,
 *     its request answered UNAVAILABLE, and cqrsd keeps serving.
 *
 * The uid tests need root (setpriv switches to nobody); they are skipped
 * otherwise. Every wait is a bounded poll.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "wallet.pb-c.h"

#define OK CQRS__STATUS__OK
#define INVALID CQRS__STATUS__INVALID
#define BUSY CQRS__STATUS__BUSY
#define UNAVAILABLE CQRS__STATUS__UNAVAILABLE

#define NOBODY_UID 65534
#define IO_MS 5000
#define CHILDREN "[child wallet]\n[child account]\n"

static struct daemon d;

static void teardown(void)
{
    daemon_cleanup(&d);
}

TestSuite(access, .fini = teardown, .timeout = 120);

/* ---- raw socket helpers ----------------------------------------------------- */

static void write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        cr_assert(n > 0, "write to cqrsd: %s", strerror(errno));
        p += n;
        len -= (size_t)n;
    }
}

/* Reads exactly `len` bytes within `ms`: 1, 0 on EOF, -1 on an error
 * (errno set; ECONNRESET counts as the peer closing), -2 at the deadline. */
static int read_full(int fd, void *buf, size_t len, int ms)
{
    uint8_t *p = buf;
    int64_t deadline = harness_ms() + ms;
    while (len > 0) {
        int left = (int)(deadline - harness_ms());
        if (left <= 0)
            return -2;
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        int rc = poll(&pfd, 1, left);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc == 0)
            return -2;
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            return 0;
        p += n;
        len -= (size_t)n;
    }
    return 1;
}

/* Waits up to `ms` for cqrsd to close `fd` (what it still sends is read and
 * dropped): 1 once closed (EOF or ECONNRESET), 0 at the deadline. */
static int wait_closed(int fd, int ms)
{
    int64_t deadline = harness_ms() + ms;
    for (;;) {
        int left = (int)(deadline - harness_ms());
        if (left <= 0)
            return 0;
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        int rc = poll(&pfd, 1, left);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc == 0)
            return 0;
        char buf[4096];
        ssize_t n = read(fd, buf, sizeof buf);
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return 1;
        cr_assert(n > 0 || errno == EINTR || errno == EAGAIN, "read: %s", strerror(errno));
    }
}

/* One request as a frame on a raw socket. */
static void raw_send(int fd, const Cqrs__Request *req)
{
    size_t len = cqrs__request__get_packed_size(req);
    uint8_t *buf = malloc(4 + len);
    cr_assert(buf, "out of memory");
    buf[0] = (uint8_t)(len >> 24);
    buf[1] = (uint8_t)(len >> 16);
    buf[2] = (uint8_t)(len >> 8);
    buf[3] = (uint8_t)len;
    cqrs__request__pack(req, buf + 4);
    write_all(fd, buf, 4 + len);
    free(buf);
}

/* The next reply frame on a raw socket, within `ms` (asserts). */
static Cqrs__Reply *raw_reply(int fd, int ms)
{
    uint8_t hdr[4];
    int rc = read_full(fd, hdr, 4, ms);
    cr_assert_eq(rc, 1, "no reply header from cqrsd (%s)",
                 rc == 0 ? "EOF" : rc == -2 ? "timeout" : strerror(errno));
    uint32_t len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | hdr[3];
    cr_assert_leq(len, 1u << 20, "reply frame of %u bytes", len);
    uint8_t *body = malloc(len ? len : 1);
    cr_assert(body, "out of memory");
    rc = read_full(fd, body, len, ms);
    cr_assert_eq(rc, 1, "short reply body from cqrsd");
    Cqrs__Reply *r = cqrs__reply__unpack(NULL, len, body);
    free(body);
    cr_assert(r, "the reply does not decode as cqrs.Reply");
    return r;
}

/* ---- requests ------------------------------------------------------------------ */

#define MAX_MD 64

/* A TopUp request whose strings and metadata a test may change. */
struct topup {
    Cqrs__Request req;
    Cqrs__Command cmd;
    Wallet__TopUp t;
    uint8_t payload[16];
    Cqrs__Command__MetadataEntry md[MAX_MD];
    Cqrs__Command__MetadataEntry *mdp[MAX_MD];
    char keys[MAX_MD][24];
};

static void topup_init(struct topup *tu, const char *wallet, int64_t amount)
{
    memset(tu, 0, sizeof *tu);
    tu->req = (Cqrs__Request)CQRS__REQUEST__INIT;
    tu->cmd = (Cqrs__Command)CQRS__COMMAND__INIT;
    tu->t = (Wallet__TopUp)WALLET__TOP_UP__INIT;
    tu->t.amount = amount;
    tu->cmd.aggregate_type = "wallet";
    tu->cmd.aggregate_id = (char *)wallet;
    tu->cmd.name = "TopUp";
    tu->cmd.payload.data = tu->payload;
    tu->cmd.payload.len = wallet__top_up__pack(&tu->t, tu->payload);
    tu->req.body_case = CQRS__REQUEST__BODY_COMMAND;
    tu->req.command = &tu->cmd;
}

/* `n` metadata entries "k<i>" = `value`. */
static void topup_metadata(struct topup *tu, size_t n, const char *value)
{
    cr_assert_leq(n, MAX_MD);
    for (size_t i = 0; i < n; i++) {
        tu->md[i] = (Cqrs__Command__MetadataEntry)CQRS__COMMAND__METADATA_ENTRY__INIT;
        snprintf(tu->keys[i], sizeof tu->keys[i], "k%zu", i);
        tu->md[i].key = tu->keys[i];
        tu->md[i].value = (char *)value;
        tu->mdp[i] = &tu->md[i];
    }
    tu->cmd.n_metadata = n;
    tu->cmd.metadata = n ? tu->mdp : NULL;
}

/* A string of `n` copies of `ch` (malloc'd). */
static char *repeat(char ch, size_t n)
{
    char *s = malloc(n + 1);
    cr_assert(s, "out of memory");
    memset(s, ch, n);
    s[n] = '\0';
    return s;
}

/* Calls `req` over `c` (a fresh request id each time); returns the status
 * and copies the error. */
static Cqrs__Status call_status(struct cqrs_client *c, Cqrs__Request *req, char *err, size_t errlen)
{
    Cqrs__Reply *r = NULL;
    cr_assert_eq(cqrs_client_call(c, req, &r), 0, "call: %s", strerror(errno));
    Cqrs__Status st = r->status;
    if (err)
        snprintf(err, errlen, "%s", r->error);
    cqrs__reply__free_unpacked(r, NULL);
    return st;
}

/* STATE of wallet `id`: its version and balance (asserts OK). */
static void wallet_state(struct cqrs_client *c, const char *id, uint64_t *version, int64_t *balance)
{
    Cqrs__Reply *r = NULL;
    cr_assert_eq(cqrs_client_state(c, "wallet", id, &r), 0, "STATE %s: %s", id, strerror(errno));
    cr_assert_eq(r->status, OK, "STATE %s: %s %s", id, cqrs_status_name(r->status), r->error);
    Wallet__WalletState *s = wallet__wallet_state__unpack(NULL, r->state.len, r->state.data);
    cr_assert(s, "STATE %s does not decode as WalletState", id);
    *version = r->version;
    *balance = s->balance;
    wallet__wallet_state__free_unpacked(s, NULL);
    cqrs__reply__free_unpacked(r, NULL);
}

/* STATUS over a fresh raw connection, answered within `ms` (asserts). */
static void status_within(int ms)
{
    int fd = daemon_connect_raw(&d);
    Cqrs__Request req = CQRS__REQUEST__INIT;
    Cqrs__Control ctl = CQRS__CONTROL__INIT;
    ctl.op = CQRS__CONTROL__OP__STATUS;
    req.id = 4242;
    req.body_case = CQRS__REQUEST__BODY_CONTROL;
    req.control = &ctl;
    raw_send(fd, &req);
    Cqrs__Reply *r = raw_reply(fd, ms);
    cr_assert_eq(r->id, 4242u);
    cr_assert_eq(r->status, OK, "STATUS: %s", r->error);
    cr_assert_gt(r->n_children, 0);
    cqrs__reply__free_unpacked(r, NULL);
    close(fd);
}

/* ---- processes ------------------------------------------------------------------ */

static char proc_state(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return '?';
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return '?';
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    return p && p[1] == ' ' ? p[2] : '?';
}

/* SIGSTOPs `pid` and waits (bounded) until it is stopped. */
static void stop_process(pid_t pid)
{
    cr_assert_eq(kill(pid, SIGSTOP), 0, "SIGSTOP %d: %s", (int)pid, strerror(errno));
    int64_t deadline = harness_ms() + 2000;
    while (proc_state(pid) != 'T') {
        cr_assert_lt(harness_ms(), deadline, "process %d did not stop", (int)pid);
        harness_sleep_ms(5);
    }
}

/* 1 if cqrsd.log holds `needle`, polled up to `ms`. */
static int log_has(const char *needle, int ms)
{
    int64_t deadline = harness_ms() + ms;
    for (;;) {
        char *log = daemon_log(&d);
        int found = strstr(log, needle) != NULL;
        free(log);
        if (found)
            return 1;
        if (harness_ms() >= deadline)
            return 0;
        harness_sleep_ms(20);
    }
}

static void need_root(void)
{
    if (geteuid() != 0)
        cr_skip_test("needs root: runs cqrsctl as nobody through setpriv, chowns a directory");
}

/* Runs the real cqrsctl as nobody:nogroup (setpriv) with -s <socket> and
 * `args` (NULL-terminated); captures stdout and stderr (malloc'd). Returns
 * the exit code (-1: killed by a signal or did not end in 30 s). */
static int cqrsctl_as_nobody(char **out, char **err, ...)
{
    const char *argv[32];
    int n = 0;
    argv[n++] = "setpriv";
    argv[n++] = "--reuid=nobody";
    argv[n++] = "--regid=nogroup";
    argv[n++] = "--clear-groups";
    argv[n++] = CQRSCTL_PATH;
    argv[n++] = "-s";
    argv[n++] = d.sock;
    va_list ap;
    va_start(ap, err);
    for (const char *a; (a = va_arg(ap, const char *)) != NULL;) {
        cr_assert_lt(n, 31, "too many arguments");
        argv[n++] = a;
    }
    va_end(ap);
    argv[n] = NULL;

    char out_path[400], err_path[400];
    snprintf(out_path, sizeof out_path, "%s/nobody-out.XXXXXX", d.dir);
    snprintf(err_path, sizeof err_path, "%s/nobody-err.XXXXXX", d.dir);
    int ofd = mkostemp(out_path, O_CLOEXEC), efd = mkostemp(err_path, O_CLOEXEC);
    cr_assert(ofd >= 0 && efd >= 0, "mkostemp: %s", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        int null = open("/dev/null", O_RDONLY);
        if (null < 0 || dup2(null, 0) < 0 || dup2(ofd, 1) < 0 || dup2(efd, 2) < 0)
            _exit(126);
        signal(SIGPIPE, SIG_DFL);
        execvp(argv[0], (char *const *)argv);
        dprintf(2, "cannot exec setpriv: %s\n", strerror(errno));
        _exit(127);
    }
    close(ofd);
    close(efd);
    int status = 0;
    int64_t deadline = harness_ms() + 30000;
    pid_t w;
    while ((w = waitpid(pid, &status, WNOHANG)) == 0 && harness_ms() < deadline)
        harness_sleep_ms(5);
    if (w == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        status = -1;
    }
    char *bufs[2] = { NULL, NULL };
    const char *paths[2] = { out_path, err_path };
    for (int i = 0; i < 2; i++) {
        FILE *f = fopen(paths[i], "r");
        cr_assert(f, "fopen %s", paths[i]);
        size_t cap = 1 << 16, len = fread(bufs[i] = malloc(cap), 1, cap - 1, f);
        cr_assert(bufs[i], "out of memory");
        bufs[i][len] = '\0';
        fclose(f);
        unlink(paths[i]);
    }
    *out = bufs[0];
    *err = bufs[1];
    return status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* ---- access control --------------------------------------------------------------- */

/* cqrsd's socket sits in the test's 0700 temp dir: nobody needs to reach it. */
static void prepare_for_nobody(const char *ini)
{
    daemon_prepare(&d, ini);
    cr_assert_eq(chmod(d.dir, 0711), 0, "chmod %s: %s", d.dir, strerror(errno));
}

Test(access, refused_uid_is_disconnected_and_logged)
{
    need_root();
    prepare_for_nobody("[server]\nsocket_mode = 0666\nallow_uids = 0\n" CHILDREN);
    daemon_launch(&d, NULL);
    char *out, *err;
    int rc = cqrsctl_as_nobody(&out, &err, "status", NULL);
    cr_assert(rc == 69 || rc == 70,
              "cqrsctl as nobody (not allowed) exited %d, expected 69 or 70\nstdout: %s\nstderr: %s",
              rc, out, err);
    free(out);
    free(err);
    if (!log_has("refused a connection from uid 65534", 2000)) {
        daemon_show_log(&d, "no refusal logged");
        cr_assert_fail("cqrsd.log has no line refusing uid %d", NOBODY_UID);
    }
    /* cqrsd serves root as before */
    status_within(IO_MS);
    cr_assert_eq(WEXITSTATUS(daemon_stop(&d)), 0);
}

Test(access, allowed_uid_gets_in)
{
    need_root();
    prepare_for_nobody("[server]\nsocket_mode = 0666\nallow_uids = 0, 65534\n" CHILDREN);
    daemon_launch(&d, NULL);
    char *out, *err;
    int rc = cqrsctl_as_nobody(&out, &err, "send", "wallet", "nb1", "TopUp", "amount=7", NULL);
    cr_assert_eq(rc, 0, "cqrsctl as nobody (allowed) exited %d\nstdout: %s\nstderr: %s", rc, out,
                 err);
    cr_assert(strstr(out, "OK version 1"), "stdout: %s", out);
    free(out);
    free(err);
    rc = cqrsctl_as_nobody(&out, &err, "status", NULL);
    cr_assert_eq(rc, 0, "status as nobody exited %d: %s", rc, err);
    cr_assert(strstr(out, "wallet"), "stdout: %s", out);
    free(out);
    free(err);
    char *log = daemon_log(&d);
    cr_assert_null(strstr(log, "refused a connection"), "an allowed peer was refused:\n%s", log);
    free(log);
}

Test(access, admin_uids_keep_kill_from_other_peers)
{
    need_root();
    prepare_for_nobody("[server]\nsocket_mode = 0666\nallow_uids = 65534\nadmin_uids = 0\n" CHILDREN);
    daemon_launch(&d, NULL);
    pid_t wallet = daemon_child_pid(&d, "wallet");

    char *out, *err;
    int rc = cqrsctl_as_nobody(&out, &err, "status", NULL);
    cr_assert_eq(rc, 0, "status as nobody exited %d\nstdout: %s\nstderr: %s", rc, out, err);
    cr_assert(strstr(out, "wallet") && strstr(out, "account"), "stdout: %s", out);
    free(out);
    free(err);

    rc = cqrsctl_as_nobody(&out, &err, "kill", "wallet", NULL);
    cr_assert_eq(rc, 1, "kill as nobody exited %d, expected 1 (rejected)\nstdout: %s\nstderr: %s",
                 rc, out, err);
    cr_assert(strstr(err, "permission denied"), "stderr: %s", err);
    free(out);
    free(err);
    rc = cqrsctl_as_nobody(&out, &err, "restart", "wallet", NULL);
    cr_assert_eq(rc, 1, "restart as nobody exited %d: %s", rc, err);
    free(out);
    free(err);
    harness_sleep_ms(200);
    cr_assert_eq(daemon_child_pid(&d, "wallet"), wallet, "the wallet worker was killed anyway");

    /* root is the admin */
    rc = run_cqrsctl(&d, &out, &err, "kill", "wallet", NULL);
    cr_assert_eq(rc, 0, "kill as root exited %d: %s", rc, err);
    free(out);
    free(err);
    daemon_wait_new_pid(&d, "wallet", wallet, 10000);
}

/* ---- files ------------------------------------------------------------------------- */

static int n_files, n_logs, bad_modes;
static char bad_list[2048];

static int mode_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)ftw;
    mode_t m = sb->st_mode & 07777;
    size_t len = strlen(path);
    int bad = 0;
    if (flag == FTW_D || flag == FTW_DP) {
        bad = m != 0700;
    } else if (S_ISREG(sb->st_mode)) {
        n_files++;
        if (len > 4 && strcmp(path + len - 4, ".log") == 0 && !strstr(path, "/journal/"))
            n_logs++;
        bad = m != 0600;
    }
    if (bad) {
        bad_modes++;
        size_t used = strlen(bad_list);
        snprintf(bad_list + used, sizeof bad_list - used, "  %04o %s\n", (unsigned)m, path);
    }
    return 0;
}

Test(access, file_modes_whatever_the_umask)
{
    umask(0);   /* this test's process only: criterion forks one per test */
    daemon_start(&d, NULL);
    struct cqrs_client *c = daemon_connect(&d);
    struct topup tu;
    topup_init(&tu, "modes1", 5);
    cr_assert_eq(call_status(c, &tu.req, NULL, 0), OK);
    topup_init(&tu, "modes2", 5);
    cr_assert_eq(call_status(c, &tu.req, NULL, 0), OK);
    cqrs_client_free(c);

    struct stat st;
    cr_assert_eq(stat(d.data, &st), 0, "stat %s: %s", d.data, strerror(errno));
    cr_assert_eq(st.st_mode & 07777, 0700, "data dir has mode %04o, expected 0700",
                 (unsigned)(st.st_mode & 07777));
    cr_assert_eq(stat(d.sock, &st), 0, "stat %s: %s", d.sock, strerror(errno));
    cr_assert(S_ISSOCK(st.st_mode));
    cr_assert_eq(st.st_mode & 07777, 0660, "socket has mode %04o, expected 0660",
                 (unsigned)(st.st_mode & 07777));

    n_files = n_logs = bad_modes = 0;
    bad_list[0] = '\0';
    cr_assert_eq(nftw(d.data, mode_cb, 16, FTW_PHYS), 0);
    cr_assert_geq(n_logs, 2, "expected the two stream logs, found %d", n_logs);
    cr_assert_eq(bad_modes, 0, "under the data dir (dirs must be 0700, files 0600):\n%s", bad_list);
    cr_log_info("%d files under the data dir, %d stream logs, all 0600 in 0700 dirs", n_files,
                n_logs);
}

Test(access, root_refuses_a_data_dir_of_another_uid)
{
    need_root();
    daemon_prepare(&d, NULL);
    cr_assert_eq(mkdir(d.data, 0700), 0);
    cr_assert_eq(chown(d.data, NOBODY_UID, NOBODY_UID), 0, "chown: %s", strerror(errno));
    int status = daemon_run_until_exit(&d, 10000, NULL);
    char *err = daemon_stderr(&d);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1,
              "cqrsd exited with wait status 0x%x, expected exit 1; stderr:\n%s", status, err);
    cr_assert(strstr(err, "refusing to run as root") && strstr(err, "65534"),
              "stderr does not give the reason:\n%s", err);
    free(err);
    struct stat st;
    cr_assert_neq(lstat(d.sock, &st), 0, "cqrsd created its socket anyway");
    cr_assert_eq(stat(d.data, &st), 0);
    cr_assert_eq(st.st_uid, NOBODY_UID, "the data dir changed owner");
    char path[400];
    snprintf(path, sizeof path, "%s/wallet", d.data);
    cr_assert_neq(lstat(path, &st), 0, "a worker wrote into the refused data dir");
}

/* ---- connections ------------------------------------------------------------------- */

/* A STATUS round trip over `fd` (a raw socket). */
static void raw_status(int fd, uint64_t id)
{
    Cqrs__Request req = CQRS__REQUEST__INIT;
    Cqrs__Control ctl = CQRS__CONTROL__INIT;
    ctl.op = CQRS__CONTROL__OP__STATUS;
    req.id = id;
    req.body_case = CQRS__REQUEST__BODY_CONTROL;
    req.control = &ctl;
    raw_send(fd, &req);
    Cqrs__Reply *r = raw_reply(fd, IO_MS);
    cr_assert_eq(r->id, id);
    cr_assert_eq(r->status, OK, "STATUS: %s", r->error);
    cqrs__reply__free_unpacked(r, NULL);
}

Test(access, max_connections)
{
    daemon_start_conf(&d, "[server]\nmax_connections = 4\n" CHILDREN, NULL);
    int fds[4];
    /* each with a round trip: cqrsd has seen the one before (and the
     * harness's own, closed, connections) by then */
    for (int i = 0; i < 4; i++) {
        fds[i] = daemon_connect_raw(&d);
        raw_status(fds[i], (uint64_t)i + 1);
    }
    int fifth = daemon_connect_raw(&d);
    int64_t t0 = harness_ms();
    cr_assert(wait_closed(fifth, 2000), "the fifth connection was not closed");
    int64_t took = harness_ms() - t0;
    cr_assert_lt(took, 1000, "the fifth connection took %lld ms to be closed", (long long)took);
    close(fifth);
    char line[160];   /* the refused peer is this process */
    snprintf(line, sizeof line, "refused a connection from uid %d (pid %d): max_connections (4) "
             "reached", (int)geteuid(), (int)getpid());
    if (!log_has(line, 2000)) {
        daemon_show_log(&d, "no max_connections line");
        cr_assert_fail("cqrsd.log has no line \"%s\"", line);
    }
    for (int i = 0; i < 4; i++)   /* the four still work */
        raw_status(fds[i], 10 + (uint64_t)i);

    /* one goes: a new connection gets in (once cqrsd has seen the close) */
    close(fds[0]);
    int64_t deadline = harness_ms() + 3000;
    int in = 0;
    while (!in && harness_ms() < deadline) {
        int fd = daemon_connect_raw(&d);
        Cqrs__Request req = CQRS__REQUEST__INIT;
        Cqrs__Control ctl = CQRS__CONTROL__INIT;
        ctl.op = CQRS__CONTROL__OP__STATUS;
        req.id = 99;
        req.body_case = CQRS__REQUEST__BODY_CONTROL;
        req.control = &ctl;
        raw_send(fd, &req);
        uint8_t hdr[4];
        if (read_full(fd, hdr, 4, 1000) == 1) {
            in = 1;
            fds[0] = fd;
        } else {
            close(fd);
            harness_sleep_ms(20);
        }
    }
    cr_assert(in, "no new connection got in after one of the four was closed");
    for (int i = 0; i < 4; i++)
        close(fds[i]);
}

/* A TopUp to `wallet` whose packed Request is exactly `size` bytes. */
static uint8_t *topup_frame_of(const char *wallet, size_t size, size_t *wire)
{
    struct topup tu;
    topup_init(&tu, wallet, 1);
    tu.req.id = 7;
    size_t vlen = size > 64 ? size - 64 : 0;
    char *value = NULL;
    for (;; vlen++) {
        free(value);
        value = repeat('m', vlen);
        topup_metadata(&tu, 1, value);
        size_t n = cqrs__request__get_packed_size(&tu.req);
        if (n == size)
            break;
        cr_assert_lt(n, size, "cannot build a request of exactly %zu bytes", size);
    }
    uint8_t *buf = malloc(4 + size);
    cr_assert(buf, "out of memory");
    buf[0] = (uint8_t)(size >> 24);
    buf[1] = (uint8_t)(size >> 16);
    buf[2] = (uint8_t)(size >> 8);
    buf[3] = (uint8_t)size;
    cqrs__request__pack(&tu.req, buf + 4);
    free(value);
    *wire = 4 + size;
    return buf;
}

Test(access, max_frame_bytes)
{
    daemon_start_conf(&d, "[server]\nmax_frame_bytes = 4096\nmax_metadata_bytes = 8192\n" CHILDREN,
                      NULL);
    size_t wire;
    /* within the limit: processed */
    uint8_t *f = topup_frame_of("mf", 4000, &wire);
    int fd = daemon_connect_raw(&d);
    write_all(fd, f, wire);
    free(f);
    Cqrs__Reply *r = raw_reply(fd, IO_MS);
    cr_assert_eq(r->status, OK, "a 4000-byte TopUp: %s %s", cqrs_status_name(r->status), r->error);
    cr_assert_eq(r->version, 1);
    cqrs__reply__free_unpacked(r, NULL);
    close(fd);

    /* over it: INVALID, then closed */
    f = topup_frame_of("mf", 5000, &wire);
    fd = daemon_connect_raw(&d);
    write_all(fd, f, wire);
    free(f);
    r = raw_reply(fd, IO_MS);
    cr_assert_eq(r->status, INVALID, "a 5000-byte frame: %s %s", cqrs_status_name(r->status),
                 r->error);
    cr_assert(strstr(r->error, "5000") && strstr(r->error, "4096"), "error: %s", r->error);
    cqrs__reply__free_unpacked(r, NULL);
    cr_assert(wait_closed(fd, 2000), "the connection stayed open after an oversized frame");
    close(fd);

    struct cqrs_client *c = daemon_connect(&d);
    uint64_t v;
    int64_t bal;
    wallet_state(c, "mf", &v, &bal);
    cr_assert_eq(v, 1, "the oversized frame was applied: version %llu", (unsigned long long)v);
    cr_assert_eq(bal, 1);
    cqrs_client_free(c);
}

/* ---- backpressure ---------------------------------------------------------------- */

/* The tagged frames (4-byte length, 8-byte tag, body) waiting, unread, in
 * the receive queue of fd 3 (its socket to cqrsd) of worker `pid`: peeked
 * through a copy of its descriptor. -1 when that cannot be done. */
static int worker_queued_frames(pid_t pid)
{
#if defined(SYS_pidfd_open) && defined(SYS_pidfd_getfd)
    int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pfd < 0)
        return -1;
    int fd = (int)syscall(SYS_pidfd_getfd, pfd, 3, 0);
    close(pfd);
    if (fd < 0)
        return -1;
    static uint8_t buf[1 << 20];
    ssize_t n = recv(fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
    close(fd);
    if (n < 0)
        return errno == EAGAIN ? 0 : -1;
    int frames = 0;
    size_t off = 0;
    while (off + 4 <= (size_t)n) {
        uint32_t len = (uint32_t)buf[off] << 24 | (uint32_t)buf[off + 1] << 16 |
                       (uint32_t)buf[off + 2] << 8 | buf[off + 3];
        if (off + 4 + len > (size_t)n)
            break;
        frames++;
        off += 4 + len;
    }
    return frames;
#else
    (void)pid;
    return -1;
#endif
}

#define PIPELINED 100
#define INFLIGHT 8

Test(access, max_inflight_per_conn_backpressure)
{
    daemon_start_conf(&d, "[supervisor]\nheartbeat_ms = 0\nstandby = false\n"
                          "[server]\nmax_inflight_per_conn = 8\n" CHILDREN, NULL);
    pid_t worker = daemon_child_pid(&d, "wallet");
    int peek = worker_queued_frames(worker);
    cr_assert_leq(peek, 0, "the idle worker holds %d unread frames", peek);
    if (peek < 0)
        cr_log_warn("cannot look into the worker's socket (pidfd_getfd: %s; it needs "
                    "CAP_SYS_PTRACE): how many requests reach it is not checked",
                    strerror(errno));
    stop_process(worker);

    struct cqrs_client *c = daemon_connect(&d);
    struct topup tu;
    topup_init(&tu, "bp", 1);
    uint64_t ids[PIPELINED];
    for (int i = 0; i < PIPELINED; i++)
        cr_assert_eq(cqrs_client_send(c, &tu.req, &ids[i]), 0, "send %d: %s", i, strerror(errno));

    /* cqrsd hands the worker 8, then stops reading the connection */
    int64_t deadline = harness_ms() + 3000;
    int q = 0;
    while (peek == 0 && (q = worker_queued_frames(worker)) < INFLIGHT && harness_ms() < deadline)
        harness_sleep_ms(10);
    if (peek == 0)
        cr_assert_eq(q, INFLIGHT, "%d requests reached the stopped worker, expected %d", q,
                     INFLIGHT);
    /* other clients are not starved meanwhile */
    for (int i = 0; i < 3; i++)
        status_within(2000);
    harness_sleep_ms(300);
    if (peek == 0) {
        q = worker_queued_frames(worker);
        cr_assert_eq(q, INFLIGHT, "%d requests reached the stopped worker, expected at most %d",
                     q, INFLIGHT);
    }

    /* the backpressure lifts: every one answered, in order */
    cr_assert_eq(kill(worker, SIGCONT), 0);
    for (int i = 0; i < PIPELINED; i++) {
        Cqrs__Reply *r = NULL;
        cr_assert_eq(cqrs_client_recv_any(c, &r), 0, "reply %d: %s", i, strerror(errno));
        cr_assert_eq(r->id, ids[i], "reply %d is for request %llu, expected %llu", i,
                     (unsigned long long)r->id, (unsigned long long)ids[i]);
        cr_assert_eq(r->status, OK, "reply %d: %s %s", i, cqrs_status_name(r->status), r->error);
        cr_assert_eq(r->version, (uint64_t)i + 1, "reply %d has version %llu", i,
                     (unsigned long long)r->version);
        cqrs__reply__free_unpacked(r, NULL);
    }
    uint64_t v;
    int64_t bal;
    wallet_state(c, "bp", &v, &bal);
    cr_assert_eq(v, PIPELINED);
    cr_assert_eq(bal, PIPELINED);
    cqrs_client_free(c);
    cr_assert_eq(daemon_child_pid(&d, "wallet"), worker, "the worker was replaced");
}

#define QUEUED 20
#define WORKER_QUEUE 5

/* Held requests: the wallet worker is stopped (SIGSTOP) and asked to
 * restart, so it neither answers nor exits until shutdown_ms has passed and
 * cqrsd SIGKILLs it. Meanwhile every request for wallet is held, up to
 * worker_queue; the rest are BUSY at once. */
Test(access, worker_queue_overflow_is_busy)
{
    daemon_start_conf(&d, "[supervisor]\nheartbeat_ms = 0\nstandby = false\n"
                          "[server]\nworker_queue = 5\n"
                          "[child wallet]\nshutdown_ms = 1500\n[child account]\n", NULL);
    pid_t worker = daemon_child_pid(&d, "wallet");
    stop_process(worker);
    struct cqrs_client *ctl = daemon_connect(&d);
    Cqrs__Reply *r = NULL;
    cr_assert_eq(cqrs_client_control(ctl, CQRS__CONTROL__OP__RESTART, "wallet", &r), 0);
    cr_assert_eq(r->status, OK, "RESTART: %s", r->error);
    cqrs__reply__free_unpacked(r, NULL);
    cqrs_client_free(ctl);

    struct cqrs_client *c = daemon_connect(&d);
    struct topup tu;
    topup_init(&tu, "q", 1);
    uint64_t ids[QUEUED];
    for (int i = 0; i < QUEUED; i++)
        cr_assert_eq(cqrs_client_send(c, &tu.req, &ids[i]), 0);
    int ok = 0, busy = 0;
    for (int i = 0; i < QUEUED; i++) {
        cr_assert_eq(cqrs_client_recv_any(c, &r), 0, "reply %d: %s", i, strerror(errno));
        if (r->status == OK)
            ok++;
        else if (r->status == BUSY)
            busy++;
        else
            cr_assert_fail("reply %d: %s %s", i, cqrs_status_name(r->status), r->error);
        cqrs__reply__free_unpacked(r, NULL);
    }
    cr_assert_eq(busy, QUEUED - WORKER_QUEUE, "%d BUSY and %d OK of %d, expected %d BUSY", busy, ok,
                 QUEUED, QUEUED - WORKER_QUEUE);
    cr_assert_eq(ok, WORKER_QUEUE);
    uint64_t v;
    int64_t bal;
    wallet_state(c, "q", &v, &bal);
    cr_assert_eq(v, WORKER_QUEUE, "version %llu", (unsigned long long)v);
    cr_assert_eq(bal, WORKER_QUEUE);
    cqrs_client_free(c);
    cr_assert(pid_wait_dead(worker, 5000), "the stopped worker still lives");
}

/* ---- slowloris ------------------------------------------------------------------- */

Test(access, read_timeout_closes_a_stalled_frame_only)
{
    daemon_start_conf(&d, "[server]\nread_timeout_ms = 300\n" CHILDREN, NULL);
    int idle = daemon_connect_raw(&d);
    int slow = daemon_connect_raw(&d);
    int64_t t_idle = harness_ms();
    /* 10 bytes of a frame announced as 100 */
    uint8_t part[10] = { 0, 0, 0, 100, 0x08, 0x01, 0x12, 0x05, 0x0a, 0x03 };
    write_all(slow, part, sizeof part);
    int64_t t0 = harness_ms();
    cr_assert(wait_closed(slow, 2000), "a connection stalled in mid-frame was not closed in 2 s");
    int64_t took = harness_ms() - t0;
    cr_assert_geq(took, 250, "closed after %lld ms, before read_timeout_ms", (long long)took);
    close(slow);
    cr_assert(log_has("still incomplete", 2000), "no log line about the incomplete frame");

    /* the idle one, silent all along, stays well beyond the timeout */
    while (harness_ms() - t_idle < 1500)
        harness_sleep_ms(50);
    struct pollfd pfd = { .fd = idle, .events = POLLIN };
    cr_assert_eq(poll(&pfd, 1, 0), 0, "the idle connection was closed (or sent something)");
    raw_status(idle, 5);
    close(idle);
}

/* ---- string and metadata limits ------------------------------------------------- */

Test(access, string_and_metadata_limits)
{
    daemon_start(&d, NULL);   /* defaults: 1024 bytes, 32 entries, 4096 bytes */
    struct cqrs_client *c = daemon_connect(&d);
    cqrs_client_set_retries(c, 0);
    struct topup tu;
    char err[300];
    Cqrs__Status st;
    int applied = 0;

    char *s1025 = repeat('c', 1025), *s1024 = repeat('c', 1024);
    topup_init(&tu, "lim", 1);
    tu.cmd.command_id = s1025;
    st = call_status(c, &tu.req, err, sizeof err);
    cr_assert_eq(st, INVALID, "command_id of 1025 bytes: %s %s", cqrs_status_name(st), err);
    cr_assert(strstr(err, "1024"), "error: %s", err);
    tu.cmd.command_id = s1024;
    st = call_status(c, &tu.req, err, sizeof err);
    cr_assert_eq(st, OK, "command_id of 1024 bytes: %s %s", cqrs_status_name(st), err);
    applied++;

    topup_init(&tu, "lim", 1);
    tu.cmd.name = s1025;
    st = call_status(c, &tu.req, err, sizeof err);
    cr_assert_eq(st, INVALID, "command name of 1025 bytes: %s %s", cqrs_status_name(st), err);

    topup_init(&tu, "lim", 1);
    tu.cmd.aggregate_type = s1025;
    st = call_status(c, &tu.req, err, sizeof err);
    cr_assert_eq(st, INVALID, "aggregate type of 1025 bytes: %s %s", cqrs_status_name(st), err);

    topup_init(&tu, "lim", 1);
    topup_metadata(&tu, 33, "v");
    st = call_status(c, &tu.req, err, sizeof err);
    cr_assert_eq(st, INVALID, "33 metadata entries: %s %s", cqrs_status_name(st), err);
    cr_assert(strstr(err, "32"), "error: %s", err);
    topup_metadata(&tu, 32, "v");
    st = call_status(c, &tu.req, err, sizeof err);
    cr_assert_eq(st, OK, "32 metadata entries: %s %s", cqrs_status_name(st), err);
    applied++;

    /* one entry "k0" = value: 2 + len bytes */
    char *v4095 = repeat('v', 4095), *v4094 = repeat('v', 4094);
    topup_init(&tu, "lim", 1);
    topup_metadata(&tu, 1, v4095);
    st = call_status(c, &tu.req, err, sizeof err);
    cr_assert_eq(st, INVALID, "metadata of 4097 bytes: %s %s", cqrs_status_name(st), err);
    cr_assert(strstr(err, "4096"), "error: %s", err);
    topup_metadata(&tu, 1, v4094);
    st = call_status(c, &tu.req, err, sizeof err);
    cr_assert_eq(st, OK, "metadata of 4096 bytes: %s %s", cqrs_status_name(st), err);
    applied++;

    /* the connection is still usable, and nothing refused was applied */
    topup_init(&tu, "lim", 1);
    cr_assert_eq(call_status(c, &tu.req, err, sizeof err), OK, "%s", err);
    applied++;
    uint64_t v;
    int64_t bal;
    wallet_state(c, "lim", &v, &bal);
    cr_assert_eq(v, (uint64_t)applied, "version %llu, expected %d", (unsigned long long)v, applied);
    cr_assert_eq(bal, applied);
    free(s1025);
    free(s1024);
    free(v4095);
    free(v4094);
    cqrs_client_free(c);
}

/* ---- a confused worker ------------------------------------------------------------ */

Test(access, worker_sending_garbage_is_replaced)
{
    daemon_prepare(&d, NULL);
    const char *env[] = { "CQRS_TEST_WORKER_GARBAGE=bad", NULL };
    daemon_spawn_with(&d, env, NULL, NULL);
    daemon_wait_ready(&d);
    pid_t worker = daemon_child_pid(&d, "wallet");
    pid_t account = daemon_child_pid(&d, "account");

    struct cqrs_client *c = daemon_connect(&d);
    cqrs_client_set_retries(c, 0);
    struct topup tu;
    char err[300];
    topup_init(&tu, "bad", 1);
    Cqrs__Status st = call_status(c, &tu.req, err, sizeof err);
    cr_assert_eq(st, UNAVAILABLE, "TopUp to the garbage id: %s %s", cqrs_status_name(st), err);

    struct child_status s = daemon_wait_new_pid(&d, "wallet", worker, 10000);
    cr_assert_geq(s.restarts, 1);
    cr_assert(strstr(s.last_exit, "malformed"), "last_exit: %s", s.last_exit);
    cr_assert(pid_wait_dead(worker, 5000), "the confused worker still lives");
    cr_assert(log_has("malformed", 1000), "no log line about the malformed frame");

    topup_init(&tu, "good", 1);
    st = call_status(c, &tu.req, err, sizeof err);   /* the same connection */
    cr_assert_eq(st, OK, "TopUp to a good id: %s %s", cqrs_status_name(st), err);
    cqrs_client_free(c);
    cr_assert(pid_alive(d.pid), "cqrsd died");
    cr_assert_eq(daemon_child_pid(&d, "account"), account, "the account worker was restarted");
    int status = daemon_stop(&d);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "cqrsd wait status 0x%x", status);
}

/* ---- a client that never reads its replies ---------------------------------------- */

static long daemon_rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

/* It pipelines EVENTS queries with big replies and reads none: cqrsd stops
 * reading it once a few MB of replies wait (its own sends then block), its
 * memory stays put, others are served, and every reply is there when the
 * client finally reads. */
Test(access, unread_replies_stop_reading_not_memory)
{
    daemon_start_conf(&d, "[server]\nmax_inflight_per_conn = 16\n[child wallet]\n[child account]\n",
                      NULL);
    struct cqrs_client *c = daemon_connect(&d);
    for (int i = 0; i < 1000; i++) {
        struct topup tu;
        topup_init(&tu, "fat", 1);
        char err[256];
        cr_assert_eq(call_status(c, &tu.req, err, sizeof err), OK, "%s", err);
    }
    cqrs_client_free(c);
    long before = daemon_rss_kb(d.pid);

    int fd = daemon_connect_raw(&d);
    Cqrs__Request req = CQRS__REQUEST__INIT;
    Cqrs__Query q = CQRS__QUERY__INIT;
    q.aggregate_type = "wallet";
    q.aggregate_id = "fat";
    q.kind = CQRS__QUERY__KIND__EVENTS;
    q.from_version = 1;
    req.body_case = CQRS__REQUEST__BODY_QUERY;
    req.query = &q;
    size_t len = cqrs__request__get_packed_size(&req);
    uint8_t frame[256];
    cr_assert_lt(len + 4, sizeof frame);
    long sent = 0;
    int64_t blocked_since = 0;
    while (sent < 3000) {   /* 3,000 replies of ~100 KB: 300 MB held */
        req.id = (uint64_t)sent + 1;
        len = cqrs__request__pack(&req, frame + 4);
        frame[0] = 0, frame[1] = (uint8_t)(len >> 16), frame[2] = (uint8_t)(len >> 8);
        frame[3] = (uint8_t)len;
        ssize_t w = send(fd, frame, len + 4, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w == (ssize_t)(len + 4)) {
            sent++;
            blocked_since = 0;
            continue;
        }
        cr_assert(w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK),
                  "a partial or failed send (%zd): %s", w, strerror(errno));
        if (!blocked_since)
            blocked_since = harness_ms();
        else if (harness_ms() - blocked_since > 1000)
            break;   /* cqrsd has stopped reading us */
        harness_sleep_ms(10);
    }
    cr_assert_lt(sent, 3000, "cqrsd kept reading a client that reads nothing");
    long after = daemon_rss_kb(d.pid);
    cr_log_info("%ld queries sent before cqrsd stopped reading; cqrsd RSS %ld -> %ld kB", sent,
                before, after);
    cr_assert_lt(after - before, 64 * 1024, "cqrsd grew by %ld kB for one idle reader",
                 after - before);
    status_within(2000);   /* the others are served */

    /* nothing was lost: every reply arrives, in order, once it reads */
    for (long i = 1; i <= sent; i++) {
        Cqrs__Reply *r = raw_reply(fd, 10000);
        cr_assert_eq(r->id, (uint64_t)i);
        cr_assert_eq(r->status, OK, "%s", r->error);
        cqrs__reply__free_unpacked(r, NULL);
    }
    close(fd);
}
