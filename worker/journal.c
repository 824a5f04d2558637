/* journal — see journal.h. */
#include "journal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "durable.h"
#include "crc32c.h"
#include "evlog.h"
#include "frame.h"

struct segment {
    uint64_t first;        /* position its name promises for its first event */
    char *path;
    off_t size;
    time_t mtime;
};

struct journal {
    char *dir;
    int lock_fd;           /* flock'ed: one process per journal */
    off_t segment_bytes;
    struct segment *segs;
    size_t n, cap;
    struct evlog *cur;     /* the last segment, open for appends */
    uint64_t last;         /* position of the last event */
    uint64_t checkpoint;
    int roll;              /* start a new segment before the next append */
};


/* journal/checkpoint: a hint (8-byte big-endian position + CRC32C of it)
 * written after each synced checkpoint record, so opening scans only the
 * segments that may hold later events. Never ahead of the journal; missing
 * or damaged, it only costs a full scan. */
#define JOURNAL_HINT "checkpoint"

static uint64_t journal_read_hint(const char *dir)
{
    char path[PATH_MAX];
    uint8_t b[12];
    snprintf(path, sizeof path, "%s/%s", dir, JOURNAL_HINT);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, b, sizeof b);
    close(fd);
    if (n != (ssize_t)sizeof b || crc32c(0, b, 8) != frame_get32(b + 8))
        return 0;
    return frame_get64(b);
}

static void journal_write_hint(const struct journal *j, uint64_t position)
{
    char path[PATH_MAX], tmp[PATH_MAX + 8];
    uint8_t b[12];
    frame_set64(b, position);
    frame_set32(b + 8, crc32c(0, b, 8));
    snprintf(path, sizeof path, "%s/%s", j->dir, JOURNAL_HINT);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    int ok = write(fd, b, sizeof b) == (ssize_t)sizeof b;
    close(fd);
    if (!ok || rename(tmp, path) < 0)
        unlink(tmp);
}

static int journal_cmp(const void *a, const void *b)
{
    const struct segment *x = a, *y = b;
    return x->first < y->first ? -1 : x->first > y->first;
}

static int journal_add_segment(struct journal *j, uint64_t first, const char *path, off_t size,
                               time_t mtime)
{
    if (j->n == j->cap) {
        size_t ncap = j->cap ? j->cap * 2 : 16;
        struct segment *n = realloc(j->segs, ncap * sizeof *n);
        if (!n)
            return -1;
        j->segs = n;
        j->cap = ncap;
    }
    char *p = strdup(path);
    if (!p)
        return -1;
    j->segs[j->n++] = (struct segment){ first, p, size, mtime };
    return 0;
}

struct journal_scan {
    struct journal *j;
    const struct segment *seg;
    int first_of_segment;
    char *err;
    size_t errlen;
};

static int journal_scan_record(void *arg, const Cqrs__EventRecord *rec, off_t offset, size_t size)
{
    struct journal_scan *sc = arg;
    (void)size;
    if (strcmp(rec->type, JOURNAL_CHECKPOINT) == 0) {
        if (rec->version > sc->j->checkpoint)
            sc->j->checkpoint = rec->version;
        return 0;
    }
    uint64_t want = sc->j->last ? sc->j->last + 1 : sc->seg->first;
    if (rec->position != want || (sc->first_of_segment && rec->position != sc->seg->first)) {
        snprintf(sc->err, sc->errlen, "%s: record at byte %lld has position %" PRIu64
                 ", expected %" PRIu64, sc->seg->path, (long long)offset, rec->position, want);
        return EVLOG_CORRUPT;
    }
    sc->first_of_segment = 0;
    sc->j->last = rec->position;
    return 0;
}

/* Creates the segment for events from position `first` and makes it current. */
static int journal_new_segment(struct journal *j, uint64_t first)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%020" PRIu64 ".wal", j->dir, first);
    if (j->n && j->segs[j->n - 1].first == first) {
        /* the current segment holds no event yet (its batches failed): a
         * fresh file replaces it, never trusting pages whose sync failed */
        evlog_free(j->cur);
        j->cur = NULL;
        if (unlink(path) < 0 && errno != ENOENT)
            return -1;
        free(j->segs[--j->n].path);
    }
    struct evlog *log;
    if (evlog_open(path, EVLOG_CREATE | EVLOG_ANY_VERSIONS, NULL, NULL, &log, NULL) != 0) {
        if (errno == 0)
            errno = EIO;
        return -1;
    }
    if (journal_add_segment(j, first, path, evlog_size(log), time(NULL)) < 0) {
        evlog_free(log);
        errno = ENOMEM;
        return -1;
    }
    /* The segment is given its whole size ahead of the appends: a sync then
     * writes data only, not a new file size and new blocks each time (about
     * 1.4 times as many syncs per second here). Best effort: without it (no
     * space, no fallocate) appends grow the file as before. The full one is
     * cut back to its records (or keeps its zeros, read as its end). */
    (void)evlog_preallocate(log, j->segment_bytes);
    if (j->cur)
        (void)evlog_trim(j->cur);
    evlog_free(j->cur);
    j->cur = log;
    j->roll = 0;
    return 0;
}

int journal_open(const char *dir, off_t segment_bytes, struct journal **out,
                 struct journal_info *info, char *err, size_t errlen)
{
    *out = NULL;
    memset(info, 0, sizeof *info);
    err[0] = '\0';
    struct journal *j = calloc(1, sizeof *j);
    if (!j || !(j->dir = strdup(dir))) {
        free(j);
        errno = ENOMEM;
        return -1;
    }
    j->segment_bytes = segment_bytes;
    j->lock_fd = -1;
    if (mkdir(dir, 0700) == 0) {
        if (durable_sync_parent(dir) < 0)
            goto fail;
    } else if (errno != EEXIST) {
        goto fail;
    }
    j->lock_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (j->lock_fd < 0)
        goto fail;
    if (flock(j->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        snprintf(err, errlen, "%s is in use by another process (two workers, or two cqrsd, on "
                 "one data directory?)", dir);
        journal_free(j);
        return EVLOG_CORRUPT;
    }
    DIR *d = opendir(dir);
    if (!d)
        goto fail;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        char *end;
        if (len != 24 || strcmp(e->d_name + 20, ".wal") != 0)
            continue;
        uint64_t first = strtoull(e->d_name, &end, 10);
        if (end != e->d_name + 20 || first == 0)
            continue;
        char path[PATH_MAX];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (stat(path, &st) < 0 || journal_add_segment(j, first, path, st.st_size, st.st_mtime) < 0) {
            closedir(d);
            goto fail;
        }
    }
    closedir(d);
    if (j->n)
        qsort(j->segs, j->n, sizeof *j->segs, journal_cmp);

    /* segments wholly before the hinted checkpoint are trusted, not scanned */
    uint64_t hint = journal_read_hint(dir);
    size_t from = 0;
    while (hint && from + 1 < j->n && j->segs[from + 1].first <= hint + 1)
        from++;
    if (from > 0) {
        j->checkpoint = hint;
        j->last = j->segs[from].first - 1;
    }
    for (size_t i = from; i < j->n; i++) {
        int last = i + 1 == j->n;
        struct journal_scan sc = { j, &j->segs[i], 1, err, errlen };
        struct evlog_open_info oi;
        struct evlog *log;
        int rc = evlog_open(j->segs[i].path, EVLOG_ANY_VERSIONS | EVLOG_PREALLOCATED |
                            (last ? 0 : EVLOG_READONLY), journal_scan_record, &sc, &log, &oi);
        if (rc == EVLOG_CORRUPT) {
            if (!err[0])
                snprintf(err, errlen, "%s: %s", j->segs[i].path, oi.detail);
            journal_free(j);
            return EVLOG_CORRUPT;
        }
        if (rc != 0)
            goto fail;
        if (!last && oi.truncated_bytes) {
            snprintf(err, errlen, "%s: torn in the middle of the journal (%lld bytes)",
                     j->segs[i].path, (long long)oi.truncated_bytes);
            evlog_free(log);
            journal_free(j);
            return EVLOG_CORRUPT;
        }
        if (!sc.first_of_segment && j->segs[i].first > j->last) {
            snprintf(err, errlen, "%s: segment name does not match its records", j->segs[i].path);
            evlog_free(log);
            journal_free(j);
            return EVLOG_CORRUPT;
        }
        info->truncated_bytes += oi.truncated_bytes;
        j->segs[i].size = evlog_size(log);
        if (last) {
            (void)evlog_preallocate(log, j->segment_bytes);   /* as a new one is */
            j->cur = log;
        } else
            evlog_free(log);
    }
    if (!j->cur && journal_new_segment(j, j->last + 1) < 0)
        goto fail;
    if (j->last < j->segs[j->n - 1].first - 1)
        j->last = j->segs[j->n - 1].first - 1;   /* no event yet in the newest segment */
    info->last_position = j->last;
    info->checkpoint = j->checkpoint;
    info->segments = j->n;
    info->unchecked = j->last > j->checkpoint ? j->last - j->checkpoint : 0;
    *out = j;
    return 0;
fail:
    {
        int e2 = errno;
        journal_free(j);
        errno = e2;
        return -1;
    }
}

void journal_free(struct journal *j)
{
    if (!j)
        return;
    evlog_free(j->cur);
    if (j->lock_fd >= 0)
        close(j->lock_fd);
    for (size_t i = 0; i < j->n; i++)
        free(j->segs[i].path);
    free(j->segs);
    free(j->dir);
    free(j);
}

struct journal_replay_ctx {
    uint64_t after;
    journal_fn fn;
    void *arg;
    const uint8_t *map;     /* the segment, for the records' raw bytes */
    size_t map_len;
};

static int journal_replay_record(void *arg, const Cqrs__EventRecord *rec, off_t offset, size_t size)
{
    struct journal_replay_ctx *c = arg;
    if (strcmp(rec->type, JOURNAL_CHECKPOINT) == 0 || rec->position <= c->after)
        return 0;
    if ((size_t)offset + size > c->map_len)
        return EVLOG_CORRUPT;   /* the file changed under us */
    return c->fn(c->arg, rec, c->map + offset, size);
}

int journal_replay(struct journal *j, uint64_t after, journal_fn fn, void *arg)
{
    struct journal_replay_ctx c = { .after = after, .fn = fn, .arg = arg };
    for (size_t i = 0; i < j->n; i++) {
        if (i + 1 < j->n && j->segs[i + 1].first <= after + 1)
            continue;   /* wholly before */
        int fd = open(j->segs[i].path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0) {
            if (fd >= 0)
                close(fd);
            return -1;
        }
        c.map_len = (size_t)st.st_size;
        c.map = c.map_len ? mmap(NULL, c.map_len, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
        close(fd);
        if (c.map == MAP_FAILED)
            return -1;
        struct evlog *log;
        int rc = evlog_open(j->segs[i].path, EVLOG_ANY_VERSIONS | EVLOG_READONLY |
                            EVLOG_PREALLOCATED, journal_replay_record, &c, &log, NULL);
        if (c.map)
            munmap((void *)c.map, c.map_len);
        if (rc != 0)
            return rc;
        evlog_free(log);
    }
    return 0;
}

int journal_append(struct journal *j, const uint8_t *buf, size_t len, uint64_t last_position,
                   int sync)
{
    if ((j->roll || evlog_size(j->cur) >= j->segment_bytes) && journal_new_segment(j, j->last + 1) < 0)
        return -1;
    if (evlog_append(j->cur, buf, len, sync) < 0) {
        j->roll = 1;   /* never trust that segment's pages again */
        return -1;
    }
    j->segs[j->n - 1].size = evlog_size(j->cur);
    j->last = last_position;
    return 0;
}

uint64_t journal_last(const struct journal *j)
{
    return j->last;
}

int journal_sync(struct journal *j)
{
    if (evlog_sync(j->cur) < 0) {
        j->roll = 1;
        return -1;
    }
    return 0;
}

int journal_checkpoint(struct journal *j, uint64_t position)
{
    Cqrs__EventRecord rec = CQRS__EVENT_RECORD__INIT;
    rec.type = JOURNAL_CHECKPOINT;
    rec.version = position;
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    if (evlog_encode(&rec, &buf, &len, &cap) < 0)
        return -1;
    int rc = journal_append(j, buf, len, j->last, 1);
    free(buf);
    if (rc == 0) {
        j->checkpoint = position;
        journal_write_hint(j, position);
    }
    return rc;
}

uint64_t journal_checkpointed(const struct journal *j)
{
    return j->checkpoint;
}

int journal_gc(struct journal *j, uint64_t keep_bytes, unsigned keep_s)
{
    uint64_t total = 0;
    for (size_t i = 0; i < j->n; i++)
        total += (uint64_t)j->segs[i].size;
    time_t now = time(NULL);
    int removed = 0;
    /* never the current segment; only segments whose events are all covered */
    while (j->n > 1 && j->segs[1].first <= j->checkpoint + 1) {
        struct segment *s = &j->segs[0];
        if (total <= keep_bytes && now - s->mtime < (time_t)keep_s)
            break;
        if (unlink(s->path) < 0)
            break;
        total -= (uint64_t)s->size;
        free(s->path);
        memmove(j->segs, j->segs + 1, (j->n - 1) * sizeof *j->segs);
        j->n--;
        removed++;
    }
    return removed;
}
