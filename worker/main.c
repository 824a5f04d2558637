/*
 * cqrs-worker — the process that hosts every aggregate of one type.
 *
 *   cqrs-worker --type TYPE --data-dir DIR [--fd N] [--supervisor-pid PID]
 *               [--fsync always|batch|never] [--batch-interval-ms N]
 *               [--checkpoint-ms N] [--segment-mb N] [--retention-mb N]
 *               [--retention-s N] [--snapshot-every N] [--open-files N]
 *               [--max-aggregates N] [--idle-timeout-s N] [--standby]
 *
 * cqrsd starts it with one end of a socketpair as fd N (default 3). Frames
 * on it are tagged (see lib/frame.h): tag 0 is the supervisor channel, any
 * other tag a client request whose reply carries the same tag. Once set up,
 * the worker sends one empty tag-0 frame: "ready"; after that every tag-0
 * frame from cqrsd is a heartbeat, answered with an empty tag-0 frame, but
 * "Q", which stops the worker once everything sent before it is answered
 * (cqrsd's graceful stop, in order with the requests). With
 * --standby it opens no storage and sends "S" instead, and becomes a worker
 * (opens its storage, then says ready) when cqrsd sends "A". With
 * --supervisor-pid the worker dies with that process. Each time the
 * socket has data, every whole request in the buffer forms one batch (see
 * host.h). It exits 0 after "Q", on SIGTERM after handling what is in its
 * socket, and when cqrsd closes the socket.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "aggregate.h"
#include "cqrs.pb-c.h"
#include "flush.h"
#include "frame.h"
#include "host.h"
#include "log.h"

#define WORKER_MAX_FRAME (64u << 20)   /* cqrsd is trusted to bound requests */

struct worker {
    struct event_base *base;
    struct bufferevent *bev;
    struct flusher *flusher;      /* writes bev's output once a turn of the loop */
    struct flush_out *flush;
    struct host *host;            /* NULL while a standby */
    const struct aggregate_type *type;
    const char *data_dir;
    struct store_options sopt;
    int failed;
    int quit;
};

/* Opens the type's storage (recovering it from the journal) and says
 * "ready" (an empty tag-0 frame), followed by the position the type has
 * reached (see host_publish_position). 0, or -1 when the storage is unusable. */
static int worker_activate(struct worker *w)
{
    w->host = host_new(w->base, w->type, w->data_dir, &w->sopt);
    if (!w->host)
        return -1;
    uint64_t zero = 0;
    if (frame_put_bytes(bufferevent_get_output(w->bev), &zero, NULL, 0) < 0)
        return -1;
    host_publish_position(w->host, bufferevent_get_output(w->bev));
    return 0;
}

/* Handles every whole frame in `in` as one batch. */
static void worker_process(struct worker *w, struct evbuffer *in)
{
    struct bufferevent *bev = w->bev;
    struct frame f;
    enum frame_status st;
    while ((st = frame_next(in, WORKER_MAX_FRAME, &f)) == FRAME_OK) {
        if (frame_untag(&f) < 0) {
            log_error("cqrsd sent a frame without a tag; exiting");
            event_base_loopbreak(w->base);
            return;
        }
        if (!w->host) {
            /* a standby: nothing but "activate" (tag 0, body "A") */
            if (f.tag != 0 || f.len != 1 || f.body[0] != 'A') {
                log_error("a standby worker got something other than activate; exiting");
                event_base_loopbreak(w->base);
                return;
            }
            frame_consume(in, &f);
            if (worker_activate(w) < 0) {
                event_base_loopbreak(w->base);
                w->failed = 1;
                return;
            }
            continue;
        }
        if (f.tag != 0) {
            host_request(w->host, f.tag, f.body, f.len);
        } else if (f.len == 1 && f.body[0] == 'Q') {
            /* stop: everything sent before it is in this batch */
            frame_consume(in, &f);
            w->quit = 1;
            break;
        } else {
            /* heartbeat: answered, with the counters, after what came before it */
            uint64_t zero = 0;
            Cqrs__WorkerStats st = CQRS__WORKER_STATS__INIT;
            host_stats(w->host, &st);
            frame_put(bufferevent_get_output(bev), &zero, &st.base);
        }
        frame_consume(in, &f);
    }
    if (st == FRAME_TOO_BIG) {
        log_error("cqrsd sent a frame of %u bytes; exiting", f.len);
        event_base_loopbreak(w->base);
        return;
    }
    if (w->host)
        host_commit(w->host, bufferevent_get_output(bev));
    if (w->quit)
        event_base_loopexit(w->base, NULL);
}

static void worker_on_read(struct bufferevent *bev, void *arg)
{
    worker_process(arg, bufferevent_get_input(bev));
}

static void worker_on_event(struct bufferevent *bev, short what, void *arg)
{
    struct worker *w = arg;
    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        event_base_loopexit(w->base, NULL);   /* cqrsd is gone */
}

/* SIGTERM: cqrsd sends nothing new once it has asked us to stop, so what
 * is already in the socket is the last batch: handle it, then leave. */
static void worker_on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct worker *w = arg;
    (void)what;
    log_debug("signal %d: stopping", (int)sig);
    /* libevent keeps the end of a bufferevent's input frozen: what the
     * socket still holds is read into a buffer of our own */
    struct evbuffer *in = evbuffer_new();
    if (in) {
        int fd = bufferevent_getfd(w->bev);
        bufferevent_disable(w->bev, EV_READ);
        evbuffer_add_buffer(in, bufferevent_get_input(w->bev));
        while (evbuffer_read(in, fd, 1 << 20) > 0)
            ;
        worker_process(w, in);
        evbuffer_free(in);
    }
    event_base_loopexit(w->base, NULL);
}

static void worker_usage(FILE *f)
{
    fprintf(f, "usage: cqrs-worker --type TYPE --data-dir DIR [--fd N] [--supervisor-pid PID]\n"
               "                   [--fsync always|batch|never] [--batch-interval-ms N]\n"
               "                   [--checkpoint-ms N] [--segment-mb N] [--retention-mb N]\n"
               "                   [--retention-s N] [--snapshot-every N] [--open-files N]\n"
               "                   [--max-aggregates N] [--idle-timeout-s N] [--standby]\n"
               "Started by cqrsd; not meant to be run by hand.\n");
}

/* Up to the hard limit: each open stream keeps its log file open. */
static void worker_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int main(int argc, char **argv)
{
    const char *type_name = NULL, *data_dir = NULL;
    int fd = 3;
    struct store_options sopt = {
        .fsync = STORE_FSYNC_ALWAYS, .batch_interval_ms = 10, .checkpoint_ms = 1000,
        .segment_bytes = 64 << 20, .retention_bytes = 256u << 20, .retention_s = 3600,
        .snapshot_every = 1000, .open_files = 1024, .max_aggregates = 1000000,
        .idle_timeout_s = 3600,
    };
    long supervisor = 0;
    int standby = 0;
    static const struct option opts[] = {
        { "type", required_argument, NULL, 't' },
        { "data-dir", required_argument, NULL, 'd' },
        { "fd", required_argument, NULL, 'f' },
        { "fsync", required_argument, NULL, 's' },
        { "batch-interval-ms", required_argument, NULL, 'b' },
        { "checkpoint-ms", required_argument, NULL, 'c' },
        { "segment-mb", required_argument, NULL, 'g' },
        { "retention-mb", required_argument, NULL, 'r' },
        { "retention-s", required_argument, NULL, 'a' },
        { "snapshot-every", required_argument, NULL, 'n' },
        { "standby", no_argument, NULL, 'S' },
        { "open-files", required_argument, NULL, 'o' },
        { "max-aggregates", required_argument, NULL, 'm' },
        { "idle-timeout-s", required_argument, NULL, 'i' },
        { "supervisor-pid", required_argument, NULL, 'p' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 't': type_name = optarg; break;
        case 'd': data_dir = optarg; break;
        case 'f': fd = atoi(optarg); break;
        case 's':
            if (strcmp(optarg, "always") == 0)
                sopt.fsync = STORE_FSYNC_ALWAYS;
            else if (strcmp(optarg, "batch") == 0)
                sopt.fsync = STORE_FSYNC_BATCH;
            else if (strcmp(optarg, "never") == 0)
                sopt.fsync = STORE_FSYNC_NEVER;
            else {
                worker_usage(stderr);
                return 64;
            }
            break;
        case 'b': sopt.batch_interval_ms = (unsigned)atoi(optarg); break;
        case 'c': sopt.checkpoint_ms = (unsigned)atoi(optarg); break;
        case 'g': sopt.segment_bytes = (off_t)atoll(optarg) << 20; break;
        case 'r': sopt.retention_bytes = (uint64_t)atoll(optarg) << 20; break;
        case 'a': sopt.retention_s = (unsigned)atoi(optarg); break;
        case 'n': sopt.snapshot_every = (unsigned)atoi(optarg); break;
        case 'S': standby = 1; break;
        case 'o': sopt.open_files = (unsigned)atoi(optarg); break;
        case 'm': sopt.max_aggregates = (unsigned)atoi(optarg); break;
        case 'i': sopt.idle_timeout_s = (unsigned)atoi(optarg); break;
        case 'p': supervisor = atol(optarg); break;
        case 'h': worker_usage(stdout); return 0;
        default: worker_usage(stderr); return 64;
        }
    }
    if (!type_name || !data_dir || fd < 0) {
        worker_usage(stderr);
        return 64;
    }
    char ident[64];
    snprintf(ident, sizeof ident, "cqrs-worker/%s", type_name);
    log_init(ident, getenv("CQRS_DEBUG") ? LOG_LVL_DEBUG : LOG_LVL_INFO);

    /* die with cqrsd, even when it is SIGKILLed: no orphan keeps a log open */
    if (supervisor > 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != (pid_t)supervisor) {
            log_error("cqrsd (pid %ld) is already gone", supervisor);
            return 1;
        }
    }
    const struct aggregate_type *type = aggregate_lookup(type_name);
    if (!type) {
        log_error("unknown aggregate type \"%s\"", type_name);
        return 64;
    }
    if (fcntl(fd, F_GETFD) < 0) {
        log_error("fd %d is not open: cqrs-worker is started by cqrsd", fd);
        return 64;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);   /* a hangup or `systemctl kill -s HUP` is cqrsd's business */
    worker_raise_nofile();

    if (!sopt.batch_interval_ms || !sopt.checkpoint_ms || sopt.segment_bytes <= 0 ||
        !sopt.open_files || !sopt.max_aggregates) {
        worker_usage(stderr);
        return 64;
    }
    struct worker w = { 0 };
    w.base = event_base_new();
    if (!w.base) {
        log_error("cannot create the event loop");
        return 1;
    }
    w.type = type;
    w.data_dir = data_dir;
    w.sopt = sopt;
    evutil_make_socket_nonblocking(fd);
    evutil_make_socket_closeonexec(fd);
    w.bev = bufferevent_socket_new(w.base, fd, BEV_OPT_CLOSE_ON_FREE);
    struct event *sigterm = evsignal_new(w.base, SIGTERM, worker_on_signal, &w);
    struct event *sigint = evsignal_new(w.base, SIGINT, worker_on_signal, &w);
    if (!w.bev || !sigterm || !sigint) {
        log_error("cannot set up the event loop");
        return 1;
    }
    event_add(sigterm, NULL);
    event_add(sigint, NULL);
    bufferevent_set_max_single_read(w.bev, 1 << 20);
    bufferevent_setcb(w.bev, worker_on_read, NULL, worker_on_event, &w);
    bufferevent_enable(w.bev, EV_READ);
    if (!(w.flusher = flusher_new()) || !(w.flush = flusher_watch(w.flusher, w.bev))) {
        log_error("cannot set up the event loop");
        return 1;
    }

    /* A standby says so ("S") and opens nothing until activated: only one
     * process may ever hold a type's journal. */
    uint64_t zero = 0;
    if (standby)
        frame_put_bytes(bufferevent_get_output(w.bev), &zero, "S", 1);
    else if (worker_activate(&w) < 0)
        return 1;

    flusher_loop(w.flusher, w.base);

    /* Replies of the last batch still buffered go out before we leave. */
    if (flusher_finish(w.flush) < 0)
        log_error("cannot send the last replies: %s", strerror(errno));
    event_free(sigterm);
    event_free(sigint);
    flusher_unwatch(w.flush);
    flusher_free(w.flusher);
    bufferevent_free(w.bev);
    host_free(w.host);
    event_base_free(w.base);
    return w.failed ? 1 : 0;
}
