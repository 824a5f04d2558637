/* verify — see verify.h for what is checked and what counts as a problem. */
#include "verify.h"

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "evlog.h"
#include "layout.h"
#include "pbwire.h"

#define VERIFY_LOG_SUFFIX ".log"
#define VERIFY_NAME_SHOWN 64         /* bytes of a name from the disk quoted in a problem */

/* --- problems ------------------------------------------------------------- */

struct verify_sink {
    verify_problem_fn fn;
    void *arg;
    int problems;
};

static void verify_report(struct verify_sink *s, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void verify_report(struct verify_sink *s, const char *path, const char *fmt, ...)
{
    char msg[PATH_MAX + 512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    s->problems++;
    if (s->fn)
        s->fn(s->arg, path, msg);
}

/* A name read from the disk (an event type, a file name), fit to quote in
 * one line: printable ASCII only, at most VERIFY_NAME_SHOWN bytes. */
static const char *verify_shown(char *buf, size_t len, const char *name, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 4 < len; i++) {
        if (i == VERIFY_NAME_SHOWN) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        unsigned char ch = (unsigned char)name[i];
        buf[o++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    buf[o] = '\0';
    return buf;
}

/* --- one stream ------------------------------------------------------------ */

struct verify_run {
    const struct aggregate_type *t;
    const char *path;
    struct verify_sink *sink;
    void *state;          /* NULL once an event could not be applied */
    int oom;              /* evolve ran out of memory: stop */
};

static void verify_drop_state(struct verify_run *r)
{
    if (r->state)
        r->t->state_free(r->state);
    r->state = NULL;
}

static int verify_on_record(void *arg, const Cqrs__EventRecord *rec, off_t offset, size_t size)
{
    struct verify_run *r = arg;
    (void)offset, (void)size;
    char type[VERIFY_NAME_SHOWN + 8];
    const char *name = rec->type ? rec->type : "";
    verify_shown(type, sizeof type, name, strlen(name));
    unsigned long long v = (unsigned long long)rec->version;

    const ProtobufCMessageDescriptor *d = agg_find_desc(r->t->events, name);
    if (!d) {
        verify_report(r->sink, r->path, "event %llu (%s) is not a %s event", v, type, r->t->name);
        verify_drop_state(r);
        return 0;
    }
    ProtobufCMessage *ev = protobuf_c_message_unpack(d, NULL, rec->data.len, rec->data.data);
    if (!ev || pbwire_check_strings(d, rec->data.data, rec->data.len) < 0) {
        verify_report(r->sink, r->path, "event %llu (%s) does not decode as %s%s", v, type, d->name,
                      ev ? " (a string field holds a NUL byte)" : "");
        if (ev)
            protobuf_c_message_free_unpacked(ev, NULL);
        verify_drop_state(r);
        return 0;
    }
    int rc = 0;
    if (r->state) {
        errno = 0;
        if (r->t->evolve(r->state, ev) < 0) {
            if (errno == ENOMEM) {
                r->oom = 1;
                rc = -1;
            } else {
                verify_report(r->sink, r->path, "event %llu (%s) contradicts the state before it",
                              v, type);
                verify_drop_state(r);
            }
        }
    }
    protobuf_c_message_free_unpacked(ev, NULL);
    return rc;
}

/* Reports an I/O failure (errno) on `path` and returns -1, errno kept. */
static int verify_io(struct verify_sink *s, const char *path, const char *what)
{
    int e = errno;
    verify_report(s, path, "%s: %s", what, strerror(e));
    errno = e;
    return -1;
}

static int verify_stream_into(const struct aggregate_type *t, const char *path,
                              struct verify_sink *sink)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return verify_io(sink, path, "cannot read it");
    if (!S_ISREG(st.st_mode)) {
        /* opening a FIFO would block: never try */
        verify_report(sink, path, "is not a regular file");
        return 0;
    }
    struct verify_run r = { .t = t, .path = path, .sink = sink, .state = t->state_new() };
    if (!r.state) {
        errno = ENOMEM;
        return verify_io(sink, path, "cannot check it");
    }
    struct evlog *log = NULL;
    struct evlog_open_info info;
    int rc = evlog_open(path, EVLOG_READONLY, verify_on_record, &r, &log, &info);
    int e = errno;
    verify_drop_state(&r);
    if (rc == 0) {
        evlog_free(log);
        if (info.truncated_bytes > 0)
            verify_report(sink, path, "torn tail of %lld bytes at the end",
                          (long long)info.truncated_bytes);
        return 0;
    }
    if (rc == EVLOG_CORRUPT) {
        verify_report(sink, path, "%s", info.detail[0] ? info.detail : "corrupt");
        return 0;
    }
    errno = r.oom ? ENOMEM : e;
    return verify_io(sink, path, r.oom ? "cannot check it" : "cannot read it");
}

int verify_stream(const struct aggregate_type *t, const char *path,
                  verify_problem_fn fn, void *arg)
{
    struct verify_sink sink = { fn, arg, 0 };
    if (verify_stream_into(t, path, &sink) < 0)
        return -1;
    return sink.problems;
}

/* --- a type's folder -------------------------------------------------------- */

/* What the walk met that needs a look, in the order it is reported: sorted
 * by path, so that the output does not depend on readdir's order. */
enum verify_kind {
    VERIFY_LOG,           /* a regular *.log file */
    VERIFY_SYMLINK,       /* a *.log that is a symbolic link: not followed */
    VERIFY_SPECIAL,       /* a *.log that is neither file nor link */
    VERIFY_UNREADABLE,    /* a folder that cannot be listed */
    VERIFY_UNSTATABLE,    /* an entry that cannot be stat'ed */
};

struct verify_entry {
    char *path;
    enum verify_kind kind;
    int err;
};

struct verify_walk {
    const char *root;     /* the type folder as the caller named it */
    size_t walked_len;    /* strlen("<root>/."): nftw's paths start with it */
    struct verify_entry *v;
    size_t n, cap;
    int err;              /* ENOMEM while collecting */
};

/* nftw has no argument for its callback. */
static _Thread_local struct verify_walk *verify_walking;

static int verify_has_suffix(const char *name, const char *suffix)
{
    size_t n = strlen(name), s = strlen(suffix);
    return n >= s && strcmp(name + n - s, suffix) == 0;
}

/* "<a>/<b>", or NULL (ENOMEM). */
static char *verify_join(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    int slash = la > 0 && a[la - 1] != '/';
    char *p = malloc(la + slash + lb + 1);
    if (!p)
        return NULL;
    memcpy(p, a, la);
    if (slash)
        p[la] = '/';
    memcpy(p + la + slash, b, lb + 1);
    return p;
}

static int verify_collect(enum verify_kind kind, const char *fpath, int level, int err)
{
    struct verify_walk *w = verify_walking;
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 64;
        struct verify_entry *nv = realloc(w->v, cap * sizeof *nv);
        if (!nv)
            goto oom;
        w->v = nv;
        w->cap = cap;
    }
    /* Paths as the caller would write them: <root>/<rel>, not <root>/./<rel>. */
    char *path = level == 0 ? strdup(w->root) : verify_join(w->root, fpath + w->walked_len + 1);
    if (!path)
        goto oom;
    w->v[w->n++] = (struct verify_entry){ path, kind, err };
    return FTW_CONTINUE;
oom:
    w->err = ENOMEM;
    return FTW_STOP;
}

static int verify_on_entry(const char *fpath, const struct stat *st, int flag, struct FTW *ftw)
{
    int e = errno ? errno : EACCES;
    const char *name = fpath + ftw->base;
    int is_log = verify_has_suffix(name, VERIFY_LOG_SUFFIX);

    if (ftw->level == 1 && strcmp(name, LAYOUT_JOURNAL) == 0 &&
        (flag == FTW_D || flag == FTW_DNR))
        return FTW_SKIP_SUBTREE;              /* the type's journal: not streams */
    switch (flag) {
    case FTW_D:
        return FTW_CONTINUE;
    case FTW_DNR:
        return verify_collect(VERIFY_UNREADABLE, fpath, ftw->level, e);
    case FTW_NS:
        return verify_collect(VERIFY_UNSTATABLE, fpath, ftw->level, e);
    case FTW_SL:
    case FTW_SLN:
        return is_log ? verify_collect(VERIFY_SYMLINK, fpath, ftw->level, 0) : FTW_CONTINUE;
    default:      /* FTW_F: anything that is not a folder nor a link */
        if (!is_log)
            return FTW_CONTINUE;              /* *.snap, *.tmp, *.torn-*, other files */
        return verify_collect(S_ISREG(st->st_mode) ? VERIFY_LOG : VERIFY_SPECIAL, fpath,
                              ftw->level, 0);
    }
}

static int verify_entry_cmp(const void *a, const void *b)
{
    return strcmp(((const struct verify_entry *)a)->path, ((const struct verify_entry *)b)->path);
}

/* A stream file found by the walk: its name and place, then its content. */
static int verify_found_log(const struct aggregate_type *t, const char *root, const char *path,
                            struct verify_sink *sink)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t idlen = strlen(base) - strlen(VERIFY_LOG_SUFFIX);
    char shown[VERIFY_NAME_SHOWN + 8];
    if (idlen > AGG_ID_MAX || agg_id_valid(base, idlen) < 0) {
        verify_report(sink, path, "\"%s\" is not a valid aggregate id",
                      verify_shown(shown, sizeof shown, base, idlen));
    } else {
        char id[AGG_ID_MAX + 1], want[PATH_MAX];
        memcpy(id, base, idlen);
        id[idlen] = '\0';
        int n = layout_stream_file(want, sizeof want, root, id, VERIFY_LOG_SUFFIX);
        if (n < 0 || (size_t)n >= sizeof want || strcmp(want, path) != 0)
            verify_report(sink, path, "misplaced: the stream %s belongs at %s", id, want);
    }
    return verify_stream_into(t, path, sink);
}

static int verify_all(const struct aggregate_type *t, const char *root,
                      struct verify_sink *sink, size_t *streams)
{
    struct stat st;
    if (stat(root, &st) < 0) {
        if (errno == ENOENT)
            return 0;                         /* no stream of this type yet */
        return verify_io(sink, root, "cannot read it");
    }
    if (!S_ISDIR(st.st_mode)) {
        verify_report(sink, root, "is not a folder");
        return 0;
    }

    /* "<root>/." so that a type folder that is itself a symbolic link (say,
     * to another disk) is entered, while FTW_PHYS follows no link inside. */
    char *walked = verify_join(root, ".");
    if (!walked) {
        errno = ENOMEM;
        return verify_io(sink, root, "cannot check it");
    }
    struct verify_walk w = { .root = root, .walked_len = strlen(walked) };
    struct verify_walk *outer = verify_walking;
    verify_walking = &w;
    errno = 0;
    int rc = nftw(walked, verify_on_entry, 16, FTW_PHYS | FTW_ACTIONRETVAL);
    int e = errno;
    verify_walking = outer;
    free(walked);

    int err = 0;
    if (w.err) {
        errno = err = w.err;
        verify_io(sink, root, "cannot check it");
    } else if (rc < 0) {
        errno = err = e ? e : EIO;
        verify_io(sink, root, "cannot read it");
    }
    if (w.n)
        qsort(w.v, w.n, sizeof *w.v, verify_entry_cmp);
    for (size_t i = 0; i < w.n; i++) {
        const struct verify_entry *en = &w.v[i];
        switch (en->kind) {
        case VERIFY_LOG:
            (*streams)++;
            if (verify_found_log(t, root, en->path, sink) < 0 && !err)
                err = errno;
            break;
        case VERIFY_SYMLINK:
            (*streams)++;
            verify_report(sink, en->path, "is a symbolic link, not a stream file (not followed)");
            break;
        case VERIFY_SPECIAL:
            (*streams)++;
            verify_report(sink, en->path, "is not a regular file");
            break;
        case VERIFY_UNREADABLE:
        case VERIFY_UNSTATABLE:
            errno = en->err;
            verify_io(sink, en->path, en->kind == VERIFY_UNREADABLE ? "cannot list this folder"
                                                                    : "cannot stat it");
            if (!err)
                err = en->err;
            break;
        }
        free(en->path);
    }
    free(w.v);
    if (err) {
        errno = err;
        return -1;
    }
    return 0;
}

static int verify_one(const struct aggregate_type *t, const char *root, const char *id,
                      struct verify_sink *sink, size_t *streams)
{
    char shown[VERIFY_NAME_SHOWN + 8];
    size_t idlen = strlen(id);
    if (agg_id_valid(id, idlen) < 0) {
        verify_report(sink, root, "\"%s\" is not a valid aggregate id",
                      verify_shown(shown, sizeof shown, id, idlen));
        return 0;
    }
    char path[PATH_MAX];
    int n = layout_stream_file(path, sizeof path, root, id, VERIFY_LOG_SUFFIX);
    if (n < 0 || (size_t)n >= sizeof path) {
        errno = ENAMETOOLONG;
        return verify_io(sink, root, "cannot check it");
    }
    struct stat st;
    if (lstat(path, &st) < 0) {
        if (errno == ENOENT || errno == ENOTDIR) {
            verify_report(sink, path, "no such stream");
            return 0;
        }
        return verify_io(sink, path, "cannot read it");
    }
    (*streams)++;
    if (S_ISLNK(st.st_mode)) {
        verify_report(sink, path, "is a symbolic link, not a stream file (not followed)");
        return 0;
    }
    return verify_stream_into(t, path, sink);
}

int verify_type_counted(const struct aggregate_type *t, const char *type_dir, const char *id,
                        verify_problem_fn fn, void *arg, size_t *streams)
{
    struct verify_sink sink = { fn, arg, 0 };
    size_t scratch = 0;
    if (!streams)
        streams = &scratch;

    /* Without trailing slashes, so that paths compare with layout's. */
    size_t len = strlen(type_dir);
    while (len > 1 && type_dir[len - 1] == '/')
        len--;
    char *root = strndup(type_dir, len);
    if (!root) {
        errno = ENOMEM;
        return verify_io(&sink, type_dir, "cannot check it");
    }
    int rc = id ? verify_one(t, root, id, &sink, streams) : verify_all(t, root, &sink, streams);
    int e = errno;
    free(root);
    if (rc < 0) {
        errno = e;
        return -1;
    }
    return sink.problems;
}

int verify_type(const struct aggregate_type *t, const char *type_dir, const char *id,
                verify_problem_fn fn, void *arg)
{
    return verify_type_counted(t, type_dir, id, fn, arg, NULL);
}
