/* evlog — see evlog.h for the file format and the recovery rules. */
#include "evlog.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"
#include "durable.h"
#include "frame.h"
#include "pbarena.h"

struct evlog {
    int fd;               /* -1 while parked */
    int readonly;
    off_t size;           /* bytes written, magic included */
    int dir_unsynced;     /* created by us: sync the directory entry once */
    char path[];          /* one allocation with the struct: a worker holds many */
};

static int evlog_pwrite_all(int fd, const uint8_t *p, size_t len, off_t off)
{
    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
        off += n;
    }
    return 0;
}

static int evlog_read_all(int fd, uint8_t *p, size_t len, off_t off)
{
    while (len > 0) {
        ssize_t n = pread(fd, p, len, off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0) {
            errno = EIO;     /* the file is shorter than it was */
            return -1;
        }
        p += n;
        len -= (size_t)n;
        off += n;
    }
    return 0;
}

static int evlog_corrupt(struct evlog_open_info *info, const char *fmt, off_t at)
{
    snprintf(info->detail, sizeof info->detail, fmt, (long long)at);
    return EVLOG_CORRUPT;
}

static int evlog_all_zero(const uint8_t *p, size_t n)
{
    while (n--)
        if (*p++)
            return 0;
    return 1;
}

/* Is buf[from..size) all zeros? Only the parts where the file fd holds data
 * are read (SEEK_DATA): a preallocated tail of 64 MB is not written, reads
 * as zeros, and costs nothing to skip. */
static int evlog_zero_from(int fd, const uint8_t *buf, off_t from, off_t size)
{
    while (from < size) {
        off_t d = lseek(fd, from, SEEK_DATA);
        if (d < 0)
            return errno == ENXIO ? 1 : evlog_all_zero(buf + from, (size_t)(size - from));
        if (d >= size)
            return 1;
        if (d < from)
            d = from;
        off_t h = lseek(fd, d, SEEK_HOLE);
        if (h < 0 || h > size)
            h = size;
        if (h <= d)
            h = d + 1;   /* no progress from the filesystem: read a byte at least */
        if (!evlog_all_zero(buf + d, (size_t)(h - d)))
            return 0;
        from = h;
    }
    return 1;
}

/* Is there a whole record with a good checksum anywhere in buf[from..size)?
 * An EventRecord's payload starts with its version (field 1, varint: 0x08),
 * which makes the search cheap. */
static int evlog_valid_record_after(const uint8_t *buf, off_t from, off_t size)
{
    for (off_t p = from; p + EVLOG_HEADER_LEN < size; p++) {
        uint32_t len = frame_get32(buf + p);
        if (len == 0 || len > EVLOG_MAX_RECORD || (off_t)len > size - p - EVLOG_HEADER_LEN ||
            buf[p + EVLOG_HEADER_LEN] != 0x08)
            continue;
        if (crc32c(0, buf + p + EVLOG_HEADER_LEN, len) == frame_get32(buf + p + 4))
            return 1;
    }
    return 0;
}

/* Walks the records of buf[0..size); see the recovery rules in evlog.h.
 * Sets *good_end to the end of the last good record. */
static int evlog_scan(int fd, const uint8_t *buf, off_t size, off_t pos, evlog_replay_fn fn,
                      void *arg, struct evlog_open_info *info, int check_versions,
                      off_t *good_end, off_t *zeros_from)
{
    *zeros_from = size;
    _Alignas(16) uint8_t mem[4096];   /* each record is decoded here, then forgotten */
    struct pbarena arena;
    pbarena_init(&arena, mem, sizeof mem);
    while (pos < size) {
        off_t left = size - pos;
        if (left < EVLOG_HEADER_LEN)
            break;                                  /* torn header */
        uint32_t len = frame_get32(buf + pos);
        uint32_t crc = frame_get32(buf + pos + 4);
        if (len == 0 && evlog_zero_from(fd, buf, pos, size)) {
            *zeros_from = pos;
            break;                                  /* zero-filled tail */
        }
        if (len == 0 || len > EVLOG_MAX_RECORD) {
            if (len > EVLOG_MAX_RECORD && (off_t)len > left - EVLOG_HEADER_LEN)
                goto past_end;
            return evlog_corrupt(info, "record at byte %lld has an impossible length", pos);
        }
        if ((off_t)len > left - EVLOG_HEADER_LEN)
            goto past_end;
        const uint8_t *payload = buf + pos + EVLOG_HEADER_LEN;
        off_t end = pos + EVLOG_HEADER_LEN + len;
        if (crc32c(0, payload, len) != crc) {
            if (end == size)
                break;                              /* torn last record */
            if (evlog_zero_from(fd, buf, end, size)) {
                *zeros_from = end;
                break;                              /* torn, and nothing written after it */
            }
            return evlog_corrupt(info, "record at byte %lld fails its checksum", pos);
        }
        Cqrs__EventRecord *rec = cqrs__event_record__unpack(&arena.alloc, len, payload);
        if (!rec) {
            pbarena_reset(&arena);
            return evlog_corrupt(info, "record at byte %lld does not decode", pos);
        }
        if (check_versions && rec->version != info->records + 1) {
            pbarena_reset(&arena);
            return evlog_corrupt(info, "record at byte %lld is out of version sequence", pos);
        }
        int rc = fn ? fn(arg, rec, pos, (size_t)(end - pos)) : 0;
        pbarena_reset(&arena);
        if (rc != 0)
            return rc;
        info->records++;
        pos = end;
        *good_end = end;
    }
    return 0;

past_end:
    /* A crash tears only the last write, so nothing valid can follow a torn
     * record; if something does, the length itself was damaged, and cutting
     * here would throw acknowledged events away. */
    if (evlog_valid_record_after(buf, pos + 1, size))
        return evlog_corrupt(info, "record at byte %lld has a damaged length (valid records follow)",
                             pos);
    return 0;
}

/* Keeps the bytes of a torn tail beside the log, as <path>.torn-<µs>, for a
 * human to look at (etcd keeps its ".broken" file the same way). */
static int evlog_keep_torn(const char *path, const uint8_t *p, size_t len)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char name[PATH_MAX];
    snprintf(name, sizeof name, "%s.torn-%lld", path,
             (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000);
    int fd = open(name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    int rc = evlog_pwrite_all(fd, p, len, 0);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

int evlog_open(const char *path, int flags, evlog_replay_fn fn, void *arg,
               struct evlog **out, struct evlog_open_info *info)
{
    return evlog_open_at(path, flags, EVLOG_MAGIC_LEN, 0, fn, arg, out, info);
}

int evlog_open_at(const char *path, int flags, off_t start, uint64_t start_version,
                  evlog_replay_fn fn, void *arg, struct evlog **out, struct evlog_open_info *info)
{
    struct evlog_open_info scratch;
    if (!info)
        info = &scratch;
    memset(info, 0, sizeof *info);
    *out = NULL;
    int ro = flags & EVLOG_READONLY;

    int fd = open(path, (ro ? O_RDONLY : O_RDWR) | O_CLOEXEC |
                  ((flags & EVLOG_CREATE) && !ro ? O_CREAT : 0), 0600);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) < 0)
        goto fail;
    size_t plen = strlen(path);
    struct evlog *log = calloc(1, sizeof *log + plen + 1);
    if (!log) {
        errno = ENOMEM;
        goto fail;
    }
    memcpy(log->path, path, plen + 1);
    log->fd = fd;
    log->readonly = ro;

    /* mapped, not read: replay decodes straight from the page cache */
    uint8_t *buf = NULL;
    off_t size = st.st_size;
    if (size > 0) {
        buf = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (buf == MAP_FAILED) {
            buf = NULL;
            goto fail_log;
        }
        madvise(buf, (size_t)size, MADV_SEQUENTIAL);
    }

    int rc = 0;
    info->records = start_version;
    if (size < EVLOG_MAGIC_LEN) {
        /* New, or torn while being created: an empty stream, which only a
         * replay from the start can open. */
        if (start != EVLOG_MAGIC_LEN || start_version != 0) {
            rc = evlog_corrupt(info, "replay would start at byte %lld of an empty log", start);
            goto fail_rc;
        }
        if (size > 0 && memcmp(buf, EVLOG_MAGIC, (size_t)size) != 0) {
            rc = evlog_corrupt(info, "file of %lld bytes has no log header", size);
            goto fail_rc;
        }
        if (!ro && (ftruncate(fd, 0) < 0 ||
                    evlog_pwrite_all(fd, (const uint8_t *)EVLOG_MAGIC, EVLOG_MAGIC_LEN, 0) < 0))
            goto fail_buf;
        log->size = EVLOG_MAGIC_LEN;
        log->dir_unsynced = 1;
    } else {
        if (memcmp(buf, EVLOG_MAGIC, EVLOG_MAGIC_LEN) != 0) {
            rc = evlog_corrupt(info, "bad log header (%lld bytes)", size);
            goto fail_rc;
        }
        if (start < EVLOG_MAGIC_LEN || start > size) {
            rc = evlog_corrupt(info, "replay would start at byte %lld, outside the file", start);
            goto fail_rc;
        }
        off_t good_end = start, zeros_from;
        rc = evlog_scan(fd, buf, size, start, fn, arg, info, !(flags & EVLOG_ANY_VERSIONS),
                        &good_end, &zeros_from);
        if (rc != 0)
            goto fail_rc;
        /* preallocated: the zeros after the records are room for appends;
         * only bytes between them are torn (kept, then the file is cut) */
        off_t end = (flags & EVLOG_PREALLOCATED) ? zeros_from : size;
        if (good_end < end) {
            info->truncated_bytes = end - good_end;
            if (!ro && (evlog_keep_torn(path, buf + good_end, (size_t)(end - good_end)) < 0 ||
                        ftruncate(fd, good_end) < 0))
                goto fail_buf;
        }
        log->size = good_end;
    }
    if (buf)
        munmap(buf, (size_t)size);
    *out = log;
    return 0;

fail_rc:
    if (buf)
        munmap(buf, (size_t)size);
    evlog_free(log);
    return rc;
fail_buf:
    if (buf) {
        int e = errno;
        munmap(buf, (size_t)size);
        errno = e;
    }
fail_log:
    {
        int e = errno;
        evlog_free(log);
        errno = e;
        return -1;
    }
fail:
    {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
}

int evlog_attach(const char *path, off_t size, struct evlog **out)
{
    *out = NULL;
    size_t plen = strlen(path);
    struct evlog *log = calloc(1, sizeof *log + plen + 1);
    if (!log) {
        errno = ENOMEM;
        return -1;
    }
    if ((log->fd = open(path, O_RDWR | O_CLOEXEC)) < 0) {
        free(log);
        return -1;
    }
    memcpy(log->path, path, plen + 1);
    log->size = size;
    *out = log;
    return 0;
}

void evlog_free(struct evlog *log)
{
    if (!log)
        return;
    if (log->fd >= 0)
        close(log->fd);
    free(log);
}

/* Reopens a parked log. */
static int evlog_ensure(struct evlog *log)
{
    if (log->fd >= 0)
        return 0;
    log->fd = open(log->path, (log->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    return log->fd < 0 ? -1 : 0;
}

void evlog_park(struct evlog *log)
{
    if (log->fd >= 0) {
        close(log->fd);
        log->fd = -1;
    }
}

int evlog_is_open(const struct evlog *log)
{
    return log->fd >= 0;
}

int evlog_fd(struct evlog *log)
{
    return evlog_ensure(log) < 0 ? -1 : log->fd;
}

off_t evlog_size(const struct evlog *log)
{
    return log->size;
}

ssize_t evlog_encode(const Cqrs__EventRecord *rec, uint8_t **buf, size_t *len, size_t *cap)
{
    size_t plen = cqrs__event_record__get_packed_size(rec);
    if (plen == 0 || plen > EVLOG_MAX_RECORD) {
        errno = EFBIG;
        return -1;
    }
    size_t need = *len + EVLOG_HEADER_LEN + plen;
    if (need > *cap) {
        size_t ncap = *cap ? *cap : 256;
        while (ncap < need)
            ncap *= 2;
        uint8_t *nb = realloc(*buf, ncap);
        if (!nb) {
            errno = ENOMEM;
            return -1;
        }
        *buf = nb;
        *cap = ncap;
    }
    uint8_t *p = *buf + *len;
    cqrs__event_record__pack(rec, p + EVLOG_HEADER_LEN);
    frame_set32(p, (uint32_t)plen);
    frame_set32(p + 4, crc32c(0, p + EVLOG_HEADER_LEN, plen));
    *len = need;
    return (ssize_t)(EVLOG_HEADER_LEN + plen);
}


/* Makes the file's directory entry durable (once, after creation). */
static int evlog_sync_dir_entry(struct evlog *log)
{
    if (durable_sync_parent(log->path) < 0)
        return -1;
    log->dir_unsynced = 0;
    return 0;
}

int evlog_preallocate(struct evlog *log, off_t bytes)
{
    if (evlog_ensure(log) < 0)
        return -1;
    if (bytes <= log->size)
        return 0;
    return fallocate(log->fd, 0, 0, bytes) < 0 ? -1 : 0;
}

int evlog_trim(struct evlog *log)
{
    if (evlog_ensure(log) < 0)
        return -1;
    return ftruncate(log->fd, log->size);
}

int evlog_append(struct evlog *log, const uint8_t *buf, size_t len, int sync)
{
    if (evlog_ensure(log) < 0)
        return -1;
    if (evlog_pwrite_all(log->fd, buf, len, log->size) < 0)
        goto rollback;
    if (sync && (fdatasync(log->fd) < 0 || (log->dir_unsynced && evlog_sync_dir_entry(log) < 0)))
        goto rollback;
    log->size += (off_t)len;
    return 0;
rollback:
    {
        int e = errno;
        if (ftruncate(log->fd, log->size) < 0) {
            /* nothing better to do: the next open truncates or quarantines */
        }
        errno = e;
        return -1;
    }
}

int evlog_sync(struct evlog *log)
{
    if (evlog_ensure(log) < 0)
        return -1;
    if (fdatasync(log->fd) < 0 || (log->dir_unsynced && evlog_sync_dir_entry(log) < 0))
        return -1;
    return 0;
}

int evlog_read(struct evlog *log, off_t offset, size_t size, ProtobufCAllocator *alloc,
               Cqrs__EventRecord **out)
{
    *out = NULL;
    if (evlog_ensure(log) < 0)
        return -1;
    if (size <= EVLOG_HEADER_LEN || offset + (off_t)size > log->size) {
        errno = EINVAL;
        return -1;
    }
    uint8_t stackbuf[512];
    uint8_t *p = size <= sizeof stackbuf ? stackbuf : malloc(size);
    if (!p) {
        errno = ENOMEM;
        return -1;
    }
    int rc = -1;
    if (evlog_read_all(log->fd, p, size, offset) < 0)
        goto done;
    uint32_t len = frame_get32(p);
    if (len != size - EVLOG_HEADER_LEN || crc32c(0, p + EVLOG_HEADER_LEN, len) != frame_get32(p + 4)) {
        errno = EIO;
        goto done;
    }
    *out = cqrs__event_record__unpack(alloc, len, p + EVLOG_HEADER_LEN);
    if (!*out) {
        errno = EIO;
        goto done;
    }
    rc = 0;
done:
    if (p != stackbuf) {
        int e = errno;
        free(p);
        errno = e;
    }
    return rc;
}
