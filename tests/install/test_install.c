/*
 * install — `cmake --install` of this build tree into a temporary DESTDIR,
 * then checks on what it staged: every file where it belongs, the systemd
 * units accepted by `systemd-analyze verify` and rated by `systemd-analyze
 * security` at an exposure of 2.0 or less, the binaries running, the man
 * pages rendering without a warning, the bash completion offering the
 * commands of a type, and paths that follow the install-time prefix.
 *
 * Each test installs into its own directory; installs of the build tree
 * take turns (flock on a file in it), since they write the same files there
 * (install_manifest.txt, the service unit configured for the prefix).
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#if !defined(CQRS_BUILD_DIR) || !defined(CQRS_SOURCE_DIR) || !defined(CQRS_CMAKE) || \
    !defined(CQRS_SYSTEMD_UNIT_DIR)
#error "CMakeLists.txt passes CQRS_BUILD_DIR, CQRS_SOURCE_DIR, CQRS_CMAKE, CQRS_SYSTEMD_UNIT_DIR"
#endif

/* What an install staged: DESTDIR, the prefix, and where the units went. */
struct staged {
    char root[PATH_MAX];        /* DESTDIR */
    char prefix[PATH_MAX];
    char unit_dir[PATH_MAX];    /* root + the unit directory */
};

/* --- small helpers --------------------------------------------------------- */

static char *slurp_fp(FILE *f)
{
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    cr_assert_not_null(buf);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len < 2) {
            cap *= 2;
            buf = realloc(buf, cap);
            cr_assert_not_null(buf);
        }
    }
    buf[len] = '\0';
    return buf;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "cannot open %s: %s", path, strerror(errno));
    char *s = slurp_fp(f);
    fclose(f);
    return s;
}

static void spit(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "cannot write %s: %s", path, strerror(errno));
    fputs(text, f);
    cr_assert_eq(fclose(f), 0);
}

/* snprintf that fails the test instead of cutting a path short. */
__attribute__((format(printf, 3, 4)))
static void pathf(char *buf, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, len, fmt, ap);
    va_end(ap);
    cr_assert(n > 0 && (size_t)n < len, "path too long: %s...", buf);
}

static void join(char *buf, size_t len, const char *a, const char *b)
{
    pathf(buf, len, "%s%s", a, b);
}

/* Runs argv (PATH searched) with `env` ("K=V" entries, NULL-terminated, may
 * be NULL) added to the environment; stdout and stderr are captured into
 * malloc'd strings. Returns the exit status, 128 + N for signal N, 127 when
 * the program could not be run. */
static int run(char *const argv[], const char *const env[], char **out, char **err)
{
    FILE *o = tmpfile(), *e = tmpfile();
    cr_assert(o && e, "tmpfile: %s", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
    if (pid == 0) {
        for (size_t i = 0; env && env[i]; i++)
            putenv((char *)env[i]);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0)
            dup2(devnull, STDIN_FILENO);
        dup2(fileno(o), STDOUT_FILENO);
        dup2(fileno(e), STDERR_FILENO);
        execvp(argv[0], argv);
        fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        cr_assert_eq(errno, EINTR, "waitpid: %s", strerror(errno));
    rewind(o);
    rewind(e);
    *out = slurp_fp(o);
    *err = slurp_fp(e);
    fclose(o);
    fclose(e);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Is `name` an executable in PATH? */
static int in_path(const char *name)
{
    const char *path = getenv("PATH");
    if (!path)
        path = "/usr/bin:/bin";
    while (*path) {
        size_t n = strcspn(path, ":");
        char candidate[PATH_MAX];
        snprintf(candidate, sizeof candidate, "%.*s/%s", (int)n, path, name);
        if (n > 0 && access(candidate, X_OK) == 0)
            return 1;
        path += n + (path[n] == ':');
    }
    return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    return flag == FTW_DP ? rmdir(path) : unlink(path);
}

static void rm_tree(const char *dir)
{
    if (dir[0])
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void mkdir_p(const char *dir)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", dir);
    for (char *p = path + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            cr_assert(mkdir(path, 0755) == 0 || errno == EEXIST, "mkdir %s: %s", path,
                      strerror(errno));
            *p = '/';
        }
    cr_assert(mkdir(path, 0755) == 0 || errno == EEXIST, "mkdir %s: %s", path, strerror(errno));
}

static void assert_file(const char *root, const char *rel, int executable)
{
    char path[PATH_MAX];
    join(path, sizeof path, root, rel);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "%s was not installed (%s)", rel, strerror(errno));
    cr_assert(S_ISREG(st.st_mode), "%s is not a regular file", rel);
    cr_assert(st.st_size > 0, "%s is empty", rel);
    if (executable)
        cr_assert(st.st_mode & S_IXUSR, "%s is not executable", rel);
}

/* The line of `text` that starts with `key`, or NULL. */
static const char *line_starting(const char *text, const char *key)
{
    size_t n = strlen(key);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, key, n) == 0)
            return p;
    return NULL;
}

static void assert_line(const char *text, const char *what, const char *line)
{
    const char *p = line_starting(text, line);
    size_t n = strlen(line);
    cr_assert(p && (p[n] == '\n' || p[n] == '\0'), "%s has no line \"%s\":\n%s", what, line,
              text);
}

/* --- the install ------------------------------------------------------------- */

/* DESTDIR=root cmake --install <this build tree> --prefix prefix */
static void install_into(const char *root, const char *prefix)
{
    char destdir[PATH_MAX + 8];
    snprintf(destdir, sizeof destdir, "DESTDIR=%s", root);
    const char *env[] = { destdir, NULL };
    char *argv[] = { CQRS_CMAKE, "--install", CQRS_BUILD_DIR, "--prefix", (char *)prefix, NULL };

    int lock = open(CQRS_BUILD_DIR "/.install-test.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    cr_assert_geq(lock, 0, "cannot open the install lock: %s", strerror(errno));
    cr_assert_eq(flock(lock, LOCK_EX), 0, "flock: %s", strerror(errno));
    char *out, *err;
    int rc = run(argv, env, &out, &err);
    close(lock);
    cr_assert_eq(rc, 0, "DESTDIR=%s cmake --install %s --prefix %s exited %d:\n%s%s", root,
                 CQRS_BUILD_DIR, prefix, rc, out, err);
    free(out);
    free(err);
}

/* The DESTDIRs of this test, removed after it whether it passed or not. */
static char made[4][PATH_MAX];

static void remove_made(void)
{
    for (size_t i = 0; i < sizeof made / sizeof made[0]; i++)
        rm_tree(made[i]);
}

TestSuite(install, .fini = remove_made);

/* Installs with `prefix` into a new temporary DESTDIR. */
static void install_to(const char *prefix, struct staged *s)
{
    const char *tmp = getenv("TMPDIR") && getenv("TMPDIR")[0] ? getenv("TMPDIR") : "/tmp";
    pathf(s->root, sizeof s->root, "%s/cqrs-install-XXXXXX", tmp);
    cr_assert_not_null(mkdtemp(s->root), "mkdtemp: %s", strerror(errno));
    size_t slot = 0;
    while (slot < sizeof made / sizeof made[0] && made[slot][0])
        slot++;
    cr_assert_lt(slot, sizeof made / sizeof made[0], "too many installs in one test");
    memcpy(made[slot], s->root, sizeof made[slot]);
    pathf(s->prefix, sizeof s->prefix, "%s", prefix);
    if (CQRS_SYSTEMD_UNIT_DIR[0] == '/')
        pathf(s->unit_dir, sizeof s->unit_dir, "%s%s", s->root, CQRS_SYSTEMD_UNIT_DIR);
    else
        pathf(s->unit_dir, sizeof s->unit_dir, "%s%s/%s", s->root, prefix,
              CQRS_SYSTEMD_UNIT_DIR);
    install_into(s->root, prefix);
}

static void unit_path(const struct staged *s, const char *name, char *buf, size_t len)
{
    pathf(buf, len, "%s/%s", s->unit_dir, name);
}

/* systemd-analyze must be there, and know `option` (named in its --help). */
static void need_systemd_analyze(const char *option, const char *what)
{
    if (!in_path("systemd-analyze"))
        cr_skip("systemd-analyze is not installed (Debian package systemd): cannot check %s",
                what);
    char *argv[] = { "systemd-analyze", "--help", NULL };
    char *out, *err;
    run(argv, NULL, &out, &err);
    int known = strstr(out, option) != NULL;
    free(out);
    free(err);
    if (!known)
        cr_skip("this systemd-analyze has no %s option (systemd 250 or later needed): cannot "
                "check %s", option, what);
}

static const char *const analyze_env[] = { "SYSTEMD_COLORS=0", "SYSTEMD_PAGER=", "LC_ALL=C",
                                           NULL };

/* --- tests ------------------------------------------------------------------- */

Test(install, stages_every_file)
{
    struct staged s;
    install_to("/usr", &s);
    assert_file(s.root, "/usr/bin/cqrsd", 1);
    assert_file(s.root, "/usr/bin/cqrsctl", 1);
    assert_file(s.root, "/usr/libexec/cqrsd/cqrs-worker", 1);
    assert_file(s.root, "/etc/cqrsd/cqrsd.conf", 0);
    assert_file(s.root, "/usr/share/man/man8/cqrsd.8", 0);
    assert_file(s.root, "/usr/share/man/man1/cqrsctl.1", 0);
    assert_file(s.root, "/usr/share/bash-completion/completions/cqrsctl", 0);
    assert_file(s.unit_dir, "/cqrsd.service", 0);
    assert_file(s.unit_dir, "/cqrsd.socket", 0);

    char path[PATH_MAX];
    join(path, sizeof path, s.root, "/etc/cqrsd/cqrsd.conf");
    char *conf = slurp(path), *shipped = slurp(CQRS_SOURCE_DIR "/systemd/cqrsd.conf");
    cr_assert_str_eq(conf, shipped, "the installed cqrsd.conf differs from systemd/cqrsd.conf");

    unit_path(&s, "cqrsd.service", path, sizeof path);
    char *service = slurp(path);
    cr_assert_null(strstr(service, "@CMAKE_"), "a @CMAKE_...@ was left in cqrsd.service:\n%s",
                   service);
    assert_line(service, "cqrsd.service",
                "ExecStart=/usr/bin/cqrsd --config /etc/cqrsd/cqrsd.conf");
    assert_line(service, "cqrsd.service",
                "ExecReload=+/usr/bin/cqrsctl -s /run/cqrsd/cqrsd.sock reload");
    assert_line(service, "cqrsd.service", "Sockets=cqrsd.socket");
    unit_path(&s, "cqrsd.socket", path, sizeof path);
    char *socket = slurp(path);
    assert_line(socket, "cqrsd.socket", "ListenStream=/run/cqrsd/cqrsd.sock");
    assert_line(socket, "cqrsd.socket", "SocketMode=0660");
    free(conf);
    free(shipped);
    free(service);
    free(socket);
}

/* With --root, systemd-analyze resolves the units' dependencies and the
 * binaries they name inside the staged tree: the targets every unit
 * depends on (sysinit.target, sockets.target, ...) are copied in from this
 * machine, the binaries are the ones just installed. */
Test(install, units_pass_systemd_analyze_verify)
{
    need_systemd_analyze("--root", "the installed units with systemd-analyze verify");
    struct staged s;
    install_to("/usr", &s);

    static const char *const host_dirs[] = { "/usr/lib/systemd/system", "/lib/systemd/system" };
    const char *host = NULL;
    for (size_t i = 0; i < 2 && !host; i++) {
        char probe[PATH_MAX];
        join(probe, sizeof probe, host_dirs[i], "/sysinit.target");
        if (access(probe, R_OK) == 0)
            host = host_dirs[i];
    }
    if (!host)
        cr_skip("no sysinit.target in /usr/lib/systemd/system or /lib/systemd/system: this "
                "machine has no systemd units to verify against");
    char targets[PATH_MAX];
    join(targets, sizeof targets, s.root, "/usr/lib/systemd/system");
    mkdir_p(targets);
    DIR *d = opendir(host);
    cr_assert_not_null(d);
    size_t copied = 0;
    for (struct dirent *e; (e = readdir(d));) {
        size_t n = strlen(e->d_name);
        if (n < 8 || strcmp(e->d_name + n - 7, ".target") != 0)
            continue;
        char from[PATH_MAX], to[PATH_MAX];
        pathf(from, sizeof from, "%s/%s", host, e->d_name);
        pathf(to, sizeof to, "%s/%s", targets, e->d_name);
        struct stat st;
        if (stat(from, &st) < 0 || !S_ISREG(st.st_mode) || access(to, F_OK) == 0)
            continue;
        char *text = slurp(from);
        spit(to, text);
        free(text);
        copied++;
    }
    closedir(d);
    cr_log_info("copied %zu targets from %s into the staged tree", copied, host);

    char *out, *err;
    char root_opt[PATH_MAX + 8], service[PATH_MAX], socket[PATH_MAX];
    snprintf(root_opt, sizeof root_opt, "--root=%s", s.root);
    unit_path(&s, "cqrsd.service", service, sizeof service);
    unit_path(&s, "cqrsd.socket", socket, sizeof socket);
    char *argv[] = { "systemd-analyze", "verify", "--man=no", root_opt, service, socket, NULL };
    int rc = run(argv, analyze_env, &out, &err);
    cr_expect_eq(rc, 0, "systemd-analyze verify exited %d", rc);
    cr_expect_str_empty(out, "systemd-analyze verify printed on stdout:\n%s", out);
    cr_expect_str_empty(err, "systemd-analyze verify printed on stderr:\n%s", err);
    free(out);
    free(err);

    /* It does look at the binaries: without cqrsd it complains. */
    char cqrsd[PATH_MAX], moved[PATH_MAX];
    join(cqrsd, sizeof cqrsd, s.root, "/usr/bin/cqrsd");
    join(moved, sizeof moved, s.root, "/usr/bin/cqrsd.moved");
    cr_assert_eq(rename(cqrsd, moved), 0);
    rc = run(argv, analyze_env, &out, &err);
    cr_expect_neq(rc, 0, "systemd-analyze verify accepted a unit whose ExecStart is missing");
    cr_expect(strstr(err, "/usr/bin/cqrsd"), "no complaint about the missing cqrsd:\n%s", err);
    free(out);
    free(err);
}

Test(install, service_exposure_is_at_most_2)
{
    need_systemd_analyze("--offline", "the service's exposure with systemd-analyze security");
    struct staged s;
    install_to("/usr", &s);
    char service[PATH_MAX];
    unit_path(&s, "cqrsd.service", service, sizeof service);
    char *argv[] = { "systemd-analyze", "security", "--no-pager", "--offline=true", service,
                     NULL };
    char *out, *err;
    int rc = run(argv, analyze_env, &out, &err);
    cr_assert_eq(rc, 0, "systemd-analyze security exited %d:\n%s%s", rc, out, err);
    const char *key = "Overall exposure level for cqrsd.service:";
    const char *at = strstr(out, key);
    cr_assert_not_null(at, "no \"%s\" line in:\n%s%s", key, out, err);
    char *end;
    double exposure = strtod(at + strlen(key), &end);
    cr_assert_neq(end, at + strlen(key), "no number after \"%s\"", key);
    const char *eol = strchr(at, '\n');
    cr_log_info("%.*s", eol ? (int)(eol - at) : (int)strlen(at), at);
    if (exposure > 2.0) {
        /* the checks that cost points, to say what to fix: "- " in the C
         * locale, a cross in a UTF-8 one */
        for (const char *p = out; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
            if (strncmp(p, "- ", 2) == 0 || strncmp(p, "\xe2\x9c\x97", 3) == 0) {   /* "✗" */
                const char *e = strchr(p, '\n');
                cr_log_error("%.*s", e ? (int)(e - p) : (int)strlen(p), p);
            }
    }
    cr_assert_leq(exposure, 2.0, "overall exposure %.1f is above 2.0", exposure);
    free(out);
    free(err);
}

Test(install, installed_binaries_run)
{
    struct staged s;
    install_to("/usr", &s);
    static const char *const bins[] = { "/usr/bin/cqrsd", "/usr/bin/cqrsctl" };
    for (size_t i = 0; i < 2; i++) {
        char path[PATH_MAX];
        join(path, sizeof path, s.root, bins[i]);
        char *argv[] = { path, "--version", NULL };
        char *out, *err;
        int rc = run(argv, NULL, &out, &err);
        const char *name = strrchr(bins[i], '/') + 1;
        cr_expect_eq(rc, 0, "%s --version exited %d: %s", bins[i], rc, err);
        cr_expect(strncmp(out, name, strlen(name)) == 0 && out[strlen(name)] == ' ' &&
                      out[strlen(out) - 1] == '\n',
                  "%s --version printed \"%s\"", bins[i], out);
        free(out);
        free(err);
    }
}

/* Paths follow the prefix given to `cmake --install`, not only the one the
 * tree was configured with: /opt/NAME puts the configuration in
 * /etc/opt/NAME (GNUInstallDirs), any other prefix below itself. */
Test(install, paths_follow_the_install_prefix)
{
    static const struct {
        const char *prefix, *conf;
    } cases[] = {
        { "/opt/cqrs", "/etc/opt/cqrs/cqrsd/cqrsd.conf" },
        { "/srv/cqrs-test", "/srv/cqrs-test/etc/cqrsd/cqrsd.conf" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct staged s;
        install_to(cases[i].prefix, &s);
        char rel[PATH_MAX];
        snprintf(rel, sizeof rel, "%s/bin/cqrsd", cases[i].prefix);
        assert_file(s.root, rel, 1);
        snprintf(rel, sizeof rel, "%s/libexec/cqrsd/cqrs-worker", cases[i].prefix);
        assert_file(s.root, rel, 1);
        snprintf(rel, sizeof rel, "%s/share/man/man8/cqrsd.8", cases[i].prefix);
        assert_file(s.root, rel, 0);
        assert_file(s.root, cases[i].conf, 0);

        char path[PATH_MAX], want[3 * PATH_MAX];
        unit_path(&s, "cqrsd.service", path, sizeof path);
        char *service = slurp(path);
        snprintf(want, sizeof want, "ExecStart=%s/bin/cqrsd --config %s", cases[i].prefix,
                 cases[i].conf);
        assert_line(service, "cqrsd.service", want);
        snprintf(want, sizeof want, "ExecReload=+%s/bin/cqrsctl -s /run/cqrsd/cqrsd.sock reload",
                 cases[i].prefix);
        assert_line(service, "cqrsd.service", want);
        free(service);
        }
}

/* Installing again over an edited configuration keeps the edit. */
Test(install, edited_configuration_is_kept)
{
    struct staged s;
    install_to("/usr", &s);
    char conf[PATH_MAX], fresh[PATH_MAX];
    join(conf, sizeof conf, s.root, "/etc/cqrsd/cqrsd.conf");
    join(fresh, sizeof fresh, s.root, "/etc/cqrsd/cqrsd.conf.new");
    const char *edited = "[supervisor]\nstrategy = one_for_all\n\n[child wallet]\n";
    spit(conf, edited);

    install_into(s.root, "/usr");

    char *now = slurp(conf), *shipped = slurp(CQRS_SOURCE_DIR "/systemd/cqrsd.conf");
    cr_expect_str_eq(now, edited, "the edited cqrsd.conf was overwritten");
    char *beside = slurp(fresh);
    cr_expect_str_eq(beside, shipped, "cqrsd.conf.new is not the shipped configuration");
    free(now);
    free(shipped);
    free(beside);
}

/* The installed completion, driven the way bash drives it, asks the
 * installed cqrsctl for the types and the commands of a type. */
Test(install, completion_offers_types_and_commands)
{
    if (!in_path("bash"))
        cr_skip("bash is not installed: cannot run the bash completion");
    struct staged s;
    install_to("/usr", &s);
    char completion[PATH_MAX], cqrsctl[PATH_MAX];
    join(completion, sizeof completion, s.root, "/usr/share/bash-completion/completions/cqrsctl");
    join(cqrsctl, sizeof cqrsctl, s.root, "/usr/bin/cqrsctl");
    static const char script[] =
        "source \"$1\" || exit 2\n"
        "shift\n"
        "COMP_WORDS=(\"$@\")\n"
        "COMP_CWORD=$((${#COMP_WORDS[@]} - 1))\n"
        "COMP_LINE=\"$*\"\n"
        "COMP_POINT=${#COMP_LINE}\n"
        "_cqrsctl\n"
        "printf '%s\\n' \"${COMPREPLY[@]}\"\n";
    static const struct {
        const char *words[6];
        const char *expect;
    } cases[] = {
        { { "", NULL }, "send\nget\nevents\nstatus\nkill\nrestart\nverify\nreload\nquery\n"
                        "subscribe\nreadmodel\n" },
        { { "re", NULL }, "restart\nreload\nreadmodel\n" },
        { { "send", "", NULL }, "wallet\naccount\n" },
        { { "send", "wallet", "w1", "", NULL },
          "RenameWallet\nTopUp\nAuthorizeFunds\nCaptureFunds\nReleaseFunds\n" },
        { { "send", "account", "a1", "C", NULL }, "ChangeEmail\nCloseAccount\n" },
        { { "kill", "", NULL }, "wallet\naccount\nreadmodel\n" },
        { { "query", "wallet", "", NULL }, "GetWallet\nListWallets\nTotalBalance\n" },
        { { "events", "wallet", "w1", "--", NULL }, "--json\n--from\n" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *argv[8 + 6 + 1] = { "bash", "--norc", "--noprofile", "-c", (char *)script, "bash",
                                  completion, cqrsctl };
        size_t n = 8;
        for (size_t w = 0; w < 6 && cases[i].words[w]; w++)
            argv[n++] = (char *)cases[i].words[w];
        argv[n] = NULL;
        char *out, *err;
        int rc = run(argv, NULL, &out, &err);
        cr_expect_eq(rc, 0, "case %zu: bash exited %d: %s", i, rc, err);
        cr_expect_str_eq(out, cases[i].expect, "case %zu (last word \"%s\"): offered\n%s", i,
                         cases[i].words[n - 9], out);
        cr_expect_str_empty(err, "case %zu: %s", i, err);
        free(out);
        free(err);
    }
}

Test(install, man_pages_render_without_warnings)
{
    if (!in_path("groff"))
        cr_skip("groff is not installed (Debian package groff-base): cannot render the pages");
    struct staged s;
    install_to("/usr", &s);
    static const char *const pages[] = { "/usr/share/man/man8/cqrsd.8",
                                         "/usr/share/man/man1/cqrsctl.1" };
    for (size_t i = 0; i < 2; i++) {
        char path[PATH_MAX];
        join(path, sizeof path, s.root, pages[i]);
        char *argv[] = { "groff", "-man", "-Tutf8", "-ww", "-z", path, NULL };
        char *out, *err;
        int rc = run(argv, analyze_env, &out, &err);
        cr_expect_eq(rc, 0, "groff on %s exited %d", pages[i], rc);
        cr_expect_str_empty(err, "groff warns about %s:\n%s", pages[i], err);
        free(out);
        free(err);
    }
}
