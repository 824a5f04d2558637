/*
 * test_cqrsctl — the real cqrsctl against the real cqrsd: the talk's wallet
 * scenario, human and --json output, each exit code a user can provoke
 * (0, 1, 64, 65, 69), socket selection, the EVENTS paging loop, status and
 * kill of a worker that comes back.
 *
 * WITH_DAEMON tests start one cqrsd each (criterion runs tests in parallel
 * processes); ALONE tests run cqrsctl without a daemon (help, version,
 * usage errors).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "wallet.pb-c.h"

static struct daemon d;
static char *out, *err;          /* of the last cqrsctl run */

/* Runs cqrsctl -s <daemon socket> ARGS...; its output lands in out/err. */
#define CTL(...)                                                                \
    (free(out), free(err), out = err = NULL,                                    \
     run_cqrsctl(&d, &out, &err, __VA_ARGS__, (char *)NULL))

#define expect_exit(rc, code)                                                   \
    do {                                                                        \
        int rc_ = (rc);                                                         \
        cr_assert_eq(rc_, (code), "cqrsctl exited %d, expected %d\nstdout: %s\nstderr: %s", \
                     rc_, (code), out ? out : "", err ? err : "");              \
    } while (0)

#define expect_str(got, want)                                                   \
    cr_assert_str_eq((got), (want), "got:\n%s\nwanted:\n%s\nstderr: %s", (got), (want), \
                     err ? err : "")

/* One line on stderr: "cqrsctl: <prefix>...\n" and nothing else. */
#define expect_error_line(prefix)                                               \
    do {                                                                        \
        cr_assert(strncmp(err, "cqrsctl: " prefix, strlen("cqrsctl: " prefix)) == 0, \
                  "stderr does not start with \"cqrsctl: %s\": %s", prefix, err); \
        cr_assert(strchr(err, '\n') == err + strlen(err) - 1,                   \
                  "stderr is not exactly one line: %s", err);                   \
    } while (0)

static void setup(void)
{
    daemon_start(&d, NULL);
}

static void teardown(void)
{
    free(out);
    free(err);
    out = err = NULL;
    daemon_cleanup(&d);
}

static void teardown_alone(void)
{
    free(out);
    free(err);
    out = err = NULL;
}

/* One suite, fixtures per test: criterion 2.4.1's runner leaks (and so
 * fails under ASan) with two suites that have fixtures under --jobs 2. */
TestSuite(cqrsctl, .timeout = 120);
#define WITH_DAEMON .init = setup, .fini = teardown
#define ALONE .fini = teardown_alone

/* --- helpers ------------------------------------------------------------ */

static json_t *parse_json(const char *text)
{
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    cr_assert(j, "stdout is not one JSON document (%s at line %d): %s", je.text, je.line, text);
    return j;
}

static json_int_t jint(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    cr_assert(json_is_integer(v), "\"%s\" is not an integer in %s", key, out);
    return json_integer_value(v);
}

static const char *jstr(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    cr_assert(json_is_string(v), "\"%s\" is not a string in %s", key, out);
    return json_string_value(v);
}

static void expect_keys(json_t *obj, size_t n, const char *const *keys)
{
    cr_assert(json_is_object(obj), "not an object in %s", out);
    cr_assert_eq(json_object_size(obj), n, "object has %zu keys, expected %zu: %s",
                 json_object_size(obj), n, out);
    for (size_t i = 0; i < n; i++)
        cr_assert(json_object_get(obj, keys[i]), "key \"%s\" missing in %s", keys[i], out);
}

/* cqrsctl without the harness's -s: an explicit environment and cwd (for
 * the socket selection and the tests without a daemon). `sock_env` NULL
 * unsets CQRS_SOCKET; `cwd` NULL keeps ours. */
static int run_alone(const char *sock_env, const char *cwd, ...)
{
    const char *argv[32];
    int n = 0;
    argv[n++] = CQRSCTL_PATH;
    va_list ap;
    va_start(ap, cwd);
    for (const char *a; (a = va_arg(ap, const char *)) != NULL;) {
        cr_assert(n < 31, "too many arguments");
        argv[n++] = a;
    }
    va_end(ap);
    argv[n] = NULL;

    char opath[] = "/tmp/cqrsctl-out.XXXXXX", epath[] = "/tmp/cqrsctl-err.XXXXXX";
    int ofd = mkostemp(opath, O_CLOEXEC), efd = mkostemp(epath, O_CLOEXEC);
    cr_assert(ofd >= 0 && efd >= 0, "mkostemp: %s", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        if (sock_env)
            setenv("CQRS_SOCKET", sock_env, 1);
        else
            unsetenv("CQRS_SOCKET");
        if ((cwd && chdir(cwd) < 0) || dup2(ofd, 1) < 0 || dup2(efd, 2) < 0)
            _exit(126);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        cr_assert(errno == EINTR, "waitpid: %s", strerror(errno));
    free(out);
    free(err);
    out = err = NULL;
    for (int k = 0; k < 2; k++) {
        int fd = k ? efd : ofd;
        off_t len = lseek(fd, 0, SEEK_END);
        char *buf = malloc((size_t)len + 1);
        cr_assert(buf && pread(fd, buf, (size_t)len, 0) == len, "cannot read the capture");
        buf[len] = '\0';
        *(k ? &err : &out) = buf;
        close(fd);
    }
    unlink(opath);
    unlink(epath);
    cr_assert(WIFEXITED(status), "cqrsctl died (wait status 0x%x); stderr: %s", status, err);
    return WEXITSTATUS(status);
}

/* The talk's four commands on wallet `id`. */
static void talk_scenario(const char *id)
{
    expect_exit(CTL("send", "wallet", id, "TopUp", "amount=100"), 0);
    expect_str(out, "OK version 1 position 1\n  1 WalletToppedUp from=0 to=100\n");
    expect_str(err, "");
    expect_exit(CTL("send", "wallet", id, "RenameWallet", "name=Savings"), 0);
    expect_str(out, "OK version 2 position 2\n  2 WalletRenamed name=\"Savings\"\n");
    expect_exit(CTL("send", "wallet", id, "AuthorizeFunds", "amount=10", "tx_id=123"), 0);
    expect_str(out, "OK version 3 position 3\n  3 FundsAuthorized amount=10 tx_id=\"123\"\n");
    expect_exit(CTL("send", "wallet", id, "CaptureFunds", "amount=8", "tx_id=123"), 0);
    expect_str(out, "OK version 4 position 4\n  4 FundsCaptured amount=8 tx_id=\"123\"\n");
}

/* pid of child `name` in a --json status document, and its record. */
static json_t *status_child(json_t *doc, const char *name)
{
    json_t *children = json_object_get(doc, "children");
    cr_assert(json_is_array(children), "no children array in %s", out);
    size_t i;
    json_t *ch;
    json_array_foreach(children, i, ch)
        if (strcmp(jstr(ch, "name"), name) == 0)
            return ch;
    return NULL;
}

static void nap_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* --- the talk's scenario -------------------------------------------------- */

/* Removes ` command_id="<32 hex digits>"` (the ids the client library makes
 * up when none is given) from `s`, asserting each is well-formed. */
static void strip_generated_command_ids(char *s)
{
    static const char tag[] = " command_id=\"";
    char *p;
    while ((p = strstr(s, tag)) != NULL) {
        char *id = p + sizeof tag - 1;
        size_t n = strspn(id, "0123456789abcdef");
        cr_assert(n == 32 && id[n] == '"', "not a generated command id: %.40s", p);
        memmove(p, id + n + 1, strlen(id + n + 1) + 1);
    }
}

Test(cqrsctl, talk_scenario_get_json, WITH_DAEMON)
{
    talk_scenario("w1");

    expect_exit(CTL("--json", "get", "wallet", "w1"), 0);
    expect_str(err, "");
    json_t *doc = parse_json(out);
    expect_keys(doc, 4, (const char *[]){ "type", "id", "version", "state" });
    cr_assert_str_eq(jstr(doc, "type"), "wallet");
    cr_assert_str_eq(jstr(doc, "id"), "w1");
    cr_assert_eq(jint(doc, "version"), 4);
    json_t *state = json_object_get(doc, "state");
    expect_keys(state, 3, (const char *[]){ "label", "balance", "blocked" });
    cr_assert_str_eq(jstr(state, "label"), "Savings");
    cr_assert_eq(jint(state, "balance"), 92);
    json_t *blocked = json_object_get(state, "blocked");
    cr_assert(json_is_array(blocked) && json_array_size(blocked) == 0,
              "blocked is not an empty array: %s", out);
    json_decref(doc);

    expect_exit(CTL("get", "wallet", "w1"), 0);
    expect_str(out, "wallet w1 version 4\n"
                    "  label: \"Savings\"\n"
                    "  balance: 92\n"
                    "  blocked: []\n");
}

Test(cqrsctl, talk_scenario_events, WITH_DAEMON)
{
    talk_scenario("w1");

    expect_exit(CTL("--json", "events", "wallet", "w1"), 0);
    json_t *doc = parse_json(out);
    expect_keys(doc, 3, (const char *[]){ "type", "id", "events" });
    cr_assert_str_eq(jstr(doc, "type"), "wallet");
    cr_assert_str_eq(jstr(doc, "id"), "w1");
    json_t *evs = json_object_get(doc, "events");
    cr_assert(json_is_array(evs) && json_array_size(evs) == 4, "not 4 events: %s", out);

    static const char *const types[] = { "WalletToppedUp", "WalletRenamed",
                                         "FundsAuthorized", "FundsCaptured" };
    for (size_t i = 0; i < 4; i++) {
        json_t *ev = json_array_get(evs, i);
        expect_keys(ev, 5, (const char *[]){ "version", "timestamp_us", "type", "data",
                                             "command_id" });
        cr_assert_eq(jint(ev, "version"), (json_int_t)i + 1);
        cr_assert_gt(jint(ev, "timestamp_us"), 1600000000LL * 1000000, "timestamp: %s", out);
        cr_assert_str_eq(jstr(ev, "type"), types[i]);
        /* none was given: the client library made one, so a retry is safe */
        cr_assert_eq(strlen(jstr(ev, "command_id")), 32, "command_id: %s", out);
        for (size_t j = 0; j < i; j++)
            cr_assert_str_neq(jstr(ev, "command_id"),
                              jstr(json_array_get(evs, j), "command_id"));
    }
    json_t *d1 = json_object_get(json_array_get(evs, 0), "data");
    expect_keys(d1, 2, (const char *[]){ "from", "to" });
    cr_assert_eq(jint(d1, "from"), 0);       /* a proto3 default, still there */
    cr_assert_eq(jint(d1, "to"), 100);
    cr_assert_str_eq(jstr(json_object_get(json_array_get(evs, 1), "data"), "name"), "Savings");
    json_t *d3 = json_object_get(json_array_get(evs, 2), "data");
    cr_assert_eq(jint(d3, "amount"), 10);
    cr_assert_str_eq(jstr(d3, "tx_id"), "123");
    json_t *d4 = json_object_get(json_array_get(evs, 3), "data");
    cr_assert_eq(jint(d4, "amount"), 8);
    cr_assert_str_eq(jstr(d4, "tx_id"), "123");
    json_decref(doc);

    expect_exit(CTL("events", "wallet", "w1"), 0);
    strip_generated_command_ids(out);
    expect_str(out, "1 WalletToppedUp from=0 to=100\n"
                    "2 WalletRenamed name=\"Savings\"\n"
                    "3 FundsAuthorized amount=10 tx_id=\"123\"\n"
                    "4 FundsCaptured amount=8 tx_id=\"123\"\n");

    expect_exit(CTL("events", "wallet", "w1", "--from", "3"), 0);
    strip_generated_command_ids(out);
    expect_str(out, "3 FundsAuthorized amount=10 tx_id=\"123\"\n"
                    "4 FundsCaptured amount=8 tx_id=\"123\"\n");
    expect_exit(CTL("events", "wallet", "w1", "--from", "5"), 0);
    expect_str(out, "");
}

/* --- send --json, nested state, another type ------------------------------ */

Test(cqrsctl, send_json_shape_and_retry, WITH_DAEMON)
{
    expect_exit(CTL("--json", "send", "wallet", "w2", "TopUp", "amount=50",
                    "--command-id", "c-1"), 0);
    expect_str(out, "{\"status\":\"OK\",\"version\":1,\"position\":1,\"events\":[{\"version\":1,"
                    "\"type\":\"WalletToppedUp\",\"data\":{\"from\":0,\"to\":50}}]}\n");
    expect_str(err, "");

    /* A retry with the same command id: the first outcome, nothing appended. */
    expect_exit(CTL("send", "wallet", "w2", "TopUp", "amount=50", "--command-id=c-1"), 0);
    expect_str(out, "OK version 1 position 1\n  1 WalletToppedUp from=0 to=50\n");
    expect_exit(CTL("events", "wallet", "w2"), 0);
    expect_str(out, "1 WalletToppedUp from=0 to=50 command_id=\"c-1\"\n");

    /* A command that appends nothing: renaming to the current label. */
    expect_exit(CTL("--json", "send", "wallet", "w2", "RenameWallet", "name=Main wallet"), 0);
    expect_str(out, "{\"status\":\"OK\",\"version\":1,\"position\":0,\"events\":[]}\n");
}

Test(cqrsctl, get_prints_repeated_nested_messages, WITH_DAEMON)
{
    expect_exit(CTL("send", "wallet", "w3", "TopUp", "amount=100"), 0);
    expect_exit(CTL("send", "wallet", "w3", "AuthorizeFunds", "amount=30", "tx_id=t1"), 0);
    expect_exit(CTL("send", "wallet", "w3", "AuthorizeFunds", "tx_id=t 2", "amount=5"), 0);

    expect_exit(CTL("get", "wallet", "w3"), 0);
    expect_str(out, "wallet w3 version 3\n"
                    "  label: \"Main wallet\"\n"
                    "  balance: 100\n"
                    "  blocked: [{tx_id: \"t1\", amount: 30}, {tx_id: \"t 2\", amount: 5}]\n");

    expect_exit(CTL("--json", "get", "wallet", "w3"), 0);
    expect_str(out, "{\"type\":\"wallet\",\"id\":\"w3\",\"version\":3,\"state\":{"
                    "\"label\":\"Main wallet\",\"balance\":100,\"blocked\":["
                    "{\"tx_id\":\"t1\",\"amount\":30},{\"tx_id\":\"t 2\",\"amount\":5}]}}\n");
}

Test(cqrsctl, account_type_is_generic_too, WITH_DAEMON)
{
    expect_exit(CTL("send", "account", "a1", "OpenAccount", "owner=Ann O'Neil",
                    "email=ann@example.com"), 0);
    expect_str(out, "OK version 1 position 1\n  1 AccountOpened owner=\"Ann O'Neil\" email=\"ann@example.com\"\n");
    expect_exit(CTL("send", "account", "a1", "ChangeEmail", "email=ann@example.org"), 0);
    expect_str(out, "OK version 2 position 2\n  2 EmailChanged from=\"ann@example.com\" to=\"ann@example.org\"\n");

    expect_exit(CTL("get", "account", "a1"), 0);
    expect_str(out, "account a1 version 2\n"
                    "  owner: \"Ann O'Neil\"\n"
                    "  email: \"ann@example.org\"\n"
                    "  open: true\n"
                    "  closed: false\n");

    expect_exit(CTL("send", "account", "a1", "CloseAccount"), 0);
    expect_str(out, "OK version 3 position 3\n  3 AccountClosed\n");
    expect_exit(CTL("--json", "get", "account", "a1"), 0);
    expect_str(out, "{\"type\":\"account\",\"id\":\"a1\",\"version\":3,\"state\":{"
                    "\"owner\":\"Ann O'Neil\",\"email\":\"ann@example.org\","
                    "\"open\":false,\"closed\":true}}\n");
}

/* --- exit 1: rejected, conflict, not found -------------------------------- */

Test(cqrsctl, rejected_exits_1, WITH_DAEMON)
{
    expect_exit(CTL("send", "wallet", "w1", "TopUp", "amount=100"), 0);
    expect_exit(CTL("send", "wallet", "w1", "AuthorizeFunds", "amount=10", "tx_id=123"), 0);

    expect_exit(CTL("send", "wallet", "w1", "CaptureFunds", "amount=20", "tx_id=123"), 1);
    expect_str(out, "");
    expect_error_line("rejected: ");
    cr_assert_gt(strlen(err), strlen("cqrsctl: rejected: \n"), "no reason given: %s", err);

    expect_exit(CTL("--json", "send", "wallet", "w1", "AuthorizeFunds", "amount=91",
                    "tx_id=9"), 1);
    expect_error_line("rejected: ");
    json_t *doc = parse_json(out);
    expect_keys(doc, 2, (const char *[]){ "status", "error" });
    cr_assert_str_eq(jstr(doc, "status"), "REJECTED");
    /* The JSON error is the daemon's sentence that stderr shows too. */
    char line[600];
    snprintf(line, sizeof line, "cqrsctl: rejected: %s\n", jstr(doc, "error"));
    expect_str(err, line);
    json_decref(doc);

    /* Nothing was appended. */
    expect_exit(CTL("get", "wallet", "w1"), 0);
    cr_assert(strncmp(out, "wallet w1 version 2\n", 20) == 0, "state: %s", out);
}

Test(cqrsctl, conflict_exits_1, WITH_DAEMON)
{
    expect_exit(CTL("send", "wallet", "w1", "TopUp", "amount=5", "--expect-version", "3"), 1);
    expect_str(out, "");
    expect_error_line("conflict: ");

    expect_exit(CTL("send", "wallet", "w1", "TopUp", "amount=5", "--expect-version", "0"), 0);
    expect_str(out, "OK version 1 position 1\n  1 WalletToppedUp from=0 to=5\n");
    expect_exit(CTL("--json", "send", "wallet", "w1", "TopUp", "amount=5",
                    "--expect-version=0"), 1);
    json_t *doc = parse_json(out);
    cr_assert_str_eq(jstr(doc, "status"), "CONFLICT");
    json_decref(doc);
    expect_exit(CTL("send", "wallet", "w1", "--expect-version", "1", "TopUp", "amount=5"), 0);
    expect_str(out, "OK version 2 position 2\n  2 WalletToppedUp from=5 to=10\n");
}

Test(cqrsctl, not_found_exits_1, WITH_DAEMON)
{
    expect_exit(CTL("get", "wallet", "nobody"), 1);
    expect_str(out, "");
    expect_error_line("not found: ");

    expect_exit(CTL("events", "account", "nobody"), 1);
    expect_error_line("not found: ");

    expect_exit(CTL("--json", "get", "wallet", "nobody"), 1);
    json_t *doc = parse_json(out);
    expect_keys(doc, 2, (const char *[]){ "status", "error" });
    cr_assert_str_eq(jstr(doc, "status"), "NOT_FOUND");
    json_decref(doc);
}

/* --- exit 65: the daemon says INVALID ------------------------------------- */

Test(cqrsctl, invalid_exits_65, WITH_DAEMON)
{
    expect_exit(CTL("send", "wallet", "w1", "TopUp", "amount=0"), 65);
    expect_str(out, "");
    expect_error_line("invalid: ");

    expect_exit(CTL("send", "wallet", "a/b", "TopUp", "amount=5"), 65);
    expect_error_line("invalid: ");

    expect_exit(CTL("--json", "send", "wallet", "w1", "RenameWallet", "name="), 65);
    json_t *doc = parse_json(out);
    expect_keys(doc, 2, (const char *[]){ "status", "error" });
    cr_assert_str_eq(jstr(doc, "status"), "INVALID");
    json_decref(doc);

    expect_exit(CTL("get", "wallet", "w1"), 1);      /* nothing was appended */
}

/* --- exit 64: usage errors, caught before anything is sent ---------------- */

Test(cqrsctl, usage_errors_exit_64_and_send_nothing, WITH_DAEMON)
{
    expect_exit(CTL("frobnicate"), 64);
    expect_error_line("unknown subcommand \"frobnicate\"");
    expect_str(out, "");

    expect_exit(CTL("send", "wallet", "w1", "TopUp", "amount=1", "colour=red"), 64);
    expect_error_line("TopUp has no field \"colour\"");

    expect_exit(CTL("send", "wallet", "w1", "TopUp", "amount=abc"), 64);
    expect_error_line("invalid value \"abc\" for field amount");

    expect_exit(CTL("send", "wallet", "w1", "TopUp", "amount=99999999999999999999"), 64);
    expect_error_line("invalid value \"99999999999999999999\" for field amount");

    expect_exit(CTL("send", "wallet", "w1", "Withdraw", "amount=1"), 64);
    expect_error_line("wallet has no command \"Withdraw\"");

    expect_exit(CTL("send", "piggybank", "w1", "TopUp", "amount=1"), 64);
    expect_error_line("unknown aggregate type \"piggybank\"");

    expect_exit(CTL("send", "wallet", "w1", "TopUp", "amount=1", "amount=2"), 64);
    expect_error_line("field amount is given more than once");

    expect_exit(CTL("send", "wallet", "w1", "TopUp", "amount=1", "--expect-version", "x"), 64);
    expect_error_line("invalid --expect-version \"x\"");

    expect_exit(CTL("send", "wallet", "w1"), 64);
    expect_exit(CTL("get", "wallet"), 64);
    expect_exit(CTL("get", "wallet", "w1", "extra"), 64);
    expect_exit(CTL("events", "wallet", "w1", "--from", "-1"), 64);
    expect_exit(CTL("status", "--frob"), 64);
    expect_exit(CTL("kill", "piggybank"), 64);

    /* None of them reached the daemon. */
    expect_exit(CTL("get", "wallet", "w1"), 1);
    expect_exit(CTL("--json", "status"), 0);
    json_t *doc = parse_json(out);
    cr_assert_eq(jint(status_child(doc, "wallet"), "restarts"), 0);
    json_decref(doc);
}

/* --- exit 69 and the socket's selection ----------------------------------- */

Test(cqrsctl, unreachable_socket_exits_69, WITH_DAEMON)
{
    char missing[400];
    snprintf(missing, sizeof missing, "%s/no-such.sock", d.dir);
    /* The last -s wins over the harness's own. */
    expect_exit(CTL("-s", missing, "get", "wallet", "w1"), 69);
    expect_str(out, "");
    expect_error_line("cannot connect to the daemon at ");
    cr_assert(strstr(err, missing), "the path is not named: %s", err);

    expect_exit(run_alone(missing, NULL, "--json", "status", NULL), 69);
    expect_str(out, "");
    expect_error_line("cannot connect to the daemon at ");
    cr_assert(strstr(err, missing), "CQRS_SOCKET was not used: %s", err);
}

Test(cqrsctl, socket_from_environment_and_default, WITH_DAEMON)
{
    /* $CQRS_SOCKET, no -s. */
    expect_exit(run_alone(d.sock, NULL, "--json", "status", NULL), 0);
    json_t *doc = parse_json(out);
    cr_assert(status_child(doc, "wallet"), "no wallet child: %s", out);
    json_decref(doc);

    /* -s beats $CQRS_SOCKET. */
    expect_exit(run_alone("/nonexistent/cqrsd.sock", NULL, "-s", d.sock, "status", NULL), 0);

    /* Neither: /run/cqrsd/cqrsd.sock if it exists, else var/cqrsd.sock. */
    struct stat st;
    if (stat("/run/cqrsd/cqrsd.sock", &st) == 0)
        cr_skip_test("/run/cqrsd/cqrsd.sock exists on this machine");
    expect_exit(run_alone(NULL, d.dir, "status", NULL), 69);
    expect_error_line("cannot connect to the daemon at var/cqrsd.sock: ");
    char var[400], link[400];
    snprintf(var, sizeof var, "%s/var", d.dir);
    snprintf(link, sizeof link, "%s/var/cqrsd.sock", d.dir);
    cr_assert(mkdir(var, 0700) == 0 && symlink(d.sock, link) == 0, "%s", strerror(errno));
    expect_exit(run_alone(NULL, d.dir, "status", NULL), 0);
    cr_assert(strstr(out, "wallet"), "status: %s", out);
}

/* --- status and kill ------------------------------------------------------ */

Test(cqrsctl, status_lists_running_workers, WITH_DAEMON)
{
    expect_exit(CTL("--json", "status"), 0);
    json_t *doc = parse_json(out);
    expect_keys(doc, 1, (const char *[]){ "children" });
    const char *const names[] = { "wallet", "account" };
    json_int_t pids[2];
    for (int i = 0; i < 2; i++) {
        json_t *ch = status_child(doc, names[i]);
        cr_assert(ch, "no %s child: %s", names[i], out);
        expect_keys(ch, 6, (const char *[]){ "name", "pid", "state", "restarts",
                                             "started_at_us", "last_exit" });
        cr_assert_str_eq(jstr(ch, "state"), "running");
        pids[i] = jint(ch, "pid");
        cr_assert_gt(pids[i], 1);
        cr_assert_eq(kill((pid_t)pids[i], 0), 0, "pid %lld is not alive", (long long)pids[i]);
        cr_assert_eq(jint(ch, "restarts"), 0);
        cr_assert_gt(jint(ch, "started_at_us"), 1600000000LL * 1000000);
    }
    cr_assert_neq(pids[0], pids[1]);
    json_decref(doc);

    expect_exit(CTL("status"), 0);
    cr_assert(strncmp(out, "NAME ", 5) == 0, "no table header: %s", out);
    for (int i = 0; i < 2; i++) {
        char pid[32];
        snprintf(pid, sizeof pid, " %lld ", (long long)pids[i]);
        const char *row = strstr(out, names[i]);
        cr_assert(row, "no %s row: %s", names[i], out);
        const char *eol = strchr(row, '\n');
        const char *p = strstr(row, pid);
        cr_assert(p && p < eol, "the %s row lacks pid %lld: %s", names[i], (long long)pids[i], out);
        p = strstr(row, " running ");
        cr_assert(p && p < eol, "the %s row is not running: %s", names[i], out);
    }
}

Test(cqrsctl, kill_worker_comes_back, WITH_DAEMON)
{
    expect_exit(CTL("send", "wallet", "w1", "TopUp", "amount=7"), 0);
    expect_exit(CTL("--json", "status"), 0);
    json_t *doc = parse_json(out);
    json_int_t wallet_pid = jint(status_child(doc, "wallet"), "pid");
    json_int_t account_pid = jint(status_child(doc, "account"), "pid");
    json_decref(doc);

    expect_exit(CTL("kill", "wallet"), 0);
    expect_str(err, "");

    json_int_t new_pid = 0;
    json_t *wallet = NULL;
    for (int tries = 0; tries < 100 && !new_pid; tries++) {
        expect_exit(CTL("--json", "status"), 0);
        doc = parse_json(out);
        json_t *w = status_child(doc, "wallet");
        if (strcmp(jstr(w, "state"), "running") == 0 && jint(w, "pid") != wallet_pid) {
            new_pid = jint(w, "pid");
            wallet = json_incref(w);
            cr_assert_eq(jint(status_child(doc, "account"), "pid"), account_pid,
                         "one_for_one: the account worker was restarted too");
        }
        json_decref(doc);
        if (!new_pid)
            nap_ms(50);
    }
    cr_assert(new_pid, "the wallet worker is not running again with a new pid after 5 s: %s", out);
    cr_assert_gt(new_pid, 1);
    cr_assert_eq(jint(wallet, "restarts"), 1);
    cr_assert_str_eq(jstr(wallet, "last_exit"), "killed by signal 9");
    json_decref(wallet);

    /* The restarted worker has the wallet back from its log. */
    expect_exit(CTL("send", "wallet", "w1", "TopUp", "amount=3"), 0);
    expect_str(out, "OK version 2 position 2\n  2 WalletToppedUp from=7 to=10\n");
}

/* --- EVENTS paging -------------------------------------------------------- */

/* A stream whose events do not fit one reply: cqrsctl keeps asking from the
 * last version + 1 and prints every event once, in order. Large command ids
 * make each event about 1 KiB. */
Test(cqrsctl, events_pages_through_long_stream, WITH_DAEMON)
{
    enum { N = 2000, WINDOW = 100, CID = 1000 };
    struct cqrs_client *c = daemon_connect(&d);
    Wallet__TopUp top = WALLET__TOP_UP__INIT;
    top.amount = 1;
    uint8_t payload[16];
    size_t len = protobuf_c_message_pack(&top.base, payload);
    char cid[CID + 1];
    memset(cid, 'x', CID);
    cid[CID] = '\0';
    uint64_t ids[WINDOW];
    for (int sent = 0; sent < N; sent += WINDOW) {
        for (int k = 0; k < WINDOW; k++) {
            Cqrs__Request req = CQRS__REQUEST__INIT;
            Cqrs__Command cmd = CQRS__COMMAND__INIT;
            snprintf(cid, sizeof cid, "%06d", sent + k);
            cid[6] = 'x';
            cmd.aggregate_type = "wallet";
            cmd.aggregate_id = "long";
            cmd.name = "TopUp";
            cmd.payload.data = payload;
            cmd.payload.len = len;
            cmd.command_id = cid;
            req.body_case = CQRS__REQUEST__BODY_COMMAND;
            req.command = &cmd;
            cr_assert_eq(cqrs_client_send(c, &req, &ids[k]), 0, "send: %s", strerror(errno));
        }
        for (int k = 0; k < WINDOW; k++) {
            Cqrs__Reply *r;
            cr_assert_eq(cqrs_client_recv(c, ids[k], &r), 0, "recv: %s", strerror(errno));
            cr_assert_eq(r->status, CQRS__STATUS__OK, "command %d: %s", sent + k, r->error);
            cqrs__reply__free_unpacked(r, NULL);
        }
    }
    /* The premise: one EVENTS reply does not hold the whole stream. */
    Cqrs__Reply *r;
    cr_assert_eq(cqrs_client_events(c, "wallet", "long", 1, 0, &r), 0);
    cr_assert_eq(r->status, CQRS__STATUS__OK);
    cr_assert(r->n_events > 0 && r->n_events < N,
              "one reply holds %zu of %d events: this test no longer exercises paging",
              r->n_events, N);
    cqrs__reply__free_unpacked(r, NULL);
    cqrs_client_free(c);

    expect_exit(CTL("--json", "events", "wallet", "long"), 0);
    json_t *doc = parse_json(out);
    json_t *evs = json_object_get(doc, "events");
    cr_assert_eq(json_array_size(evs), N, "%zu events listed", json_array_size(evs));
    for (size_t i = 0; i < N; i++) {
        json_t *ev = json_array_get(evs, i);
        cr_assert_eq(jint(ev, "version"), (json_int_t)i + 1);
        cr_assert_eq(jint(json_object_get(ev, "data"), "to"), (json_int_t)i + 1);
        cr_assert_eq(strlen(jstr(ev, "command_id")), CID);
    }
    json_decref(doc);

    expect_exit(CTL("events", "wallet", "long", "--from", "1990"), 0);
    size_t lines = 0;
    for (const char *p = out; (p = strchr(p, '\n')); p++)
        lines++;
    cr_assert_eq(lines, 11, "events --from 1990 printed %zu lines", lines);
    cr_assert(strncmp(out, "1990 WalletToppedUp from=1989 to=1990 command_id=\"001989x", 57) == 0,
              "first line: %.80s", out);
}

/* --- without a daemon ------------------------------------------------------ */

Test(cqrsctl, help_documents_exit_codes, ALONE)
{
    expect_exit(run_alone("/nonexistent.sock", NULL, "--help", NULL), 0);
    expect_str(err, "");
    cr_assert(strncmp(out, "usage: cqrsctl ", 15) == 0, "help: %s", out);
    static const char *const needles[] = {
        "send TYPE ID COMMAND", "get TYPE ID", "events TYPE ID", "status", "kill TYPE",
        "--json", "--command-id", "--expect-version", "--from", "CQRS_SOCKET",
        "\n  0   ", "\n  1   ", "\n  64  ", "\n  65  ", "\n  69  ", "\n  70  ",
        "wallet: RenameWallet TopUp AuthorizeFunds CaptureFunds ReleaseFunds\n",
        "account: OpenAccount ChangeEmail CloseAccount\n",
    };
    for (size_t i = 0; i < sizeof needles / sizeof needles[0]; i++)
        cr_assert(strstr(out, needles[i]), "help lacks \"%s\":\n%s", needles[i], out);
}

Test(cqrsctl, version, ALONE)
{
    expect_exit(run_alone(NULL, NULL, "--version", NULL), 0);
    cr_assert(strncmp(out, "cqrsctl ", 8) == 0 && out[8] >= '0' && out[8] <= '9' &&
              strchr(out, '\n') == out + strlen(out) - 1, "version: %s", out);
    expect_str(err, "");
}

Test(cqrsctl, usage_errors_without_daemon, ALONE)
{
    expect_exit(run_alone("/nonexistent.sock", NULL, NULL), 64);
    expect_error_line("no subcommand given");
    expect_exit(run_alone("/nonexistent.sock", NULL, "--frob", "status", NULL), 64);
    expect_error_line("unknown option --frob");
    expect_exit(run_alone("/nonexistent.sock", NULL, "-s", NULL), 64);
    expect_exit(run_alone("/nonexistent.sock", NULL, "send", "wallet", "w1", "TopUp",
                          "amount", NULL), 64);
    expect_error_line("expected field=value, got \"amount\"");
    expect_exit(run_alone("/nonexistent.sock", NULL, "send", "wallet", "w1", "TopUp",
                          "amount=1.5", NULL), 64);
    expect_exit(run_alone("/nonexistent.sock", NULL, "send", "wallet", "w1", "TopUp",
                          "amount= 1", NULL), 64);
    expect_exit(run_alone("/nonexistent.sock", NULL, "send", "wallet", "w1", "TopUp",
                          "--bogus", NULL), 64);
    expect_str(out, "");
    /* Valid input gets as far as connecting. */
    expect_exit(run_alone("/nonexistent.sock", NULL, "send", "wallet", "w1", "TopUp",
                          "amount=-5", NULL), 69);
}
