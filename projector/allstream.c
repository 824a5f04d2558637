/* allstream — see allstream.h. */
#include "allstream.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crc32c.h"
#include "frame.h"
#include "layout.h"
#include "pbarena.h"

#define AS_CHECKPOINT "$checkpoint"      /* worker/journal.h's JOURNAL_CHECKPOINT */
#define AS_STRIDE 1024                   /* a mark every this many positions of a segment */
#define AS_JOURNAL_CHUNK (256u << 10)    /* bytes per pread of a segment */
#define AS_SCAN_CHUNK (16u << 10)        /* bytes per pread of a stream file being scanned */
#define AS_WINDOW (32u << 10)            /* positions indexed per scan of the stream files */
#define AS_COPY (8u << 20)               /* bytes of a window's records kept from its scan */
#define AS_FDS 64                        /* stream files kept open while delivering */
#define AS_RELISTS 64                    /* segments vanishing under one read before giving up */
#define AS_ARENA (64u << 10)             /* decoding memory, grown up to AS_ARENA_MAX */
#define AS_ARENA_MAX (1u << 20)
#define AS_NONE UINT32_MAX               /* slot: position not found */
#define AS_DONE UINT64_MAX               /* stream file: nothing left to scan */
#define AS_UNCOPIED UINT64_MAX           /* slot: record to be read again */

/* Bytes of one file, read by pread. */
struct as_buf {
    int fd;                 /* whose bytes (-1: none) */
    uint8_t *p;
    size_t cap, len;
    off_t off;              /* file offset of p[0] */
};

struct as_seg {
    uint64_t first;         /* position its name promises for its first event */
    dev_t dev;
    ino_t ino;              /* the file its marks were taken in (0: none yet) */
    off_t *marks;           /* marks[k]: byte offset of position first + k * AS_STRIDE */
    size_t nmarks, capmarks;
};

struct as_file {
    size_t name;            /* its path below the type folder, at names + name */
    off_t resume;           /* where its scan goes on (0: the start) */
    uint64_t next;          /* position of the record at resume: 0 unknown, AS_DONE none */
};

struct as_slot {
    uint32_t file;          /* AS_NONE: not found */
    uint32_t len;           /* payload bytes; 0: found in two files */
    off_t off;              /* of the record's header in the file */
    uint64_t copy;          /* of its copy in `copies`, or AS_UNCOPIED */
};

/* The stream files' scan, kept between reads so pages of old events do not
 * scan everything again. */
struct as_files {
    int valid;
    uint64_t limit;         /* the files listed hold every position up to this */
    char *names;
    size_t names_len, names_cap;
    struct as_file *files;
    size_t n, cap;
    uint64_t wlo, whi;      /* positions indexed in slots (whi < wlo: none) */
    struct as_slot *slots;
    uint8_t *copies;        /* records of the window, as read by its scan */
    size_t copies_len, copies_cap;
    char note[256];         /* the first damaged record, or duplicate, met */
    struct {
        uint32_t file;
        int fd;
    } fds[AS_FDS];
};

struct allstream {
    char *dir;
    struct as_seg *segs;    /* the journal's segments, by first position */
    size_t nsegs;
    /* where the last read stopped: the next position, at cur_off of the
     * segment cur_first (that very file) */
    uint64_t cur_first, cur_pos;
    dev_t cur_dev;
    ino_t cur_ino;
    off_t cur_off;
    struct as_buf buf;
    struct pbarena arena;       /* decoding memory, one record at a time */
    struct as_files files;
    /* the read in progress */
    allstream_fn fn;
    void *arg;
    char *err;
    size_t errlen;
};

/* --- helpers ------------------------------------------------------------- */

__attribute__((format(printf, 2, 3)))
static int as_corrupt(struct allstream *as, const char *fmt, ...)
{
    if (as->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(as->err, as->errlen, fmt, ap);
        va_end(ap);
    }
    return EVLOG_CORRUPT;
}

__attribute__((format(printf, 3, 4)))
static int as_path(char *buf, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= len) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

static void as_buf_drop(struct as_buf *b)
{
    b->fd = -1;
    b->len = 0;
}

/* The end of a read of file `fd`: its buffer goes, and `rc` is returned
 * with errno as it was (the I/O error a -1 carries). */
static int as_done(struct allstream *as, int fd, int rc)
{
    int e = errno;
    as_buf_drop(&as->buf);
    close(fd);
    errno = e;
    return rc;
}

/* Points *out at bytes [off, off + n) of `fd`, reading at least `chunk`
 * bytes when it has to read. 1; 0 when the file ends first; -1 (errno). */
static int as_fill(struct as_buf *b, int fd, off_t off, size_t n, size_t chunk,
                   const uint8_t **out)
{
    if (b->fd == fd && off >= b->off && (size_t)(off - b->off) <= b->len &&
        n <= b->len - (size_t)(off - b->off)) {
        *out = b->p + (off - b->off);
        return 1;
    }
    size_t want = n > chunk ? n : chunk;
    if (want > b->cap) {
        free(b->p);
        b->cap = 0;
        b->len = 0;
        b->fd = -1;
        if (!(b->p = malloc(want))) {
            errno = ENOMEM;
            return -1;
        }
        b->cap = want;
    }
    as_buf_drop(b);
    size_t got = 0;
    while (got < want) {
        ssize_t r = pread(fd, b->p + got, want - got, off + (off_t)got);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        got += (size_t)r;
        if (r == 0 || got >= n)
            break;
    }
    b->fd = fd;
    b->off = off;
    b->len = got;
    if (got < n)
        return 0;
    *out = b->p;
    return 1;
}

static int as_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    *v = 0;
    for (unsigned shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return 0;
    }
    return -1;
}

/* Whether an EventRecord payload is a checkpoint, and its position (0:
 * none), read from the wire format without decoding it all. -1 when the
 * bytes are not well-formed protobuf. */
static int as_peek(const uint8_t *p, size_t len, int *checkpoint, uint64_t *position)
{
    const uint8_t *end = p + len;
    *checkpoint = 0;
    *position = 0;
    while (p < end) {
        uint64_t tag, v;
        if (as_varint(&p, end, &tag) < 0 || tag >> 3 == 0)
            return -1;
        switch (tag & 7) {
        case 0:
            if (as_varint(&p, end, &v) < 0)
                return -1;
            if (tag >> 3 == 7)
                *position = v;
            break;
        case 1:
        case 5: {
            size_t w = (tag & 7) == 1 ? 8 : 4;
            if ((size_t)(end - p) < w)
                return -1;
            p += w;
            break;
        }
        case 2:
            if (as_varint(&p, end, &v) < 0 || v > (uint64_t)(end - p))
                return -1;
            if (tag >> 3 == 3)
                *checkpoint = v == sizeof AS_CHECKPOINT - 1 &&
                              memcmp(p, AS_CHECKPOINT, sizeof AS_CHECKPOINT - 1) == 0;
            p += v;
            break;
        default:
            return -1;
        }
    }
    return 0;
}

/* Checks the CRC of the record at `h` (header + `len` bytes of payload) and
 * decodes it into the arena: NULL with *why when it cannot. */
static Cqrs__EventRecord *as_decode(struct allstream *as, const uint8_t *h, uint32_t len,
                                    const char **why)
{
    if (crc32c(0, h + EVLOG_HEADER_LEN, len) != frame_get32(h + 4)) {
        *why = "fails its checksum";
        return NULL;
    }
    Cqrs__EventRecord *rec = cqrs__event_record__unpack(&as->arena.alloc, len, h + EVLOG_HEADER_LEN);
    if (!rec) {
        pbarena_reset(&as->arena);
        *why = "does not decode";
    }
    return rec;
}

static int as_bad_record(struct allstream *as, const char *file, off_t off, uint64_t position,
                         const char *why)
{
    return as_corrupt(as, "%s: record at byte %lld (position %" PRIu64 ") %s", file,
                      (long long)off, position, why);
}

static int as_call(struct allstream *as, const Cqrs__EventRecord *rec, const uint8_t *h,
                   uint32_t len)
{
    int rc = as->fn(as->arg, rec, h + EVLOG_HEADER_LEN, len);
    pbarena_reset(&as->arena);
    return rc;
}

/* --- the journal ----------------------------------------------------------- */

static int as_seg_cmp(const void *a, const void *b)
{
    const struct as_seg *x = a, *y = b;
    return x->first < y->first ? -1 : x->first > y->first;
}

static int as_seg_path(const struct allstream *as, uint64_t first, char *buf, size_t len)
{
    return as_path(buf, len, "%s/%s/%020" PRIu64 ".wal", as->dir, LAYOUT_JOURNAL, first);
}

/* Lists the journal's segments again, keeping the marks of those still
 * there. 0 or -1 (errno); no journal folder is no segment. */
static int as_list(struct allstream *as)
{
    char path[PATH_MAX];
    if (as_path(path, sizeof path, "%s/%s", as->dir, LAYOUT_JOURNAL) < 0)
        return -1;
    struct as_seg *segs = NULL;
    size_t n = 0, cap = 0;
    DIR *d = opendir(path);
    if (!d && errno != ENOENT && errno != ENOTDIR)
        return -1;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        char *end;
        if (strlen(e->d_name) != 24 || strcmp(e->d_name + 20, ".wal") != 0)
            continue;
        uint64_t first = strtoull(e->d_name, &end, 10);
        if (end != e->d_name + 20 || first == 0)
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            struct as_seg *ns = realloc(segs, ncap * sizeof *ns);
            if (!ns) {
                free(segs);
                closedir(d);
                errno = ENOMEM;
                return -1;
            }
            segs = ns;
            cap = ncap;
        }
        segs[n++] = (struct as_seg){ .first = first };
    }
    if (d)
        closedir(d);
    if (n)
        qsort(segs, n, sizeof *segs, as_seg_cmp);
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        while (j < as->nsegs && as->segs[j].first < segs[i].first)
            free(as->segs[j++].marks);
        if (j < as->nsegs && as->segs[j].first == segs[i].first)
            segs[i] = as->segs[j++];
    }
    while (j < as->nsegs)
        free(as->segs[j++].marks);
    free(as->segs);
    as->segs = segs;
    as->nsegs = n;
    return 0;
}

static void as_mark(struct as_seg *s, uint64_t position, off_t off)
{
    uint64_t k = position - s->first;
    if (k % AS_STRIDE || k / AS_STRIDE != s->nmarks)
        return;
    if (s->nmarks == s->capmarks) {
        size_t ncap = s->capmarks ? s->capmarks * 2 : 64;
        off_t *nm = realloc(s->marks, ncap * sizeof *nm);
        if (!nm)
            return;   /* marks only save time */
        s->marks = nm;
        s->capmarks = ncap;
    }
    s->marks[s->nmarks++] = off;
}

enum as_end {
    AS_REACHED,             /* every position up to hi */
    AS_GONE,                /* the segment is no longer there */
    AS_ENDED,               /* the segment ends before hi */
};

/* Delivers positions lo..hi from segment i, which holds them if anyone
 * does. *next: the first position not delivered. */
static int as_segment(struct allstream *as, size_t i, uint64_t lo, uint64_t hi, enum as_end *end,
                      uint64_t *next)
{
    struct as_seg *s = &as->segs[i];
    char path[PATH_MAX];
    *end = AS_REACHED;
    *next = lo;
    if (as_seg_path(as, s->first, path, sizeof path) < 0)
        return -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno != ENOENT)
            return -1;
        *end = AS_GONE;
        return 0;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    if (s->dev != st.st_dev || s->ino != st.st_ino) {
        s->nmarks = 0;   /* a file made again under the same name */
        s->dev = st.st_dev;
        s->ino = st.st_ino;
    }

    /* start at the nearest mark, or where the last read stopped */
    off_t off = EVLOG_MAGIC_LEN;
    uint64_t expect = s->first;
    if (s->nmarks) {
        uint64_t k = (lo - s->first) / AS_STRIDE;
        if (k >= s->nmarks)
            k = s->nmarks - 1;
        off = s->marks[k];
        expect = s->first + k * AS_STRIDE;
    }
    if (as->cur_pos && as->cur_first == s->first && as->cur_dev == st.st_dev &&
        as->cur_ino == st.st_ino && as->cur_pos <= lo && as->cur_pos > expect) {
        off = as->cur_off;
        expect = as->cur_pos;
    }

    int rc = 0;
    const uint8_t *h;
    as_buf_drop(&as->buf);
    if (off == EVLOG_MAGIC_LEN) {
        int f = as_fill(&as->buf, fd, 0, EVLOG_MAGIC_LEN, AS_JOURNAL_CHUNK, &h);
        if (f < 0)
            goto io;
        if (f == 0) {
            *end = AS_ENDED;   /* being created */
            goto done;
        }
        if (memcmp(h, EVLOG_MAGIC, EVLOG_MAGIC_LEN) != 0) {
            rc = as_corrupt(as, "%s: bad log header", path);
            goto done;
        }
    }
    while (expect <= hi) {
        int f = as_fill(&as->buf, fd, off, EVLOG_HEADER_LEN, AS_JOURNAL_CHUNK, &h);
        if (f < 0)
            goto io;
        if (f == 0) {
            *end = AS_ENDED;
            break;
        }
        uint32_t len = frame_get32(h);
        if (len == 0 && frame_get32(h + 4) == 0) {
            *end = AS_ENDED;   /* the zeros a segment is made ready with: no record yet */
            break;
        }
        if (len == 0 || len > EVLOG_MAX_RECORD) {
            rc = as_corrupt(as, "%s: record at byte %lld (position %" PRIu64 ") has an "
                            "impossible length", path, (long long)off, expect);
            break;
        }
        f = as_fill(&as->buf, fd, off, EVLOG_HEADER_LEN + (size_t)len, AS_JOURNAL_CHUNK, &h);
        if (f < 0)
            goto io;
        if (f == 0) {
            *end = AS_ENDED;
            break;
        }
        off_t at = off;
        off += EVLOG_HEADER_LEN + (off_t)len;
        uint64_t position;
        if (expect < lo) {
            /* before the range: only its position, to follow the sequence */
            int checkpoint;
            if (as_peek(h + EVLOG_HEADER_LEN, len, &checkpoint, &position) < 0) {
                rc = as_corrupt(as, "%s: record at byte %lld (position %" PRIu64 ") does not "
                                "decode", path, (long long)at, expect);
                break;
            }
            if (checkpoint)
                continue;
        } else {
            const char *why;
            Cqrs__EventRecord *rec = as_decode(as, h, len, &why);
            if (!rec) {
                rc = as_bad_record(as, path, at, expect, why);
                break;
            }
            if (strcmp(rec->type, AS_CHECKPOINT) == 0) {
                pbarena_reset(&as->arena);
                continue;
            }
            position = rec->position;
            if (position == expect) {
                as_mark(s, position, at);
                expect++;
                as->cur_first = s->first;
                as->cur_dev = st.st_dev;
                as->cur_ino = st.st_ino;
                as->cur_off = off;
                as->cur_pos = expect;
                if ((rc = as_call(as, rec, h, len)) != 0)
                    break;
                continue;
            }
            pbarena_reset(&as->arena);
        }
        if (position != expect) {
            rc = as_corrupt(as, "%s: record at byte %lld has position %" PRIu64 ", expected %"
                            PRIu64, path, (long long)at, position, expect);
            break;
        }
        as_mark(s, position, at);
        expect++;
    }
done:
    *next = expect > lo ? expect : lo;
    return as_done(as, fd, rc);
io:
    return as_done(as, fd, -1);
}

/* --- the stream files -------------------------------------------------------- */

static int as_is_log(const struct dirent *e)
{
    size_t n = strlen(e->d_name);
    return e->d_type != DT_DIR && n > 4 && strcmp(e->d_name + n - 4, ".log") == 0;
}

static int as_is_shard(const char *name)
{
    static const char hex[] = "0123456789abcdef";
    return strlen(name) == 2 && name[0] && strchr(hex, name[0]) && name[1] && strchr(hex, name[1]);
}

static int as_files_add(struct as_files *f, const char *a, const char *b)
{
    size_t need = strlen(a) + (b ? 1 + strlen(b) : 0) + 1;
    if (f->n >= AS_NONE) {
        errno = EOVERFLOW;
        return -1;
    }
    if (f->names_len + need > f->names_cap) {
        size_t ncap = f->names_cap ? f->names_cap : 4096;
        while (ncap < f->names_len + need)
            ncap *= 2;
        char *nn = realloc(f->names, ncap);
        if (!nn)
            goto nomem;
        f->names = nn;
        f->names_cap = ncap;
    }
    if (f->n == f->cap) {
        size_t ncap = f->cap ? f->cap * 2 : 256;
        struct as_file *nf = realloc(f->files, ncap * sizeof *nf);
        if (!nf)
            goto nomem;
        f->files = nf;
        f->cap = ncap;
    }
    f->files[f->n++] = (struct as_file){ .name = f->names_len };
    if (b)
        snprintf(f->names + f->names_len, need, "%s/%s", a, b);
    else
        memcpy(f->names + f->names_len, a, need);
    f->names_len += need;
    return 0;
nomem:
    errno = ENOMEM;
    return -1;
}

static int as_file_path(const struct allstream *as, uint32_t file, char *buf, size_t len)
{
    return as_path(buf, len, "%s/%s", as->dir, as->files.names + as->files.files[file].name);
}

static void as_files_close(struct allstream *as)
{
    for (size_t k = 0; k < AS_FDS; k++)
        if (as->files.fds[k].fd >= 0) {
            close(as->files.fds[k].fd);
            as->files.fds[k].fd = -1;
        }
    as_buf_drop(&as->buf);
}

/* Lists every stream file of the type (each holding all its positions up
 * to `limit`), to be scanned from the start. */
static int as_files_list(struct allstream *as, uint64_t limit)
{
    struct as_files *f = &as->files;
    as_files_close(as);
    f->valid = 0;
    f->n = 0;
    f->names_len = 0;
    f->wlo = 1;
    f->whi = 0;
    f->note[0] = '\0';
    DIR *d = opendir(as->dir);
    if (!d) {
        if (errno != ENOENT)
            return -1;
        f->valid = 1;   /* no folder yet: no file */
        f->limit = limit;
        return 0;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (as_is_log(e)) {   /* the first layout, <type>/<id>.log */
            if (as_files_add(f, e->d_name, NULL) < 0)
                goto fail;
            continue;
        }
        if (!as_is_shard(e->d_name))
            continue;
        char path[PATH_MAX];
        if (as_path(path, sizeof path, "%s/%s", as->dir, e->d_name) < 0)
            goto fail;
        DIR *sd = opendir(path);
        if (!sd) {
            if (errno == ENOENT || errno == ENOTDIR)
                continue;
            goto fail;
        }
        struct dirent *se;
        while ((se = readdir(sd)) != NULL)
            if (as_is_log(se) && as_files_add(f, e->d_name, se->d_name) < 0) {
                int err = errno;
                closedir(sd);
                errno = err;
                goto fail;
            }
        closedir(sd);
    }
    closedir(d);
    f->valid = 1;
    f->limit = limit;
    return 0;
fail:
    {
        int err = errno;
        closedir(d);
        errno = err;
        return -1;
    }
}

static void as_files_note(struct as_files *f, const char *path, const char *what, off_t off)
{
    if (!f->note[0])
        snprintf(f->note, sizeof f->note, "%.200s: record at byte %lld %s", path, (long long)off,
                 what);
}

/* Keeps a copy of a record met by the scan, if the window's budget allows:
 * its offset in f->copies, or AS_UNCOPIED. */
static uint64_t as_files_copy(struct as_files *f, const uint8_t *h, uint32_t len)
{
    size_t n = EVLOG_HEADER_LEN + (size_t)len;
    if (n > AS_COPY - f->copies_len)
        return AS_UNCOPIED;
    if (f->copies_len + n > f->copies_cap) {
        size_t ncap = f->copies_cap ? f->copies_cap : 64u << 10;
        while (ncap < f->copies_len + n)
            ncap *= 2;
        uint8_t *nc = realloc(f->copies, ncap);
        if (!nc)
            return AS_UNCOPIED;
        f->copies = nc;
        f->copies_cap = ncap;
    }
    memcpy(f->copies + f->copies_len, h, n);
    f->copies_len += n;
    return f->copies_len - n;
}

/* Scans one stream file from where it stopped, indexing its records with
 * positions in [wlo, whi] until one lies beyond. */
static int as_files_scan_one(struct allstream *as, uint32_t k)
{
    struct as_files *f = &as->files;
    struct as_file *sf = &f->files[k];
    char path[PATH_MAX];
    if (as_file_path(as, k, path, sizeof path) < 0)
        return -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno != ENOENT)
            return -1;
        sf->next = AS_DONE;   /* gone: its positions will be missing, and said so */
        return 0;
    }
    as_buf_drop(&as->buf);
    const uint8_t *h;
    off_t off = sf->resume;
    sf->next = AS_DONE;   /* unless a record beyond the window is met */
    if (off == 0) {
        int r = as_fill(&as->buf, fd, 0, EVLOG_MAGIC_LEN, AS_SCAN_CHUNK, &h);
        if (r < 0)
            goto io;
        if (r == 0)
            goto done;   /* empty, or being created */
        if (memcmp(h, EVLOG_MAGIC, EVLOG_MAGIC_LEN) != 0) {
            as_files_note(f, path, "is not after a log header", 0);
            goto done;
        }
        off = EVLOG_MAGIC_LEN;
    }
    for (;;) {
        int r = as_fill(&as->buf, fd, off, EVLOG_HEADER_LEN, AS_SCAN_CHUNK, &h);
        if (r < 0)
            goto io;
        if (r == 0)
            break;   /* the end, perhaps torn */
        uint32_t len = frame_get32(h);
        if (len == 0 || len > EVLOG_MAX_RECORD) {
            as_files_note(f, path, "has an impossible length", off);
            break;
        }
        off_t next = off + EVLOG_HEADER_LEN + (off_t)len;
        if ((r = as_fill(&as->buf, fd, off, EVLOG_HEADER_LEN + (size_t)len, AS_SCAN_CHUNK, &h)) < 0)
            goto io;
        if (r == 0)
            break;
        int checkpoint;
        uint64_t position;
        if (crc32c(0, h + EVLOG_HEADER_LEN, len) != frame_get32(h + 4)) {
            const uint8_t *after;
            if ((r = as_fill(&as->buf, fd, next, 1, AS_SCAN_CHUNK, &after)) < 0)
                goto io;
            if (r > 0)   /* not the torn last record of a file being written */
                as_files_note(f, path, "fails its checksum", off);
            break;
        }
        if (as_peek(h + EVLOG_HEADER_LEN, len, &checkpoint, &position) < 0) {
            as_files_note(f, path, "does not decode", off);
            break;
        }
        if (position > f->whi) {   /* positions grow along a stream */
            sf->resume = off;
            sf->next = position;
            break;
        }
        if (!checkpoint && position >= f->wlo) {
            struct as_slot *slot = &f->slots[position - f->wlo];
            if (slot->file == AS_NONE) {
                *slot = (struct as_slot){ k, len, off, as_files_copy(f, h, len) };
            } else if (slot->len) {
                slot->len = 0;
                if (!f->note[0])
                    snprintf(f->note, sizeof f->note, "position %" PRIu64 " is also in %.200s", position,
                             path);
            }
        }
        off = next;
    }
done:
    return as_done(as, fd, 0);
io:
    return as_done(as, fd, -1);
}

/* Indexes the stream files' records with positions lo..hi. */
static int as_files_scan(struct allstream *as, uint64_t lo, uint64_t hi)
{
    struct as_files *f = &as->files;
    if (!f->slots && !(f->slots = malloc(AS_WINDOW * sizeof *f->slots))) {
        errno = ENOMEM;
        return -1;
    }
    for (uint64_t p = 0; p <= hi - lo; p++)
        f->slots[p].file = AS_NONE;
    f->copies_len = 0;
    f->wlo = lo;
    f->whi = hi;
    for (size_t k = 0; k < f->n; k++) {
        uint64_t next = f->files[k].next;
        if (next == AS_DONE || (next && next > hi))
            continue;   /* nothing in this window */
        if (as_files_scan_one(as, (uint32_t)k) < 0) {
            f->valid = 0;
            return -1;
        }
    }
    return 0;
}

static int as_files_fd(struct allstream *as, uint32_t file)
{
    struct as_files *f = &as->files;
    size_t k = file % AS_FDS;
    if (f->fds[k].fd >= 0 && f->fds[k].file == file)
        return f->fds[k].fd;
    if (f->fds[k].fd >= 0) {
        if (as->buf.fd == f->fds[k].fd)
            as_buf_drop(&as->buf);
        close(f->fds[k].fd);
        f->fds[k].fd = -1;
    }
    char path[PATH_MAX];
    if (as_file_path(as, file, path, sizeof path) < 0)
        return -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    f->fds[k].fd = fd;
    f->fds[k].file = file;
    return fd;
}

/* Delivers positions lo..hi, all inside the indexed window. */
static int as_files_deliver(struct allstream *as, uint64_t lo, uint64_t hi)
{
    struct as_files *f = &as->files;
    char path[PATH_MAX];
    for (uint64_t p = lo; p <= hi; p++) {
        const struct as_slot *s = &f->slots[p - f->wlo];
        if (s->file == AS_NONE)
            return as_corrupt(as, "position %" PRIu64 " is in neither the journal nor the stream "
                              "files%s%s", p, f->note[0] ? "; " : "", f->note);
        if (s->len == 0) {
            if (as_file_path(as, s->file, path, sizeof path) < 0)
                return -1;
            return as_corrupt(as, "position %" PRIu64 " is in %s and another stream file (%s)", p,
                              path, f->note);
        }
        const uint8_t *h;
        const char *why = "has changed since the scan";
        if (s->copy != AS_UNCOPIED) {
            h = f->copies + s->copy;
        } else {
            int fd = as_files_fd(as, s->file);
            if (fd < 0) {
                if (errno != ENOENT)
                    return -1;
                why = "has gone";
                goto bad;
            }
            int r = as_fill(&as->buf, fd, s->off, EVLOG_HEADER_LEN + (size_t)s->len, 0, &h);
            if (r < 0)
                return -1;
            if (r == 0 || frame_get32(h) != s->len)
                goto bad;
        }
        Cqrs__EventRecord *rec = as_decode(as, h, s->len, &why);
        if (!rec)
            goto bad;
        if (rec->position != p || strcmp(rec->type, AS_CHECKPOINT) == 0) {
            pbarena_reset(&as->arena);
            why = "has changed since the scan";
            goto bad;
        }
        int rc = as_call(as, rec, h, s->len);
        if (rc)
            return rc;
        continue;
bad:
        if (as_file_path(as, s->file, path, sizeof path) < 0)
            return -1;
        return as_bad_record(as, path, s->off, p, why);
    }
    return 0;
}

/* Delivers positions lo..hi from the stream files, every position up to
 * `limit` being in them (older than the journal). */
static int as_files_read(struct allstream *as, uint64_t lo, uint64_t hi, uint64_t limit)
{
    struct as_files *f = &as->files;
    /* The last scan goes on when it stopped at or before lo and its file
     * list holds the range. A limit lower than the list's means the journal
     * has changed beyond retention (it has appeared, say): list again. */
    if ((!f->valid || hi > f->limit || limit < f->limit || lo < f->wlo) &&
        as_files_list(as, limit) < 0)
        return -1;
    for (uint64_t p = lo; p <= hi;) {
        if (p > f->whi) {
            uint64_t whi = f->limit - p >= AS_WINDOW ? p + AS_WINDOW - 1 : f->limit;
            if (as_files_scan(as, p, whi) < 0)
                return -1;
        }
        uint64_t end = hi < f->whi ? hi : f->whi;
        int rc = as_files_deliver(as, p, end);
        if (rc)
            return rc;
        p = end + 1;
    }
    return 0;
}

/* --- the API ----------------------------------------------------------------- */

struct allstream *allstream_open(const char *type_dir)
{
    struct allstream *as = calloc(1, sizeof *as);
    if (!as || !(as->dir = strdup(type_dir)) ||
        pbarena_init_own(&as->arena, AS_ARENA, AS_ARENA_MAX) < 0) {
        if (as)
            free(as->dir);
        free(as);
        errno = ENOMEM;
        return NULL;
    }
    as->buf.fd = -1;
    for (size_t k = 0; k < AS_FDS; k++)
        as->files.fds[k].fd = -1;
    return as;
}

void allstream_free(struct allstream *as)
{
    if (!as)
        return;
    as_files_close(as);
    for (size_t i = 0; i < as->nsegs; i++)
        free(as->segs[i].marks);
    free(as->segs);
    free(as->buf.p);
    pbarena_free(&as->arena);
    free(as->files.names);
    free(as->files.files);
    free(as->files.slots);
    free(as->files.copies);
    free(as->dir);
    free(as);
}

int allstream_read(struct allstream *as, uint64_t from, uint64_t to, allstream_fn fn, void *arg,
                   int *fallback, char *err, size_t errlen)
{
    if (fallback)
        *fallback = 0;
    if (errlen)
        err[0] = '\0';
    if (from == 0)
        from = 1;
    if (from > to)
        return 0;
    as->fn = fn;
    as->arg = arg;
    as->err = err;
    as->errlen = errlen;
    if (as_list(as) < 0)
        return -1;

    int rc = 0, gone = 0, relisted = 0;
    uint64_t pos = from;
    while (pos <= to) {
        if (!as->nsegs || pos < as->segs[0].first) {
            /* Older than the journal: every position before its first
             * segment was checkpointed, so the stream files hold it. With
             * no journal, no worker has written: they hold everything. */
            uint64_t limit = as->nsegs ? as->segs[0].first - 1 : UINT64_MAX;
            uint64_t hi = to < limit ? to : limit;
            if (fallback)
                *fallback = 1;
            if ((rc = as_files_read(as, pos, hi, limit)) != 0)
                break;
            pos = hi + 1;
            continue;
        }
        size_t i = as->nsegs - 1;
        while (as->segs[i].first > pos)
            i--;
        uint64_t hi = to;
        if (i + 1 < as->nsegs && as->segs[i + 1].first - 1 < hi)
            hi = as->segs[i + 1].first - 1;
        enum as_end end;
        uint64_t next;
        if ((rc = as_segment(as, i, pos, hi, &end, &next)) != 0)
            break;
        if (next > pos)
            gone = relisted = 0;
        pos = next;
        if (end == AS_REACHED)
            continue;
        if (end == AS_ENDED && (i + 1 < as->nsegs || relisted)) {
            char path[PATH_MAX];
            if (as_seg_path(as, as->segs[i].first, path, sizeof path) < 0) {
                rc = -1;
                break;
            }
            rc = as_corrupt(as, "position %" PRIu64 " is missing from the journal: %s ends "
                            "before it", pos, path);
            break;
        }
        /* deleted by retention, or a newer segment may have begun */
        if (end == AS_GONE && ++gone > AS_RELISTS) {
            errno = ENOENT;
            rc = -1;
            break;
        }
        relisted = end == AS_ENDED;
        if ((rc = as_list(as)) != 0)
            break;
    }
    int e = errno;
    as_files_close(as);
    errno = e;
    return rc;
}
