/*
 * cqrs-soak — many well-behaved clients and a stream of hostile ones against
 * one cqrsd, then a check that nothing was lost, leaked or corrupted.
 *
 *   cqrs-soak [--spawn | --socket PATH] [--seconds N] [--good N] [--wallets N]
 *             [--rate N] [--max-connections N] [--read-timeout-ms N]
 *             [--max-rss-mb N] [--max-worker-rss-mb N] [--seed N] [--keep]
 *
 * One thread, one poll() loop over every socket. For --seconds (default 60):
 *
 *   - --good (default 500) connections stay open all along, each with one
 *     request in flight: a TopUp of 1 (80 %, a unique command_id each) or a
 *     STATE query (20 %) on one of --wallets (default 1,000) wallets. A
 *     TopUp answered UNAVAILABLE or BUSY is sent again with the same
 *     command_id after a short pause; any other answer but OK is a
 *     violation, as is a well-behaved connection closed by cqrsd. --rate
 *     (default 2,000 requests/s over all of them; 0: as fast as they go)
 *     keeps the load sane on a small machine shared with others.
 *   - hostile clients, up to 32 at a time, 40 new ones a second, in turn:
 *       garbage   a frame of random bytes: any reply or a close within 3 s
 *       oversize  a header announcing more than max_frame_bytes: INVALID,
 *                 then closed, within 3 s
 *       half      10 bytes of a 100-byte frame, then nothing: closed, with
 *                 no reply, within read_timeout_ms + 3 s (not much before)
 *       vanish    connect and close at once, or send a query or part of a
 *                 header and close without reading
 *     and, every 10 s, a burst of 100 connections past max_connections
 *     (default 560, so the good ones fit): each sends STATUS; at most
 *     max_connections - good are answered, the others closed at once.
 *
 * Then, once every request in flight is answered (30 s at most):
 *   - every well-behaved command got its reply;
 *   - each wallet's STATE (balance and version) equals the OK TopUps sent
 *     to it (its state before the run is read first, so a long-lived
 *     daemon can be soaked too);
 *   - no worker restarted; VERIFY (online) finds no problem in any type;
 *   - cqrsd's open descriptors (/proc/PID/fd; PID from SO_PEERCRED) come
 *     back to their count before the run (+-3) once every client is gone;
 *   - cqrsd's RSS, current and peak, stays under --max-rss-mb (default
 *     200), each worker's under --max-worker-rss-mb (default 300);
 *   - with --spawn: cqrsd exits 0 on SIGTERM, its log holds no sanitizer
 *     report, and `cqrsd --verify` on the data directory exits 0.
 *
 * --spawn starts cqrsd (CQRSD_PATH of the build) on a fresh temporary
 * directory with max_connections = --max-connections, read_timeout_ms =
 * --read-timeout-ms (default 1000) and fsync = batch, and removes the
 * directory after (--keep: not). Figures are printed on stdout; exit 0
 * when every check passed, 1 on any violation, 2 when the run could not be
 * set up.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>

#include "client.h"
#include "wallet.pb-c.h"

#ifndef CQRSD_PATH
#error "CQRSD_PATH must be defined by the build"
#endif

#define DRAIN_MS 30000          /* in-flight requests answered after the run */
#define REPLY_TIMEOUT_MS 30000  /* a well-behaved request unanswered this long: stuck */
#define HOSTILE_MAX 32          /* hostile connections at a time */
#define HOSTILE_PER_S 40        /* new hostile connections a second */
#define HOSTILE_MS 3000         /* what a hostile client waits for, at most */
#define BURST_CONNS 100         /* connections of a burst past max_connections */
#define BURST_EVERY_MS 10000
#define BURST_FIRST_MS 3000
#define BURST_MS 5000
#define BURST_QUIET_MS 500      /* after a burst, refusals are still expected */
#define RETRY_MS 20             /* pause before a TopUp is sent again */
#define MAX_RETRIES 500
#define FD_SLACK 3
#define MAX_FRAME (1u << 20)    /* the reply frames we accept */

/* ---- options, figures, violations ------------------------------------------- */

static struct {
    const char *socket;
    int spawn, keep;
    unsigned seconds, good, wallets, rate, max_conn, read_timeout_ms;
    unsigned max_rss_mb, max_worker_rss_mb;
    unsigned long long seed;
} opt = { .seconds = 60, .good = 500, .wallets = 1000, .rate = 2000, .max_conn = 560,
          .read_timeout_ms = 1000, .max_rss_mb = 200, .max_worker_rss_mb = 300 };

static unsigned long violations;

__attribute__((format(printf, 1, 2)))
static void violation(const char *fmt, ...)
{
    if (++violations > 40)
        return;   /* the count says the rest */
    va_list ap;
    va_start(ap, fmt);
    fputs("cqrs-soak: VIOLATION: ", stdout);
    vprintf(fmt, ap);
    putchar('\n');
    va_end(ap);
    fflush(stdout);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static uint64_t rng_state;

static uint64_t rnd(void)
{
    uint64_t x = rng_state;   /* xorshift64* */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* ---- byte buffers and frames ------------------------------------------------------ */

struct buf {
    uint8_t *p;
    size_t len, cap;
};

static int buf_add(struct buf *b, const void *data, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

static void buf_drop(struct buf *b, size_t n)
{
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

static void buf_free(struct buf *b)
{
    free(b->p);
    *b = (struct buf){ 0 };
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int frame_request(struct buf *out, const Cqrs__Request *req)
{
    uint8_t stack[512];
    size_t len = cqrs__request__get_packed_size(req);
    uint8_t *p = len + 4 <= sizeof stack ? stack : malloc(len + 4);
    if (!p)
        return -1;
    put32(p, (uint32_t)len);
    cqrs__request__pack(req, p + 4);
    int rc = buf_add(out, p, len + 4);
    if (p != stack)
        free(p);
    return rc;
}

/* The next whole reply in `in`: 1 with *out (caller frees), 0 when not
 * there yet, -1 when it is not a reply frame. */
static int next_reply(struct buf *in, Cqrs__Reply **out)
{
    if (in->len < 4)
        return 0;
    uint32_t len = get32(in->p);
    if (len > MAX_FRAME)
        return -1;
    if (in->len < 4 + (size_t)len)
        return 0;
    *out = cqrs__reply__unpack(NULL, len, in->p + 4);
    buf_drop(in, 4 + (size_t)len);
    return *out ? 1 : -1;
}

/* Reads what `fd` has into `in`: 1 read something, 0 EOF, -1 error
 * (ECONNRESET included), 2 nothing now. */
static int read_into(int fd, struct buf *in)
{
    uint8_t chunk[16384];
    ssize_t n = read(fd, chunk, sizeof chunk);
    if (n > 0)
        return buf_add(in, chunk, (size_t)n) < 0 ? -1 : 1;
    if (n == 0)
        return 0;
    return errno == EAGAIN || errno == EINTR ? 2 : -1;
}

static int connect_to(const char *path, int nonblock)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sa.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    /* a blocking connect waits while the listen backlog is full: bounded */
    struct timeval tv = { 2, 0 };
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    if (nonblock)
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

/* ---- the daemon ---------------------------------------------------------------- */

static char dir[64], sock_path[128], data_dir[128], conf_path[128], log_path[128];
static pid_t spawned;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)flag, (void)f;
    return remove(path);
}

static void show_log_tail(void)
{
    FILE *f = fopen(log_path, "r");
    if (!f)
        return;
    static char lines[40][512];
    size_t n = 0;
    while (fgets(lines[n % 40], sizeof lines[0], f))
        n++;
    fclose(f);
    printf("cqrs-soak: the last lines of cqrsd's log (%s):\n", log_path);
    for (size_t i = n > 40 ? n - 40 : 0; i < n; i++)
        printf("  %s", lines[i % 40]);
}

/* Under AddressSanitizer (a -DCQRS_SANITIZE=ON build) freed memory waits in
 * a quarantine of up to 256 MB per process before it is reused: after a
 * minute of churn that alone would be cqrsd's RSS. The spawned cqrsd and its
 * workers get a 16 MB one, so the RSS bound measures the daemon's own
 * memory; options already in ASAN_OPTIONS come after, and win. */
#define ASAN_QUARANTINE "quarantine_size_mb=16"

/* The same for this program, when it is built with ASan itself. */
#if defined(__SANITIZE_ADDRESS__)
#define SOAK_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SOAK_ASAN 1
#endif
#endif
#ifdef SOAK_ASAN
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return ASAN_QUARANTINE;
}
#endif

static void asan_quarantine(void)
{
    const char *old = getenv("ASAN_OPTIONS");
    char buf[1024];
    snprintf(buf, sizeof buf, "%s%s%s", ASAN_QUARANTINE, old && *old ? ":" : "", old ? old : "");
    setenv("ASAN_OPTIONS", buf, 1);
}

/* 1 when STATUS over a fresh connection lists children, every one running. */
static int daemon_ready(void)
{
    struct cqrs_client *c = cqrs_client_connect(sock_path);
    if (!c)
        return 0;
    Cqrs__Reply *r = NULL;
    int ok = cqrs_client_control(c, CQRS__CONTROL__OP__STATUS, NULL, &r) == 0 &&
             r->status == CQRS__STATUS__OK && r->n_children > 0;
    for (size_t i = 0; ok && i < r->n_children; i++)
        ok = strcmp(r->children[i]->state, "running") == 0;
    if (r)
        cqrs__reply__free_unpacked(r, NULL);
    cqrs_client_free(c);
    return ok;
}

static int daemon_spawn(void)
{
    snprintf(dir, sizeof dir, "/tmp/cqrs-soak.XXXXXX");
    if (!mkdtemp(dir)) {
        perror("cqrs-soak: mkdtemp");
        dir[0] = '\0';
        return -1;
    }
    snprintf(sock_path, sizeof sock_path, "%s/cqrsd.sock", dir);
    snprintf(data_dir, sizeof data_dir, "%s/data", dir);
    snprintf(conf_path, sizeof conf_path, "%s/cqrsd.conf", dir);
    snprintf(log_path, sizeof log_path, "%s/cqrsd.log", dir);
    FILE *f = fopen(conf_path, "w");
    if (!f)
        return -1;
    fprintf(f, "[server]\nmax_connections = %u\nread_timeout_ms = %u\n"
               "[storage]\nfsync = batch\n[child wallet]\n[child account]\n",
            opt.max_conn, opt.read_timeout_ms);
    if (fclose(f) != 0)
        return -1;
    int logfd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (logfd < 0)
        return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(logfd);
        return -1;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);   /* a killed soak takes its cqrsd along */
        int null = open("/dev/null", O_RDONLY);
        if (null < 0 || dup2(null, 0) < 0 || dup2(logfd, 1) < 0 || dup2(logfd, 2) < 0)
            _exit(126);
        signal(SIGPIPE, SIG_DFL);
        asan_quarantine();
        execl(CQRSD_PATH, "cqrsd", "--config", conf_path, "--socket", sock_path, "--data-dir",
              data_dir, (char *)NULL);
        dprintf(2, "cqrs-soak: cannot exec %s: %s\n", CQRSD_PATH, strerror(errno));
        _exit(127);
    }
    close(logfd);
    spawned = pid;
    int64_t deadline = now_ms() + 15000;
    while (now_ms() < deadline) {
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            spawned = 0;
            printf("cqrs-soak: cqrsd exited during start-up\n");
            show_log_tail();
            return -1;
        }
        if (daemon_ready())
            return 0;
        sleep_ms(20);
    }
    printf("cqrs-soak: cqrsd not ready after 15 s\n");
    show_log_tail();
    return -1;
}

/* SIGTERM; its wait status, or -1 when it had to be killed. */
static int daemon_stop(void)
{
    if (spawned <= 0)
        return -1;
    kill(spawned, SIGTERM);
    int status = -1;
    int64_t deadline = now_ms() + 15000;
    while (now_ms() < deadline) {
        if (waitpid(spawned, &status, WNOHANG) == spawned) {
            spawned = 0;
            return status;
        }
        sleep_ms(10);
    }
    kill(spawned, SIGKILL);
    waitpid(spawned, NULL, 0);
    spawned = 0;
    return -1;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, len = 0;
    char *s = malloc(cap);
    while (s) {
        len += fread(s + len, 1, cap - len - 1, f);
        if (len < cap - 1)
            break;
        char *n = realloc(s, cap *= 2);
        if (!n) {
            free(s);
            s = NULL;
        } else {
            s = n;
        }
    }
    fclose(f);
    if (s)
        s[len] = '\0';
    return s;
}

/* `cqrsd --verify` on the spawned daemon's data: its exit code (-1: could
 * not run). Its output is appended to the log. */
static int offline_verify(void)
{
    int logfd = open(log_path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (logfd < 0)
        return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        if (dup2(logfd, 1) < 0 || dup2(logfd, 2) < 0)
            _exit(126);
        execl(CQRSD_PATH, "cqrsd", "--verify", "--config", conf_path, "--data-dir", data_dir,
              (char *)NULL);
        _exit(127);
    }
    close(logfd);
    if (pid < 0)
        return -1;
    int status;
    int64_t deadline = now_ms() + 120000;
    while (waitpid(pid, &status, WNOHANG) != pid) {
        if (now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            return -1;
        }
        sleep_ms(20);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* ---- /proc ---------------------------------------------------------------------- */

static int count_fds(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* CPU seconds (user + system) used so far by `pid`; -1 when unreadable. */
static double cpu_s(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');   /* "pid (comm) S ppid ... utime stime" */
    unsigned long long ut, st;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* VmRSS and VmHWM in kB (-1 when unreadable). */
static void rss_kb(pid_t pid, long *rss, long *hwm)
{
    char path[64], line[256];
    *rss = *hwm = -1;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        sscanf(line, "VmRSS: %ld kB", rss);
        sscanf(line, "VmHWM: %ld kB", hwm);
    }
    fclose(f);
}

static pid_t peer_pid(const char *path)
{
    int fd = connect_to(path, 0);
    if (fd < 0)
        return -1;
    struct ucred cred;
    socklen_t len = sizeof cred;
    pid_t pid = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 ? cred.pid : -1;
    close(fd);
    return pid;
}

/* ---- STATUS ------------------------------------------------------------------------ */

#define MAX_CHILDREN 16

struct child {
    char name[64];
    pid_t pid;
    unsigned restarts;
    char state[16], last_exit[160];
};

static int status_children(struct child *out, size_t *n)
{
    struct cqrs_client *c = cqrs_client_connect(sock_path);
    if (!c)
        return -1;
    Cqrs__Reply *r = NULL;
    int rc = cqrs_client_control(c, CQRS__CONTROL__OP__STATUS, NULL, &r);
    cqrs_client_free(c);
    if (rc < 0)
        return -1;
    *n = 0;
    for (size_t i = 0; i < r->n_children && i < MAX_CHILDREN; i++) {
        struct child *ch = &out[(*n)++];
        snprintf(ch->name, sizeof ch->name, "%s", r->children[i]->name);
        ch->pid = r->children[i]->pid;
        ch->restarts = r->children[i]->restarts;
        snprintf(ch->state, sizeof ch->state, "%s", r->children[i]->state);
        snprintf(ch->last_exit, sizeof ch->last_exit, "%s", r->children[i]->last_exit);
    }
    cqrs__reply__free_unpacked(r, NULL);
    return 0;
}

/* ---- wallets --------------------------------------------------------------------- */

static char prefix[32];           /* wallet ids: <prefix>-w<n> */
static int64_t *initial_balance;  /* before the run */
static uint64_t *initial_version;
static unsigned long *ok_topups;  /* OK TopUps sent to each wallet */

static void wallet_id(char *buf, size_t len, unsigned n)
{
    snprintf(buf, len, "%s-w%u", prefix, n);
}

/* STATE of wallet `n` (UNAVAILABLE and BUSY retried): 0 with its balance
 * and version (0 and 0 when it does not exist), -1 on failure. */
static int wallet_state(struct cqrs_client *c, unsigned n, int64_t *balance, uint64_t *version)
{
    char id[64];
    wallet_id(id, sizeof id, n);
    for (int attempt = 0; attempt < 100; attempt++) {
        Cqrs__Reply *r = NULL;
        if (cqrs_client_state(c, "wallet", id, &r) < 0)
            return -1;
        Cqrs__Status st = r->status;
        if (st == CQRS__STATUS__NOT_FOUND) {
            *balance = 0;
            *version = 0;
        } else if (st == CQRS__STATUS__OK) {
            Wallet__WalletState *s = wallet__wallet_state__unpack(NULL, r->state.len, r->state.data);
            if (!s) {
                cqrs__reply__free_unpacked(r, NULL);
                return -1;
            }
            *balance = s->balance;
            *version = r->version;
            wallet__wallet_state__free_unpacked(s, NULL);
        }
        cqrs__reply__free_unpacked(r, NULL);
        if (st == CQRS__STATUS__OK || st == CQRS__STATUS__NOT_FOUND)
            return 0;
        if (st != CQRS__STATUS__UNAVAILABLE && st != CQRS__STATUS__BUSY)
            return -1;
        sleep_ms(20);
    }
    return -1;
}

/* ---- well-behaved clients ------------------------------------------------------ */

enum { REQ_TOPUP, REQ_STATE };

struct good {
    int fd;                       /* -1: closed by cqrsd (a violation) */
    struct buf in, out;
    uint64_t next_id, req_id;
    int inflight;                 /* a request is waiting for its reply */
    int retry;                    /* the TopUp in hand must be sent again */
    int kind;
    unsigned wallet;
    char command_id[64];
    unsigned retries;
    int64_t sent_ms, retry_at_ms;
    unsigned long seq;
};

static struct {
    unsigned long sent, topup_ok, state_ok, state_unavailable, retried, replies;
    double lat_sum_ms;
    int64_t lat_max_ms;
} gs;

static uint8_t topup_payload[16];
static size_t topup_payload_len;

static void good_flush(struct good *g)
{
    while (g->out.len) {
        ssize_t n = write(g->fd, g->out.p, g->out.len);
        if (n > 0) {
            buf_drop(&g->out, (size_t)n);
        } else {
            if (n < 0 && (errno == EAGAIN || errno == EINTR))
                return;   /* POLLOUT goes on */
            return;       /* the read side reports the close */
        }
    }
}

static void good_send(struct good *g, unsigned idx, int64_t now)
{
    char id[64];
    wallet_id(id, sizeof id, g->wallet);
    Cqrs__Request req = CQRS__REQUEST__INIT;
    Cqrs__Command cmd = CQRS__COMMAND__INIT;
    Cqrs__Query q = CQRS__QUERY__INIT;
    req.id = g->req_id = ++g->next_id;
    if (g->kind == REQ_TOPUP) {
        cmd.aggregate_type = "wallet";
        cmd.aggregate_id = id;
        cmd.name = "TopUp";
        cmd.payload.data = topup_payload;
        cmd.payload.len = topup_payload_len;
        cmd.command_id = g->command_id;
        req.body_case = CQRS__REQUEST__BODY_COMMAND;
        req.command = &cmd;
    } else {
        q.aggregate_type = "wallet";
        q.aggregate_id = id;
        q.kind = CQRS__QUERY__KIND__STATE;
        req.body_case = CQRS__REQUEST__BODY_QUERY;
        req.query = &q;
    }
    if (frame_request(&g->out, &req) < 0) {
        violation("good client %u: out of memory", idx);
        return;
    }
    g->inflight = 1;
    g->retry = 0;
    g->sent_ms = now;
    gs.sent++;
    good_flush(g);
}

static void good_new_request(struct good *g, unsigned idx, int64_t now)
{
    g->wallet = (unsigned)(rnd() % opt.wallets);
    g->kind = rnd() % 5 == 0 ? REQ_STATE : REQ_TOPUP;
    g->retries = 0;
    if (g->kind == REQ_TOPUP)
        snprintf(g->command_id, sizeof g->command_id, "%s-c%u-%lu", prefix, idx, ++g->seq);
    good_send(g, idx, now);
}

static void good_on_reply(struct good *g, unsigned idx, Cqrs__Reply *r, int64_t now)
{
    if (!g->inflight || r->id != g->req_id) {
        violation("good client %u: a reply for request %llu, expected %llu%s", idx,
                  (unsigned long long)r->id, (unsigned long long)g->req_id,
                  g->inflight ? "" : " (none in flight)");
        return;
    }
    g->inflight = 0;
    gs.replies++;
    int64_t lat = now - g->sent_ms;
    gs.lat_sum_ms += (double)lat;
    if (lat > gs.lat_max_ms)
        gs.lat_max_ms = lat;
    int again = r->status == CQRS__STATUS__UNAVAILABLE || r->status == CQRS__STATUS__BUSY;
    if (g->kind == REQ_TOPUP) {
        if (r->status == CQRS__STATUS__OK) {
            ok_topups[g->wallet]++;
            gs.topup_ok++;
        } else if (again && g->retries < MAX_RETRIES) {
            g->retries++;
            gs.retried++;
            g->retry = 1;
            g->retry_at_ms = now + RETRY_MS;
        } else {
            violation("good client %u: TopUp %s answered %s: %s", idx, g->command_id,
                      cqrs_status_name(r->status), r->error);
        }
    } else if (r->status == CQRS__STATUS__OK || r->status == CQRS__STATUS__NOT_FOUND) {
        gs.state_ok++;
    } else if (again) {
        gs.state_unavailable++;
    } else {
        violation("good client %u: STATE answered %s: %s", idx, cqrs_status_name(r->status),
                  r->error);
    }
}

static void good_on_readable(struct good *g, unsigned idx, int64_t now)
{
    int rc = read_into(g->fd, &g->in);
    if (rc == 0 || rc == -1) {
        violation("cqrsd closed well-behaved connection %u (%s)%s", idx,
                  rc == 0 ? "EOF" : strerror(errno),
                  g->inflight ? " with a request in flight" : "");
        close(g->fd);
        g->fd = -1;
        return;
    }
    Cqrs__Reply *r;
    int n;
    while ((n = next_reply(&g->in, &r)) == 1) {
        good_on_reply(g, idx, r, now);
        cqrs__reply__free_unpacked(r, NULL);
    }
    if (n < 0) {
        violation("good client %u: cqrsd sent something that is not a reply", idx);
        close(g->fd);
        g->fd = -1;
    }
}

/* ---- hostile clients ----------------------------------------------------------- */

enum hkind { H_GARBAGE, H_OVERSIZE, H_HALF, H_VANISH, H_KINDS };
static const char *hkind_name[H_KINDS] = { "garbage", "oversize", "half frame", "vanish" };

struct hostile {
    int fd;                       /* -1: slot free */
    enum hkind kind;
    int64_t started_ms, deadline_ms;
    int replies;
    Cqrs__Status first_status;
    struct buf in;
};

static struct {
    unsigned long launched[H_KINDS], replied[H_KINDS], closed[H_KINDS], refused[H_KINDS],
        connect_failed;
    int64_t half_close_min_ms, half_close_max_ms;
} hs = { .half_close_min_ms = INT64_MAX };

static struct hostile hostiles[HOSTILE_MAX];
static int64_t last_burst_end_ms = -1000000;
static int burst_active;

static void hostile_end(struct hostile *h)
{
    close(h->fd);
    h->fd = -1;
    buf_free(&h->in);
}

/* Writes all of a small buffer (the socket's buffer has room); 0 or -1. */
static int send_small(int fd, const void *p, size_t n)
{
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    return w == (ssize_t)n ? 0 : -1;
}

static void hostile_launch(struct hostile *h, enum hkind kind, int64_t now)
{
    int fd = connect_to(sock_path, 1);
    if (fd < 0) {
        hs.connect_failed++;
        return;
    }
    hs.launched[kind]++;
    *h = (struct hostile){ .fd = fd, .kind = kind, .started_ms = now,
                           .deadline_ms = now + HOSTILE_MS };
    uint8_t buf[512];
    switch (kind) {
    case H_GARBAGE: {
        uint32_t len = 1 + (uint32_t)(rnd() % 300);
        put32(buf, len);
        for (uint32_t i = 0; i < len; i++)
            buf[4 + i] = (uint8_t)rnd();
        if (send_small(fd, buf, 4 + len) < 0)
            hs.refused[kind]++, hostile_end(h);
        break;
    }
    case H_OVERSIZE: {
        static const uint32_t lens[] = { 0xffffffffu, 0x7fffffffu, (64u << 20) + 1 };
        /* over any max_frame_bytes a configuration may set (64 MiB at most) */
        uint32_t len = rnd() % 2 ? lens[rnd() % 3]
                                 : (64u << 20) + 1 + (uint32_t)(rnd() % 100000);
        put32(buf, len);
        memset(buf + 4, 'x', 60);
        if (send_small(fd, buf, 64) < 0)
            hs.refused[kind]++, hostile_end(h);
        break;
    }
    case H_HALF:
        put32(buf, 100);
        memset(buf + 4, 0x08, 6);
        h->deadline_ms = now + opt.read_timeout_ms + HOSTILE_MS;
        if (send_small(fd, buf, 10) < 0)
            hs.refused[kind]++, hostile_end(h);
        break;
    case H_VANISH:
        switch (rnd() % 3) {
        case 0:
            break;   /* connect, close */
        case 1: {    /* a whole query, then gone before the reply */
            Cqrs__Request req = CQRS__REQUEST__INIT;
            Cqrs__Query q = CQRS__QUERY__INIT;
            char id[64];
            wallet_id(id, sizeof id, (unsigned)(rnd() % opt.wallets));
            q.aggregate_type = "wallet";
            q.aggregate_id = id;
            req.id = 1;
            req.body_case = CQRS__REQUEST__BODY_QUERY;
            req.query = &q;
            struct buf out = { 0 };
            if (frame_request(&out, &req) == 0)
                send_small(fd, out.p, out.len);
            buf_free(&out);
            break;
        }
        default:     /* half a header */
            send_small(fd, "\0\0", 2);
        }
        hs.closed[kind]++;
        hostile_end(h);
        break;
    default:
        break;
    }
}

static void hostile_on_readable(struct hostile *h, int64_t now)
{
    int rc = read_into(h->fd, &h->in);
    if (rc == 2)
        return;
    if (rc == 1) {
        Cqrs__Reply *r;
        int n;
        while ((n = next_reply(&h->in, &r)) == 1) {
            if (h->replies++ == 0)
                h->first_status = r->status;
            cqrs__reply__free_unpacked(r, NULL);
        }
        if (n < 0)
            violation("a %s client got something that is not a reply", hkind_name[h->kind]);
        if (h->kind == H_GARBAGE && h->replies) {
            hs.replied[h->kind]++;
            hostile_end(h);   /* done: answered */
        } else if (h->kind == H_HALF && h->replies) {
            violation("a half frame was answered (%s)", cqrs_status_name(h->first_status));
            hostile_end(h);
        }
        return;
    }
    /* closed by cqrsd */
    int quiet = !burst_active && now - last_burst_end_ms > BURST_QUIET_MS;
    if (h->replies)
        hs.replied[h->kind]++;
    switch (h->kind) {
    case H_GARBAGE:
        hs.closed[h->kind]++;
        break;
    case H_OVERSIZE:
        if (h->replies && h->first_status == CQRS__STATUS__INVALID)
            hs.closed[h->kind]++;
        else if (!h->replies && !quiet)
            hs.refused[h->kind]++;   /* max_connections during a burst */
        else
            violation("an oversized frame was %s before the connection closed",
                      h->replies ? cqrs_status_name(h->first_status) : "not answered");
        break;
    case H_HALF: {
        int64_t took = now - h->started_ms;
        if (!quiet && took < 200) {
            hs.refused[h->kind]++;
        } else if (took < (int64_t)opt.read_timeout_ms * 8 / 10) {
            violation("a half frame was closed after %lld ms, before read_timeout_ms (%u)",
                      (long long)took, opt.read_timeout_ms);
        } else {
            hs.closed[h->kind]++;
            if (took < hs.half_close_min_ms)
                hs.half_close_min_ms = took;
            if (took > hs.half_close_max_ms)
                hs.half_close_max_ms = took;
        }
        break;
    }
    default:
        break;
    }
    hostile_end(h);
}

static void hostile_on_deadline(struct hostile *h)
{
    switch (h->kind) {
    case H_GARBAGE:
        violation("a garbage frame got neither a reply nor a close in %d ms", HOSTILE_MS);
        break;
    case H_OVERSIZE:
        violation("an oversized frame's connection was still open after %d ms (%d replies)",
                  HOSTILE_MS, h->replies);
        break;
    case H_HALF:
        violation("a connection stalled in mid-frame was still open %lld ms later "
                  "(read_timeout_ms %u)", (long long)(h->deadline_ms - h->started_ms),
                  opt.read_timeout_ms);
        break;
    default:
        break;
    }
    hostile_end(h);
}

/* ---- bursts past max_connections ------------------------------------------------ */

struct burst_conn {
    int fd;
    int state;                    /* 0 waiting, 1 answered, 2 refused */
    struct buf in;
};

static struct burst_conn burst[BURST_CONNS];
static int64_t burst_deadline_ms;
static struct {
    unsigned long bursts, answered, refused, max_answered;
} bs;

static void burst_start(int64_t now)
{
    Cqrs__Request req = CQRS__REQUEST__INIT;
    Cqrs__Control ctl = CQRS__CONTROL__INIT;
    ctl.op = CQRS__CONTROL__OP__STATUS;
    req.id = 1;
    req.body_case = CQRS__REQUEST__BODY_CONTROL;
    req.control = &ctl;
    struct buf out = { 0 };
    frame_request(&out, &req);
    for (int i = 0; i < BURST_CONNS; i++) {
        burst[i] = (struct burst_conn){ .fd = connect_to(sock_path, 1) };
        if (burst[i].fd < 0) {
            burst[i].state = 2;   /* not even connected: the backlog was full */
            continue;
        }
        if (send_small(burst[i].fd, out.p, out.len) < 0) {
            burst[i].state = 2;   /* closed already */
            close(burst[i].fd);
            burst[i].fd = -1;
        }
    }
    buf_free(&out);
    burst_active = 1;
    burst_deadline_ms = now + BURST_MS;
    bs.bursts++;
}

static void burst_on_readable(struct burst_conn *b)
{
    int rc = read_into(b->fd, &b->in);
    if (rc == 2)
        return;
    Cqrs__Reply *r;
    if (rc == 1) {
        if (next_reply(&b->in, &r) == 1) {
            b->state = r->status == CQRS__STATUS__OK ? 1 : 2;
            cqrs__reply__free_unpacked(r, NULL);
            /* it stays open until the burst ends: it holds its slot */
        }
        return;
    }
    b->state = 2;
    close(b->fd);
    b->fd = -1;
}

static void burst_finish(int64_t now)
{
    unsigned answered = 0, refused = 0, waiting = 0;
    for (int i = 0; i < BURST_CONNS; i++) {
        answered += burst[i].state == 1;
        refused += burst[i].state == 2;
        waiting += burst[i].state == 0;
        if (burst[i].fd >= 0)
            close(burst[i].fd);
        buf_free(&burst[i].in);
        burst[i].fd = -1;
    }
    unsigned room = opt.max_conn > opt.good ? opt.max_conn - opt.good : 0;
    if (waiting)
        violation("burst %lu: %u of %d connections got neither STATUS nor a close in %d ms",
                  bs.bursts, waiting, BURST_CONNS, BURST_MS);
    if (answered > room)
        violation("burst %lu: %u connections served beyond %u well-behaved ones, but "
                  "max_connections is %u", bs.bursts, answered, opt.good, opt.max_conn);
    if (opt.good + BURST_CONNS > opt.max_conn && refused == 0)
        violation("burst %lu: none of %d connections past max_connections was refused",
                  bs.bursts, BURST_CONNS);
    bs.answered += answered;
    bs.refused += refused;
    if (answered > bs.max_answered)
        bs.max_answered = answered;
    burst_active = 0;
    last_burst_end_ms = now;
}

/* ---- the run --------------------------------------------------------------------- */

enum { P_GOOD, P_HOSTILE, P_BURST };

static int run(struct good *goods, int64_t t_start)
{
    size_t nmax = opt.good + HOSTILE_MAX + BURST_CONNS;
    struct pollfd *pfd = calloc(nmax, sizeof *pfd);
    uint32_t *who = calloc(nmax, sizeof *who);   /* kind << 24 | index */
    if (!pfd || !who) {
        free(pfd);
        free(who);
        return -1;
    }
    int64_t end = t_start + (int64_t)opt.seconds * 1000, drain_end = end + DRAIN_MS;
    int64_t next_hostile = t_start, next_burst = t_start + BURST_FIRST_MS, last = t_start;
    double tokens = 0;
    unsigned long hostile_n = 0;
    for (;;) {
        /* one pass every 2 ms at most: events come in batches, and this
         * program stays a small part of a small machine */
        if (now_ms() - last < 2)
            sleep_ms(1);
        int64_t now = now_ms();
        int running = now < end;
        /* well-behaved: new requests (within the rate), retries, stuck ones */
        if (opt.rate) {
            tokens += (double)(now - last) * opt.rate / 1000.0;
            if (tokens > opt.rate / 10.0 + 1)
                tokens = opt.rate / 10.0 + 1;
        }
        last = now;
        int busy = 0;
        unsigned first = (unsigned)(rnd() % opt.good);   /* no client always first */
        for (unsigned k = 0; k < opt.good; k++) {
            unsigned i = (first + k) % opt.good;
            struct good *g = &goods[i];
            if (g->fd < 0)
                continue;
            if (g->inflight) {
                busy = 1;
                if (now - g->sent_ms > REPLY_TIMEOUT_MS) {
                    violation("good client %u: no reply in %d ms", i, REPLY_TIMEOUT_MS);
                    g->inflight = 0;
                    close(g->fd);
                    g->fd = -1;
                }
            } else if (g->retry) {
                busy = 1;
                if (now >= g->retry_at_ms)
                    good_send(g, i, now);
            } else if (running && (!opt.rate || tokens >= 1)) {
                tokens -= opt.rate ? 1 : 0;
                good_new_request(g, i, now);
                busy = 1;
            }
        }
        /* hostile ones */
        if (running) {
            while (now >= next_hostile) {
                next_hostile += 1000 / HOSTILE_PER_S;
                for (int i = 0; i < HOSTILE_MAX; i++) {
                    if (hostiles[i].fd < 0) {
                        hostile_launch(&hostiles[i], (enum hkind)(hostile_n++ % H_KINDS), now);
                        break;
                    }
                }
            }
            if (!burst_active && now >= next_burst && opt.max_conn) {
                burst_start(now);
                next_burst = now + BURST_EVERY_MS;
            }
        }
        int hostile_open = 0;
        for (int i = 0; i < HOSTILE_MAX; i++) {
            if (hostiles[i].fd >= 0 && now >= hostiles[i].deadline_ms)
                hostile_on_deadline(&hostiles[i]);
            hostile_open |= hostiles[i].fd >= 0;
        }
        if (burst_active) {
            int waiting = 0;
            for (int i = 0; i < BURST_CONNS; i++)
                waiting |= burst[i].state == 0;
            if (!waiting || now >= burst_deadline_ms)
                burst_finish(now);
        }
        if (!running && !busy && !hostile_open && !burst_active)
            break;
        if (now >= drain_end) {
            unsigned left = 0;
            for (unsigned i = 0; i < opt.good; i++)
                left += goods[i].fd >= 0 && (goods[i].inflight || goods[i].retry);
            if (left)
                violation("%u well-behaved requests still unanswered %d ms after the run", left,
                          DRAIN_MS);
            for (int i = 0; i < HOSTILE_MAX; i++)
                if (hostiles[i].fd >= 0)
                    hostile_on_deadline(&hostiles[i]);
            if (burst_active)
                burst_finish(now);
            break;
        }

        size_t n = 0;
        for (unsigned i = 0; i < opt.good; i++) {
            if (goods[i].fd < 0)
                continue;
            pfd[n] = (struct pollfd){ goods[i].fd, POLLIN | (goods[i].out.len ? POLLOUT : 0), 0 };
            who[n++] = (uint32_t)P_GOOD << 24 | i;
        }
        for (int i = 0; i < HOSTILE_MAX; i++) {
            if (hostiles[i].fd < 0)
                continue;
            pfd[n] = (struct pollfd){ hostiles[i].fd, POLLIN, 0 };
            who[n++] = (uint32_t)P_HOSTILE << 24 | (uint32_t)i;
        }
        for (int i = 0; burst_active && i < BURST_CONNS; i++) {
            if (burst[i].fd < 0)
                continue;
            pfd[n] = (struct pollfd){ burst[i].fd, POLLIN, 0 };
            who[n++] = (uint32_t)P_BURST << 24 | (uint32_t)i;
        }
        int rc = poll(pfd, n, 5);
        if (rc < 0 && errno != EINTR) {
            perror("cqrs-soak: poll");
            break;
        }
        now = now_ms();
        for (size_t k = 0; rc > 0 && k < n; k++) {
            if (!pfd[k].revents)
                continue;
            unsigned i = who[k] & 0xffffff;
            switch (who[k] >> 24) {
            case P_GOOD:
                if (pfd[k].revents & POLLOUT)
                    good_flush(&goods[i]);
                if (pfd[k].revents & (POLLIN | POLLHUP | POLLERR))
                    good_on_readable(&goods[i], i, now);
                break;
            case P_HOSTILE:
                if (hostiles[i].fd >= 0)
                    hostile_on_readable(&hostiles[i], now);
                break;
            default:
                if (burst[i].fd >= 0)
                    burst_on_readable(&burst[i]);
            }
        }
    }
    free(pfd);
    free(who);
    return 0;
}

/* ---- main --------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f, "usage: cqrs-soak [--spawn | --socket PATH] [--seconds N] [--good N] "
               "[--wallets N]\n"
               "                 [--rate N] [--max-connections N] [--read-timeout-ms N]\n"
               "                 [--max-rss-mb N] [--max-worker-rss-mb N] [--seed N] [--keep]\n");
}

static int parse_uint(const char *s, unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (!*s || *end || errno || v > 100000000ul)
        return -1;
    *out = (unsigned)v;
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option lopts[] = {
        { "spawn", no_argument, NULL, 'S' },
        { "socket", required_argument, NULL, 's' },
        { "seconds", required_argument, NULL, 't' },
        { "good", required_argument, NULL, 'g' },
        { "wallets", required_argument, NULL, 'w' },
        { "rate", required_argument, NULL, 'r' },
        { "max-connections", required_argument, NULL, 'm' },
        { "read-timeout-ms", required_argument, NULL, 'T' },
        { "max-rss-mb", required_argument, NULL, 'R' },
        { "max-worker-rss-mb", required_argument, NULL, 'W' },
        { "seed", required_argument, NULL, 'x' },
        { "keep", no_argument, NULL, 'k' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c, bad = 0;
    opt.seed = (unsigned long long)time(NULL) ^ ((unsigned long long)getpid() << 32);
    while ((c = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
        switch (c) {
        case 'S': opt.spawn = 1; break;
        case 's': opt.socket = optarg; break;
        case 't': bad |= parse_uint(optarg, &opt.seconds); break;
        case 'g': bad |= parse_uint(optarg, &opt.good); break;
        case 'w': bad |= parse_uint(optarg, &opt.wallets); break;
        case 'r': bad |= parse_uint(optarg, &opt.rate); break;
        case 'm': bad |= parse_uint(optarg, &opt.max_conn); break;
        case 'T': bad |= parse_uint(optarg, &opt.read_timeout_ms); break;
        case 'R': bad |= parse_uint(optarg, &opt.max_rss_mb); break;
        case 'W': bad |= parse_uint(optarg, &opt.max_worker_rss_mb); break;
        case 'x': opt.seed = strtoull(optarg, NULL, 0); break;
        case 'k': opt.keep = 1; break;
        case 'h': usage(stdout); return 0;
        default: bad = 1;
        }
    }
    if (bad || optind < argc || opt.spawn == !!opt.socket || !opt.good || !opt.wallets ||
        opt.good >= 0xffffff || !opt.read_timeout_ms) {
        usage(stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    rng_state = opt.seed * 0x9E3779B97F4A7C15ULL + 1;
    snprintf(prefix, sizeof prefix, "soak%08llx", (unsigned long long)(rnd() & 0xffffffffu));

    /* descriptors: every good client, hostile ones, a burst, and room */
    struct rlimit rl;
    rlim_t need = opt.good + HOSTILE_MAX + BURST_CONNS + 64;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < need) {
        rl.rlim_cur = rl.rlim_max < need ? rl.rlim_max : need;
        setrlimit(RLIMIT_NOFILE, &rl);
        if (rl.rlim_cur < need) {
            fprintf(stderr, "cqrs-soak: %llu descriptors allowed, %llu needed\n",
                    (unsigned long long)rl.rlim_cur, (unsigned long long)need);
            return 2;
        }
    }

    if (opt.spawn) {
        if (daemon_spawn() < 0) {
            daemon_stop();
            if (dir[0] && !opt.keep)
                nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
            return 2;
        }
    } else {
        snprintf(sock_path, sizeof sock_path, "%s", opt.socket);
    }
    printf("cqrs-soak: %s cqrsd on %s; %u s, %u well-behaved connections, %u wallets, "
           "rate %u/s%s, max_connections %u, read_timeout_ms %u, seed %llu\n",
           opt.spawn ? "spawned" : "existing", sock_path, opt.seconds, opt.good, opt.wallets,
           opt.rate, opt.rate ? "" : " (unlimited)", opt.max_conn, opt.read_timeout_ms, opt.seed);

    Wallet__TopUp t = WALLET__TOP_UP__INIT;
    t.amount = 1;
    topup_payload_len = wallet__top_up__pack(&t, topup_payload);
    initial_balance = calloc(opt.wallets, sizeof *initial_balance);
    initial_version = calloc(opt.wallets, sizeof *initial_version);
    ok_topups = calloc(opt.wallets, sizeof *ok_topups);
    struct good *goods = calloc(opt.good, sizeof *goods);
    struct child kids0[MAX_CHILDREN], kids1[MAX_CHILDREN];
    size_t nkids0 = 0, nkids1 = 0;
    int setup_failed = 0;
    if (!initial_balance || !initial_version || !ok_topups || !goods) {
        fprintf(stderr, "cqrs-soak: out of memory\n");
        setup_failed = 1;
    }
    for (int i = 0; i < HOSTILE_MAX; i++)
        hostiles[i].fd = -1;

    /* before: cqrsd's pid and descriptors, the workers, the wallets */
    pid_t dpid = setup_failed ? -1 : peer_pid(sock_path);
    if (dpid <= 0 && !setup_failed) {
        fprintf(stderr, "cqrs-soak: cannot reach cqrsd on %s: %s\n", sock_path, strerror(errno));
        setup_failed = 1;
    }
    if (!setup_failed && status_children(kids0, &nkids0) < 0) {
        fprintf(stderr, "cqrs-soak: STATUS failed\n");
        setup_failed = 1;
    }
    struct cqrs_client *cl = setup_failed ? NULL : cqrs_client_connect(sock_path);
    for (unsigned w = 0; cl && w < opt.wallets; w++) {
        if (wallet_state(cl, w, &initial_balance[w], &initial_version[w]) < 0) {
            fprintf(stderr, "cqrs-soak: cannot read the state of wallet %u\n", w);
            setup_failed = 1;
            break;
        }
    }
    if (cl)
        cqrs_client_free(cl);
    else
        setup_failed = 1;
    sleep_ms(300);   /* cqrsd has closed those connections */
    int fd_base = setup_failed ? -1 : count_fds(dpid);
    long rss0, hwm0;
    rss_kb(dpid, &rss0, &hwm0);
    double cpu0[MAX_CHILDREN + 2];
    cpu0[0] = cpu_s(dpid);
    cpu0[1] = cpu_s(getpid());
    for (size_t i = 0; i < nkids0; i++)
        cpu0[i + 2] = cpu_s(kids0[i].pid);

    unsigned connected = 0;
    for (; !setup_failed && connected < opt.good; connected++) {
        goods[connected].fd = connect_to(sock_path, 1);
        if (goods[connected].fd < 0) {
            fprintf(stderr, "cqrs-soak: well-behaved connection %u: %s\n", connected,
                    strerror(errno));
            setup_failed = 1;
            break;
        }
    }
    int64_t t0 = now_ms();
    if (!setup_failed)
        run(goods, t0);
    int64_t t1 = now_ms();
    double secs = (double)(t1 - t0) / 1000.0;

    /* the wallets: balance and version == OK TopUps */
    unsigned long wallets_bad = 0, wallets_used = 0;
    cl = setup_failed ? NULL : cqrs_client_connect(sock_path);
    for (unsigned w = 0; cl && w < opt.wallets; w++) {
        int64_t bal;
        uint64_t ver;
        wallets_used += ok_topups[w] > 0;
        if (wallet_state(cl, w, &bal, &ver) < 0) {
            violation("cannot read the state of wallet %u after the run", w);
            wallets_bad++;
            continue;
        }
        if (bal - initial_balance[w] != (int64_t)ok_topups[w] ||
            ver - initial_version[w] != ok_topups[w]) {
            if (++wallets_bad <= 10)
                violation("wallet %s-w%u: balance %lld and version %llu after the run, %lld and "
                          "%llu before, %lu OK TopUps sent", prefix, w, (long long)bal,
                          (unsigned long long)ver, (long long)initial_balance[w],
                          (unsigned long long)initial_version[w], ok_topups[w]);
        }
    }
    /* online VERIFY of every type */
    unsigned long problems = 0;
    if (cl && status_children(kids1, &nkids1) == 0) {
        for (size_t i = 0; i < nkids1; i++) {
            Cqrs__Request req = CQRS__REQUEST__INIT;
            Cqrs__Query q = CQRS__QUERY__INIT;
            q.aggregate_type = kids1[i].name;
            q.aggregate_id = "";
            q.kind = CQRS__QUERY__KIND__VERIFY;
            req.body_case = CQRS__REQUEST__BODY_QUERY;
            req.query = &q;
            Cqrs__Reply *r = NULL;
            if (cqrs_client_call(cl, &req, &r) < 0 || r->status != CQRS__STATUS__OK) {
                violation("VERIFY %s: %s", kids1[i].name,
                          r ? cqrs_status_name(r->status) : strerror(errno));
            } else {
                problems += r->n_problems;
                for (size_t k = 0; k < r->n_problems && k < 5; k++)
                    violation("VERIFY %s: %s", kids1[i].name, r->problems[k]);
            }
            if (r)
                cqrs__reply__free_unpacked(r, NULL);
        }
        for (size_t i = 0; i < nkids1; i++) {
            for (size_t j = 0; j < nkids0; j++) {
                if (strcmp(kids0[j].name, kids1[i].name) == 0 &&
                    (kids1[i].restarts != kids0[j].restarts || kids1[i].pid != kids0[j].pid))
                    violation("child %s restarted during the soak (pid %d -> %d, restarts %u -> "
                              "%u, last exit \"%s\")", kids1[i].name, (int)kids0[j].pid,
                              (int)kids1[i].pid, kids0[j].restarts, kids1[i].restarts,
                              kids1[i].last_exit);
            }
        }
    } else if (!setup_failed) {
        violation("STATUS failed after the run");
    }
    if (cl)
        cqrs_client_free(cl);

    /* memory, at its fullest: before the clients go */
    long rss1 = -1, hwm1 = -1;
    if (!setup_failed)
        rss_kb(dpid, &rss1, &hwm1);
    long wrss[MAX_CHILDREN], whwm[MAX_CHILDREN];
    for (size_t i = 0; i < nkids1; i++)
        rss_kb(kids1[i].pid, &wrss[i], &whwm[i]);
    long self_rss, self_hwm;
    rss_kb(getpid(), &self_rss, &self_hwm);
    double cpu_d = setup_failed ? -1 : cpu_s(dpid) - cpu0[0], cpu_self = cpu_s(getpid()) - cpu0[1];
    double cpu_w[MAX_CHILDREN];
    for (size_t i = 0; i < nkids1; i++) {
        cpu_w[i] = -1;
        for (size_t j = 0; j < nkids0; j++)
            if (kids0[j].pid == kids1[i].pid)
                cpu_w[i] = cpu_s(kids1[i].pid) - cpu0[j + 2];
    }

    /* every client goes: cqrsd's descriptors come back */
    for (unsigned i = 0; i < connected; i++) {
        if (goods[i].fd >= 0)
            close(goods[i].fd);
        buf_free(&goods[i].in);
        buf_free(&goods[i].out);
    }
    int fd_after = -1;
    if (!setup_failed) {
        int64_t deadline = now_ms() + 10000;
        while ((fd_after = count_fds(dpid)) > fd_base + FD_SLACK && now_ms() < deadline)
            sleep_ms(50);
    }

    /* figures */
    if (!setup_failed) {
        printf("cqrs-soak: %.1f s: %lu requests sent, %lu replies; %lu TopUps OK (%.0f/s), %lu "
               "STATE (%.0f/s), %lu retried (UNAVAILABLE/BUSY), %lu STATE UNAVAILABLE; "
               "latency mean %.1f ms, max %lld ms\n",
               secs, gs.sent, gs.replies, gs.topup_ok, gs.topup_ok / secs, gs.state_ok,
               gs.state_ok / secs, gs.retried, gs.state_unavailable,
               gs.replies ? gs.lat_sum_ms / (double)gs.replies : 0.0, (long long)gs.lat_max_ms);
        printf("cqrs-soak: %lu of %u wallets topped up; %lu wallets wrong\n", wallets_used,
               opt.wallets, wallets_bad);
        for (int k = 0; k < H_KINDS; k++)
            printf("cqrs-soak: hostile %-10s %6lu launched, %6lu answered, %6lu closed by cqrsd "
                   "or by themselves as planned, %6lu refused (max_connections)\n",
                   hkind_name[k], hs.launched[k], hs.replied[k], hs.closed[k], hs.refused[k]);
        if (hs.closed[H_HALF])
            printf("cqrs-soak: half frames closed after %lld..%lld ms (read_timeout_ms %u)\n",
                   (long long)hs.half_close_min_ms, (long long)hs.half_close_max_ms,
                   opt.read_timeout_ms);
        printf("cqrs-soak: %lu bursts of %d connections past max_connections: %lu answered (at "
               "most %lu in one, room %u), %lu refused; %lu hostile connects failed\n",
               bs.bursts, BURST_CONNS, bs.answered, bs.max_answered,
               opt.max_conn > opt.good ? opt.max_conn - opt.good : 0, bs.refused,
               hs.connect_failed);
        printf("cqrs-soak: cqrsd (pid %d) descriptors: %d before, %d after every client closed "
               "(allowed +-%d)\n", (int)dpid, fd_base, fd_after, FD_SLACK);
        printf("cqrs-soak: cqrsd RSS %ld kB before, %ld kB after (peak %ld kB); bound %u MB\n",
               rss0, rss1, hwm1, opt.max_rss_mb);
        for (size_t i = 0; i < nkids1; i++)
            printf("cqrs-soak: worker %s (pid %d) RSS %ld kB (peak %ld kB); bound %u MB\n",
                   kids1[i].name, (int)kids1[i].pid, wrss[i], whwm[i], opt.max_worker_rss_mb);
        printf("cqrs-soak: this program's RSS %ld kB (peak %ld kB)\n", self_rss, self_hwm);
        printf("cqrs-soak: CPU over the run: cqrsd %.1f s, this program %.1f s", cpu_d, cpu_self);
        for (size_t i = 0; i < nkids1; i++)
            printf(", %s worker %.1f s", kids1[i].name, cpu_w[i]);
        printf(" (%.1f s of wall time)\n", secs);
        printf("cqrs-soak: VERIFY (online): %lu problems\n", problems);

        if (gs.topup_ok == 0)
            violation("no TopUp succeeded");
        if (fd_base < 0 || fd_after < 0)
            violation("cannot count cqrsd's descriptors in /proc/%d/fd", (int)dpid);
        else if (fd_after > fd_base + FD_SLACK || fd_after < fd_base - FD_SLACK)
            violation("cqrsd has %d descriptors open after the run, %d before", fd_after, fd_base);
        if (rss1 < 0 || hwm1 > (long)opt.max_rss_mb * 1024)
            violation("cqrsd's peak RSS %ld kB is over %u MB (or unreadable)", hwm1,
                      opt.max_rss_mb);
        for (size_t i = 0; i < nkids1; i++)
            if (wrss[i] < 0 || whwm[i] > (long)opt.max_worker_rss_mb * 1024)
                violation("worker %s's peak RSS %ld kB is over %u MB (or unreadable)",
                          kids1[i].name, whwm[i], opt.max_worker_rss_mb);
        for (int k = 0; k < H_KINDS; k++)
            if (opt.seconds >= 5 && hs.launched[k] == 0)
                violation("no hostile client of kind %s ran", hkind_name[k]);
        if (opt.seconds >= 5 && bs.bursts == 0)
            violation("no burst past max_connections ran");
    }

    /* the spawned daemon: a clean stop, a clean log, clean logs on disk */
    if (opt.spawn) {
        if (!setup_failed && kill(spawned, 0) != 0)
            violation("cqrsd is gone");
        int status = daemon_stop();
        if (!setup_failed) {
            if (status < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
                violation("cqrsd did not exit 0 on SIGTERM (wait status %d)", status);
            char *log = slurp(log_path);
            if (!log || strstr(log, "Sanitizer") || strstr(log, "runtime error:"))
                violation("cqrsd's log holds a sanitizer report (or cannot be read)");
            if (log) {
                unsigned long refused = 0, incomplete = 0;
                for (const char *p = log; (p = strstr(p, "max_connections (")); p++)
                    refused++;
                for (const char *p = log; (p = strstr(p, "still incomplete")); p++)
                    incomplete++;
                printf("cqrs-soak: cqrsd's log: %lu connections refused at max_connections, %lu "
                       "closed with a frame incomplete\n", refused, incomplete);
            }
            free(log);
            int rc = offline_verify();
            printf("cqrs-soak: cqrsd --verify --data-dir %s: exit %d\n", data_dir, rc);
            if (rc != 0)
                violation("cqrsd --verify exited %d (its output is in the log)", rc);
        }
        if (violations || setup_failed)
            show_log_tail();
        if (opt.keep)
            printf("cqrs-soak: kept %s\n", dir);
        else if (dir[0])
            nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    }
    free(goods);
    free(initial_balance);
    free(initial_version);
    free(ok_topups);
    if (setup_failed) {
        printf("cqrs-soak: could not set the run up\n");
        return 2;
    }
    printf("cqrs-soak: %s: %lu violations\n", violations ? "FAILED" : "passed", violations);
    return violations ? 1 : 0;
}
