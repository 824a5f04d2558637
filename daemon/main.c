/*
 * cqrsd — the root supervisor and router.
 *
 *   cqrsd [--config FILE] [--socket PATH] [--data-dir DIR] [--help] [--version]
 *
 * Starts one cqrs-worker per child of its configuration (built in: wallet,
 * then account), each ready before the next; then accepts clients on the
 * Unix socket. SIGTERM or SIGINT: stop accepting, stop the workers in
 * reverse order, deliver the last replies, exit 0. Exits 1 when a worker
 * fails to start or restarts too often (systemd, the parent supervisor,
 * decides what next), 78 when the configuration is wrong.
 */
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
#include "log.h"
#include "router.h"
#include "sup.h"

#define DEFAULT_SOCKET "/run/cqrsd/cqrsd.sock"
#define DEFAULT_DATA_DIR "/var/lib/cqrsd"

struct daemon {
    struct event_base *base;
    struct router *router;
    struct sup *sup;
};

static void daemon_on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct daemon *d = arg;
    (void)what;
    log_info("signal %d: shutting down", (int)sig);
    router_close_listener(d->router);
    sup_stop(d->sup);
}

static void daemon_usage(FILE *f)
{
    fprintf(f,
            "usage: cqrsd [--config FILE] [--socket PATH] [--data-dir DIR]\n"
            "\n"
            "Supervises one cqrs-worker per aggregate type and routes client\n"
            "commands and queries to them over a Unix socket.\n"
            "\n"
            "  --config FILE    supervisor and children (INI; default: built in,\n"
            "                   children wallet then account, one_for_one)\n"
            "  --socket PATH    client socket (default %s)\n"
            "  --data-dir DIR   event logs (default %s)\n"
            "  --help           this text\n"
            "  --version        the version\n"
            "\n"
            "SIGTERM or SIGINT stops the workers in reverse order and exits 0;\n"
            "exit status 1 means a worker failed to start or restarted too often,\n"
            "78 that the configuration is wrong.\n",
            DEFAULT_SOCKET, DEFAULT_DATA_DIR);
}

/* cqrs-worker beside this binary (build tree), else where install put it. */
static int daemon_worker_path(char *buf, size_t len)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        snprintf(buf, len, "%s/cqrs-worker", dirname(self));
        if (access(buf, X_OK) == 0)
            return 0;
    }
    snprintf(buf, len, "%s", CQRS_WORKER_INSTALLED);
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
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "socket", required_argument, NULL, 's' },
        { "data-dir", required_argument, NULL, 'd' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
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
    log_init("cqrsd", getenv("CQRS_DEBUG") ? LOG_LVL_DEBUG : LOG_LVL_INFO);
    signal(SIGPIPE, SIG_IGN);

    char worker[PATH_MAX];
    if (daemon_worker_path(worker, sizeof worker) < 0) {
        log_error("cannot find cqrs-worker beside cqrsd nor at %s", CQRS_WORKER_INSTALLED);
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
    struct router_config rcfg = { .socket_path = socket_path, .max_frame = FRAME_MAX_DEFAULT };
    d.router = router_new(d.base, &rcfg);
    if (!d.router) {
        event_base_free(d.base);
        return 1;
    }
    struct sup_options sopt = {
        .worker_path = worker,
        .data_dir = data_abs,
        .wait_timeout_ms = 5000,
        .wait_limit = 10000,
    };
    struct sup_hooks hooks = router_sup_hooks(d.router);
    d.sup = sup_new(d.base, &cfg, &sopt, &hooks);
    if (!d.sup) {
        log_error("cannot set up the supervisor");
        return 1;
    }
    router_set_sup(d.router, d.sup);

    struct event *sigterm = evsignal_new(d.base, SIGTERM, daemon_on_signal, &d);
    struct event *sigint = evsignal_new(d.base, SIGINT, daemon_on_signal, &d);
    event_add(sigterm, NULL);
    event_add(sigint, NULL);

    log_info("cqrsd %s starting: socket %s, data %s, %s%s", CQRS_VERSION, socket_path, data_abs,
             config_path ? "config " : "built-in config", config_path ? config_path : "");
    sup_start(d.sup);
    event_base_dispatch(d.base);

    /* The workers are stopped; their last replies go out (1 s at most). */
    if (router_drain(d.router) > 0) {
        struct timeval grace = { 1, 0 };
        event_base_loopexit(d.base, &grace);
        event_base_dispatch(d.base);
    }

    int code = sup_exit_code(d.sup);
    log_info("stopped%s", code ? " after giving up" : "");
    event_free(sigterm);
    event_free(sigint);
    router_free(d.router);
    sup_free(d.sup);
    event_base_free(d.base);
    return code;
}
