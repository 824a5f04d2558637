/*
 * cqrs-bench — throughput and latency of cqrsd, as a user would see them.
 *
 *   cqrs-bench [--socket PATH | --spawn] [--connections N] [--depth D]
 *              [--commands N] [--aggregates A] [--json] SCENARIO...
 *
 * Scenarios:
 *   sync       1 connection, 1 request in flight
 *   pipelined  N connections (default 4) x D requests in flight (default 64)
 *   restart    (--spawn only) SIGKILL the wallet worker --kills times (default
 *              100): time from the kill to the first answered command on a
 *              small wallet (its replay included), beside the time to
 *              posix_spawn and reap a trivial program, measured in the same run
 * Each sends TopUp amount=1 to wallets picked at random among A (default
 * 1,000) through the project's client library, one thread per connection,
 * and prints commands/s and latency percentiles over every request.
 * --spawn starts its own cqrsd on a temporary directory (removed after).
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "wallet.pb-c.h"

struct bench {
    const char *socket;
    unsigned connections, depth, aggregates, kills;
    unsigned long commands;
    int json;
};

struct worker_arg {
    const struct bench *b;
    unsigned index;
    unsigned long commands;
    unsigned depth;
    double *lat_us;          /* one per command */
    unsigned long failed;
    int error;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *bench_conn(void *p)
{
    struct worker_arg *w = p;
    struct cqrs_client *c = cqrs_client_connect(w->b->socket);
    if (!c) {
        w->error = errno;
        return NULL;
    }
    uint8_t payload[16];
    Wallet__TopUp t = WALLET__TOP_UP__INIT;
    t.amount = 1;
    size_t plen = wallet__top_up__pack(&t, payload);
    unsigned seed = 12345u + w->index;
    double *sent = calloc(w->depth, sizeof *sent);
    uint64_t *ids = calloc(w->depth, sizeof *ids);
    unsigned long issued = 0, done = 0;
    char id[32];
    Cqrs__Request req = CQRS__REQUEST__INIT;
    Cqrs__Command cmd = CQRS__COMMAND__INIT;
    req.body_case = CQRS__REQUEST__BODY_COMMAND;
    req.command = &cmd;
    cmd.aggregate_type = "wallet";
    cmd.aggregate_id = id;
    cmd.name = "TopUp";
    cmd.payload.data = payload;
    cmd.payload.len = plen;
    while (done < w->commands) {
        while (issued < w->commands && issued - done < w->depth) {
            snprintf(id, sizeof id, "bench-%u", (unsigned)(rand_r(&seed) % w->b->aggregates));
            uint64_t rid;
            if (cqrs_client_send(c, &req, &rid) < 0) {
                w->error = errno;
                goto out;
            }
            sent[rid % w->depth] = now_s();
            ids[rid % w->depth] = rid;
            issued++;
        }
        Cqrs__Reply *r;
        if (cqrs_client_recv_any(c, &r) < 0) {
            w->error = errno;
            goto out;
        }
        w->lat_us[done++] = (now_s() - sent[r->id % w->depth]) * 1e6;
        if (r->status != CQRS__STATUS__OK)
            w->failed++;
        cqrs__reply__free_unpacked(r, NULL);
    }
out:
    free(sent);
    free(ids);
    cqrs_client_free(c);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int run_scenario(const struct bench *b, const char *name, unsigned conns, unsigned depth)
{
    unsigned long per = b->commands / conns;
    struct worker_arg *w = calloc(conns, sizeof *w);
    pthread_t *th = calloc(conns, sizeof *th);
    double *lat = calloc(per * conns, sizeof *lat);
    for (unsigned i = 0; i < conns; i++)
        w[i] = (struct worker_arg){ b, i, per, depth, lat + per * i, 0, 0 };
    double t0 = now_s();
    for (unsigned i = 0; i < conns; i++)
        pthread_create(&th[i], NULL, bench_conn, &w[i]);
    unsigned long failed = 0;
    int error = 0;
    for (unsigned i = 0; i < conns; i++) {
        pthread_join(th[i], NULL);
        failed += w[i].failed;
        if (w[i].error)
            error = w[i].error;
    }
    double secs = now_s() - t0;
    if (error) {
        fprintf(stderr, "cqrs-bench: %s: %s\n", name, strerror(error));
        free(w), free(th), free(lat);
        return -1;
    }
    unsigned long n = per * conns;
    qsort(lat, n, sizeof *lat, cmp_double);
    double p50 = lat[n / 2], p99 = lat[(size_t)(n * 0.99)], p999 = lat[(size_t)(n * 0.999)];
    if (b->json)
        printf("{\"scenario\":\"%s\",\"connections\":%u,\"depth\":%u,\"commands\":%lu,"
               "\"failed\":%lu,\"seconds\":%.3f,\"commands_per_s\":%.0f,\"p50_us\":%.1f,"
               "\"p99_us\":%.1f,\"p999_us\":%.1f}\n",
               name, conns, depth, n, failed, secs, n / secs, p50, p99, p999);
    else
        printf("%-10s %5u %5u %9lu %7lu %8.3f %12.0f %9.1f %9.1f %9.1f\n", name, conns, depth, n,
               failed, secs, n / secs, p50, p99, p999);
    free(w), free(th), free(lat);
    return failed ? -1 : 0;
}

static double percentile(double *v, size_t n, double q)
{
    qsort(v, n, sizeof *v, cmp_double);
    size_t i = (size_t)(q * (double)n);
    return v[i < n ? i : n - 1];
}

/* The pid of child `name` from STATUS, 0 if it is not running. */
static pid_t child_pid(struct cqrs_client *c, const char *name)
{
    Cqrs__Reply *r;
    pid_t pid = 0;
    if (cqrs_client_control(c, CQRS__CONTROL__OP__STATUS, NULL, &r) < 0)
        return 0;
    for (size_t i = 0; i < r->n_children; i++)
        if (strcmp(r->children[i]->name, name) == 0 && strcmp(r->children[i]->state, "running") == 0)
            pid = r->children[i]->pid;
    cqrs__reply__free_unpacked(r, NULL);
    return pid;
}

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
    Wallet__TopUp t = WALLET__TOP_UP__INIT;
    t.amount = 1;
    size_t plen = wallet__top_up__pack(&t, payload);
    Cqrs__Reply *r;
    for (int i = 0; i < 10; i++) {   /* a small stream to replay after each kill */
        if (cqrs_client_command(c, "wallet", "restart-w", "TopUp", payload, plen, NULL, -1, &r) < 0)
            goto fail;
        cqrs__reply__free_unpacked(r, NULL);
    }
    double *lat = calloc(b->kills, sizeof *lat), *spawn = calloc(b->kills, sizeof *spawn);
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
    double p50 = percentile(lat, b->kills, 0.5), p99 = percentile(lat, b->kills, 0.99);
    double s50 = percentile(spawn, b->kills, 0.5);
    if (b->json)
        printf("{\"scenario\":\"restart\",\"kills\":%u,\"p50_ms\":%.3f,\"p99_ms\":%.3f,"
               "\"spawn_us\":%.1f,\"retries\":%lu}\n", b->kills, p50 / 1000, p99 / 1000, s50,
               retries);
    else
        printf("restart    kills %u: kill -> first answered command p50 %.3f ms, p99 %.3f ms; "
               "bare posix_spawn+wait of /bin/true p50 %.1f us; %lu UNAVAILABLE retries\n",
               b->kills, p50 / 1000, p99 / 1000, s50, retries);
    free(lat), free(spawn);
    cqrs_client_free(c);
    return 0;
fail:
    fprintf(stderr, "cqrs-bench: restart: %s\n", strerror(errno));
    cqrs_client_free(c);
    return -1;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)flag, (void)f;
    return remove(path);
}

static pid_t spawn_daemon(char *dir, size_t dlen, char *sock, size_t slen)
{
    snprintf(dir, dlen, "/tmp/cqrs-bench.XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    snprintf(sock, slen, "%s/cqrsd.sock", dir);
    char data[300], conf[300];
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(conf, sizeof conf, "%s/cqrsd.conf", dir);
    FILE *f = fopen(conf, "w");
    if (!f)
        return -1;
    /* the restart scenario kills the worker on purpose, many times */
    fputs("[supervisor]\nintensity = 1000\nperiod = 1\n[child wallet]\n[child account]\n", f);
    fclose(f);
    pid_t pid = fork();
    if (pid == 0) {
        char log[300];
        snprintf(log, sizeof log, "%s/cqrsd.log", dir);
        if (!freopen(log, "w", stderr))
            _exit(127);
        execl(CQRSD_PATH, "cqrsd", "--config", conf, "--socket", sock, "--data-dir", data,
              (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) {   /* up to 10 s for the workers to start */
        struct cqrs_client *c = cqrs_client_connect(sock);
        if (c) {
            cqrs_client_free(c);
            return pid;
        }
        usleep(20000);
    }
    kill(pid, SIGKILL);
    return -1;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: cqrs-bench [--socket PATH | --spawn] [--connections N] [--depth D]\n"
               "                  [--commands N] [--aggregates A] [--kills K] [--json]\n"
               "                  sync|pipelined|restart ...\n");
}

int main(int argc, char **argv)
{
    struct bench b = { .socket = "var/cqrsd.sock", .connections = 4, .depth = 64,
                       .aggregates = 1000, .commands = 200000, .kills = 100 };
    int spawn = 0;
    static const struct option opts[] = {
        { "socket", required_argument, NULL, 's' }, { "spawn", no_argument, NULL, 'S' },
        { "connections", required_argument, NULL, 'c' }, { "depth", required_argument, NULL, 'd' },
        { "commands", required_argument, NULL, 'n' }, { "aggregates", required_argument, NULL, 'a' },
        { "kills", required_argument, NULL, 'k' }, { "json", no_argument, NULL, 'j' }, { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
    };
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 's': b.socket = optarg; break;
        case 'S': spawn = 1; break;
        case 'c': b.connections = (unsigned)atoi(optarg); break;
        case 'd': b.depth = (unsigned)atoi(optarg); break;
        case 'n': b.commands = strtoul(optarg, NULL, 10); break;
        case 'a': b.aggregates = (unsigned)atoi(optarg); break;
        case 'k': b.kills = (unsigned)atoi(optarg); break;
        case 'j': b.json = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 64;
        }
    }
    if (optind >= argc || !b.connections || !b.depth || !b.aggregates || !b.commands || !b.kills) {
        usage(stderr);
        return 64;
    }
    signal(SIGPIPE, SIG_IGN);
    char dir[64], sock[128];
    pid_t daemon = 0;
    if (spawn) {
        daemon = spawn_daemon(dir, sizeof dir, sock, sizeof sock);
        if (daemon < 0) {
            fprintf(stderr, "cqrs-bench: could not start cqrsd\n");
            return 69;
        }
        b.socket = sock;
    }
    if (!b.json)
        printf("%-10s %5s %5s %9s %7s %8s %12s %9s %9s %9s\n", "scenario", "conns", "depth",
               "commands", "failed", "seconds", "commands/s", "p50_us", "p99_us", "p999_us");
    int rc = 0;
    for (int i = optind; i < argc; i++) {
        if (strcmp(argv[i], "sync") == 0)
            rc |= run_scenario(&b, "sync", 1, 1);
        else if (strcmp(argv[i], "pipelined") == 0)
            rc |= run_scenario(&b, "pipelined", b.connections, b.depth);
        else if (strcmp(argv[i], "restart") == 0 && !spawn) {
            fprintf(stderr, "cqrs-bench: restart kills workers: it runs only with --spawn\n");
            rc = -1;
        } else if (strcmp(argv[i], "restart") == 0)
            rc |= run_restart(&b);
        else {
            fprintf(stderr, "cqrs-bench: unknown scenario \"%s\"\n", argv[i]);
            rc = -1;
        }
    }
    if (daemon > 0) {
        kill(daemon, SIGTERM);
        waitpid(daemon, NULL, 0);
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    }
    return rc ? 1 : 0;
}
