/*
 * test_verify_offline — `cqrsd --verify --data-dir DIR` on a data dir made
 * by a real daemon run: clean logs give exit 0 and no problem line; one
 * flipped bit in the middle of a stream file gives exit 1 and one line
 * naming that file, and the file is left as it was; a data dir that cannot
 * be read gives exit 2. The offline check is run with fork/exec, as an
 * operator would, with no daemon around.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "account.pb-c.h"
#include "harness.h"
#include "layout.h"
#include "wallet.pb-c.h"

static struct daemon d;

static void teardown(void)
{
    daemon_cleanup(&d);
}

TestSuite(verify_offline, .fini = teardown, .timeout = 60);

/* Reads a whole file into a malloc'd string ("" when absent). */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0, cap = 0;
    if (f) {
        for (;;) {
            if (n + 4096 + 1 > cap) {
                cap = cap ? cap * 2 : 8192;
                buf = realloc(buf, cap);
                cr_assert(buf, "out of memory");
            }
            size_t got = fread(buf + n, 1, 4096, f);
            n += got;
            if (got == 0)
                break;
        }
        fclose(f);
    }
    if (!buf) {
        buf = malloc(1);
        cr_assert(buf, "out of memory");
    }
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

/* Runs `cqrsd --verify --data-dir DATA`, its output kept in `work`; returns
 * its exit code (asserting it exited), its stdout and stderr in *out and
 * *err (caller frees). */
static int run_verify(const char *work, const char *data, char **out, char **err)
{
    char out_path[PATH_MAX], err_path[PATH_MAX];
    snprintf(out_path, sizeof out_path, "%s/verify.out", work);
    snprintf(err_path, sizeof err_path, "%s/verify.err", work);
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        int o = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int e = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (o < 0 || e < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0)
            _exit(127);
        execl(CQRSD_PATH, "cqrsd", "--verify", "--data-dir", data, (char *)NULL);
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        cr_assert(errno == EINTR, "waitpid: %s", strerror(errno));
    *out = slurp(out_path, NULL);
    *err = slurp(err_path, NULL);
    cr_assert(WIFEXITED(st), "cqrsd --verify did not exit (wait status 0x%x); stderr:\n%s", st,
              *err);
    return WEXITSTATUS(st);
}

static void send_ok(struct cqrs_client *c, const char *type, const char *id,
                    const ProtobufCMessage *msg)
{
    Cqrs__Reply *r = send_cmd(c, type, id, msg, NULL, -1);
    cr_assert_eq(r->status, CQRS__STATUS__OK, "%s %s %s: %s (%s)", msg->descriptor->short_name,
                 type, id, cqrs_status_name(r->status), r->error);
    cqrs__reply__free_unpacked(r, NULL);
}

/* A real daemon run: wallets w1 (eight events) and w2, account a1; then a
 * clean stop. */
static void make_data(void)
{
    daemon_start(&d, NULL);
    struct cqrs_client *c = daemon_connect(&d);
    for (int i = 1; i <= 6; i++) {
        Wallet__TopUp t = WALLET__TOP_UP__INIT;
        t.amount = 10 * i;
        send_ok(c, "wallet", "w1", &t.base);
    }
    Wallet__AuthorizeFunds a = WALLET__AUTHORIZE_FUNDS__INIT;
    a.amount = 30;
    a.tx_id = "tx-1";
    send_ok(c, "wallet", "w1", &a.base);
    Wallet__CaptureFunds cap = WALLET__CAPTURE_FUNDS__INIT;
    cap.amount = 25;
    cap.tx_id = "tx-1";
    send_ok(c, "wallet", "w1", &cap.base);

    Wallet__RenameWallet rn = WALLET__RENAME_WALLET__INIT;
    rn.name = "Savings";
    send_ok(c, "wallet", "w2", &rn.base);

    Account__OpenAccount op = ACCOUNT__OPEN_ACCOUNT__INIT;
    op.owner = "ada";
    op.email = "ada@example.org";
    send_ok(c, "account", "a1", &op.base);
    cqrs_client_free(c);

    int st = daemon_stop(&d);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "cqrsd did not exit 0 on SIGTERM (wait status 0x%x)", st);
}

Test(verify_offline, clean_then_one_flipped_bit)
{
    make_data();

    char *out, *err;
    int code = run_verify(d.dir, d.data, &out, &err);
    cr_assert_eq(code, 0, "clean logs: exit %d; stdout:\n%s\nstderr:\n%s", code, out, err);
    cr_assert_str_empty(out, "clean logs: problem lines:\n%s", out);
    cr_assert(strstr(err, "cqrsd: verified 3 streams of 2 types: 0 problems\n"),
              "clean logs: summary is \"%s\"", err);
    free(out);
    free(err);

    /* one bit in the middle of w1's log */
    char type_dir[PATH_MAX], path[PATH_MAX];
    snprintf(type_dir, sizeof type_dir, "%s/wallet", d.data);
    layout_stream_file(path, sizeof path, type_dir, "w1", ".log");
    size_t len;
    char *before = slurp(path, &len);
    cr_assert_gt(len, 64, "%s holds %zu bytes", path, len);
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
    uint8_t b = (uint8_t)before[len / 2] ^ 0x10;
    cr_assert_eq(pwrite(fd, &b, 1, (off_t)(len / 2)), 1);
    close(fd);
    before[len / 2] = (char)b;

    code = run_verify(d.dir, d.data, &out, &err);
    cr_assert_eq(code, 1, "flipped bit: exit %d; stdout:\n%s\nstderr:\n%s", code, out, err);
    char prefix[PATH_MAX + 2];
    snprintf(prefix, sizeof prefix, "%s: ", path);
    cr_assert(strncmp(out, prefix, strlen(prefix)) == 0, "the problem line does not name %s:\n%s",
              path, out);
    char *nl = strchr(out, '\n');
    cr_assert(nl && nl[1] == '\0', "expected exactly one problem line, got:\n%s", out);
    cr_assert(strstr(err, "cqrsd: verified 3 streams of 2 types: 1 problems\n"),
              "flipped bit: summary is \"%s\"", err);
    free(out);
    free(err);

    /* verify looked only */
    size_t len_after;
    char *after = slurp(path, &len_after);
    cr_assert_eq(len_after, len, "verify changed the size of %s", path);
    cr_assert(memcmp(after, before, len) == 0, "verify changed %s", path);
    free(after);
    free(before);
}

/* The same check through the running daemon: `cqrsctl verify`. */
Test(verify_offline, live_through_cqrsctl)
{
    make_data();
    char type_dir[PATH_MAX], path[PATH_MAX];
    snprintf(type_dir, sizeof type_dir, "%s/wallet", d.data);
    layout_stream_file(path, sizeof path, type_dir, "w1", ".log");
    daemon_restart(&d);

    char *out, *err;
    int code = run_cqrsctl(&d, &out, &err, "verify", NULL);
    cr_assert_eq(code, 0, "clean: exit %d\n%s%s", code, out, err);
    cr_assert_str_empty(out, "clean: %s", out);
    free(out);
    free(err);

    /* a flipped bit in the middle of w1's log, behind the daemon's back */
    size_t len;
    char *bytes = slurp(path, &len);
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0);
    uint8_t b = (uint8_t)bytes[len / 2] ^ 0x10;
    cr_assert_eq(pwrite(fd, &b, 1, (off_t)(len / 2)), 1);
    close(fd);
    free(bytes);

    code = run_cqrsctl(&d, &out, &err, "verify", "wallet", NULL);
    cr_assert_eq(code, 1, "flipped bit: exit %d\n%s%s", code, out, err);
    cr_assert(strncmp(out, path, strlen(path)) == 0, "the problem line does not name %s:\n%s",
              path, out);
    free(out);
    free(err);
    code = run_cqrsctl(&d, &out, &err, "--json", "verify", "wallet", "w2", NULL);
    cr_assert_eq(code, 0, "w2 is clean: exit %d\n%s%s", code, out, err);
    cr_assert(strstr(out, "\"clean\":true"), "%s", out);
    free(out);
    free(err);
}

Test(verify_offline, unreadable_data_dir)
{
    char work[] = "/tmp/test_verify_offline.XXXXXX";
    cr_assert(mkdtemp(work), "mkdtemp: %s", strerror(errno));
    char missing[PATH_MAX];
    snprintf(missing, sizeof missing, "%s/no-such-dir", work);
    char *out, *err;
    int code = run_verify(work, missing, &out, &err);
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/verify.out", work);
    unlink(path);
    snprintf(path, sizeof path, "%s/verify.err", work);
    unlink(path);
    rmdir(work);
    cr_assert_eq(code, 2, "missing data dir: exit %d; stderr:\n%s", code, err);
    cr_assert_str_empty(out);
    cr_assert(strstr(err, "no-such-dir"), "the error does not name the data dir: %s", err);
    free(out);
    free(err);
}
