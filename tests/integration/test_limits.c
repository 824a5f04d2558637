/*
 * Bounded resources: a worker touching far more streams than its limits
 * keeps at most `open_files` log files open and at most `max_aggregates`
 * aggregates in memory, and loses nothing: evicted aggregates come back
 * from their files with the right state.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "wallet.pb-c.h"

#define STREAMS 100000
#define OPEN_FILES 64
#define DEPTH 256

static struct daemon d;

static void teardown(void)
{
    daemon_cleanup(&d);
}

TestSuite(limits, .fini = teardown, .timeout = 240);

/* Open descriptors of `pid` that are stream logs (<...>/wallet/<shard>/<id>.log). */
static int open_stream_logs(pid_t pid)
{
    char dir[64], link[PATH_MAX], target[PATH_MAX];
    snprintf(dir, sizeof dir, "/proc/%d/fd", (int)pid);
    DIR *dd = opendir(dir);
    cr_assert_not_null(dd, "cannot list %s", dir);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(dd)) != NULL) {
        snprintf(link, sizeof link, "%s/%s", dir, e->d_name);
        ssize_t len = readlink(link, target, sizeof target - 1);
        if (len <= 0)
            continue;
        target[len] = '\0';
        if (strstr(target, "/wallet/") && !strstr(target, "/journal/") &&
            len > 4 && strcmp(target + len - 4, ".log") == 0)
            n++;
    }
    closedir(dd);
    return n;
}

static long rss_kb(pid_t pid)
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

static uint64_t topup(struct cqrs_client *c, const char *id, int64_t amount)
{
    Wallet__TopUp t = WALLET__TOP_UP__INIT;
    t.amount = amount;
    Cqrs__Reply *r = send_cmd(c, "wallet", id, &t.base, NULL, -1);
    cr_assert_eq(r->status, CQRS__STATUS__OK, "%s: %s", id, r->error);
    uint64_t v = r->version;
    cqrs__reply__free_unpacked(r, NULL);
    return v;
}

/* The wallet worker's WorkerStats as its last heartbeat answer gave them
 * (heartbeat_ms = 50 below), waiting for a heartbeat after this call. */
static Cqrs__WorkerStats wallet_stats(struct cqrs_client *c)
{
    harness_sleep_ms(150);   /* a heartbeat answered after what came before */
    Cqrs__Reply *r;
    cr_assert_eq(cqrs_client_control(c, CQRS__CONTROL__OP__STATUS, NULL, &r), 0);
    Cqrs__WorkerStats st = CQRS__WORKER_STATS__INIT;
    int found = 0;
    for (size_t i = 0; i < r->n_children; i++)
        if (strcmp(r->children[i]->name, "wallet") == 0 && r->children[i]->stats) {
            st = *r->children[i]->stats;
            found = 1;
        }
    cqrs__reply__free_unpacked(r, NULL);
    cr_assert(found, "STATUS has no counters for the wallet worker");
    return st;
}

Test(limits, hundred_thousand_streams_within_open_files_and_max_aggregates)
{
    daemon_start_conf(&d,
                      "[supervisor]\nheartbeat_ms = 50\n"
                      "[storage]\nfsync = never\nopen_files = 64\nmax_aggregates = 1000\n"
                      "[child wallet]\n[child account]\n", NULL);
    pid_t worker = daemon_child_pid(&d, "wallet");
    struct cqrs_client *c = daemon_connect(&d);
    cqrs_client_set_retries(c, 0);

    /* one TopUp of 1 to each of 100,000 wallets, DEPTH in flight */
    char id[32];
    struct topup_request tr;
    topup_request_init(&tr, id, 1);
    long sent = 0, got = 0;
    int max_open = 0;
    while (got < STREAMS) {
        while (sent < STREAMS && sent - got < DEPTH) {
            snprintf(id, sizeof id, "w%ld", sent++);
            uint64_t rid;
            cr_assert_eq(cqrs_client_send(c, &tr.req, &rid), 0);
        }
        Cqrs__Reply *r;
        cr_assert_eq(cqrs_client_recv_any(c, &r), 0);
        cr_assert_eq(r->status, CQRS__STATUS__OK, "%s", r->error);
        cqrs__reply__free_unpacked(r, NULL);
        if (++got % 10000 == 0) {
            int n = open_stream_logs(worker);
            if (n > max_open)
                max_open = n;
        }
    }
    cr_log_info("at most %d stream logs open while 100,000 streams were written", max_open);
    cr_assert_leq(max_open, OPEN_FILES, "%d stream log files open, limit %d", max_open, OPEN_FILES);
    cr_assert_leq(open_stream_logs(worker), OPEN_FILES);
    cr_assert_eq(daemon_child_pid(&d, "wallet"), worker, "the worker restarted under the load");
    Cqrs__WorkerStats st = wallet_stats(c);
    cr_assert_leq(st.aggregates, 1000, "%llu aggregates in memory, max_aggregates 1000",
                  (unsigned long long)st.aggregates);
    cr_assert_leq(st.open_files, OPEN_FILES);

    /* the first wallets were evicted long ago: they come back from their files */
    for (int i = 0; i < 50; i++) {
        snprintf(id, sizeof id, "w%d", i * 37);
        cr_assert_eq(topup(c, id, 5), 2, "%s did not continue at version 2", id);
    }
    long kb = rss_kb(worker);
    cr_log_info("wallet worker RSS after 100,000 streams with max_aggregates = 1000: %ld kB", kb);
    /* generous: 100,000 aggregates kept in memory would be far beyond it */
    cr_assert_lt(kb, 400 * 1024, "worker RSS %ld kB", kb);
    cqrs_client_free(c);
}

/* idle_timeout_s: an aggregate unused that long leaves memory (the worker
 * sweeps its table every second at this setting); one used meanwhile stays,
 * and an evicted one comes back from its file at the next command. */
Test(limits, idle_aggregates_leave_memory_and_come_back)
{
    daemon_start_conf(&d,
                      "[supervisor]\nheartbeat_ms = 50\n"
                      "[storage]\nfsync = never\nidle_timeout_s = 2\n"
                      "[child wallet]\n[child account]\n", NULL);
    struct cqrs_client *c = daemon_connect(&d);
    char id[32];
    for (int i = 0; i < 20; i++) {
        snprintf(id, sizeof id, "idle-%d", i);
        cr_assert_eq(topup(c, id, 1), 1);
    }
    cr_assert_eq(wallet_stats(c).aggregates, 20);

    /* keep idle-0 busy while the others age past the timeout */
    Cqrs__WorkerStats st = wallet_stats(c);
    uint64_t v = 1;
    for (int64_t until = harness_ms() + 15000; st.aggregates > 1 && harness_ms() < until;) {
        v = topup(c, "idle-0", 1);
        harness_sleep_ms(200);
        st = wallet_stats(c);
    }
    cr_assert_eq(st.aggregates, 1, "%llu aggregates still in memory after 15 s; idle_timeout_s 2",
                 (unsigned long long)st.aggregates);
    cr_assert_gt(v, 1);

    /* the evicted ones come back at the version their file holds */
    for (int i = 1; i < 20; i++) {
        snprintf(id, sizeof id, "idle-%d", i);
        cr_assert_eq(topup(c, id, 1), 2, "%s did not continue at version 2", id);
    }
    cr_assert_eq(wallet_stats(c).aggregates, 20);
    cqrs_client_free(c);
}
