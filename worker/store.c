/* store — see store.h. */
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uthash.h>

#include "aggregate.h"
#include "durable.h"
#include "evlog.h"
#include "journal.h"
#include "layout.h"
#include "log.h"

struct strset {                 /* a set of paths */
    char *s;
    UT_hash_handle hh;
};

/* One checkpoint's syncs, done by the background thread. */
struct store_job {
    char **paths;               /* stream files, then folders */
    size_t n_files, n;
    uint64_t position;          /* covered once every sync succeeded */
    int failed;                 /* errno of the first failure */
    char *failed_path;
};

/* After a recovery, the first checkpoint comes this soon (unless checkpoint_ms
 * is sooner still). */
#define STORE_RECOVERED_CHECKPOINT_MS 100

struct store {
    struct event_base *base;
    char *type_dir;
    char *journal_dir;
    struct store_options opt;
    struct journal *journal;
    uint64_t next_position;
    uint8_t *staged;
    size_t staged_len, staged_cap;
    uint64_t staged_first;
    size_t committed_len;       /* the last batch committed: staged[0, committed_len) */
    int journal_unsynced;       /* fsync = batch: appended since the last sync */
    struct store_stats stats;
    struct strset *unsynced;    /* stream files written since the last checkpoint */
    uint64_t epoch;             /* store_epoch: bumped when `unsynced` is handed over */
    struct strset *new_dirs;    /* folders whose entries changed since then */
    int repair, force_repair;
    struct event *checkpoint_timer, *batch_timer, *job_done;
    struct event *recovered_timer;   /* the first checkpoint after a recovery */
    pthread_t thread;
    int thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct store_job *job;      /* handed to the thread */
    struct store_job *done;     /* handed back, announced through the pipe */
    int job_running;
    int quit;
    int pipe[2];
};

/* ---- small helpers ----------------------------------------------------------- */

static void strset_add(struct strset **set, const char *s)
{
    struct strset *e;
    HASH_FIND_STR(*set, s, e);
    if (e)
        return;
    e = malloc(sizeof *e);
    if (!e || !(e->s = strdup(s))) {
        free(e);
        return;   /* the next forced repair syncs everything anyway */
    }
    HASH_ADD_KEYPTR(hh, *set, e->s, strlen(e->s), e);
}

static void strset_clear(struct strset **set)
{
    struct strset *e, *tmp;
    HASH_ITER(hh, *set, e, tmp) {
        HASH_DEL(*set, e);
        free(e->s);
        free(e);
    }
}


static void store_parent(const char *path, char *buf, size_t len)
{
    snprintf(buf, len, "%s", path);
    char *slash = strrchr(buf, '/');
    if (slash)
        *slash = '\0';
}

/* Makes `dir` exist; records it (and its parent's entry) for the checkpoint. */
static int store_make_dir(struct store *st, const char *dir)
{
    if (mkdir(dir, 0700) == 0) {
        char parent[PATH_MAX];
        store_parent(dir, parent, sizeof parent);
        strset_add(&st->new_dirs, parent);
        return 0;
    }
    return errno == EEXIST ? 0 : -1;
}

/* ---- recovery -------------------------------------------------------------------- */

struct rfile {
    char *path;
    int fd;
    off_t end;
    UT_hash_handle hh;
};

struct repair {
    struct store *st;
    struct rfile *files;
    uint64_t records, rewritten;
    int force;
    int failed;
    char *err;
    size_t errlen;
};

static struct rfile *repair_file(struct repair *r, const char *id)
{
    char path[PATH_MAX], dir[PATH_MAX];
    layout_stream_file(path, sizeof path, r->st->type_dir, id, ".log");
    struct rfile *f;
    HASH_FIND_STR(r->files, path, f);
    if (f)
        return f;
    layout_shard_dir(dir, sizeof dir, r->st->type_dir, id);
    if (store_make_dir(r->st, dir) < 0)
        return NULL;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return NULL;
    struct stat sb;
    if (fstat(fd, &sb) < 0 || (sb.st_size < EVLOG_MAGIC_LEN &&
        pwrite(fd, EVLOG_MAGIC, EVLOG_MAGIC_LEN, 0) != EVLOG_MAGIC_LEN)) {
        close(fd);
        return NULL;
    }
    if (sb.st_size < EVLOG_MAGIC_LEN)
        strset_add(&r->st->new_dirs, dir);
    f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    f->fd = fd;
    f->end = EVLOG_MAGIC_LEN;
    HASH_ADD_KEYPTR(hh, r->files, f->path, strlen(f->path), f);
    return f;
}

static int repair_record(void *arg, const Cqrs__EventRecord *rec, const uint8_t *buf, size_t len)
{
    struct repair *r = arg;
    if (agg_id_valid(rec->stream, strlen(rec->stream)) < 0 || rec->stream_offset < EVLOG_MAGIC_LEN) {
        snprintf(r->err, r->errlen, "journal event %llu names no valid stream or offset",
                 (unsigned long long)rec->position);
        r->failed = 1;
        return -1;
    }
    struct rfile *f = repair_file(r, rec->stream);
    if (!f) {
        snprintf(r->err, r->errlen, "cannot open the log of %s: %s", rec->stream, strerror(errno));
        r->failed = 1;
        return -1;
    }
    uint8_t stack[512];
    off_t off = (off_t)rec->stream_offset;
    uint8_t *have = len <= sizeof stack ? stack : malloc(len);
    ssize_t got = have ? pread(f->fd, have, len, off) : -1;
    int same = !r->force && got == (ssize_t)len && memcmp(have, buf, len) == 0;
    if (have != stack)
        free(have);
    int rc = 0;
    if (!same) {
        for (size_t done = 0; done < len;) {   /* a nearly full disk writes short */
            ssize_t w = pwrite(f->fd, buf + done, len - done, off + (off_t)done);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                snprintf(r->err, r->errlen, "cannot write the log of %s: %s", rec->stream,
                         strerror(w < 0 ? errno : ENOSPC));
                r->failed = 1;
                rc = -1;
                break;
            }
            done += (size_t)w;
        }
        r->rewritten++;
    }
    if (off + (off_t)len > f->end)
        f->end = off + (off_t)len;
    r->records++;
    return rc;
}

/* Writes every journal event after the checkpoint into its stream file and
 * cuts each file after its last journaled record. Nothing is synced here:
 * the files join those the next checkpoint syncs, so a restart does not
 * wait for the disk. See store.h. */
static int store_repair(struct store *st, int force, char *err, size_t errlen)
{
    struct repair r = { .st = st, .force = force, .err = err, .errlen = errlen };
    uint64_t from = journal_checkpointed(st->journal);
    int rc = journal_replay(st->journal, from, repair_record, &r);
    if (rc != 0 && !r.failed)
        snprintf(err, errlen, "cannot read the journal: %s",
                 rc == EVLOG_CORRUPT ? "it is corrupt" : strerror(errno));
    struct rfile *f, *tmp;
    HASH_ITER(hh, r.files, f, tmp) {
        struct stat sb;
        if (rc == 0 && fstat(f->fd, &sb) == 0 && sb.st_size > f->end &&
            ftruncate(f->fd, f->end) < 0) {   /* nothing after the last journaled record */
            snprintf(err, errlen, "cannot cut %s: %s", f->path, strerror(errno));
            rc = -1;
        }
        if (rc == 0)
            strset_add(&st->unsynced, f->path);   /* the next checkpoint syncs it */
        HASH_DEL(r.files, f);
        close(f->fd);
        free(f->path);
        free(f);
    }
    if (rc == 0 && r.records)
        log_info("recovery: %llu journal events after position %llu checked, %llu written "
                 "again into their stream files", (unsigned long long)r.records,
                 (unsigned long long)from, (unsigned long long)r.rewritten);
    return rc;
}

int store_ensure_repaired(struct store *st, char *err, size_t errlen)
{
    if (!st->repair)
        return 0;
    if (st->job_running) {
        snprintf(err, errlen, "the stream files are being repaired from the journal");
        return -1;
    }
    if (store_repair(st, st->force_repair, err, errlen) < 0)
        return -1;
    st->repair = st->force_repair = 0;
    return 0;
}

/* ---- checkpoints ------------------------------------------------------------------ */

static void store_job_free(struct store_job *job)
{
    if (!job)
        return;
    for (size_t i = 0; i < job->n; i++)
        free(job->paths[i]);
    free(job->paths);
    free(job->failed_path);
    free(job);
}

static void *store_thread(void *arg)
{
    struct store *st = arg;
    pthread_mutex_lock(&st->mu);
    for (;;) {
        while (!st->job && !st->quit)
            pthread_cond_wait(&st->cv, &st->mu);
        if (!st->job)
            break;   /* quit, and nothing left to do */
        struct store_job *job = st->job;
        pthread_mutex_unlock(&st->mu);
        int sync = st->opt.fsync != STORE_FSYNC_NEVER;
        for (size_t i = 0; sync && i < job->n && !job->failed; i++) {
            if ((i >= job->n_files ? durable_sync_dir(job->paths[i]) : durable_sync_file(job->paths[i])) < 0) {
                job->failed = errno ? errno : EIO;
                job->failed_path = strdup(job->paths[i]);
            }
        }
        pthread_mutex_lock(&st->mu);
        st->job = NULL;
        st->done = job;
        char done = 1;
        ssize_t w = write(st->pipe[1], &done, 1);
        (void)w;
    }
    pthread_mutex_unlock(&st->mu);
    return NULL;
}

static void store_on_job_done(evutil_socket_t fd, short what, void *arg)
{
    struct store *st = arg;
    (void)what;
    char b[16];
    while (read(fd, b, sizeof b) > 0)
        ;
    pthread_mutex_lock(&st->mu);
    struct store_job *job = st->done;
    st->done = NULL;
    if (job)
        st->job_running = 0;
    pthread_mutex_unlock(&st->mu);
    if (!job)
        return;
    if (job->failed) {
        log_error("checkpoint: cannot sync %s: %s; the journal keeps those events and they are "
                  "written again into the stream files", job->failed_path ? job->failed_path : "?",
                  strerror(job->failed));
        st->repair = st->force_repair = 1;   /* those pages cannot be trusted */
    } else if (journal_checkpoint(st->journal, job->position) < 0) {
        log_error("checkpoint: cannot write the checkpoint record: %s", strerror(errno));
    } else {
        int n = journal_gc(st->journal, st->opt.retention_bytes, st->opt.retention_s);
        if (n)
            log_debug("checkpoint at %llu: %d journal segments deleted",
                      (unsigned long long)job->position, n);
    }
    store_job_free(job);
}

static void store_on_checkpoint_timer(evutil_socket_t fd, short what, void *arg)
{
    struct store *st = arg;
    (void)fd;
    (void)what;
    uint64_t last = journal_last(st->journal);
    if (st->job_running || st->repair || last <= journal_checkpointed(st->journal) ||
        st->staged_len)
        return;
    struct store_job *job = calloc(1, sizeof *job);
    size_t n = HASH_COUNT(st->unsynced) + HASH_COUNT(st->new_dirs);
    if (!job || !(job->paths = calloc(n ? n : 1, sizeof *job->paths))) {
        free(job);
        return;
    }
    struct strset *e, *tmp;
    HASH_ITER(hh, st->unsynced, e, tmp) {
        HASH_DEL(st->unsynced, e);
        job->paths[job->n++] = e->s;
        free(e);
    }
    job->n_files = job->n;
    st->epoch++;   /* later writes must be listed again */
    HASH_ITER(hh, st->new_dirs, e, tmp) {
        HASH_DEL(st->new_dirs, e);
        job->paths[job->n++] = e->s;
        free(e);
    }
    job->position = last;
    pthread_mutex_lock(&st->mu);
    st->job = job;
    st->job_running = 1;
    pthread_cond_broadcast(&st->cv);
    pthread_mutex_unlock(&st->mu);
}

static void store_on_batch_timer(evutil_socket_t fd, short what, void *arg)
{
    struct store *st = arg;
    (void)fd;
    (void)what;
    if (!st->journal_unsynced)
        return;
    st->journal_unsynced = 0;
    st->stats.journal_syncs++;
    if (journal_sync(st->journal) < 0)
        log_error("cannot sync the journal: %s; events acknowledged in the last %u ms may be lost "
                  "in a power cut", strerror(errno), st->opt.batch_interval_ms);
}

/* ---- files left by the first layout (no shard folders) -------------------------- */

static int store_migrate_flat(struct store *st)
{
    DIR *d = opendir(st->type_dir);
    if (!d)
        return -1;
    struct dirent *e;
    int moved = 0, rc = 0;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len < 5 || strcmp(e->d_name + len - 4, ".log") != 0 || e->d_type == DT_DIR)
            continue;
        char id[AGG_ID_MAX + 1], from[PATH_MAX], to[PATH_MAX], dir[PATH_MAX];
        if (len - 4 > AGG_ID_MAX)
            continue;
        memcpy(id, e->d_name, len - 4);
        id[len - 4] = '\0';
        if (agg_id_valid(id, len - 4) < 0)
            continue;
        snprintf(from, sizeof from, "%s/%s", st->type_dir, e->d_name);
        layout_shard_dir(dir, sizeof dir, st->type_dir, id);
        layout_stream_file(to, sizeof to, st->type_dir, id, ".log");
        if (store_make_dir(st, dir) < 0 || rename(from, to) < 0) {
            rc = -1;
            break;
        }
        strset_add(&st->new_dirs, dir);
        strset_add(&st->new_dirs, st->type_dir);
        moved++;
    }
    closedir(d);
    if (moved)
        log_info("moved %d stream logs into shard folders", moved);
    return rc;
}

/* ---- the API ---------------------------------------------------------------------- */

struct store *store_open(struct event_base *base, const char *type_dir,
                         const struct store_options *opt, char *err, size_t errlen)
{
    struct store *st = calloc(1, sizeof *st);
    if (!st) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    st->base = base;
    st->opt = *opt;
    st->pipe[0] = st->pipe[1] = -1;
    st->epoch = 1;
    pthread_mutex_init(&st->mu, NULL);
    pthread_cond_init(&st->cv, NULL);
    if (!(st->type_dir = strdup(type_dir)) || asprintf(&st->journal_dir, "%s/%s", type_dir,
                                                          LAYOUT_JOURNAL) < 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (store_migrate_flat(st) < 0) {
        snprintf(err, errlen, "cannot move old stream logs into shard folders: %s", strerror(errno));
        goto fail;
    }
    struct journal_info ji;
    char jerr[300];
    int rc = journal_open(st->journal_dir, opt->segment_bytes, &st->journal, &ji, jerr, sizeof jerr);
    if (rc != 0) {
        snprintf(err, errlen, "journal %s: %s", st->journal_dir,
                 rc == EVLOG_CORRUPT ? jerr : strerror(errno));
        goto fail;
    }
    if (ji.truncated_bytes)
        log_warn("journal: cut a torn tail of %lld bytes (a batch that was never acknowledged)",
                 (long long)ji.truncated_bytes);
    st->next_position = ji.last_position + 1;
    if (store_repair(st, 0, err, errlen) < 0)
        goto fail;
    if (pipe2(st->pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        goto fail;
    }
    st->job_done = event_new(base, st->pipe[0], EV_READ | EV_PERSIST, store_on_job_done, st);
    st->checkpoint_timer = event_new(base, -1, EV_PERSIST, store_on_checkpoint_timer, st);
    st->batch_timer = event_new(base, -1, EV_PERSIST, store_on_batch_timer, st);
    if (!st->job_done || !st->checkpoint_timer || !st->batch_timer ||
        pthread_create(&st->thread, NULL, store_thread, st) != 0) {
        snprintf(err, errlen, "cannot start the checkpoint thread");
        goto fail;
    }
    st->thread_started = 1;
    event_add(st->job_done, NULL);
    struct timeval tv = { opt->checkpoint_ms / 1000, (opt->checkpoint_ms % 1000) * 1000 };
    event_add(st->checkpoint_timer, &tv);
    if (ji.unchecked) {
        /* the recovery is checkpointed soon, not checkpoint_ms later, so that
         * a crash loop does not check the same journal at every start; not
         * at once: its syncs would hold up the first commands' */
        struct timeval soon = { 0, STORE_RECOVERED_CHECKPOINT_MS * 1000 };
        if (opt->checkpoint_ms > STORE_RECOVERED_CHECKPOINT_MS &&
            (st->recovered_timer = evtimer_new(base, store_on_checkpoint_timer, st)) != NULL)
            evtimer_add(st->recovered_timer, &soon);
    }
    if (opt->fsync == STORE_FSYNC_BATCH) {
        struct timeval bt = { opt->batch_interval_ms / 1000, (opt->batch_interval_ms % 1000) * 1000 };
        event_add(st->batch_timer, &bt);
    }
    return st;
fail:
    store_free(st);
    return NULL;
}

void store_free(struct store *st)
{
    if (!st)
        return;
    if (st->thread_started) {
        pthread_mutex_lock(&st->mu);
        st->quit = 1;
        pthread_cond_broadcast(&st->cv);
        pthread_mutex_unlock(&st->mu);
        pthread_join(st->thread, NULL);
    }
    store_job_free(st->job);
    store_job_free(st->done);
    if (st->job_done)
        event_free(st->job_done);
    if (st->checkpoint_timer)
        event_free(st->checkpoint_timer);
    if (st->recovered_timer)
        event_free(st->recovered_timer);
    if (st->batch_timer)
        event_free(st->batch_timer);
    if (st->pipe[0] >= 0)
        close(st->pipe[0]);
    if (st->pipe[1] >= 0)
        close(st->pipe[1]);
    if (st->journal && st->journal_unsynced)
        journal_sync(st->journal);
    journal_free(st->journal);
    strset_clear(&st->unsynced);
    strset_clear(&st->new_dirs);
    pthread_mutex_destroy(&st->mu);
    pthread_cond_destroy(&st->cv);
    free(st->staged);
    free(st->type_dir);
    free(st->journal_dir);
    free(st);
}

uint64_t store_epoch(const struct store *st)
{
    return st->epoch;
}

uint64_t store_next_position(const struct store *st)
{
    return st->next_position;
}

int store_stage(struct store *st, const uint8_t *rec, size_t len)
{
    if (st->staged_len + len > st->staged_cap) {
        size_t ncap = st->staged_cap ? st->staged_cap : 4096;
        while (ncap < st->staged_len + len)
            ncap *= 2;
        uint8_t *n = realloc(st->staged, ncap);
        if (!n) {
            errno = ENOMEM;
            return -1;
        }
        st->staged = n;
        st->staged_cap = ncap;
    }
    if (!st->staged_len) {
        st->staged_first = st->next_position;
        st->committed_len = 0;
    }
    memcpy(st->staged + st->staged_len, rec, len);
    st->staged_len += len;
    st->next_position++;
    return 0;
}

int store_commit(struct store *st)
{
    if (!st->staged_len)
        return 0;
    int rc = journal_append(st->journal, st->staged, st->staged_len, st->next_position - 1,
                            st->opt.fsync == STORE_FSYNC_ALWAYS);
    if (rc < 0) {
        st->next_position = st->staged_first;   /* those positions were never used */
    } else {
        st->committed_len = st->staged_len;
        st->stats.batches++;
        st->stats.events += st->next_position - st->staged_first;
        if (st->opt.fsync == STORE_FSYNC_ALWAYS)
            st->stats.journal_syncs++;
        else if (st->opt.fsync == STORE_FSYNC_BATCH)
            st->journal_unsynced = 1;
    }
    st->staged_len = 0;
    return rc;
}

void store_written(struct store *st, const char *path, int new_file)
{
    strset_add(&st->unsynced, path);
    if (new_file) {
        char dir[PATH_MAX];
        store_parent(path, dir, sizeof dir);
        strset_add(&st->new_dirs, dir);
    }
}

void store_get_stats(const struct store *st, struct store_stats *out)
{
    *out = st->stats;
    out->position = journal_last(st->journal);
    out->checkpoint = journal_checkpointed(st->journal);
}

void store_write_failed(struct store *st)
{
    st->repair = 1;
}

const uint8_t *store_committed(const struct store *st, size_t *len)
{
    *len = st->committed_len;
    return st->staged;
}

uint64_t store_position(const struct store *st)
{
    return journal_last(st->journal);
}
