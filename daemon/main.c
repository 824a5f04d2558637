/*
 * cqrsd — the root supervisor and router.
 *
 *   cqrsd [--config FILE] [--socket PATH] [--data-dir DIR] [--help] [--version]
 *   cqrsd --verify [--config FILE] [--data-dir DIR]
 *
 * Starts one cqrs-worker per worker child of its configuration (built in:
 * wallet, then account) and cqrs-projector for the projector child (built
 * in: readmodel), each ready before the next; then accepts clients on the
 * Unix socket. SIGTERM or SIGINT: stop accepting, stop the workers in
 * reverse order, deliver the last replies, exit 0. Exits 1 when a worker
 * fails to start or restarts too often (systemd, the parent supervisor,
 * decides what next), 78 when the configuration is wrong.
 *
 * --verify checks, offline, the event logs of every child type and starts
 * nothing: one `PATH: problem` line per problem on stdout, a summary on
 * stderr; exit 0 clean, 1 problems found, 2 the data dir cannot be read.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include "aggregate.h"
#include "config.h"
#include "frame.h"
#include "flush.h"
#include "log.h"
#include "notify.h"
#include "router.h"
#include "sup.h"
#include "verify.h"

#define DEFAULT_SOCKET "/run/cqrsd/cqrsd.sock"
#define DEFAULT_DATA_DIR "/var/lib/cqrsd"

struct daemon {
    struct event_base *base;
    struct router *router;
    struct sup *sup;
    struct flusher *flusher;   /* every channel's output, written once a turn */
    struct event *watchdog, *status_timer, *sighup;
    const char *config_path;
    int reloading;
    router_reload_done_fn reload_done;   /* who asked for the reload in progress */
    void *reload_done_arg;
};

/* STATUS= for `systemctl status`: children up, restarts, commands served. */
static void daemon_notify_status(struct daemon *d)
{
    if (!notify_enabled())
        return;
    size_t n = sup_count(d->sup), up = 0;
    unsigned long restarts = 0;
    for (size_t i = 0; i < n; i++) {
        struct child *c = sup_child(d->sup, i);
        up += c->state == CHILD_RUNNING;
        restarts += c->restarts;
    }
    notify_send("STATUS=%zu/%zu children running, %lu restarts, %llu requests served", up, n,
                restarts, (unsigned long long)router_served(d->router));
}

static void daemon_on_status_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    daemon_notify_status(arg);
}

/* From the event loop itself: a loop that is stuck stops the pings, and
 * systemd's watchdog restarts cqrsd. */
static void daemon_on_watchdog(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    notify_send("WATCHDOG=1");
}

static void daemon_reload_applied(void *arg)
{
    struct daemon *d = arg;
    notify_send("READY=1");
    daemon_notify_status(d);
    d->reloading = 0;
    if (d->reload_done)
        d->reload_done(d->reload_done_arg, 1, NULL);
    d->reload_done = NULL;
}

/* Reload (SIGHUP, or RELOAD from a client with `done`): re-read the file;
 * an invalid one is refused and the running configuration stays. */
static void daemon_reload(void *arg, router_reload_done_fn done, void *done_arg)
{
    struct daemon *d = arg;
    struct cqrsd_config cfg;
    char err[600];
    if (sup_busy(d->sup) || d->reloading) {
        log_warn("reload refused: cqrsd is starting, stopping or already reloading");
        if (done)
            done(done_arg, -1, "cqrsd is starting, stopping or already reloading: try again");
        return;
    }
    if (!d->config_path)
        config_defaults(&cfg);
    else if (config_load(d->config_path, &cfg, err, sizeof err) < 0) {
        log_error("reload refused: %s; the running configuration stays", err);
        if (done)
            done(done_arg, 0, err);
        return;
    }
    log_info("reloading %s", d->config_path ? d->config_path : "the built-in configuration");
    notify_send("RELOADING=1");
    if (!getenv("CQRS_DEBUG"))
        log_set_level((enum log_level)cfg.log_level);
    d->reloading = 1;
    d->reload_done = done;
    d->reload_done_arg = done_arg;
    if (sup_reload(d->sup, &cfg, daemon_reload_applied, d) < 0) {
        snprintf(err, sizeof err, "cannot reload: %s", strerror(errno));
        log_error("%s", err);
        d->reloading = 0;
        d->reload_done = NULL;
        notify_send("READY=1");
        if (done)
            done(done_arg, 0, err);
    }
}

static void daemon_on_sighup(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    daemon_reload(arg, NULL, NULL);
}

/* Every child runs: accept clients, and tell systemd. */
static void daemon_on_booted(void *arg)
{
    struct daemon *d = arg;
    router_accept(d->router);
    notify_send("READY=1");
    daemon_notify_status(d);
}

static void daemon_on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct daemon *d = arg;
    (void)what;
    log_info("signal %d: shutting down", (int)sig);
    notify_send("STOPPING=1");
    router_close_listener(d->router);
    sup_stop(d->sup);
}

static void daemon_usage(FILE *f)
{
    fprintf(f,
            "usage: cqrsd [--config FILE] [--socket PATH] [--data-dir DIR]\n"
            "       cqrsd --verify [--config FILE] [--data-dir DIR]\n"
            "\n"
            "Supervises one cqrs-worker per aggregate type and the read model's\n"
            "cqrs-projector, and routes client commands and queries to them over\n"
            "a Unix socket.\n"
            "\n"
            "  --config FILE    supervisor and children (INI; default: built in,\n"
            "                   children wallet, account, then readmodel;\n"
            "                   one_for_one)\n"
            "  --socket PATH    client socket (default %s)\n"
            "  --data-dir DIR   event logs (default %s)\n"
            "  --verify         check the event logs of every child type offline\n"
            "                   and start nothing: one \"PATH: problem\" line per\n"
            "                   problem on stdout, a summary on stderr; exit 0 when\n"
            "                   clean, 1 when problems were found, 2 when the data\n"
            "                   directory cannot be read\n"
            "  --help           this text\n"
            "  --version        the version\n"
            "\n"
            "SIGTERM or SIGINT stops the workers in reverse order and exits 0;\n"
            "exit status 1 means a worker failed to start or restarted too often,\n"
            "78 that the configuration is wrong.\n",
            DEFAULT_SOCKET, DEFAULT_DATA_DIR);
}

/* One `PATH: problem` line; control bytes in a file name become '?', so a
 * problem stays one line. */
static void daemon_on_problem(void *arg, const char *path, const char *problem)
{
    size_t *problems = arg;
    (*problems)++;
    for (const char *p = path; *p; p++)
        putchar((unsigned char)*p < 0x20 || *p == 0x7f ? '?' : *p);
    printf(": %s\n", problem);
}

/* cqrsd --verify: every child type's logs, read-only; returns the exit code. */
static int daemon_verify(const struct cqrsd_config *cfg, const char *data_dir)
{
    DIR *dir = opendir(data_dir);
    if (!dir) {
        fprintf(stderr, "cqrsd: cannot read data directory %s: %s\n", data_dir, strerror(errno));
        return 2;
    }
    closedir(dir);
    size_t len = strlen(data_dir);
    while (len > 1 && data_dir[len - 1] == '/')
        len--;
    size_t streams = 0, problems = 0, types = 0;
    int unreadable = 0;
    for (size_t i = 0; i < cfg->n_children; i++) {
        if (cfg->children[i].kind != CHILD_WORKER)
            continue;   /* the read model is derived: a rebuild makes it again */
        types++;
        const struct aggregate_type *t = aggregate_lookup(cfg->children[i].name);
        char type_dir[PATH_MAX];
        if (!t) {         /* config_load accepts registered types only */
            fprintf(stderr, "cqrsd: unknown aggregate type %s\n", cfg->children[i].name);
            return 2;
        }
        int n = snprintf(type_dir, sizeof type_dir, "%.*s/%s", (int)len, data_dir, t->name);
        if (n < 0 || (size_t)n >= sizeof type_dir) {
            fprintf(stderr, "cqrsd: data directory path too long: %s\n", data_dir);
            return 2;
        }
        if (verify_type_counted(t, type_dir, NULL, daemon_on_problem, &problems, &streams) < 0)
            unreadable = 1;
    }
    if (fflush(stdout) != 0) {
        fprintf(stderr, "cqrsd: cannot write the problems: %s\n", strerror(errno));
        return 2;
    }
    fprintf(stderr, "cqrsd: verified %zu streams of %zu types: %zu problems\n", streams,
            types, problems);
    return unreadable ? 2 : problems ? 1 : 0;
}

/* A helper program (cqrs-worker, cqrs-projector) beside this binary (build
 * tree), else in ../libexec/cqrsd/ relative to it (an install under any
 * prefix), else where the build said install would put it (`installed`). */
static int daemon_helper_path(const char *prog, const char *installed, char *buf, size_t len)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        char *dir = dirname(self);
        snprintf(buf, len, "%s/%s", dir, prog);
        if (access(buf, X_OK) == 0)
            return 0;
        snprintf(buf, len, "%s/../libexec/cqrsd/%s", dir, prog);
        if (access(buf, X_OK) == 0)
            return 0;
    }
    snprintf(buf, len, "%s", installed);
    return access(buf, X_OK);
}

int main(int argc, char **argv)
{
    const char *socket_path = getenv("RUNTIME_DIRECTORY") ? NULL : DEFAULT_SOCKET;
    const char *data_dir = getenv("STATE_DIRECTORY") ? getenv("STATE_DIRECTORY") : DEFAULT_DATA_DIR;
    char runtime_sock[PATH_MAX];
    if (!socket_path) {
        snprintf(runtime_sock, sizeof runtime_sock, "%s/cqrsd.sock", getenv("RUNTIME_DIRECTORY"));
        socket_path = runtime_sock;
    }
    const char *config_path = NULL;
    int verify = 0;
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "socket", required_argument, NULL, 's' },
        { "data-dir", required_argument, NULL, 'd' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { "verify", no_argument, NULL, 'v' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "c:s:d:hV", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config_path = optarg; break;
        case 's': socket_path = optarg; break;
        case 'd': data_dir = optarg; break;
        case 'h': daemon_usage(stdout); return 0;
        case 'V': printf("cqrsd %s\n", CQRS_VERSION); return 0;
        case 'v': verify = 1; break;
        default: daemon_usage(stderr); return 64;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "cqrsd: unexpected argument \"%s\"\n", argv[optind]);
        daemon_usage(stderr);
        return 64;
    }
    struct cqrsd_config cfg;
    char err[512];
    if (!config_path) {
        config_defaults(&cfg);
    } else if (config_load(config_path, &cfg, err, sizeof err) < 0) {
        fprintf(stderr, "cqrsd: %s\n", err);
        return 78;
    }
    if (verify)
        return daemon_verify(&cfg, data_dir);
    log_init("cqrsd", getenv("CQRS_DEBUG") ? LOG_LVL_DEBUG : (enum log_level)cfg.log_level);
    signal(SIGPIPE, SIG_IGN);
    notify_init();   /* and out of the environment the workers inherit */

    umask(077);   /* data dir 0700, logs 0600, whatever the caller's umask */
    struct stat dst;
    if (geteuid() == 0 && stat(data_dir, &dst) == 0 && dst.st_uid != 0) {
        log_error("refusing to run as root on %s, which belongs to uid %d: whoever owns it could "
                  "make root follow links planted there; run cqrsd as that user, or give the "
                  "directory to root", data_dir, (int)dst.st_uid);
        return 1;
    }
    char worker[PATH_MAX], projector[PATH_MAX];
    if (daemon_helper_path("cqrs-worker", CQRS_WORKER_INSTALLED, worker, sizeof worker) < 0) {
        log_error("cannot find cqrs-worker beside cqrsd nor at %s", CQRS_WORKER_INSTALLED);
        return 1;
    }
    if (daemon_helper_path("cqrs-projector", CQRS_PROJECTOR_INSTALLED, projector,
                           sizeof projector) < 0) {
        log_error("cannot find cqrs-projector beside cqrsd nor at %s", CQRS_PROJECTOR_INSTALLED);
        return 1;
    }
    if (mkdir(data_dir, 0700) < 0 && errno != EEXIST) {
        log_error("cannot create data directory %s: %s", data_dir, strerror(errno));
        return 1;
    }
    char data_abs[PATH_MAX];
    if (!realpath(data_dir, data_abs)) {
        log_error("data directory %s: %s", data_dir, strerror(errno));
        return 1;
    }

    struct daemon d = { 0 };
    d.base = event_base_new();
    if (!d.base) {
        log_error("cannot create the event loop");
        return 1;
    }
    if (!(d.flusher = flusher_new())) {
        log_error("out of memory");
        return 1;
    }
    struct router_config rcfg = { .socket_path = socket_path,
                                  .flusher = d.flusher,
                                  .max_frame = cfg.server.max_frame_bytes,
                                  .server = cfg.server };
    rcfg.limits = (struct request_limits){ cfg.server.max_string_bytes,
                                           cfg.server.max_metadata_entries,
                                           cfg.server.max_metadata_bytes };
    d.router = router_new(d.base, &rcfg);
    if (!d.router) {
        event_base_free(d.base);
        return 1;
    }
    struct sup_options sopt = {
        .worker_path = worker,
        .projector_path = projector,
        .data_dir = data_abs,
        .flusher = d.flusher,
        .wait_timeout_ms = 5000,
        .wait_limit = cfg.server.worker_queue,
    };
    struct sup_hooks hooks = router_sup_hooks(d.router);
    hooks.booted = daemon_on_booted;
    hooks.booted_arg = &d;
    d.sup = sup_new(d.base, &cfg, &sopt, &hooks);
    if (!d.sup) {
        log_error("cannot set up the supervisor");
        return 1;
    }
    router_set_sup(d.router, d.sup);
    d.config_path = config_path;
    router_set_reload(d.router, daemon_reload, &d);

    struct event *sigterm = evsignal_new(d.base, SIGTERM, daemon_on_signal, &d);
    struct event *sigint = evsignal_new(d.base, SIGINT, daemon_on_signal, &d);
    event_add(sigterm, NULL);
    event_add(sigint, NULL);
    d.sighup = evsignal_new(d.base, SIGHUP, daemon_on_sighup, &d);
    event_add(d.sighup, NULL);
    uint64_t wd = notify_watchdog_usec();
    if (wd) {
        d.watchdog = event_new(d.base, -1, EV_PERSIST, daemon_on_watchdog, &d);
        struct timeval half = { (time_t)(wd / 2 / 1000000), (suseconds_t)(wd / 2 % 1000000) };
        event_add(d.watchdog, &half);
    }
    if (notify_enabled()) {
        d.status_timer = event_new(d.base, -1, EV_PERSIST, daemon_on_status_timer, &d);
        struct timeval every = { 5, 0 };
        event_add(d.status_timer, &every);
    }

    log_info("cqrsd %s starting: socket %s, data %s, %s%s", CQRS_VERSION, socket_path, data_abs,
             config_path ? "config " : "built-in config", config_path ? config_path : "");
    sup_start(d.sup);
    flusher_loop(d.flusher, d.base);

    /* The workers are stopped; their last replies go out (1 s at most). */
    if (router_drain(d.router) > 0) {
        struct timeval grace = { 1, 0 };
        event_base_loopexit(d.base, &grace);
        flusher_loop(d.flusher, d.base);
    }

    int code = sup_exit_code(d.sup);
    log_info("stopped%s", code ? " after giving up" : "");
    event_free(sigterm);
    event_free(sigint);
    event_free(d.sighup);
    if (d.watchdog)
        event_free(d.watchdog);
    if (d.status_timer)
        event_free(d.status_timer);
    router_free(d.router);
    sup_free(d.sup);
    flusher_free(d.flusher);
    event_base_free(d.base);
    return code;
}
