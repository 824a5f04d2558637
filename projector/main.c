/*
 * cqrs-projector — the process that keeps the read model and feeds the
 * subscriptions (see projector.h).
 *
 *   cqrs-projector --data-dir DIR [--fd N] [--supervisor-pid PID]
 *
 * cqrsd starts it as a child of kind projector, with one end of a
 * socketpair as fd N (default 3), and speaks to it as to a worker: tag-0
 * frames are the supervisor channel (it says "ready" with an empty one,
 * answers each heartbeat with its counters, and stops after "Q"); tag
 * FRAME_TAG_COMMIT frames are the workers' commits; the rest are requests.
 * Every frame that arrived together is one batch: one SQLite transaction.
 * It exits 0 after "Q", on SIGTERM, and when cqrsd closes the socket; with
 * --supervisor-pid it dies with that process.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "cqrs.pb-c.h"
#include "flush.h"
#include "frame.h"
#include "log.h"
#include "projector.h"

#define PROJECTOR_MAX_FRAME (64u << 20)   /* cqrsd is trusted to bound what it sends */

struct proc {
    struct event_base *base;
    struct bufferevent *bev;
    struct flusher *flusher;      /* writes bev's output once a turn of the loop */
    struct flush_out *flush;
    struct projector *pj;
    int quit;
};

static void proc_process(struct proc *pr, struct evbuffer *in)
{
    struct frame f;
    enum frame_status st;
    struct evbuffer *out = bufferevent_get_output(pr->bev);
    while ((st = frame_next(in, PROJECTOR_MAX_FRAME, &f)) == FRAME_OK) {
        if (frame_untag(&f) < 0) {
            log_error("cqrsd sent a frame without a tag; exiting");
            event_base_loopbreak(pr->base);
            return;
        }
        if (f.tag != 0) {
            projector_frame(pr->pj, f.tag, f.body, f.len);
        } else if (f.len == 1 && f.body[0] == 'Q') {
            frame_consume(in, &f);
            pr->quit = 1;
            break;
        } else {
            projector_flush(pr->pj);   /* the counters after what came before */
            uint64_t zero = 0;
            Cqrs__WorkerStats stats = CQRS__WORKER_STATS__INIT;
            projector_stats(pr->pj, &stats);
            frame_put(out, &zero, &stats.base);
        }
        frame_consume(in, &f);
    }
    if (st == FRAME_TOO_BIG) {
        log_error("cqrsd sent a frame of %u bytes; exiting", f.len);
        event_base_loopbreak(pr->base);
        return;
    }
    projector_flush(pr->pj);
    if (pr->quit) {
        projector_stop(pr->pj);
        event_base_loopexit(pr->base, NULL);
    }
}

static void proc_on_read(struct bufferevent *bev, void *arg)
{
    proc_process(arg, bufferevent_get_input(bev));
}

static void proc_on_event(struct bufferevent *bev, short what, void *arg)
{
    struct proc *pr = arg;
    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        event_base_loopexit(pr->base, NULL);   /* cqrsd is gone */
}

static void proc_on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct proc *pr = arg;
    (void)what;
    log_debug("signal %d: stopping", (int)sig);
    projector_stop(pr->pj);
    event_base_loopexit(pr->base, NULL);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: cqrs-projector --data-dir DIR [--fd N] [--supervisor-pid PID]\n"
               "Started by cqrsd (a child of kind projector); not meant to be run by hand.\n");
}

int main(int argc, char **argv)
{
    const char *data_dir = NULL;
    int fd = 3;
    long supervisor = 0;
    static const struct option opts[] = {
        { "data-dir", required_argument, NULL, 'd' },
        { "fd", required_argument, NULL, 'f' },
        { "supervisor-pid", required_argument, NULL, 'p' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'd': data_dir = optarg; break;
        case 'f': fd = atoi(optarg); break;
        case 'p': supervisor = atol(optarg); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 64;
        }
    }
    if (!data_dir || fd < 0) {
        usage(stderr);
        return 64;
    }
    log_init("cqrs-projector", getenv("CQRS_DEBUG") ? LOG_LVL_DEBUG : LOG_LVL_INFO);
    if (supervisor > 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != (pid_t)supervisor) {
            log_error("cqrsd (pid %ld) is already gone", supervisor);
            return 1;
        }
    }
    if (fcntl(fd, F_GETFD) < 0) {
        log_error("fd %d is not open: cqrs-projector is started by cqrsd", fd);
        return 64;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);

    struct proc pr = { 0 };
    if (!(pr.base = event_base_new())) {
        log_error("cannot create the event loop");
        return 1;
    }
    evutil_make_socket_nonblocking(fd);
    evutil_make_socket_closeonexec(fd);
    pr.bev = bufferevent_socket_new(pr.base, fd, BEV_OPT_CLOSE_ON_FREE);
    struct event *sigterm = evsignal_new(pr.base, SIGTERM, proc_on_signal, &pr);
    struct event *sigint = evsignal_new(pr.base, SIGINT, proc_on_signal, &pr);
    if (!pr.bev || !sigterm || !sigint) {
        log_error("cannot set up the event loop");
        return 1;
    }
    if (!(pr.pj = projector_new(pr.base, data_dir, bufferevent_get_output(pr.bev))))
        return 1;
    event_add(sigterm, NULL);
    event_add(sigint, NULL);
    bufferevent_set_max_single_read(pr.bev, 1 << 20);
    bufferevent_setcb(pr.bev, proc_on_read, NULL, proc_on_event, &pr);
    bufferevent_enable(pr.bev, EV_READ);
    if (!(pr.flusher = flusher_new()) || !(pr.flush = flusher_watch(pr.flusher, pr.bev))) {
        log_error("cannot set up the event loop");
        return 1;
    }
    uint64_t zero = 0;
    frame_put_bytes(bufferevent_get_output(pr.bev), &zero, NULL, 0);   /* ready */

    flusher_loop(pr.flusher, pr.base);

    /* what is still buffered (final replies) goes out before we leave */
    if (flusher_finish(pr.flush) < 0)
        log_error("cannot send the last replies: %s", strerror(errno));
    projector_free(pr.pj);
    event_free(sigterm);
    event_free(sigint);
    flusher_unwatch(pr.flush);
    flusher_free(pr.flusher);
    bufferevent_free(pr.bev);
    event_base_free(pr.base);
    return 0;
}
