/*
 * cqrs-bench — throughput and latency of cqrsd, as a user would see them.
 *
 *   cqrs-bench [--socket PATH | --spawn] [--connections N] [--depth D]
 *              [--commands N] [--aggregates A] [--kills K] [--events N]
 *              [--journal-mb MB] [--fsync always|batch|never] [--json]
 *              [--data-dir DIR] [--wallets N] [--scale-sizes A,B,...]
 *              [--scale-events A,B,...] [--readmodel] SCENARIO...
 *
 * Scenarios:
 *   sync       1 connection, 1 request in flight
 *   pipelined  N connections (default 4) x D requests in flight (default 64)
 *   clients    32 connections x 1 request in flight: many synchronous clients
 *   restart    (--spawn only) SIGKILL the wallet worker --kills times (default
 *              100): time from the kill to the first answered command on a
 *              small wallet (its replay included), beside the time to
 *              posix_spawn and reap a trivial program, measured in the same run
 *   replay     (--spawn only) a wallet log of --events records (default
 *              1,000,000 TopUps of 1) is written straight into the data
 *              directory before cqrsd starts (snapshot_every = 0); the first
 *              STATE query of that wallet replays all of it. Median of 3, the
 *              wallet worker RESTARTed between runs; the file was just
 *              written, so it is read from the page cache (warm)
 *   snapshot   (--spawn only) the same wallet, cqrsd restarted with
 *              snapshot_every = 1: one TopUp writes a snapshot, then the
 *              first STATE query after each of 3 RESTARTs of the worker
 *              loads it (median)
 *   journal    the pipelined load with fsync = always (its own cqrsd with
 *              --spawn): commands/s, journal fdatasyncs/s and commands per
 *              sync, from the worker's counters in STATUS before and after
 *   recovery   (--spawn only) no checkpoint (checkpoint_ms = 3600000): the
 *              pipelined load (256 in flight) until the wallet journal holds
 *              --journal-mb MB (default 1,024), then SIGKILL the wallet
 *              worker and time from the kill to the first OK TopUp: the
 *              journal recovery of every unchecked event included
 *   limits     what the machine allows, measured in the same run so that the
 *              other figures can be quoted as ratios of it: fdatasync_per_s
 *              (100-byte appends to a fresh file, each followed by
 *              fdatasync, for at least 2 s and 2,000 appends, in the data
 *              directory: the spawned cqrsd's with --spawn, else --data-dir,
 *              default var), fdatasync_prealloc_per_s (the same 100-byte
 *              records written one after another into a file fallocated
 *              to 64 MB first, as the journal's segments are), socket_rtt_us (median round trip of 1 byte over
 *              a socketpair between this process and a forked echo child,
 *              10,000 times) and spawn_us (median posix_spawn + waitpid of
 *              /bin/true, 2,000 times)
 *   memory     (--spawn only) its own cqrsd (fsync = never, snapshot_every =
 *              0, max_aggregates above N, idle_timeout_s = 0, open_files =
 *              1024): one TopUp to each of --wallets N wallets (default
 *              1,000,000; ids mem-0 .. mem-<N-1>), 4 connections x 256 in
 *              flight; the wallet worker's VmRSS (/proc/<pid>/status, pid
 *              from STATUS) before the load (baseline: a fresh worker) and
 *              after, and bytes_per_aggregate = (rss - baseline) / N
 *   scale      sync and pipelined at each of --scale-sizes aggregates
 *              (default 1000,100000,1000000), --commands each; every run has
 *              wallet ids of its own (scale-<size>-s-<n>, scale-<size>-p-<n>),
 *              so on a spawned cqrsd the first touch of each wallet creates
 *              its file: the figures include that, and each line says how
 *              many distinct wallets the run touched. Then the throughput at
 *              the largest size over the one at the smallest.
 *              Then (--spawn only), by stream length: for each of
 *              --scale-events L (default 10,1000,100000), a cqrsd of its own
 *              (fsync from --fsync, the default snapshot_every,
 *              heartbeat_timeout_ms 600000) on a data directory where two
 *              sets of W wallets (scale-ev<L>-s-<n> for sync,
 *              scale-ev<L>-p-<n> for pipelined) already have L TopUp events
 *              each, their logs written (and synced: syncfs) before it
 *              starts, as replay does (W = SCALE_EVENT_BUDGET / the largest
 *              L, at most SCALE_EVENT_WALLETS, the same for every L: 100 by
 *              default).
 *              Before each load, a first pass sends one TopUp to each wallet
 *              of its set, one at a time: first_command_* is the time of
 *              that first command, its load from disk included (and, from
 *              snapshot_every events on, the snapshot it makes the worker
 *              write). Then the load, --commands over the same W wallets
 *              (the streams grow by commands / W events on average during
 *              it). Then the throughput at the largest L over the one at
 *              the smallest
 *   readmodel  the read model (its own cqrsd with --spawn: fsync from --fsync,
 *              a [child readmodel] of kind projector, heartbeat_ms 20; else
 *              the one at --socket must have a child called readmodel).
 *              1. projection: the pipelined load (--commands TopUps over
 *              --connections x --depth) while this thread samples every
 *              10 ms the projector's lag: the largest position acknowledged
 *              to the load minus Reply.position of a GetWallet probe (what
 *              the read model had applied when it answered; an upper bound,
 *              see rm_sample; probe_p50_us and probe_max_us: the probes'
 *              round trips), and its own WorkerStats.lag in STATUS
 *              (reported_lag_*: the positions cqrsd passed on that it has
 *              not applied, not those still queued in cqrsd); then a
 *              GetWallet with latest = true at the end of the load,
 *              answered once the read model has every acknowledged event.
 *              commands_per_s; events_per_s = the events it applied
 *              (WorkerStats.events, fresh before and after) over the time
 *              from the start of the load to that answer; lag_max (over the
 *              samples), lag_end (at the end of the load), catchup_ms (end
 *              of the load -> that answer), transactions (WorkerStats.batches)
 *              and events_per_transaction. 2. GetWallet queries of the
 *              wallets the load touched, --commands / 2 of them over
 *              --connections x --depth, latest = false ("mode":"eventual")
 *              then latest = true ("mode":"latest": cqrsd raises min_position
 *              to the head): queries/s and latency percentiles; a query
 *              answered anything but OK counts as failed
 * The loads send TopUp amount=1 to wallets picked at random among A (default
 * 1,000) through the project's client library, one thread per connection.
 * sync, pipelined, clients, journal, memory and scale print commands/s and
 * latency percentiles over every request. --spawn starts its own cqrsd on a
 * temporary directory (removed after): one shared by sync, pipelined,
 * clients, restart, scale and limits (fsync from
 * --fsync, default always; with --readmodel it also runs the projector child
 * READMODEL_CHILD, as the built-in configuration does), one for replay and snapshot, one for journal,
 * one for recovery, one for memory, one for readmodel (limits measures in
 * the shared one's data directory); every spawned cqrsd heartbeats every
 * 100 ms (readmodel's every 20 ms), so the counters in STATUS are fresh
 * 300 ms (readmodel's 220 ms) after a load. Latency percentiles are
 * p50, p99 and p999 (the 99.9th; of few samples, it is the largest). Every
 * --json line has "scenario" and "fsync": the fsync mode of the cqrsd it
 * ran against (the --fsync given for a cqrsd we did not start, "unknown"
 * without one). Nothing is asserted: the program prints figures (warnings on
 * stderr).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "evlog.h"
#include "layout.h"
#include "wallet.pb-c.h"

#define BENCH_HEARTBEAT_MS 100       /* heartbeat_ms of every spawned cqrsd */
#define DEFAULT_HEARTBEAT_MS 1000    /* assumed of a cqrsd we did not start */
#define DEFAULT_START_TIMEOUT_MS 5000
#define DEFAULT_HEARTBEAT_TIMEOUT_MS 3000
#define LOAD_RUNS 3                  /* replay and snapshot: median of this many */
#define REPLAY_ID "replay-w"
#define RECOVERY_IN_FLIGHT 256
#define RECOVERY_PROBE "recovery-probe"
#define CLIENTS_CONNECTIONS 32
#define MEMORY_CONNECTIONS 4
#define MEMORY_DEPTH 256
#define MEMORY_PREFIX "mem-"
#define MAX_WALLETS 90000000u         /* max_aggregates (<= 100,000,000) must be above */
#define MAX_SCALE_SIZES 16
#define MAX_SCALE_SIZE 100000000u
#define SCALE_EVENT_BUDGET 10000000ul /* scale by length: events of a wallet set, at most ... */
#define SCALE_EVENT_WALLETS 1000u     /* ... and at most this many wallets in it */
#define SCALE_EVENT_HEARTBEAT_TIMEOUT_MS 600000   /* a long stream loads without heartbeats */
#define LIMITS_SYNCS 2000             /* limits: at least this many appends + fdatasync ... */
#define LIMITS_SYNC_S 2.0             /* ... and for at least this long */
#define LIMITS_PREALLOC (64 << 20)    /* limits: the preallocated file (segment_mb's default) */
#define LIMITS_RTTS 10000             /* socketpair round trips */
#define LIMITS_SPAWNS 2000            /* posix_spawn + waitpid of /bin/true */
#define READMODEL_CHILD "readmodel"   /* the projector child's name */
#define READMODEL_HEARTBEAT_MS 20     /* readmodel's cqrsd: counters at most this old */
#define READMODEL_SAMPLE_MS 10        /* readmodel: STATUS this often during the load */
#define READMODEL_WAIT_MS 600000      /* readmodel: timeout_ms of the catch-up query */

struct bench {
    const char *socket;
    unsigned connections, depth, aggregates, kills;
    unsigned long commands, events, journal_mb;
    const char *fsync;
    int json, spawn;
    int readmodel;               /* --readmodel: the shared cqrsd runs a projector */
    int fsync_given;             /* --fsync given: the mode of a cqrsd we did not start */
    const char *data_dir;        /* limits without --spawn */
    unsigned wallets;            /* memory */
    unsigned scale_sizes[MAX_SCALE_SIZES];
    size_t n_scale_sizes;
    unsigned scale_events[MAX_SCALE_SIZES];   /* scale: stream lengths */
    size_t n_scale_events;
};

/* The fsync mode of the shared cqrsd (or the one at --socket), for output. */
static const char *daemon_fsync(const struct bench *b)
{
    return b->spawn || b->fsync_given ? b->fsync : "unknown";
}

/* Writes `s` as a JSON string. */
static void json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch < 0x20)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The q-quantile of `n` values already sorted (0 for none). */
static double sorted_pct(const double *v, size_t n, double q)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)(q * (double)n);
    return v[i < n ? i : n - 1];
}

static double percentile(double *v, size_t n, double q)
{
    qsort(v, n, sizeof *v, cmp_double);
    return sorted_pct(v, n, q);
}

struct pcts {
    double p50, p99, p999;
};

/* Sorts v and takes its percentiles. */
static struct pcts pcts_of(double *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return (struct pcts){ sorted_pct(v, n, 0.5), sorted_pct(v, n, 0.99), sorted_pct(v, n, 0.999) };
}

static size_t pack_top_up(uint8_t *buf)
{
    Wallet__TopUp t = WALLET__TOP_UP__INIT;
    t.amount = 1;
    return wallet__top_up__pack(&t, buf);
}

/* ---- a cqrsd of our own ---------------------------------------------------- */

struct daemon {
    char dir[64], sock[128], data[128], conf[128], log[128];
    pid_t pid;                  /* 0: not running */
};

struct daemon_conf {
    const char *fsync;
    int snapshot_every;         /* < 0: the default */
    unsigned checkpoint_ms;     /* 0: the default */
    unsigned start_timeout_ms;  /* 0: the default */
    unsigned heartbeat_timeout_ms;   /* 0: the default */
    unsigned open_files;        /* 0: the default */
    unsigned max_aggregates;    /* 0: the default */
    int set_idle_timeout;       /* 0: the default idle_timeout_s */
    unsigned idle_timeout_s;
    unsigned heartbeat_ms;      /* 0: BENCH_HEARTBEAT_MS */
    int readmodel;              /* 1: with the projector child (READMODEL_CHILD) */
};

/* A fresh temporary directory for a daemon (nothing started). */
static int daemon_init(struct daemon *d)
{
    memset(d, 0, sizeof *d);
    snprintf(d->dir, sizeof d->dir, "/tmp/cqrs-bench.XXXXXX");
    if (!mkdtemp(d->dir)) {
        d->dir[0] = '\0';
        return -1;
    }
    snprintf(d->sock, sizeof d->sock, "%s/cqrsd.sock", d->dir);
    snprintf(d->data, sizeof d->data, "%s/data", d->dir);
    snprintf(d->conf, sizeof d->conf, "%s/cqrsd.conf", d->dir);
    snprintf(d->log, sizeof d->log, "%s/cqrsd.log", d->dir);
    return 0;
}

static int daemon_configure(const struct daemon *d, const struct daemon_conf *dc)
{
    FILE *f = fopen(d->conf, "w");
    if (!f)
        return -1;
    /* the restart scenario kills the worker on purpose, many times */
    fprintf(f, "[supervisor]\nintensity = 1000\nperiod = 1\nheartbeat_ms = %u\n",
            dc->heartbeat_ms ? dc->heartbeat_ms : BENCH_HEARTBEAT_MS);
    if (dc->start_timeout_ms)
        fprintf(f, "start_timeout_ms = %u\n", dc->start_timeout_ms);
    if (dc->heartbeat_timeout_ms)
        fprintf(f, "heartbeat_timeout_ms = %u\n", dc->heartbeat_timeout_ms);
    fprintf(f, "[storage]\nfsync = %s\n", dc->fsync);
    if (dc->snapshot_every >= 0)
        fprintf(f, "snapshot_every = %d\n", dc->snapshot_every);
    if (dc->checkpoint_ms)
        fprintf(f, "checkpoint_ms = %u\n", dc->checkpoint_ms);
    if (dc->open_files)
        fprintf(f, "open_files = %u\n", dc->open_files);
    if (dc->max_aggregates)
        fprintf(f, "max_aggregates = %u\n", dc->max_aggregates);
    if (dc->set_idle_timeout)
        fprintf(f, "idle_timeout_s = %u\n", dc->idle_timeout_s);
    fputs("[child wallet]\n[child account]\n", f);
    if (dc->readmodel)
        fputs("[child " READMODEL_CHILD "]\nkind = projector\n", f);
    return fclose(f) == 0 ? 0 : -1;
}

static void daemon_show_log(const struct daemon *d)
{
    FILE *f = fopen(d->log, "r");
    if (!f)
        return;
    fprintf(stderr, "cqrs-bench: cqrsd's log:\n");
    char line[512];
    while (fgets(line, sizeof line, f))
        fprintf(stderr, "  %s", line);
    fclose(f);
}

/* Starts cqrsd on d's configuration and data; waits until it accepts. */
static int daemon_start(struct daemon *d)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        if (!freopen(d->log, "a", stderr))
            _exit(127);
        execl(CQRSD_PATH, "cqrsd", "--config", d->conf, "--socket", d->sock, "--data-dir",
              d->data, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) {   /* up to 10 s for the workers to start */
        struct cqrs_client *c = cqrs_client_connect(d->sock);
        if (c) {
            cqrs_client_free(c);
            d->pid = pid;
            return 0;
        }
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            daemon_show_log(d);
            return -1;
        }
        sleep_ms(20);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    daemon_show_log(d);
    return -1;
}

static void daemon_stop(struct daemon *d)
{
    if (d->pid > 0) {
        kill(d->pid, SIGTERM);
        waitpid(d->pid, NULL, 0);
        d->pid = 0;
    }
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)flag, (void)f;
    return remove(path);
}

static void daemon_destroy(struct daemon *d)
{
    daemon_stop(d);
    if (d->dir[0])
        nftw(d->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    d->dir[0] = '\0';
}

/* Starts a daemon on a fresh directory with `dc`. */
static int daemon_spawn(struct daemon *d, const struct daemon_conf *dc)
{
    if (daemon_init(d) < 0 || daemon_configure(d, dc) < 0 || daemon_start(d) < 0) {
        fprintf(stderr, "cqrs-bench: could not start cqrsd\n");
        daemon_destroy(d);
        return -1;
    }
    return 0;
}

/* ---- STATUS ------------------------------------------------------------------ */

struct child_status {
    pid_t pid;
    int running;
    uint64_t batches, events, journal_syncs, position, checkpoint, aggregates;
    uint32_t open_files;
    uint64_t lag;               /* the projector's */
};

static int child_status(struct cqrs_client *c, const char *name, struct child_status *out)
{
    Cqrs__Reply *r;
    memset(out, 0, sizeof *out);
    if (cqrs_client_control(c, CQRS__CONTROL__OP__STATUS, NULL, &r) < 0)
        return -1;
    for (size_t i = 0; i < r->n_children; i++) {
        const Cqrs__ChildInfo *ci = r->children[i];
        if (strcmp(ci->name, name) != 0)
            continue;
        out->pid = ci->pid;
        out->running = strcmp(ci->state, "running") == 0;
        if (ci->stats) {
            out->batches = ci->stats->batches;
            out->events = ci->stats->events;
            out->journal_syncs = ci->stats->journal_syncs;
            out->position = ci->stats->position;
            out->checkpoint = ci->stats->checkpoint;
            out->aggregates = ci->stats->aggregates;
            out->open_files = ci->stats->open_files;
            out->lag = ci->stats->lag;
        }
    }
    cqrs__reply__free_unpacked(r, NULL);
    return 0;
}

/* The pid of child `name` from STATUS, 0 if it is not running. */
static pid_t child_pid(struct cqrs_client *c, const char *name)
{
    struct child_status st;
    if (child_status(c, name, &st) < 0 || !st.running)
        return 0;
    return st.pid;
}

/* Waits until child `name` runs with a pid other than `old`: the pid, or 0
 * after `timeout_ms`. */
static pid_t wait_running(struct cqrs_client *c, const char *name, pid_t old, unsigned timeout_ms)
{
    for (unsigned waited = 0; waited <= timeout_ms; waited += 2) {
        pid_t pid = child_pid(c, name);
        if (pid && pid != old)
            return pid;
        sleep_ms(2);
    }
    return 0;
}

/* ---- the load: TopUps over connections x depth ----------------------------- */

struct load {
    const char *socket;
    const char *prefix;          /* wallet ids: <prefix><n>, n < aggregates */
    unsigned aggregates, conns, depth;
    unsigned long per_conn;      /* commands per connection; 0: until `stop` */
    int sequential;              /* 1: each wallet once, in order: connection i sends
                                  * i, i + conns, ... below `aggregates` (per_conn must
                                  * be at least aggregates / conns, rounded up) */
    int query;                   /* LOAD_TOPUP, or GetWallet queries of the read model:
                                  * LOAD_EVENTUAL, LOAD_LATEST (latest = true) */
    const unsigned *ids;         /* queries: the wallets to pick from, n_ids of them */
    size_t n_ids;
    atomic_int stop;
    atomic_uint active;          /* connections still working */
    atomic_ulong done;           /* answered commands, every connection */
    atomic_ullong head;          /* the largest Reply.position answered (commands) */
};

enum { LOAD_TOPUP, LOAD_EVENTUAL, LOAD_LATEST };

struct worker_arg {
    struct load *l;
    unsigned index;
    double *lat_us;              /* one per command, or NULL */
    unsigned long done, failed;
    int error;
    Cqrs__Status first_failure;  /* queries: the status of the first answer not OK */
};

struct load_result {
    unsigned long commands, failed;   /* commands: requests answered, queries included */
    double secs;
    double *lat_us;              /* sorted, `commands` of them; NULL for open loads */
    Cqrs__Status first_failure;  /* queries: the status of a failed one */
};

/* The next wallet of a random load; connection i's sequence starts from seed
 * 12345 + i, so that the wallets a load touched can be counted after it. */
static unsigned wallet_pick(unsigned *seed, unsigned aggregates)
{
    return (unsigned)rand_r(seed) % aggregates;
}

static void *bench_conn(void *p)
{
    struct worker_arg *w = p;
    struct load *l = w->l;
    struct cqrs_client *c = cqrs_client_connect(l->socket);
    double *sent = calloc(l->depth, sizeof *sent);
    if (!c || !sent) {
        w->error = errno ? errno : ENOMEM;
        goto out;
    }
    uint8_t payload[16];
    size_t plen = pack_top_up(payload);
    unsigned seed = 12345u + w->index;
    unsigned long issued = 0;
    int open = l->per_conn == 0;
    unsigned long limit = l->per_conn;
    if (l->sequential)
        limit = w->index < l->aggregates
                    ? (l->aggregates - w->index + l->conns - 1) / l->conns : 0;
    char id[64];
    Cqrs__Request req = CQRS__REQUEST__INIT;
    Cqrs__Command cmd = CQRS__COMMAND__INIT;
    req.body_case = CQRS__REQUEST__BODY_COMMAND;
    req.command = &cmd;
    cmd.aggregate_type = "wallet";
    cmd.aggregate_id = id;
    cmd.name = "TopUp";
    cmd.payload.data = payload;
    cmd.payload.len = plen;
    for (;;) {
        int more = open ? !atomic_load(&l->stop) : issued < limit;
        while (more && issued - w->done < l->depth) {
            unsigned n = l->sequential ? (unsigned)(w->index + issued * l->conns)
                                       : wallet_pick(&seed, l->aggregates);
            snprintf(id, sizeof id, "%s%u", l->prefix, n);
            uint64_t rid;
            if (cqrs_client_queue(c, &req, &rid) < 0) {
                w->error = errno;
                goto out;
            }
            sent[rid % l->depth] = now_s();   /* ids are consecutive: no two in flight alike */
            issued++;
            if (!open)
                more = issued < limit;
        }
        if (w->done == issued)
            break;   /* nothing more to send, nothing in flight */
        /* what was queued goes out in one write; then every reply already
         * there is taken before the window is filled again */
        Cqrs__Reply *r;
        if (cqrs_client_flush(c) < 0 || cqrs_client_recv_any(c, &r) < 0) {
            w->error = errno;
            goto out;
        }
        int got = 1;
        while (got > 0) {
            double lat = (now_s() - sent[r->id % l->depth]) * 1e6;
            if (w->lat_us)
                w->lat_us[w->done] = lat;
            w->done++;
            atomic_fetch_add(&l->done, 1);
            if (r->status != CQRS__STATUS__OK)
                w->failed++;
            unsigned long long pos = r->position, head = atomic_load(&l->head);
            while (pos > head && !atomic_compare_exchange_weak(&l->head, &head, pos))
                ;
            cqrs__reply__free_unpacked(r, NULL);
            got = w->done == issued ? 0 : cqrs_client_recv_ready(c, &r);
        }
        if (got < 0) {
            w->error = errno;
            goto out;
        }
    }
out:
    free(sent);
    cqrs_client_free(c);
    atomic_fetch_sub(&l->active, 1);
    return NULL;
}

/* A GetWallet query of the read model, ready to send once q->payload is set. */
static void getwallet_request(Cqrs__Request *req, Cqrs__Query *q, int latest)
{
    cqrs__request__init(req);
    cqrs__query__init(q);
    req->body_case = CQRS__REQUEST__BODY_QUERY;
    req->query = q;
    q->kind = CQRS__QUERY__KIND__READ_MODEL;
    q->aggregate_type = "wallet";
    q->name = "GetWallet";
    q->latest = latest;
}

/* Packs wallet.GetWallet{id} into buf (at least 160 bytes for a short id). */
static size_t pack_get_wallet(const char *id, uint8_t *buf)
{
    Wallet__GetWallet g = WALLET__GET_WALLET__INIT;
    g.id = (char *)id;
    return wallet__get_wallet__pack(&g, buf);
}

/* A connection of a query load: per_conn GetWallet queries of wallets
 * <prefix><ids[k]>, k random, depth in flight. The projector may answer
 * them out of order: the time each was sent is kept by id in a slot. */
static void *query_conn(void *p)
{
    struct worker_arg *w = p;
    struct load *l = w->l;
    struct slot {
        uint64_t id;
        double sent;
    } *slots = calloc(l->depth, sizeof *slots);
    unsigned *free_slots = calloc(l->depth, sizeof *free_slots), n_free = l->depth;
    struct cqrs_client *c = cqrs_client_connect(l->socket);
    if (!c || !slots || !free_slots) {
        w->error = errno ? errno : ENOMEM;
        goto out;
    }
    for (unsigned i = 0; i < l->depth; i++)
        free_slots[i] = l->depth - 1 - i;
    unsigned seed = 54321u + w->index;
    unsigned long issued = 0;
    char id[64];
    uint8_t payload[160];
    Cqrs__Request req;
    Cqrs__Query q;
    getwallet_request(&req, &q, l->query == LOAD_LATEST);
    q.payload.data = payload;
    for (;;) {
        while (issued < l->per_conn && n_free > 0) {
            unsigned n = l->ids[wallet_pick(&seed, (unsigned)l->n_ids)];
            snprintf(id, sizeof id, "%s%u", l->prefix, n);
            q.payload.len = pack_get_wallet(id, payload);
            uint64_t rid;
            if (cqrs_client_send(c, &req, &rid) < 0) {
                w->error = errno;
                goto out;
            }
            unsigned s = free_slots[--n_free];
            slots[s] = (struct slot){ rid, now_s() };
            issued++;
        }
        if (w->done == issued)
            break;
        Cqrs__Reply *r;
        if (cqrs_client_recv_any(c, &r) < 0) {
            w->error = errno;
            goto out;
        }
        double t = now_s();
        unsigned s = 0;
        while (s < l->depth && !(slots[s].id == r->id && slots[s].sent > 0))
            s++;
        if (s == l->depth) {
            cqrs__reply__free_unpacked(r, NULL);
            w->error = EPROTO;   /* an answer to nothing in flight */
            goto out;
        }
        if (w->lat_us)
            w->lat_us[w->done] = (t - slots[s].sent) * 1e6;
        slots[s].sent = 0;
        free_slots[n_free++] = s;
        w->done++;
        atomic_fetch_add(&l->done, 1);
        if (r->status != CQRS__STATUS__OK && !w->failed++)
            w->first_failure = r->status;
        cqrs__reply__free_unpacked(r, NULL);
    }
out:
    free(slots), free(free_slots);
    cqrs_client_free(c);
    atomic_fetch_sub(&l->active, 1);
    return NULL;
}

static void load_init(struct load *l, const char *socket, const char *prefix, unsigned aggregates,
                      unsigned conns, unsigned depth, unsigned long per_conn)
{
    l->socket = socket;
    l->prefix = prefix;
    l->aggregates = aggregates;
    l->conns = conns;
    l->depth = depth;
    l->per_conn = per_conn;
    l->sequential = 0;
    l->query = LOAD_TOPUP;
    l->ids = NULL;
    l->n_ids = 0;
    atomic_init(&l->stop, 0);
    atomic_init(&l->active, conns);
    atomic_init(&l->done, 0);
    atomic_init(&l->head, 0);
}

/* Runs `l`; `watch` (may be NULL) runs in this thread meanwhile and must set
 * l->stop for an open load (per_conn 0). Fills `res` (free res->lat_us). */
static int run_load(struct load *l, void (*watch)(struct load *, void *), void *arg,
                    struct load_result *res, const char *name)
{
    memset(res, 0, sizeof *res);
    struct worker_arg *w = calloc(l->conns, sizeof *w);
    pthread_t *th = calloc(l->conns, sizeof *th);
    double *lat = l->per_conn ? calloc(l->per_conn * l->conns, sizeof *lat) : NULL;
    if (!w || !th || (l->per_conn && !lat)) {
        free(w), free(th), free(lat);
        fprintf(stderr, "cqrs-bench: %s: out of memory\n", name);
        return -1;
    }
    unsigned started = 0;
    int error = 0;
    double t0 = now_s();
    for (unsigned i = 0; i < l->conns; i++) {
        w[i] = (struct worker_arg){ l, i, lat ? lat + l->per_conn * i : NULL, 0, 0, 0,
                                    CQRS__STATUS__OK };
        int e = pthread_create(&th[i], NULL, l->query ? query_conn : bench_conn, &w[i]);
        if (e) {
            error = e;
            atomic_store(&l->stop, 1);
            atomic_fetch_sub(&l->active, l->conns - i);
            break;
        }
        started++;
    }
    if (watch && !error)
        watch(l, arg);
    atomic_store(&l->stop, 1);
    for (unsigned i = 0; i < started; i++) {
        pthread_join(th[i], NULL);
        res->commands += w[i].done;
        res->failed += w[i].failed;
        if (w[i].failed && res->first_failure == CQRS__STATUS__OK)
            res->first_failure = w[i].first_failure;
        if (w[i].error)
            error = w[i].error;
    }
    res->secs = now_s() - t0;
    if (lat) {   /* connections may have answered different numbers: close the gaps */
        size_t k = 0;
        for (unsigned i = 0; i < started; i++) {
            memmove(lat + k, w[i].lat_us, w[i].done * sizeof *lat);
            k += w[i].done;
        }
    }
    free(w), free(th);
    if (error) {
        fprintf(stderr, "cqrs-bench: %s: %s\n", name, strerror(error));
        free(lat);
        return -1;
    }
    if (lat)
        qsort(lat, res->commands, sizeof *lat, cmp_double);
    res->lat_us = lat;
    return 0;
}

static void print_table_header(const struct bench *b)
{
    static int printed;
    if (b->json || printed)
        return;
    printed = 1;
    printf("%-10s %5s %5s %9s %7s %8s %12s %9s %9s %9s %s\n", "scenario", "conns", "depth",
           "commands", "failed", "seconds", "commands/s", "p50_us", "p99_us", "p999_us", "fsync");
}

/* What a closed load (a fixed number of commands) measured. */
struct run_figures {
    unsigned conns, depth;
    unsigned long commands, failed;
    unsigned long distinct;      /* wallets touched */
    double secs, per_s;
    struct pcts lat;             /* us */
};

/* The wallets among `aggregates` that connections 0 .. conns-1 of a random
 * load touched with `per_conn` commands each (their picks again): a bitmap
 * (free it; NULL without memory), and their number in *distinct. */
static unsigned char *touched_map(unsigned aggregates, unsigned conns, unsigned long per_conn,
                                  unsigned long *distinct_out)
{
    unsigned char *seen = calloc(aggregates / 8 + 1, 1);
    if (!seen)
        return NULL;
    unsigned long distinct = 0;
    for (unsigned i = 0; i < conns; i++) {
        unsigned seed = 12345u + i;
        for (unsigned long k = 0; k < per_conn; k++) {
            unsigned n = wallet_pick(&seed, aggregates);
            if (!(seen[n / 8] & (1u << (n % 8)))) {
                seen[n / 8] |= (unsigned char)(1u << (n % 8));
                distinct++;
            }
        }
    }
    *distinct_out = distinct;
    return seen;
}

/* How many wallets such a load touched; 0 without memory. */
static unsigned long count_distinct(unsigned aggregates, unsigned conns, unsigned long per_conn)
{
    unsigned long distinct = 0;
    free(touched_map(aggregates, conns, per_conn, &distinct));
    return distinct;
}

/* `commands` TopUps (rounded down to a multiple of conns, at least one per
 * connection) to wallets <prefix><n>, n random below `aggregates`. */
static int closed_load(const char *socket, const char *prefix, unsigned aggregates,
                       unsigned conns, unsigned depth, unsigned long commands, const char *name,
                       struct run_figures *f)
{
    struct load l;
    struct load_result res;
    unsigned long per_conn = commands / conns ? commands / conns : 1;
    memset(f, 0, sizeof *f);
    load_init(&l, socket, prefix, aggregates, conns, depth, per_conn);
    if (run_load(&l, NULL, NULL, &res, name) < 0)
        return -1;
    f->conns = conns;
    f->depth = depth;
    f->commands = res.commands;
    f->failed = res.failed;
    f->secs = res.secs;
    f->per_s = res.secs > 0 ? res.commands / res.secs : 0;
    f->lat = (struct pcts){ sorted_pct(res.lat_us, res.commands, 0.5),
                            sorted_pct(res.lat_us, res.commands, 0.99),
                            sorted_pct(res.lat_us, res.commands, 0.999) };
    f->distinct = count_distinct(aggregates, conns, per_conn);
    free(res.lat_us);
    return 0;
}

static int run_scenario(const struct bench *b, const char *name, unsigned conns, unsigned depth)
{
    struct run_figures f;
    if (closed_load(b->socket, "bench-", b->aggregates, conns, depth, b->commands, name, &f) < 0)
        return -1;
    if (b->json)
        printf("{\"scenario\":\"%s\",\"fsync\":\"%s\",\"connections\":%u,\"depth\":%u,"
               "\"commands\":%lu,\"failed\":%lu,\"seconds\":%.3f,\"commands_per_s\":%.0f,"
               "\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"aggregates\":%u,"
               "\"distinct_wallets\":%lu}\n",
               name, daemon_fsync(b), conns, depth, f.commands, f.failed, f.secs, f.per_s,
               f.lat.p50, f.lat.p99, f.lat.p999, b->aggregates, f.distinct);
    else {
        print_table_header(b);
        printf("%-10s %5u %5u %9lu %7lu %8.3f %12.0f %9.1f %9.1f %9.1f %s\n", name, conns, depth,
               f.commands, f.failed, f.secs, f.per_s, f.lat.p50, f.lat.p99, f.lat.p999,
               daemon_fsync(b));
    }
    fflush(stdout);
    return f.failed ? -1 : 0;
}

/* ---- restart ------------------------------------------------------------------- */

/* Time to posix_spawn /bin/true and reap it: what any restart costs at least. */
static double spawn_once_us(void)
{
    extern char **environ;
    char *argv[] = { "true", NULL };
    double t0 = now_s();
    pid_t pid;
    if (posix_spawn(&pid, "/bin/true", NULL, NULL, argv, environ) != 0)
        return -1;
    waitpid(pid, NULL, 0);
    return (now_s() - t0) * 1e6;
}

static int run_restart(const struct bench *b)
{
    struct cqrs_client *c = cqrs_client_connect(b->socket);
    if (!c) {
        fprintf(stderr, "cqrs-bench: restart: %s\n", strerror(errno));
        return -1;
    }
    cqrs_client_set_retries(c, 0);   /* retried here, at once, to time the restart */
    uint8_t payload[16];
    size_t plen = pack_top_up(payload);
    Cqrs__Reply *r;
    for (int i = 0; i < 10; i++) {   /* a small stream to replay after each kill */
        if (cqrs_client_command(c, "wallet", "restart-w", "TopUp", payload, plen, NULL, -1, &r) < 0)
            goto fail;
        cqrs__reply__free_unpacked(r, NULL);
    }
    double *lat = calloc(b->kills, sizeof *lat), *spawn = calloc(b->kills, sizeof *spawn);
    if (!lat || !spawn) {
        free(lat), free(spawn);
        errno = ENOMEM;
        goto fail;
    }
    unsigned long retries = 0;
    for (unsigned k = 0; k < b->kills; k++) {
        pid_t pid = 0;
        for (int tries = 0; tries < 1000 && !(pid = child_pid(c, "wallet")); tries++)
            usleep(1000);
        if (!pid) {
            fprintf(stderr, "cqrs-bench: restart: the wallet worker did not come back\n");
            free(lat), free(spawn);
            goto fail;
        }
        double t0 = now_s();
        kill(pid, SIGKILL);
        for (;;) {
            if (cqrs_client_command(c, "wallet", "restart-w", "TopUp", payload, plen, NULL, -1, &r) < 0) {
                free(lat), free(spawn);
                goto fail;
            }
            int ok = r->status == CQRS__STATUS__OK;
            cqrs__reply__free_unpacked(r, NULL);
            if (ok)
                break;
            retries++;
        }
        lat[k] = (now_s() - t0) * 1e6;
        spawn[k] = spawn_once_us();
    }
    struct pcts pl = pcts_of(lat, b->kills);
    double s50 = percentile(spawn, b->kills, 0.5);
    if (b->json)
        printf("{\"scenario\":\"restart\",\"fsync\":\"%s\",\"kills\":%u,\"p50_ms\":%.3f,"
               "\"p99_ms\":%.3f,\"p999_ms\":%.3f,\"spawn_us\":%.1f,\"retries\":%lu}\n",
               daemon_fsync(b), b->kills, pl.p50 / 1000, pl.p99 / 1000, pl.p999 / 1000, s50,
               retries);
    else
        printf("restart    kills %u: kill -> first answered command p50 %.3f ms, p99 %.3f ms, "
               "p999 %.3f ms; bare posix_spawn+wait of /bin/true p50 %.1f us; %lu UNAVAILABLE "
               "retries\n", b->kills, pl.p50 / 1000, pl.p99 / 1000, pl.p999 / 1000, s50, retries);
    fflush(stdout);
    free(lat), free(spawn);
    cqrs_client_free(c);
    return 0;
fail:
    fprintf(stderr, "cqrs-bench: restart: %s\n", strerror(errno));
    cqrs_client_free(c);
    return -1;
}

/* ---- replay and snapshot --------------------------------------------------- */

/* The data directory with REPLAY_ID's log, shared by replay and snapshot. */
struct fixture {
    struct daemon d;
    int ready;
    unsigned long events;        /* in the stream now (= its balance) */
};

static int write_all(int fd, const uint8_t *p, size_t len)
{
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int mkdir_ok(const char *path)
{
    return mkdir(path, 0700) == 0 || errno == EEXIST ? 0 : -1;
}

/* Writes `n` WalletToppedUp{i-1 -> i} records, versions 1..n, as the log of
 * `id` under `type_dir`. Returns the file's size, or -1 with errno. */
static off_t write_wallet_log(const char *type_dir, const char *id, unsigned long n)
{
    char dir[256], path[300];
    layout_shard_dir(dir, sizeof dir, type_dir, id);
    layout_stream_file(path, sizeof path, type_dir, id, ".log");
    if (mkdir_ok(type_dir) < 0 || mkdir_ok(dir) < 0)
        return -1;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    uint8_t *buf = NULL, data[32];
    size_t len = 0, cap = 0;
    off_t size = EVLOG_MAGIC_LEN;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t stamp = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    Cqrs__EventRecord rec = CQRS__EVENT_RECORD__INIT;
    Wallet__WalletToppedUp ev = WALLET__WALLET_TOPPED_UP__INIT;
    rec.type = "WalletToppedUp";
    rec.data.data = data;
    int rc = write_all(fd, (const uint8_t *)EVLOG_MAGIC, EVLOG_MAGIC_LEN);
    for (unsigned long i = 1; rc == 0 && i <= n; i++) {
        ev.from = (int64_t)i - 1;
        ev.to = (int64_t)i;
        rec.data.len = wallet__wallet_topped_up__pack(&ev, data);
        rec.version = i;
        rec.timestamp_us = stamp;
        if (evlog_encode(&rec, &buf, &len, &cap) < 0)
            rc = -1;
        else if (len >= (1u << 20) || i == n) {
            rc = write_all(fd, buf, len);
            size += (off_t)len;
            len = 0;
        }
    }
    int e = errno;
    free(buf);
    if (close(fd) < 0 && rc == 0)
        return -1;
    errno = e;
    return rc < 0 ? -1 : size;
}

static int fixture_prepare(const struct bench *b, struct fixture *fx, const char *name)
{
    if (fx->ready)
        return 0;
    char type_dir[160];
    if (daemon_init(&fx->d) < 0 || mkdir_ok(fx->d.data) < 0) {
        fprintf(stderr, "cqrs-bench: %s: %s\n", name, strerror(errno));
        return -1;
    }
    snprintf(type_dir, sizeof type_dir, "%s/wallet", fx->d.data);
    double t0 = now_s();
    off_t size = write_wallet_log(type_dir, REPLAY_ID, b->events);
    if (size < 0) {
        fprintf(stderr, "cqrs-bench: %s: cannot write the log of %s: %s\n", name, REPLAY_ID,
                strerror(errno));
        return -1;
    }
    fprintf(stderr, "cqrs-bench: %s: wrote %lu events of %s (%.1f MB) in %.2f s\n", name,
            b->events, REPLAY_ID, size / 1048576.0, now_s() - t0);
    fx->events = b->events;
    fx->ready = 1;
    return 0;
}

/* The balance in a STATE reply, or -1 when it does not decode. */
static int64_t reply_balance(const Cqrs__Reply *r)
{
    Wallet__WalletState *s = wallet__wallet_state__unpack(NULL, r->state.len, r->state.data);
    if (!s)
        return -1;
    int64_t balance = s->balance;
    wallet__wallet_state__free_unpacked(s, NULL);
    return balance;
}

/* Times the first STATE query of REPLAY_ID after each of LOAD_RUNS starts of
 * the wallet worker (a RESTART before each run but the first, unless
 * `restart_first`). ms[] gets the times. */
static int time_loads(struct fixture *fx, const char *name, int restart_first, double *ms)
{
    struct cqrs_client *c = cqrs_client_connect(fx->d.sock);
    if (!c) {
        fprintf(stderr, "cqrs-bench: %s: %s\n", name, strerror(errno));
        return -1;
    }
    int rc = -1;
    for (int i = 0; i < LOAD_RUNS; i++) {
        pid_t pid = wait_running(c, "wallet", 0, 30000);
        if (!pid) {
            fprintf(stderr, "cqrs-bench: %s: the wallet worker is not running\n", name);
            goto out;
        }
        if (i > 0 || restart_first) {
            Cqrs__Reply *r;
            if (cqrs_client_control(c, CQRS__CONTROL__OP__RESTART, "wallet", &r) < 0) {
                fprintf(stderr, "cqrs-bench: %s: RESTART: %s\n", name, strerror(errno));
                goto out;
            }
            int ok = r->status == CQRS__STATUS__OK;
            if (!ok)
                fprintf(stderr, "cqrs-bench: %s: RESTART: %s: %s\n", name,
                        cqrs_status_name(r->status), r->error);
            cqrs__reply__free_unpacked(r, NULL);
            if (!ok)
                goto out;
            if (!wait_running(c, "wallet", pid, 60000)) {
                fprintf(stderr, "cqrs-bench: %s: the wallet worker did not come back\n", name);
                goto out;
            }
        }
        sleep_ms(200);   /* its new standby worker is being started: let that settle */
        Cqrs__Reply *r;
        double t0 = now_s();
        if (cqrs_client_state(c, "wallet", REPLAY_ID, &r) < 0) {
            fprintf(stderr, "cqrs-bench: %s: STATE: %s\n", name, strerror(errno));
            goto out;
        }
        ms[i] = (now_s() - t0) * 1e3;
        int64_t balance = r->status == CQRS__STATUS__OK ? reply_balance(r) : -1;
        if (r->status != CQRS__STATUS__OK)
            fprintf(stderr, "cqrs-bench: %s: warning: STATE of %s answered %s: %s\n", name,
                    REPLAY_ID, cqrs_status_name(r->status), r->error);
        else if (balance != (int64_t)fx->events || r->version != fx->events)
            fprintf(stderr, "cqrs-bench: %s: warning: %s has balance %lld at version %llu, "
                    "expected %lu at %lu\n", name, REPLAY_ID, (long long)balance,
                    (unsigned long long)r->version, fx->events, fx->events);
        int ok = r->status == CQRS__STATUS__OK;
        cqrs__reply__free_unpacked(r, NULL);
        if (!ok)
            goto out;
    }
    rc = 0;
out:
    cqrs_client_free(c);
    return rc;
}

static double median3(double *v)
{
    return percentile(v, LOAD_RUNS, 0.5);
}

/* The replaying worker answers no heartbeat: give it room, and say so when
 * the default would have been exceeded. */
static void note_heartbeat(const char *name, double ms)
{
    if (ms > DEFAULT_HEARTBEAT_TIMEOUT_MS)
        fprintf(stderr, "cqrs-bench: %s: note: %.0f ms without answering heartbeats; the "
                "default heartbeat_timeout_ms (%d) would have killed the worker\n", name, ms,
                DEFAULT_HEARTBEAT_TIMEOUT_MS);
}

static int run_replay(const struct bench *b, struct fixture *fx)
{
    if (fixture_prepare(b, fx, "replay") < 0)
        return -1;
    char type_dir[160], snap[300];
    snprintf(type_dir, sizeof type_dir, "%s/wallet", fx->d.data);
    layout_stream_file(snap, sizeof snap, type_dir, REPLAY_ID, ".snap");
    unlink(snap);   /* left by an earlier snapshot scenario: replay everything */
    struct daemon_conf dc = { .fsync = b->fsync, .snapshot_every = 0,
                              .heartbeat_timeout_ms = 600000 };
    double ms[LOAD_RUNS];
    if (daemon_configure(&fx->d, &dc) < 0 || daemon_start(&fx->d) < 0) {
        fprintf(stderr, "cqrs-bench: replay: could not start cqrsd\n");
        return -1;
    }
    int rc = time_loads(fx, "replay", 0, ms);
    daemon_stop(&fx->d);
    if (rc < 0)
        return -1;
    double med = median3(ms);
    note_heartbeat("replay", ms[LOAD_RUNS - 1]);
    double eps = fx->events / (med / 1e3);
    if (b->json)
        printf("{\"scenario\":\"replay\",\"fsync\":\"%s\",\"events\":%lu,\"runs\":%d,"
               "\"cache\":\"warm\",\"replay_ms\":%.1f,\"min_ms\":%.1f,\"max_ms\":%.1f,"
               "\"events_per_s\":%.0f}\n",
               b->fsync, fx->events, LOAD_RUNS, med, ms[0], ms[LOAD_RUNS - 1], eps);
    else
        printf("replay     %lu events, first STATE (full replay, page cache warm): replay_ms "
               "%.1f (median of %d; %.1f .. %.1f), events_per_s %.0f\n",
               fx->events, med, LOAD_RUNS, ms[0], ms[LOAD_RUNS - 1], eps);
    fflush(stdout);
    return 0;
}

static int run_snapshot(const struct bench *b, struct fixture *fx)
{
    if (fixture_prepare(b, fx, "snapshot") < 0)
        return -1;
    struct daemon_conf dc = { .fsync = b->fsync, .snapshot_every = 1,
                              .heartbeat_timeout_ms = 600000 };
    if (daemon_configure(&fx->d, &dc) < 0 || daemon_start(&fx->d) < 0) {
        fprintf(stderr, "cqrs-bench: snapshot: could not start cqrsd\n");
        return -1;
    }
    int rc = -1;
    double first_ms = 0, ms[LOAD_RUNS];
    struct cqrs_client *c = cqrs_client_connect(fx->d.sock);
    if (!c) {
        fprintf(stderr, "cqrs-bench: snapshot: %s\n", strerror(errno));
        goto out;
    }
    if (!wait_running(c, "wallet", 0, 30000)) {
        fprintf(stderr, "cqrs-bench: snapshot: the wallet worker is not running\n");
        goto out;
    }
    /* loads the stream by full replay, appends one event, writes the snapshot */
    uint8_t payload[16];
    size_t plen = pack_top_up(payload);
    Cqrs__Reply *r;
    double t0 = now_s();
    if (cqrs_client_command(c, "wallet", REPLAY_ID, "TopUp", payload, plen, NULL, -1, &r) < 0) {
        fprintf(stderr, "cqrs-bench: snapshot: TopUp: %s\n", strerror(errno));
        goto out;
    }
    first_ms = (now_s() - t0) * 1e3;
    int ok = r->status == CQRS__STATUS__OK;
    if (!ok)
        fprintf(stderr, "cqrs-bench: snapshot: TopUp of %s answered %s: %s\n", REPLAY_ID,
                cqrs_status_name(r->status), r->error);
    else
        fx->events = r->version;
    cqrs__reply__free_unpacked(r, NULL);
    if (!ok)
        goto out;
    char type_dir[160], snap[300];
    struct stat st;
    snprintf(type_dir, sizeof type_dir, "%s/wallet", fx->d.data);
    layout_stream_file(snap, sizeof snap, type_dir, REPLAY_ID, ".snap");
    if (stat(snap, &st) < 0)
        fprintf(stderr, "cqrs-bench: snapshot: warning: no snapshot at %s (%s)\n", snap,
                strerror(errno));
    cqrs_client_free(c);
    c = NULL;
    if (time_loads(fx, "snapshot", 1, ms) < 0)
        goto out;
    double med = median3(ms);
    if (b->json)
        printf("{\"scenario\":\"snapshot\",\"fsync\":\"%s\",\"events\":%lu,\"runs\":%d,"
               "\"snapshot_load_ms\":%.3f,\"min_ms\":%.3f,\"max_ms\":%.3f,"
               "\"first_command_ms\":%.1f}\n",
               b->fsync, fx->events, LOAD_RUNS, med, ms[0], ms[LOAD_RUNS - 1], first_ms);
    else
        printf("snapshot   %lu events, first STATE after RESTART (snapshot load): "
               "snapshot_load_ms %.3f (median of %d; %.3f .. %.3f); the TopUp that wrote it "
               "(full replay + snapshot) %.1f ms\n",
               fx->events, med, LOAD_RUNS, ms[0], ms[LOAD_RUNS - 1], first_ms);
    fflush(stdout);
    rc = 0;
out:
    cqrs_client_free(c);
    daemon_stop(&fx->d);
    return rc;
}

/* ---- journal ------------------------------------------------------------------- */

/* Child `child`'s counters, fresh: waits one heartbeat and then some. */
static int fresh_child_stats(struct cqrs_client *c, const char *child, unsigned heartbeat_ms,
                             struct child_status *st, const char *name)
{
    sleep_ms(heartbeat_ms + 200);
    if (child_status(c, child, st) < 0) {
        fprintf(stderr, "cqrs-bench: %s: STATUS: %s\n", name, strerror(errno));
        return -1;
    }
    if (!st->running) {
        fprintf(stderr, "cqrs-bench: %s: the child %s is not running\n", name, child);
        return -1;
    }
    /* no stats in STATUS: every counter is 0 (an empty WorkerStats packs to no
     * bytes, which cqrsd does not tell from "no heartbeat answered yet") */
    return 0;
}

/* The wallet worker's counters, fresh. */
static int fresh_stats(struct cqrs_client *c, unsigned heartbeat_ms, struct child_status *st,
                       const char *name)
{
    return fresh_child_stats(c, "wallet", heartbeat_ms, st, name);
}

static int run_journal(const struct bench *b)
{
    struct daemon d = { .pid = 0 };
    const char *sock = b->socket;
    unsigned heartbeat_ms = DEFAULT_HEARTBEAT_MS;
    if (b->spawn) {
        struct daemon_conf dc = { .fsync = "always", .snapshot_every = -1 };
        if (daemon_spawn(&d, &dc) < 0)
            return -1;
        sock = d.sock;
        heartbeat_ms = BENCH_HEARTBEAT_MS;
    }
    int rc = -1;
    struct cqrs_client *c = cqrs_client_connect(sock);
    struct child_status before, after;
    struct load l;
    struct load_result res = { 0 };
    if (!c) {
        fprintf(stderr, "cqrs-bench: journal: %s\n", strerror(errno));
        goto out;
    }
    if (b->spawn && !wait_running(c, "wallet", 0, 30000)) {
        fprintf(stderr, "cqrs-bench: journal: the wallet worker is not running\n");
        goto out;
    }
    if (fresh_stats(c, heartbeat_ms, &before, "journal") < 0)
        goto out;
    load_init(&l, sock, "bench-", b->aggregates, b->connections, b->depth,
              b->commands / b->connections);
    if (run_load(&l, NULL, NULL, &res, "journal") < 0)
        goto out;
    if (fresh_stats(c, heartbeat_ms, &after, "journal") < 0)
        goto out;
    if (after.pid != before.pid)
        fprintf(stderr, "cqrs-bench: journal: warning: the wallet worker changed (pid %d -> %d) "
                "during the load: its counters started again\n", (int)before.pid,
                (int)after.pid);
    unsigned long n = res.commands;
    double *lat = res.lat_us;
    double p50 = sorted_pct(lat, n, 0.5), p99 = sorted_pct(lat, n, 0.99);
    double p999 = sorted_pct(lat, n, 0.999);
    const char *fsync = b->spawn ? "always" : daemon_fsync(b);
    uint64_t syncs = after.journal_syncs - before.journal_syncs;
    uint64_t events = after.events - before.events;
    double per_sync = syncs ? (double)events / (double)syncs : 0;
    if (b->json)
        printf("{\"scenario\":\"journal\",\"fsync\":\"%s\",\"connections\":%u,\"depth\":%u,"
               "\"commands\":%lu,\"failed\":%lu,\"seconds\":%.3f,\"commands_per_s\":%.0f,"
               "\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"events\":%llu,"
               "\"journal_syncs\":%llu,\"journal_syncs_per_s\":%.0f,\"commands_per_sync\":%.1f}\n",
               fsync, l.conns, l.depth, n, res.failed, res.secs, n / res.secs, p50, p99, p999,
               (unsigned long long)events, (unsigned long long)syncs, syncs / res.secs, per_sync);
    else
        printf("journal    %u x %u, fsync %s: %lu commands (%lu failed) in %.3f s: "
               "commands_per_s %.0f, p50 %.1f us, p99 %.1f us, p999 %.1f us; %llu events, %llu "
               "journal syncs: journal_syncs_per_s %.0f, commands_per_sync %.1f\n",
               l.conns, l.depth, fsync, n, res.failed, res.secs, n / res.secs, p50, p99, p999,
               (unsigned long long)events, (unsigned long long)syncs, syncs / res.secs, per_sync);
    fflush(stdout);
    rc = res.failed ? -1 : 0;
out:
    free(res.lat_us);
    cqrs_client_free(c);
    daemon_destroy(&d);
    return rc;
}

/* ---- recovery ------------------------------------------------------------------ */

/* Bytes of the regular files in `path` (0 when it does not exist yet). */
static off_t dir_bytes(const char *path)
{
    DIR *dir = opendir(path);
    if (!dir)
        return 0;
    off_t total = 0;
    struct dirent *e;
    while ((e = readdir(dir))) {
        struct stat st;
        if (e->d_name[0] == '.')
            continue;
        if (fstatat(dirfd(dir), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode))
            total += st.st_size;
    }
    closedir(dir);
    return total;
}

struct recovery_watch {
    const char *journal;         /* the journal folder */
    off_t target;                /* bytes */
    double t0;
};

/* Stops the load once the journal holds `target` bytes; progress every 10%. */
static void recovery_watch(struct load *l, void *arg)
{
    struct recovery_watch *rw = arg;
    int next = 1;
    while (atomic_load(&l->active) > 0) {
        sleep_ms(50);
        off_t size = dir_bytes(rw->journal);
        int pct = (int)(size * 100 / rw->target);
        if (pct >= next * 10) {
            next = pct / 10 + 1;
            fprintf(stderr, "cqrs-bench: recovery: journal %d%% (%.0f MB), %lu commands, "
                    "%.1f s\n", pct > 100 ? 100 : pct, size / 1048576.0,
                    (unsigned long)atomic_load(&l->done), now_s() - rw->t0);
        }
        if (size >= rw->target)
            break;
    }
    atomic_store(&l->stop, 1);
}

static int run_recovery(const struct bench *b)
{
    struct daemon d;
    /* no checkpoint while loading; a long recovery must not count as a failed start */
    struct daemon_conf dc = { .fsync = b->fsync, .snapshot_every = -1, .checkpoint_ms = 3600000,
                              .start_timeout_ms = 3600000 };
    if (daemon_spawn(&d, &dc) < 0)
        return -1;
    int rc = -1;
    char journal[200];
    snprintf(journal, sizeof journal, "%s/wallet/%s", d.data, LAYOUT_JOURNAL);
    uint8_t payload[16];
    size_t plen = pack_top_up(payload);
    Cqrs__Reply *r;
    struct child_status st;
    struct cqrs_client *c = cqrs_client_connect(d.sock);
    if (!c) {
        fprintf(stderr, "cqrs-bench: recovery: %s\n", strerror(errno));
        goto out;
    }
    for (int i = 0; i < 10; i++) {   /* a small stream to answer after the kill */
        if (cqrs_client_command(c, "wallet", RECOVERY_PROBE, "TopUp", payload, plen, NULL, -1,
                                &r) < 0) {
            fprintf(stderr, "cqrs-bench: recovery: TopUp: %s\n", strerror(errno));
            goto out;
        }
        cqrs__reply__free_unpacked(r, NULL);
    }
    unsigned depth = RECOVERY_IN_FLIGHT / b->connections ? RECOVERY_IN_FLIGHT / b->connections : 1;
    struct load l;
    struct load_result res;
    struct recovery_watch rw = { journal, (off_t)b->journal_mb << 20, now_s() };
    load_init(&l, d.sock, "recovery-", b->aggregates, b->connections, depth, 0);
    if (run_load(&l, recovery_watch, &rw, &res, "recovery") < 0)
        goto out;
    if (fresh_stats(c, BENCH_HEARTBEAT_MS, &st, "recovery") < 0)
        goto out;
    off_t size = dir_bytes(journal);
    uint64_t unchecked = st.position - st.checkpoint;

    cqrs_client_set_retries(c, 0);   /* retried here, at once, to time the recovery */
    unsigned long retries = 0;
    double t0 = now_s();
    kill(st.pid, SIGKILL);
    for (;;) {
        if (cqrs_client_command(c, "wallet", RECOVERY_PROBE, "TopUp", payload, plen, NULL, -1,
                                &r) < 0) {
            fprintf(stderr, "cqrs-bench: recovery: TopUp: %s\n", strerror(errno));
            goto out;
        }
        int ok = r->status == CQRS__STATUS__OK;
        cqrs__reply__free_unpacked(r, NULL);
        if (ok)
            break;
        retries++;
        if (now_s() - t0 > 3600) {
            fprintf(stderr, "cqrs-bench: recovery: no OK answer within an hour\n");
            goto out;
        }
    }
    double ms = (now_s() - t0) * 1e3;
    if (ms > DEFAULT_START_TIMEOUT_MS)
        fprintf(stderr, "cqrs-bench: recovery: note: %.0f ms is over the default "
                "start_timeout_ms (%d): with it, the restarted worker would be killed before "
                "it is ready\n", ms, DEFAULT_START_TIMEOUT_MS);
    if (b->json)
        printf("{\"scenario\":\"recovery\",\"fsync\":\"%s\",\"connections\":%u,\"depth\":%u,"
               "\"commands\":%lu,\"failed\":%lu,\"seconds\":%.3f,\"commands_per_s\":%.0f,"
               "\"journal_mb\":%.1f,\"unchecked_events\":%llu,\"recovery_ms\":%.1f,"
               "\"retries\":%lu}\n",
               b->fsync, l.conns, l.depth, res.commands, res.failed, res.secs, res.commands / res.secs,
               size / 1048576.0, (unsigned long long)unchecked, ms, retries);
    else
        printf("recovery   journal_mb %.1f, unchecked_events %llu (loaded by %lu commands in "
               "%.1f s, %.0f/s, fsync %s): SIGKILL -> first OK TopUp recovery_ms %.1f; %lu "
               "retries\n", size / 1048576.0, (unsigned long long)unchecked, res.commands,
               res.secs, res.commands / res.secs, b->fsync, ms, retries);
    fflush(stdout);
    rc = 0;
out:
    cqrs_client_free(c);
    daemon_destroy(&d);
    return rc;
}

/* ---- limits -------------------------------------------------------------------- */

/* 100-byte appends to a fresh file in `dir`, each followed by fdatasync, until
 * there were LIMITS_SYNCS of them and LIMITS_SYNC_S passed. *lat_out gets the
 * time of each (us; free it), *n_out their number, *secs_out the time of all.
 * With `prealloc`, the file is first fallocated to LIMITS_PREALLOC bytes and
 * the records written one after the other into it, as the journal does. */
static int measure_fdatasync(const char *dir, int prealloc, double **lat_out, size_t *n_out,
                             double *secs_out)
{
    char path[4096];
    *lat_out = NULL;
    if ((size_t)snprintf(path, sizeof path, "%s/cqrs-bench-fdatasync.XXXXXX", dir) >= sizeof path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = mkostemp(path, (prealloc ? 0 : O_APPEND) | O_CLOEXEC);
    if (fd < 0)
        return -1;
    if (prealloc && (fallocate(fd, 0, 0, LIMITS_PREALLOC) < 0 || fsync(fd) < 0)) {
        int e = errno;
        close(fd);
        unlink(path);
        errno = e;
        return -1;
    }
    uint8_t rec[100];
    memset(rec, 'r', sizeof rec);
    size_t n = 0, cap = 0;
    double *lat = NULL, t0 = now_s(), t = t0;
    int rc = 0;
    while (n < LIMITS_SYNCS || t - t0 < LIMITS_SYNC_S) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 4096;
            double *nl = realloc(lat, ncap * sizeof *nl);
            if (!nl) {
                errno = ENOMEM;
                rc = -1;
                break;
            }
            lat = nl;
            cap = ncap;
        }
        double a = now_s();
        if ((prealloc ? pwrite(fd, rec, sizeof rec, (off_t)(n * sizeof rec)) != (ssize_t)sizeof rec
                      : write_all(fd, rec, sizeof rec) < 0) ||
            fdatasync(fd) < 0) {
            rc = -1;
            break;
        }
        t = now_s();
        lat[n++] = (t - a) * 1e6;
    }
    int e = errno;
    close(fd);
    unlink(path);
    if (rc < 0) {
        free(lat);
        errno = e;
        return -1;
    }
    *lat_out = lat;
    *n_out = n;
    *secs_out = t - t0;
    return 0;
}

/* `n` round trips of one byte over a socketpair to a forked echo process
 * (after 100 not counted); lat[] gets each (us). */
static int measure_socket_rtt(double *lat, size_t n)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(sv[0]), close(sv[1]);
        errno = e;
        return -1;
    }
    if (pid == 0) {   /* echo until the other end closes */
        close(sv[0]);
        char ch;
        for (;;) {
            ssize_t r = read(sv[1], &ch, 1);
            if (r < 0 && errno == EINTR)
                continue;
            if (r != 1 || write(sv[1], &ch, 1) != 1)
                _exit(0);
        }
    }
    close(sv[1]);
    const size_t warm = 100;
    int rc = 0;
    char ch = 'x';
    for (size_t i = 0; i < warm + n; i++) {
        double t0 = now_s();
        ssize_t r = write(sv[0], &ch, 1) == 1 ? read(sv[0], &ch, 1) : -1;
        if (r != 1) {
            if (r == 0)
                errno = ECONNRESET;
            rc = -1;
            break;
        }
        if (i >= warm)
            lat[i - warm] = (now_s() - t0) * 1e6;
    }
    int e = errno;
    close(sv[0]);
    waitpid(pid, NULL, 0);
    errno = e;
    return rc;
}

static int run_limits(const struct bench *b, const char *data_dir)
{
    double *sync_lat = NULL, secs = 0, *pre_lat = NULL, pre_secs = 0;
    size_t n_sync = 0, n_pre = 0;
    double *rtt = calloc(LIMITS_RTTS, sizeof *rtt), *spawn = calloc(LIMITS_SPAWNS, sizeof *spawn);
    int rc = -1;
    if (!rtt || !spawn) {
        fprintf(stderr, "cqrs-bench: limits: out of memory\n");
        goto out;
    }
    if (measure_fdatasync(data_dir, 0, &sync_lat, &n_sync, &secs) < 0) {
        fprintf(stderr, "cqrs-bench: limits: appends + fdatasync in %s: %s\n", data_dir,
                strerror(errno));
        goto out;
    }
    if (measure_fdatasync(data_dir, 1, &pre_lat, &n_pre, &pre_secs) < 0) {
        fprintf(stderr, "cqrs-bench: limits: writes into a preallocated file + fdatasync in %s: "
                "%s\n", data_dir, strerror(errno));
        goto out;
    }
    if (measure_socket_rtt(rtt, LIMITS_RTTS) < 0) {
        fprintf(stderr, "cqrs-bench: limits: socketpair round trips: %s\n", strerror(errno));
        goto out;
    }
    for (size_t i = 0; i < LIMITS_SPAWNS; i++)
        if ((spawn[i] = spawn_once_us()) < 0) {
            fprintf(stderr, "cqrs-bench: limits: posix_spawn /bin/true failed\n");
            goto out;
        }
    double per_s = secs > 0 ? n_sync / secs : 0;
    double pre_per_s = pre_secs > 0 ? n_pre / pre_secs : 0;
    struct pcts ps = pcts_of(sync_lat, n_sync), pre = pcts_of(pre_lat, n_pre);
    struct pcts pr = pcts_of(rtt, LIMITS_RTTS);
    struct pcts pp = pcts_of(spawn, LIMITS_SPAWNS);
    if (b->json) {
        printf("{\"scenario\":\"limits\",\"fsync\":\"%s\",\"data_dir\":", daemon_fsync(b));
        json_string(data_dir);
        printf(",\"fdatasync_per_s\":%.0f,\"fdatasync_iterations\":%zu,\"fdatasync_seconds\":%.3f,"
               "\"fdatasync_p50_us\":%.1f,\"fdatasync_p99_us\":%.1f,\"fdatasync_p999_us\":%.1f,"
               "\"fdatasync_prealloc_per_s\":%.0f,\"fdatasync_prealloc_p50_us\":%.1f,"
               "\"socket_rtt_us\":%.2f,\"socket_rtt_iterations\":%d,\"socket_rtt_p99_us\":%.2f,"
               "\"socket_rtt_p999_us\":%.2f,\"spawn_us\":%.1f,\"spawn_iterations\":%d,"
               "\"spawn_p99_us\":%.1f,\"spawn_p999_us\":%.1f}\n",
               per_s, n_sync, secs, ps.p50, ps.p99, ps.p999, pre_per_s, pre.p50, pr.p50,
               LIMITS_RTTS, pr.p99, pr.p999,
               pp.p50, LIMITS_SPAWNS, pp.p99, pp.p999);
    } else
        printf("limits     %s: fdatasync_per_s %.0f (%zu appends of 100 bytes + fdatasync in "
               "%.3f s; each p50 %.1f us, p99 %.1f us, p999 %.1f us); fdatasync_prealloc_per_s "
               "%.0f (the same into a fallocated file; p50 %.1f us); socket_rtt_us %.2f "
               "(median of %d round trips of 1 byte over a socketpair; p99 %.2f, p999 %.2f); "
               "spawn_us %.1f (median of %d posix_spawn + waitpid of /bin/true; p99 %.1f, "
               "p999 %.1f)\n",
               data_dir, per_s, n_sync, secs, ps.p50, ps.p99, ps.p999, pre_per_s, pre.p50, pr.p50,
               LIMITS_RTTS,
               pr.p99, pr.p999, pp.p50, LIMITS_SPAWNS, pp.p99, pp.p999);
    fflush(stdout);
    rc = 0;
out:
    free(sync_lat), free(pre_lat), free(rtt), free(spawn);
    return rc;
}

/* ---- memory -------------------------------------------------------------------- */

/* The value in kB of `key` ("VmRSS", "VmHWM") in /proc/<pid>/status, or -1. */
static long proc_kb(pid_t pid, const char *key)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t klen = strlen(key);
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            kb = strtol(line + klen + 1, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

static int run_memory(const struct bench *b)
{
    unsigned n = b->wallets, extra = n / 10 > 1000 ? n / 10 : 1000;
    struct daemon d;
    struct daemon_conf dc = { .fsync = "never", .snapshot_every = 0, .max_aggregates = n + extra,
                              .set_idle_timeout = 1, .idle_timeout_s = 0, .open_files = 1024 };
    if (daemon_spawn(&d, &dc) < 0)
        return -1;
    int rc = -1;
    struct child_status before, after;
    struct load l;
    struct load_result res = { 0 };
    struct cqrs_client *c = cqrs_client_connect(d.sock);
    if (!c) {
        fprintf(stderr, "cqrs-bench: memory: %s\n", strerror(errno));
        goto out;
    }
    if (!wait_running(c, "wallet", 0, 30000)) {
        fprintf(stderr, "cqrs-bench: memory: the wallet worker is not running\n");
        goto out;
    }
    /* a heartbeat and then some: the standby worker is being started meanwhile */
    if (fresh_stats(c, BENCH_HEARTBEAT_MS, &before, "memory") < 0)
        goto out;
    long base_kb = proc_kb(before.pid, "VmRSS");
    if (base_kb < 0) {
        fprintf(stderr, "cqrs-bench: memory: no VmRSS in /proc/%d/status\n", (int)before.pid);
        goto out;
    }
    load_init(&l, d.sock, MEMORY_PREFIX, n, MEMORY_CONNECTIONS, MEMORY_DEPTH,
              (n + MEMORY_CONNECTIONS - 1) / MEMORY_CONNECTIONS);
    l.sequential = 1;
    if (run_load(&l, NULL, NULL, &res, "memory") < 0)
        goto out;
    if (fresh_stats(c, BENCH_HEARTBEAT_MS, &after, "memory") < 0)
        goto out;
    if (after.pid != before.pid) {
        fprintf(stderr, "cqrs-bench: memory: the wallet worker changed (pid %d -> %d) during "
                "the load: no figure\n", (int)before.pid, (int)after.pid);
        goto out;
    }
    long rss_kb = proc_kb(after.pid, "VmRSS"), hwm_kb = proc_kb(after.pid, "VmHWM");
    if (rss_kb < 0) {
        fprintf(stderr, "cqrs-bench: memory: no VmRSS in /proc/%d/status\n", (int)after.pid);
        goto out;
    }
    if (after.aggregates != n)
        fprintf(stderr, "cqrs-bench: memory: warning: the worker holds %llu aggregates, not "
                "%u\n", (unsigned long long)after.aggregates, n);
    double bpa = ((double)rss_kb - (double)base_kb) * 1024.0 / n;
    unsigned long cmds = res.commands;
    struct pcts p = { sorted_pct(res.lat_us, cmds, 0.5), sorted_pct(res.lat_us, cmds, 0.99),
                      sorted_pct(res.lat_us, cmds, 0.999) };
    double per_s = res.secs > 0 ? cmds / res.secs : 0;
    if (b->json)
        printf("{\"scenario\":\"memory\",\"fsync\":\"never\",\"wallets\":%u,\"connections\":%u,"
               "\"depth\":%u,\"commands\":%lu,\"failed\":%lu,\"seconds\":%.3f,"
               "\"commands_per_s\":%.0f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
               "\"aggregates_in_memory\":%llu,\"open_files\":%u,\"rss_mb\":%.1f,"
               "\"baseline_mb\":%.1f,\"peak_mb\":%.1f,\"bytes_per_aggregate\":%.0f}\n",
               n, l.conns, l.depth, cmds, res.failed, res.secs, per_s, p.p50, p.p99, p.p999,
               (unsigned long long)after.aggregates, after.open_files, rss_kb / 1024.0,
               base_kb / 1024.0, hwm_kb / 1024.0, bpa);
    else
        printf("memory     %u wallets, one TopUp each (%u x %u, fsync never): %lu commands "
               "(%lu failed) in %.3f s, commands_per_s %.0f, p50 %.1f us, p99 %.1f us, p999 "
               "%.1f us; wallet worker: %llu aggregates in memory, %u files open, rss_mb %.1f, "
               "baseline_mb %.1f (fresh worker), peak_mb %.1f: bytes_per_aggregate %.0f\n",
               n, l.conns, l.depth, cmds, res.failed, res.secs, per_s, p.p50, p.p99, p.p999,
               (unsigned long long)after.aggregates, after.open_files, rss_kb / 1024.0,
               base_kb / 1024.0, hwm_kb / 1024.0, bpa);
    fflush(stdout);
    rc = res.failed ? -1 : 0;
out:
    free(res.lat_us);
    cqrs_client_free(c);
    daemon_destroy(&d);
    return rc;
}

/* ---- scale --------------------------------------------------------------------- */

/* The aggregates part: sync and pipelined at each of --scale-sizes. */
static int run_scale_aggregates(const struct bench *b)
{
    static const char *const loads[2] = { "sync", "pipelined" };
    double per_s[MAX_SCALE_SIZES][2];
    int rc = 0;
    size_t lo = 0, hi = 0;
    for (size_t i = 0; i < b->n_scale_sizes; i++) {
        unsigned size = b->scale_sizes[i];
        if (size < b->scale_sizes[lo])
            lo = i;
        if (size > b->scale_sizes[hi])
            hi = i;
        for (int k = 0; k < 2; k++) {
            unsigned conns = k ? b->connections : 1, depth = k ? b->depth : 1;
            char prefix[48], name[64];
            snprintf(prefix, sizeof prefix, "scale-%u-%c-", size, k ? 'p' : 's');
            snprintf(name, sizeof name, "scale %s %u", loads[k], size);
            struct run_figures f;
            if (closed_load(b->socket, prefix, size, conns, depth, b->commands, name, &f) < 0)
                return -1;
            per_s[i][k] = f.per_s;
            if (f.failed)
                rc = -1;
            if (b->json)
                printf("{\"scenario\":\"scale\",\"fsync\":\"%s\",\"load\":\"%s\",\"aggregates\":%u,"
                       "\"distinct_wallets\":%lu,\"connections\":%u,\"depth\":%u,"
                       "\"commands\":%lu,\"failed\":%lu,\"seconds\":%.3f,\"commands_per_s\":%.0f,"
                       "\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f}\n",
                       daemon_fsync(b), loads[k], size, f.distinct, conns, depth, f.commands,
                       f.failed, f.secs, f.per_s, f.lat.p50, f.lat.p99, f.lat.p999);
            else
                printf("scale      %-9s aggregates %u (%lu distinct wallets touched), %u x %u, "
                       "fsync %s: %lu commands (%lu failed) in %.3f s: commands_per_s %.0f, "
                       "p50 %.1f us, p99 %.1f us, p999 %.1f us\n",
                       loads[k], size, f.distinct, conns, depth, daemon_fsync(b), f.commands,
                       f.failed, f.secs, f.per_s, f.lat.p50, f.lat.p99, f.lat.p999);
            fflush(stdout);
        }
    }
    double rs = per_s[lo][0] > 0 ? per_s[hi][0] / per_s[lo][0] : 0;
    double rp = per_s[lo][1] > 0 ? per_s[hi][1] / per_s[lo][1] : 0;
    if (b->json)
        printf("{\"scenario\":\"scale\",\"fsync\":\"%s\",\"summary\":\"largest/smallest\","
               "\"by\":\"aggregates\",\"smallest\":%u,\"largest\":%u,\"sync_ratio\":%.3f,"
               "\"pipelined_ratio\":%.3f}\n",
               daemon_fsync(b), b->scale_sizes[lo], b->scale_sizes[hi], rs, rp);
    else
        printf("scale      throughput at %u aggregates / at %u: sync %.3f, pipelined %.3f\n",
               b->scale_sizes[hi], b->scale_sizes[lo], rs, rp);
    fflush(stdout);
    return rc;
}

/* One wallet set of the stream-length part: `wallets` logs of `events`
 * records each, ids <prefix><n>, under type_dir. */
struct scale_set {
    const char *type_dir;
    char prefix[48];
    unsigned wallets;
    unsigned long events;
    off_t bytes;                 /* written */
    int error;                   /* errno of a failure, 0 */
    pthread_t thread;
};

static void *scale_set_write(void *p)
{
    struct scale_set *set = p;
    char id[80];
    for (unsigned n = 0; n < set->wallets; n++) {
        snprintf(id, sizeof id, "%s%u", set->prefix, n);
        off_t size = write_wallet_log(set->type_dir, id, set->events);
        if (size < 0) {
            set->error = errno ? errno : EIO;
            break;
        }
        set->bytes += size;
    }
    return NULL;
}

/* The first pass: one TopUp to each wallet of `set`, one at a time, on the
 * cqrsd at `sock`; lat_us[n] its time (load from disk included). Each must
 * answer OK at version events + 1 (a warning otherwise). */
static int scale_first_pass(const char *sock, const struct scale_set *set, double *lat_us,
                            double *secs, const char *name)
{
    struct cqrs_client *c = cqrs_client_connect(sock);
    if (!c) {
        fprintf(stderr, "cqrs-bench: %s: %s\n", name, strerror(errno));
        return -1;
    }
    uint8_t payload[16];
    size_t plen = pack_top_up(payload);
    char id[80];
    unsigned warned = 0;
    int rc = 0;
    double t0 = now_s();
    for (unsigned n = 0; n < set->wallets && rc == 0; n++) {
        snprintf(id, sizeof id, "%s%u", set->prefix, n);
        Cqrs__Reply *r;
        double t = now_s();
        if (cqrs_client_command(c, "wallet", id, "TopUp", payload, plen, NULL, -1, &r) < 0) {
            fprintf(stderr, "cqrs-bench: %s: TopUp of %s: %s\n", name, id, strerror(errno));
            rc = -1;
            break;
        }
        lat_us[n] = (now_s() - t) * 1e6;
        if (r->status != CQRS__STATUS__OK) {
            fprintf(stderr, "cqrs-bench: %s: TopUp of %s answered %s: %s\n", name, id,
                    cqrs_status_name(r->status), r->error);
            rc = -1;
        } else if (r->version != set->events + 1 && warned++ < 3) {
            fprintf(stderr, "cqrs-bench: %s: warning: the first TopUp of %s made version %llu, "
                    "not %lu: its log was not loaded whole\n", name, id,
                    (unsigned long long)r->version, set->events + 1);
        }
        cqrs__reply__free_unpacked(r, NULL);
    }
    *secs = now_s() - t0;
    cqrs_client_free(c);
    return rc;
}

/* The wallets of each set of the stream-length part: the same for every
 * length, as many as keeps the longest sets within SCALE_EVENT_BUDGET. */
static unsigned scale_event_wallets(const struct bench *b)
{
    unsigned long longest = 1;
    for (size_t i = 0; i < b->n_scale_events; i++)
        if (b->scale_events[i] > longest)
            longest = b->scale_events[i];
    unsigned long w = SCALE_EVENT_BUDGET / longest;
    return w < 1 ? 1 : w > SCALE_EVENT_WALLETS ? SCALE_EVENT_WALLETS : (unsigned)w;
}

/* The stream-length part: sync and pipelined against wallets that already
 * have each of --scale-events events, on a cqrsd of its own per length. */
static int run_scale_events(const struct bench *b)
{
    static const char *const loads[2] = { "sync", "pipelined" };
    double per_s[MAX_SCALE_SIZES][2], first_p50[MAX_SCALE_SIZES][2];
    unsigned wallets = scale_event_wallets(b);
    int rc = 0;
    size_t lo = 0, hi = 0;
    if (!b->json)
        printf("scale      by stream length: %u wallets per load (a set for sync, another for "
               "pipelined; at most %lu events per set), each with L events written before its "
               "cqrsd starts; a first pass sends one TopUp to each, one at a time (its load "
               "from disk included), then the load; each load adds commands / %u events per "
               "wallet on average\n", wallets, SCALE_EVENT_BUDGET, wallets);
    for (size_t i = 0; i < b->n_scale_events; i++) {
        unsigned long len = b->scale_events[i];
        if (len < b->scale_events[lo])
            lo = i;
        if (len > b->scale_events[hi])
            hi = i;
        char name[64], type_dir[160];
        snprintf(name, sizeof name, "scale events %lu", len);
        struct daemon d;
        struct scale_set sets[2];
        if (daemon_init(&d) < 0 || mkdir_ok(d.data) < 0) {
            fprintf(stderr, "cqrs-bench: %s: %s\n", name, strerror(errno));
            daemon_destroy(&d);
            return -1;
        }
        snprintf(type_dir, sizeof type_dir, "%s/wallet", d.data);
        if (mkdir_ok(type_dir) < 0) {
            fprintf(stderr, "cqrs-bench: %s: %s: %s\n", name, type_dir, strerror(errno));
            daemon_destroy(&d);
            return -1;
        }
        /* the two sets are written at once, one thread each */
        double t0 = now_s();
        int started = 0;
        for (int k = 0; k < 2; k++) {
            sets[k] = (struct scale_set){ .type_dir = type_dir, .wallets = wallets, .events = len };
            snprintf(sets[k].prefix, sizeof sets[k].prefix, "scale-ev%lu-%c-", len, k ? 'p' : 's');
            if (pthread_create(&sets[k].thread, NULL, scale_set_write, &sets[k]) != 0)
                scale_set_write(&sets[k]);   /* no thread: here */
            else
                started |= 1 << k;
        }
        for (int k = 0; k < 2; k++)
            if (started & (1 << k))
                pthread_join(sets[k].thread, NULL);
        double prep_s = now_s() - t0;
        double prep_mb = (sets[0].bytes + sets[1].bytes) / 1048576.0;
        for (int k = 0; k < 2; k++)
            if (sets[k].error) {
                fprintf(stderr, "cqrs-bench: %s: cannot write the logs of %s*: %s\n", name,
                        sets[k].prefix, strerror(sets[k].error));
                daemon_destroy(&d);
                return -1;
            }
        /* on disk before cqrsd starts: no writeback of them during the loads */
        double t1 = now_s();
        int dfd = open(type_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0 || syncfs(dfd) < 0)
            fprintf(stderr, "cqrs-bench: %s: warning: syncfs: %s\n", name, strerror(errno));
        if (dfd >= 0)
            close(dfd);
        double sync_s = now_s() - t1;
        fprintf(stderr, "cqrs-bench: %s: wrote 2 x %u logs of %lu events (%.1f MB) in %.2f s, "
                "synced in %.2f s\n", name, wallets, len, prep_mb, prep_s, sync_s);
        prep_s += sync_s;
        struct daemon_conf dc = { .fsync = b->fsync, .snapshot_every = -1,
                                  .heartbeat_timeout_ms = SCALE_EVENT_HEARTBEAT_TIMEOUT_MS };
        if (daemon_configure(&d, &dc) < 0 || daemon_start(&d) < 0) {
            fprintf(stderr, "cqrs-bench: %s: could not start cqrsd\n", name);
            daemon_destroy(&d);
            return -1;
        }
        double *first = calloc(wallets, sizeof *first);
        if (!first) {
            fprintf(stderr, "cqrs-bench: %s: out of memory\n", name);
            daemon_destroy(&d);
            return -1;
        }
        for (int k = 0; k < 2; k++) {
            unsigned conns = k ? b->connections : 1, depth = k ? b->depth : 1;
            snprintf(name, sizeof name, "scale %s events %lu", loads[k], len);
            double first_s;
            struct run_figures f;
            if (scale_first_pass(d.sock, &sets[k], first, &first_s, name) < 0 ||
                closed_load(d.sock, sets[k].prefix, wallets, conns, depth, b->commands, name,
                            &f) < 0) {
                free(first);
                daemon_destroy(&d);
                return -1;
            }
            struct pcts fp = pcts_of(first, wallets);
            double first_max = first[wallets - 1];
            note_heartbeat(name, first_max / 1e3);
            per_s[i][k] = f.per_s;
            first_p50[i][k] = fp.p50;
            if (f.failed)
                rc = -1;
            if (b->json)
                printf("{\"scenario\":\"scale\",\"fsync\":\"%s\",\"load\":\"%s\","
                       "\"events_per_stream\":%lu,\"aggregates\":%u,\"distinct_wallets\":%lu,"
                       "\"connections\":%u,\"depth\":%u,\"commands\":%lu,\"failed\":%lu,"
                       "\"seconds\":%.3f,\"commands_per_s\":%.0f,\"p50_us\":%.1f,"
                       "\"p99_us\":%.1f,\"p999_us\":%.1f,\"first_command_p50_us\":%.1f,"
                       "\"first_command_p99_us\":%.1f,\"first_command_max_us\":%.1f,"
                       "\"first_pass_s\":%.3f,\"prepare_s\":%.2f,\"prepare_mb\":%.1f}\n",
                       b->fsync, loads[k], len, wallets, f.distinct, conns, depth, f.commands,
                       f.failed, f.secs, f.per_s, f.lat.p50, f.lat.p99, f.lat.p999, fp.p50,
                       fp.p99, first_max, first_s, prep_s, prep_mb);
            else
                printf("scale      %-9s events_per_stream %lu (%u wallets, %lu distinct touched), "
                       "%u x %u, fsync %s: first command to each wallet (its load from disk "
                       "included) p50 %.1f us, p99 %.1f us, max %.1f us (%u in %.3f s); then %lu "
                       "commands (%lu failed) in %.3f s: commands_per_s %.0f, p50 %.1f us, p99 "
                       "%.1f us, p999 %.1f us\n",
                       loads[k], len, wallets, f.distinct, conns, depth, b->fsync, fp.p50, fp.p99,
                       first_max, wallets, first_s, f.commands, f.failed, f.secs, f.per_s,
                       f.lat.p50, f.lat.p99, f.lat.p999);
            fflush(stdout);
        }
        free(first);
        daemon_destroy(&d);
    }
    double rs = per_s[lo][0] > 0 ? per_s[hi][0] / per_s[lo][0] : 0;
    double rp = per_s[lo][1] > 0 ? per_s[hi][1] / per_s[lo][1] : 0;
    double fs = first_p50[lo][0] > 0 ? first_p50[hi][0] / first_p50[lo][0] : 0;
    double fpl = first_p50[lo][1] > 0 ? first_p50[hi][1] / first_p50[lo][1] : 0;
    if (b->json)
        printf("{\"scenario\":\"scale\",\"fsync\":\"%s\",\"summary\":\"largest/smallest\","
               "\"by\":\"events_per_stream\",\"smallest\":%u,\"largest\":%u,"
               "\"aggregates\":%u,\"sync_ratio\":%.3f,\"pipelined_ratio\":%.3f,"
               "\"first_command_p50_ratio_sync\":%.3f,"
               "\"first_command_p50_ratio_pipelined\":%.3f}\n",
               b->fsync, b->scale_events[lo], b->scale_events[hi], wallets, rs, rp, fs, fpl);
    else
        printf("scale      throughput with streams of %u events / of %u: sync %.3f, pipelined "
               "%.3f; first command p50 with %u / with %u: %.3f (sync set), %.3f (pipelined "
               "set)\n", b->scale_events[hi], b->scale_events[lo], rs, rp, b->scale_events[hi],
               b->scale_events[lo], fs, fpl);
    fflush(stdout);
    return rc;
}

static int run_scale(const struct bench *b)
{
    int rc = run_scale_aggregates(b);
    if (!b->spawn) {
        fprintf(stderr, "cqrs-bench: scale: the stream-length part (--scale-events) runs only "
                "with --spawn: it writes the logs before its cqrsd starts\n");
        return rc;
    }
    return run_scale_events(b) < 0 ? -1 : rc;
}

/* ---- readmodel ----------------------------------------------------------------- */

struct rm_watch {
    struct cqrs_client *c;
    const char *wallet;          /* the probe's and the catch-up query's */
    uint64_t lag_max, lag_end;   /* positions: acknowledged head - applied */
    uint64_t stats_lag_max, stats_lag_end;   /* WorkerStats.lag, as the projector says */
    unsigned long samples;
    double *probe_us;            /* each probe's round trip, `samples` of them */
    size_t probe_cap;
    double t_end, t_caught;      /* the load is answered; the read model has caught up */
    uint64_t caught_position;    /* the catch-up query's Reply.position */
    int error;                   /* errno of a failed STATUS or query, -1: a bad answer */
};

/* A GetWallet query of `wallet` on `c`, answered once the read model has
 * applied every acknowledged position with `latest`. */
static int rm_query(struct cqrs_client *c, const char *wallet, int latest, uint32_t timeout_ms,
                    Cqrs__Reply **out)
{
    Cqrs__Request req;
    Cqrs__Query q;
    uint8_t payload[160];
    getwallet_request(&req, &q, latest);
    q.payload.data = payload;
    q.payload.len = pack_get_wallet(wallet, payload);
    q.timeout_ms = timeout_ms;
    return cqrs_client_call(c, &req, out);
}

/* One sample of the projector's lag, two ways. *lag: the largest position
 * acknowledged to the load's commands, read as the answer arrives, minus the
 * wallet position the read model had applied when it answered a GetWallet
 * probe (Reply.position). An upper bound: the commands acknowledged while
 * the answer came back (through cqrsd, then this thread's wakeup) count
 * too. Nothing sent to the projector sees it behind: a query (or a
 * heartbeat) waits in cqrsd's pipe behind every commit acknowledged before
 * it, so the lag shows as the time the probe takes (probe_us) and as what
 * is acknowledged meanwhile. *stats_lag: the projector's WorkerStats.lag
 * in STATUS (at its last heartbeat: what cqrsd passed on to it and it has
 * not applied, which is 0 when it applies each commit as it reads it). */
static int rm_sample(struct rm_watch *rw, struct load *l, uint64_t *lag, uint64_t *stats_lag)
{
    struct child_status st;
    Cqrs__Reply *r;
    if (rw->samples == rw->probe_cap) {
        size_t ncap = rw->probe_cap ? rw->probe_cap * 2 : 1024;
        double *np = realloc(rw->probe_us, ncap * sizeof *np);
        if (!np) {
            errno = ENOMEM;
            return -1;
        }
        rw->probe_us = np;
        rw->probe_cap = ncap;
    }
    if (child_status(rw->c, READMODEL_CHILD, &st) < 0)
        return -1;
    double t0 = now_s();
    if (rm_query(rw->c, rw->wallet, 0, 0, &r) < 0)
        return -1;
    uint64_t head = atomic_load(&l->head), applied = r->position;
    rw->probe_us[rw->samples] = (now_s() - t0) * 1e6;
    int ok = r->status == CQRS__STATUS__OK || r->status == CQRS__STATUS__NOT_FOUND;
    if (!ok)
        fprintf(stderr, "cqrs-bench: readmodel: the probe (GetWallet of %s) answered %s: %s\n",
                rw->wallet, cqrs_status_name(r->status), r->error);
    cqrs__reply__free_unpacked(r, NULL);
    if (!ok) {
        errno = EPROTO;
        return -1;
    }
    *lag = head > applied ? head - applied : 0;
    *stats_lag = st.lag;
    rw->samples++;
    return 0;
}

/* Samples the projector every READMODEL_SAMPLE_MS until the load is
 * answered (checked every ms), then once more (lag_end), then waits for the
 * read model to catch up: a GetWallet with latest = true, sent at once. */
static void rm_watch_fn(struct load *l, void *arg)
{
    struct rm_watch *rw = arg;
    uint64_t lag, stats_lag;
    double next = 0;
    while (atomic_load(&l->active) > 0) {
        if (!rw->error && now_s() >= next) {
            if (rm_sample(rw, l, &lag, &stats_lag) < 0)
                rw->error = errno ? errno : EIO;
            else {
                if (lag > rw->lag_max)
                    rw->lag_max = lag;
                if (stats_lag > rw->stats_lag_max)
                    rw->stats_lag_max = stats_lag;
            }
            next = now_s() + READMODEL_SAMPLE_MS / 1e3;
        }
        sleep_ms(1);
    }
    rw->t_end = now_s();
    if (rw->error)
        return;
    if (rm_sample(rw, l, &lag, &stats_lag) < 0) {
        rw->error = errno ? errno : EIO;
        return;
    }
    rw->lag_end = lag;
    rw->stats_lag_end = stats_lag;
    rw->lag_max = lag > rw->lag_max ? lag : rw->lag_max;
    rw->stats_lag_max = stats_lag > rw->stats_lag_max ? stats_lag : rw->stats_lag_max;
    Cqrs__Reply *r;
    if (rm_query(rw->c, rw->wallet, 1, READMODEL_WAIT_MS, &r) < 0) {
        rw->error = errno ? errno : EIO;
        return;
    }
    rw->t_caught = now_s();
    rw->caught_position = r->position;
    if (r->status != CQRS__STATUS__OK) {
        fprintf(stderr, "cqrs-bench: readmodel: the catch-up query (GetWallet of %s, latest) "
                "answered %s: %s\n", rw->wallet, cqrs_status_name(r->status), r->error);
        rw->error = -1;
    }
    cqrs__reply__free_unpacked(r, NULL);
}

/* One line of GetWallet queries: `n` over conns x depth, `mode` LOAD_EVENTUAL
 * or LOAD_LATEST, of wallets bench-<ids[k]>. */
static int rm_queries(const struct bench *b, const char *sock, const char *fsync, int mode,
                      const unsigned *ids, size_t n_ids, unsigned long n)
{
    struct load l;
    struct load_result res;
    unsigned long per_conn = n / b->connections ? n / b->connections : 1;
    load_init(&l, sock, "bench-", b->aggregates, b->connections, b->depth, per_conn);
    l.query = mode;
    l.ids = ids;
    l.n_ids = n_ids;
    if (run_load(&l, NULL, NULL, &res, "readmodel") < 0)
        return -1;
    const char *name = mode == LOAD_LATEST ? "latest" : "eventual";
    unsigned long q = res.commands;
    struct pcts p = { sorted_pct(res.lat_us, q, 0.5), sorted_pct(res.lat_us, q, 0.99),
                      sorted_pct(res.lat_us, q, 0.999) };
    double per_s = res.secs > 0 ? q / res.secs : 0;
    if (res.failed)
        fprintf(stderr, "cqrs-bench: readmodel: %lu GetWallet queries (%s) failed, the first "
                "with %s\n", res.failed, name, cqrs_status_name(res.first_failure));
    if (b->json)
        printf("{\"scenario\":\"readmodel\",\"fsync\":\"%s\",\"mode\":\"%s\","
               "\"query\":\"GetWallet\",\"connections\":%u,\"depth\":%u,\"queries\":%lu,"
               "\"failed\":%lu,\"seconds\":%.3f,\"queries_per_s\":%.0f,\"p50_us\":%.1f,"
               "\"p99_us\":%.1f,\"p999_us\":%.1f,\"wallets\":%zu}\n",
               fsync, name, l.conns, l.depth, q, res.failed, res.secs, per_s, p.p50, p.p99,
               p.p999, n_ids);
    else
        printf("readmodel  GetWallet %-8s %u x %u, %zu wallets: %lu queries (%lu failed) in "
               "%.3f s: queries_per_s %.0f, p50 %.1f us, p99 %.1f us, p999 %.1f us\n",
               name, l.conns, l.depth, n_ids, q, res.failed, res.secs, per_s, p.p50, p.p99,
               p.p999);
    fflush(stdout);
    free(res.lat_us);
    return res.failed ? -1 : 0;
}

static int run_readmodel(const struct bench *b)
{
    struct daemon d = { .pid = 0 };
    const char *sock = b->socket;
    unsigned heartbeat_ms = DEFAULT_HEARTBEAT_MS;
    if (b->spawn) {
        struct daemon_conf dc = { .fsync = b->fsync, .snapshot_every = -1,
                                  .heartbeat_ms = READMODEL_HEARTBEAT_MS, .readmodel = 1 };
        if (daemon_spawn(&d, &dc) < 0)
            return -1;
        sock = d.sock;
        heartbeat_ms = READMODEL_HEARTBEAT_MS;
    }
    int rc = -1;
    const char *fsync = daemon_fsync(b);
    unsigned long per_conn = b->commands / b->connections, n_wallets = 0;
    unsigned *ids = NULL;
    char wallet[64];
    struct child_status before, after;
    struct load l;
    struct load_result res = { 0 };
    struct rm_watch rw = { .c = NULL };
    Cqrs__Reply *r = NULL;
    struct cqrs_client *c = cqrs_client_connect(sock);
    unsigned char *map = touched_map(b->aggregates, b->connections, per_conn, &n_wallets);
    if (!c) {
        fprintf(stderr, "cqrs-bench: readmodel: %s\n", strerror(errno));
        goto out;
    }
    if (!map || !(ids = calloc(n_wallets ? n_wallets : 1, sizeof *ids))) {
        fprintf(stderr, "cqrs-bench: readmodel: out of memory\n");
        goto out;
    }
    for (unsigned i = 0, k = 0; i < b->aggregates; i++)
        if (map[i / 8] & (1u << (i % 8)))
            ids[k++] = i;
    snprintf(wallet, sizeof wallet, "bench-%u", ids[0]);
    if (!wait_running(c, "wallet", 0, 30000) || !wait_running(c, READMODEL_CHILD, 0, 30000)) {
        fprintf(stderr, "cqrs-bench: readmodel: the wallet worker or the child %s is not "
                "running\n", READMODEL_CHILD);
        goto out;
    }
    /* the read model caught up before the load: where it is for wallet */
    if (rm_query(c, wallet, 1, READMODEL_WAIT_MS, &r) < 0) {
        fprintf(stderr, "cqrs-bench: readmodel: GetWallet: %s\n", strerror(errno));
        goto out;
    }
    if (r->status != CQRS__STATUS__OK && r->status != CQRS__STATUS__NOT_FOUND) {
        fprintf(stderr, "cqrs-bench: readmodel: GetWallet of %s answered %s: %s\n", wallet,
                cqrs_status_name(r->status), r->error);
        goto out;
    }
    uint64_t wallet_applied = r->position;
    if (fresh_child_stats(c, READMODEL_CHILD, heartbeat_ms, &before, "readmodel") < 0)
        goto out;
    rw = (struct rm_watch){ .c = c, .wallet = wallet };
    load_init(&l, sock, "bench-", b->aggregates, b->connections, b->depth, per_conn);
    atomic_store(&l.head, wallet_applied);
    double t_start = now_s();
    if (run_load(&l, rm_watch_fn, &rw, &res, "readmodel") < 0)
        goto out;
    if (rw.error) {
        fprintf(stderr, "cqrs-bench: readmodel: watching the projector: %s\n",
                rw.error > 0 ? strerror(rw.error) : "a bad answer");
        goto out;
    }
    if (fresh_child_stats(c, READMODEL_CHILD, heartbeat_ms, &after, "readmodel") < 0)
        goto out;
    if (after.pid != before.pid)
        fprintf(stderr, "cqrs-bench: readmodel: warning: the child %s changed (pid %d -> %d) "
                "during the load: its counters started again\n", READMODEL_CHILD,
                (int)before.pid, (int)after.pid);
    uint64_t head = atomic_load(&l.head);
    if (rw.caught_position < head)
        fprintf(stderr, "cqrs-bench: readmodel: warning: the catch-up query saw position %llu, "
                "below the last acknowledged %llu\n", (unsigned long long)rw.caught_position,
                (unsigned long long)head);
    unsigned long n = res.commands;
    struct pcts p = { sorted_pct(res.lat_us, n, 0.5), sorted_pct(res.lat_us, n, 0.99),
                      sorted_pct(res.lat_us, n, 0.999) };
    uint64_t events = after.events - before.events, txs = after.batches - before.batches;
    double proj_s = rw.t_caught - t_start, catchup_ms = (rw.t_caught - rw.t_end) * 1e3;
    double eps = proj_s > 0 ? events / proj_s : 0;
    double per_tx = txs ? (double)events / (double)txs : 0;
    double per_s = res.secs > 0 ? n / res.secs : 0;
    struct pcts pp = pcts_of(rw.probe_us, rw.samples);
    double probe_max = rw.samples ? rw.probe_us[rw.samples - 1] : 0;
    if (b->json)
        printf("{\"scenario\":\"readmodel\",\"fsync\":\"%s\",\"mode\":\"projection\","
               "\"connections\":%u,\"depth\":%u,\"commands\":%lu,\"failed\":%lu,"
               "\"seconds\":%.3f,\"commands_per_s\":%.0f,\"p50_us\":%.1f,\"p99_us\":%.1f,"
               "\"p999_us\":%.1f,\"events\":%llu,\"projection_seconds\":%.3f,"
               "\"events_per_s\":%.0f,\"lag_max\":%llu,\"lag_end\":%llu,\"catchup_ms\":%.1f,"
               "\"transactions\":%llu,\"events_per_transaction\":%.1f,"
               "\"reported_lag_max\":%llu,\"reported_lag_end\":%llu,\"samples\":%lu,"
               "\"probe_p50_us\":%.1f,\"probe_max_us\":%.1f,\"heartbeat_ms\":%u}\n",
               fsync, l.conns, l.depth, n, res.failed, res.secs, per_s, p.p50, p.p99, p.p999,
               (unsigned long long)events, proj_s, eps, (unsigned long long)rw.lag_max,
               (unsigned long long)rw.lag_end, catchup_ms, (unsigned long long)txs, per_tx,
               (unsigned long long)rw.stats_lag_max, (unsigned long long)rw.stats_lag_end,
               rw.samples, pp.p50, probe_max, heartbeat_ms);
    else
        printf("readmodel  projection %u x %u, fsync %s: %lu commands (%lu failed) in %.3f s: "
               "commands_per_s %.0f, p50 %.1f us, p99 %.1f us, p999 %.1f us; projector: %llu "
               "events applied in %.3f s (load + catch-up): events_per_s %.0f, lag_max %llu, "
               "lag_end %llu, catchup_ms %.1f, %llu transactions: events_per_transaction %.1f "
               "(its own WorkerStats.lag: max %llu, at the end %llu; %lu samples, GetWallet "
               "probe p50 %.1f us, max %.1f us; heartbeat %u ms)\n",
               l.conns, l.depth, fsync, n, res.failed, res.secs, per_s, p.p50, p.p99, p.p999,
               (unsigned long long)events, proj_s, eps, (unsigned long long)rw.lag_max,
               (unsigned long long)rw.lag_end, catchup_ms, (unsigned long long)txs, per_tx,
               (unsigned long long)rw.stats_lag_max, (unsigned long long)rw.stats_lag_end,
               rw.samples, pp.p50, probe_max, heartbeat_ms);
    fflush(stdout);
    rc = res.failed ? -1 : 0;
    unsigned long nq = b->commands / 2 ? b->commands / 2 : 1;
    rc |= rm_queries(b, sock, fsync, LOAD_EVENTUAL, ids, n_wallets, nq);
    rc |= rm_queries(b, sock, fsync, LOAD_LATEST, ids, n_wallets, nq);
out:
    if (r)
        cqrs__reply__free_unpacked(r, NULL);
    free(res.lat_us);
    free(map), free(ids), free(rw.probe_us);
    cqrs_client_free(c);
    daemon_destroy(&d);
    return rc;
}

/* ---- main -------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f, "usage: cqrs-bench [--socket PATH | --spawn] [--connections N] [--depth D]\n"
               "                  [--commands N] [--aggregates A] [--kills K] [--events N]\n"
               "                  [--journal-mb MB] [--fsync always|batch|never] [--json]\n"
               "                  [--data-dir DIR] [--wallets N] [--scale-sizes A,B,...]\n"
               "                  [--scale-events A,B,...] [--readmodel]\n"
               "                  sync|pipelined|clients|restart|replay|snapshot|journal|\n"
               "                  recovery|limits|memory|scale|readmodel ...\n");
}

/* "1000,100000,1000000" into out[] (MAX_SCALE_SIZES of them), each 1 .. max. */
static int parse_sizes(unsigned *out, size_t *n, unsigned long max, const char *arg)
{
    const char *p = arg;
    *n = 0;
    for (;;) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(p, &end, 10);
        if (end == p || errno || v == 0 || v > max || *p == '-' || *n == MAX_SCALE_SIZES)
            return -1;
        out[(*n)++] = (unsigned)v;
        if (*end == '\0')
            return 0;
        if (*end != ',')
            return -1;
        p = end + 1;
    }
}

int main(int argc, char **argv)
{
    struct bench b = { .socket = "var/cqrsd.sock", .connections = 4, .depth = 64,
                       .aggregates = 1000, .commands = 200000, .kills = 100,
                       .events = 1000000, .journal_mb = 1024, .fsync = "always",
                       .data_dir = "var", .wallets = 1000000,
                       .scale_sizes = { 1000, 100000, 1000000 }, .n_scale_sizes = 3,
                       .scale_events = { 10, 1000, 100000 }, .n_scale_events = 3 };
    static const struct option opts[] = {
        { "socket", required_argument, NULL, 's' }, { "spawn", no_argument, NULL, 'S' },
        { "connections", required_argument, NULL, 'c' }, { "depth", required_argument, NULL, 'd' },
        { "commands", required_argument, NULL, 'n' }, { "aggregates", required_argument, NULL, 'a' },
        { "kills", required_argument, NULL, 'k' }, { "events", required_argument, NULL, 'e' },
        { "journal-mb", required_argument, NULL, 'm' }, { "fsync", required_argument, NULL, 'f' },
        { "json", no_argument, NULL, 'j' }, { "help", no_argument, NULL, 'h' },
        { "data-dir", required_argument, NULL, 'D' }, { "wallets", required_argument, NULL, 'w' },
        { "scale-sizes", required_argument, NULL, 'z' },
        { "scale-events", required_argument, NULL, 'L' },
        { "readmodel", no_argument, NULL, 'R' }, { NULL, 0, NULL, 0 },
    };
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 's': b.socket = optarg; break;
        case 'S': b.spawn = 1; break;
        case 'R': b.readmodel = 1; break;
        case 'c': b.connections = (unsigned)atoi(optarg); break;
        case 'd': b.depth = (unsigned)atoi(optarg); break;
        case 'n': b.commands = strtoul(optarg, NULL, 10); break;
        case 'a': b.aggregates = (unsigned)atoi(optarg); break;
        case 'k': b.kills = (unsigned)atoi(optarg); break;
        case 'e': b.events = strtoul(optarg, NULL, 10); break;
        case 'm': b.journal_mb = strtoul(optarg, NULL, 10); break;
        case 'f': b.fsync = optarg, b.fsync_given = 1; break;
        case 'D': b.data_dir = optarg; break;
        case 'w': {
            char *end;
            errno = 0;
            unsigned long v = strtoul(optarg, &end, 10);
            b.wallets = *end || errno || *optarg == '-' || v > MAX_WALLETS ? 0 : (unsigned)v;
            break;
        }
        case 'z':
            if (parse_sizes(b.scale_sizes, &b.n_scale_sizes, MAX_SCALE_SIZE, optarg) < 0) {
                fprintf(stderr, "cqrs-bench: --scale-sizes: a comma-separated list of 1 to %d "
                        "sizes, each 1 .. %u\n", MAX_SCALE_SIZES, MAX_SCALE_SIZE);
                return 64;
            }
            break;
        case 'L':
            if (parse_sizes(b.scale_events, &b.n_scale_events, SCALE_EVENT_BUDGET, optarg) < 0) {
                fprintf(stderr, "cqrs-bench: --scale-events: a comma-separated list of 1 to %d "
                        "stream lengths, each 1 .. %lu\n", MAX_SCALE_SIZES, SCALE_EVENT_BUDGET);
                return 64;
            }
            break;
        case 'j': b.json = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 64;
        }
    }
    if (optind >= argc || !b.connections || !b.depth || !b.aggregates || !b.commands || !b.kills ||
        !b.events || !b.journal_mb || b.commands < b.connections || !b.wallets ||
        (strcmp(b.fsync, "always") && strcmp(b.fsync, "batch") && strcmp(b.fsync, "never"))) {
        usage(stderr);
        return 64;
    }
    for (int i = optind; i < argc; i++) {
        static const char *const names[] = { "sync", "pipelined", "restart", "replay",
                                             "snapshot", "journal", "recovery", "limits",
                                             "clients", "memory", "scale", "readmodel" };
        static const char *const spawn_only[] = { "restart", "replay", "snapshot", "recovery",
                                                  "memory" };
        int known = 0;
        for (size_t k = 0; k < sizeof names / sizeof *names; k++)
            known |= strcmp(argv[i], names[k]) == 0;
        if (!known) {
            fprintf(stderr, "cqrs-bench: unknown scenario \"%s\"\n", argv[i]);
            return 64;
        }
        for (size_t k = 0; k < sizeof spawn_only / sizeof *spawn_only && !b.spawn; k++)
            if (strcmp(argv[i], spawn_only[k]) == 0) {
                fprintf(stderr, "cqrs-bench: %s %s: it runs only with --spawn\n", argv[i],
                        strcmp(argv[i], "memory") == 0 ? "needs a cqrsd configured for it"
                                                       : "starts and kills its own workers");
                return 64;
            }
    }
    signal(SIGPIPE, SIG_IGN);
    struct daemon shared = { .pid = 0 };   /* sync, pipelined, clients, restart, scale, limits */
    struct fixture fx = { .ready = 0 };    /* replay, snapshot */
    int rc = 0;
    for (int i = optind; i < argc; i++) {
        const char *s = argv[i];
        int uses_shared = !strcmp(s, "sync") || !strcmp(s, "pipelined") || !strcmp(s, "restart") ||
                          !strcmp(s, "clients") || !strcmp(s, "scale") || !strcmp(s, "limits");
        if (uses_shared && b.spawn && shared.pid == 0) {
            struct daemon_conf dc = { .fsync = b.fsync, .snapshot_every = -1,
                                      .readmodel = b.readmodel };
            if (daemon_spawn(&shared, &dc) < 0) {
                rc = -1;
                break;
            }
            b.socket = shared.sock;
        }
        if (strcmp(s, "sync") == 0)
            rc |= run_scenario(&b, "sync", 1, 1);
        else if (strcmp(s, "pipelined") == 0)
            rc |= run_scenario(&b, "pipelined", b.connections, b.depth);
        else if (strcmp(s, "restart") == 0)
            rc |= run_restart(&b);
        else if (strcmp(s, "replay") == 0)
            rc |= run_replay(&b, &fx);
        else if (strcmp(s, "snapshot") == 0)
            rc |= run_snapshot(&b, &fx);
        else if (strcmp(s, "journal") == 0)
            rc |= run_journal(&b);
        else if (strcmp(s, "clients") == 0)
            rc |= run_scenario(&b, "clients", CLIENTS_CONNECTIONS, 1);
        else if (strcmp(s, "limits") == 0)
            rc |= run_limits(&b, b.spawn ? shared.data : b.data_dir);
        else if (strcmp(s, "memory") == 0)
            rc |= run_memory(&b);
        else if (strcmp(s, "scale") == 0)
            rc |= run_scale(&b);
        else if (strcmp(s, "readmodel") == 0)
            rc |= run_readmodel(&b);
        else
            rc |= run_recovery(&b);
    }
    daemon_destroy(&shared);
    daemon_destroy(&fx.d);
    return rc ? 1 : 0;
}
