/* stream — see stream.h. */
#include "stream.h"

#include "crc32c.h"
#include "frame.h"
#include "pbarena.h"
#include "snapshot.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

/* Where the next byte of `pending` will land in the file. */
static off_t stream_base(const struct stream *s)
{
    return s->log ? evlog_size(s->log) : s->detached_size ? s->detached_size : EVLOG_MAGIC_LEN;
}

static int stream_push_rec(struct stream *s, off_t offset, size_t size)
{
    if (offset < 0 || (uint64_t)offset > STREAM_REC_MAX_OFFSET || size <= EVLOG_HEADER_LEN ||
        size - EVLOG_HEADER_LEN > EVLOG_MAX_RECORD) {   /* what stream_rec_make holds */
        errno = EFBIG;
        return -1;
    }
    if (s->version - s->rec_base + 1 > s->recs_cap) {
        size_t ncap = s->recs_cap ? (size_t)s->recs_cap * 2 : 1;   /* most streams are short */
        if (ncap > UINT32_MAX) {   /* 32 GB of index */
            errno = EFBIG;
            return -1;
        }
        struct stream_rec *n = realloc(s->recs, ncap * sizeof *n);
        if (!n) {
            errno = ENOMEM;
            return -1;
        }
        s->recs = n;
        s->recs_cap = (uint32_t)ncap;
    }
    s->recs[s->version - s->rec_base] = stream_rec_make(offset, size);
    s->version++;
    return 0;
}

/* Decodes one event and applies it to the state. -1: EPROTO (undecodable
 * or unknown type) or EINVAL (the state refuses it). */
static int stream_evolve(struct stream *s, const char *type, const uint8_t *data, size_t len)
{
    const ProtobufCMessageDescriptor *d = agg_find_desc(s->type->events, type);
    if (!d) {
        errno = EPROTO;
        return -1;
    }
    _Alignas(16) uint8_t mem[1024];   /* the event is decoded here, then forgotten */
    struct pbarena arena;
    pbarena_init(&arena, mem, sizeof mem);
    ProtobufCMessage *ev = protobuf_c_message_unpack(d, &arena.alloc, len, data);
    if (!ev) {
        pbarena_reset(&arena);
        errno = EPROTO;
        return -1;
    }
    errno = 0;
    int rc = s->type->evolve(s->state, ev);
    int e = errno;
    pbarena_reset(&arena);
    if (rc < 0)
        errno = e == ENOMEM ? ENOMEM : EINVAL;
    return rc;
}

static int stream_replay(void *arg, const Cqrs__EventRecord *rec, off_t offset, size_t size)
{
    struct stream *s = arg;
    if (stream_evolve(s, rec->type, rec->data.data, rec->data.len) < 0) {
        if (errno == ENOMEM)
            return -1;   /* not the log's fault: INTERNAL, not quarantine */
        stream_set_detail(s, "event %llu (%s) %s",
                 (unsigned long long)rec->version, rec->type,
                 errno == EINVAL ? "contradicts the state before it" : "is unknown or does not decode");
        return EVLOG_CORRUPT;
    }
    if (stream_push_rec(s, offset, size) < 0 ||
        (rec->command_id[0] && stream_remember(s, rec->command_id, rec->version, 1) < 0))
        return -1;
    return 0;
}

/* Checks that the snapshot's log_offset is where the record after its
 * version starts (or the end of the log), so replay can resume there. */
static int stream_snapshot_fits(const char *path, const struct snapshot *snap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    struct stat st;
    int ok = fstat(fd, &st) == 0 && (uint64_t)st.st_size >= snap->log_offset;
    if (ok && (uint64_t)st.st_size > snap->log_offset) {
        /* only the record there is read: the point is not to read the rest */
        uint8_t hdr[EVLOG_HEADER_LEN];
        ok = pread(fd, hdr, sizeof hdr, (off_t)snap->log_offset) == sizeof hdr;
        uint32_t len = ok ? frame_get32(hdr) : 0;
        ok = ok && len > 0 && len <= EVLOG_MAX_RECORD &&
             snap->log_offset + EVLOG_HEADER_LEN + len <= (uint64_t)st.st_size;
        uint8_t *payload = ok ? malloc(len) : NULL;
        ok = ok && payload && pread(fd, payload, len, (off_t)snap->log_offset + EVLOG_HEADER_LEN) ==
                                  (ssize_t)len &&
             crc32c(0, payload, len) == frame_get32(hdr + 4);
        Cqrs__EventRecord *rec = ok ? cqrs__event_record__unpack(NULL, len, payload) : NULL;
        ok = ok && rec && rec->version == snap->version + 1;
        if (rec)
            cqrs__event_record__free_unpacked(rec, NULL);
        free(payload);
    }
    close(fd);
    return ok;
}

/* Starts `s` from the snapshot at `snap_path`: 1 when it did, with *offset
 * where its log goes on, 0 when there is none or it does not fit (full
 * replay), with the reason in `note`. */
static int stream_from_snapshot(struct stream *s, const char *path, const char *snap_path,
                                off_t *offset,
                                char *note, size_t notelen)
{
    struct snapshot *snap;
    char why[200];
    if (snapshot_read(snap_path, s->type->snapshot_version, &snap, why, sizeof why) < 0) {
        if (errno != ENOENT)
            snprintf(note, notelen, "snapshot ignored: %s", why);
        return 0;
    }
    void *state = NULL;
    if (!stream_snapshot_fits(path, snap)) {
        snprintf(note, notelen, "snapshot ignored: it does not match the log (version %llu at "
                 "byte %llu)", (unsigned long long)snap->version,
                 (unsigned long long)snap->log_offset);
    } else if (!(state = s->type->state_unpack(snap->state, snap->state_len))) {
        snprintf(note, notelen, "snapshot ignored: its state does not unpack");
    } else {
        s->type->state_free(s->state);
        s->state = state;
        s->version = s->rec_base = s->snap_version = snap->version;
        *offset = (off_t)snap->log_offset;
        for (size_t i = 0; i < snap->n_cmds; i++)
            stream_remember(s, snap->cmds[i].command_id, snap->cmds[i].first, snap->cmds[i].count);
    }
    snapshot_free(snap);
    return state != NULL;
}

/* Back to a new stream's state, for a full replay. */
static int stream_reset(struct stream *s)
{
    struct stream_cmd *c, *tmp;
    HASH_ITER(hh, s->cmds, c, tmp) {
        HASH_DEL(s->cmds, c);
        free(c->command_id);
        free(c);
    }
    s->type->state_free(s->state);
    s->state = s->type->state_new();
    s->version = s->rec_base = s->snap_version = 0;
    return s->state ? 0 : -1;
}

struct stream *stream_new(const struct aggregate_type *type, const char *id)
{
    size_t len = strnlen(id, AGG_ID_MAX);
    struct stream *s = calloc(1, offsetof(struct stream, id) + len + 1);   /* no tail padding */
    if (!s)
        return NULL;
    memcpy(s->id, id, len);
    s->type = type;
    return s;
}

void stream_set_detail(struct stream *s, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    char *d = strdup(buf);
    if (!d)
        return;   /* the reply then says less: out of memory already fails it */
    free(s->detail);
    s->detail = d;
}

const char *stream_detail(const struct stream *s)
{
    return s->detail ? s->detail : "";
}

struct stream *stream_load(const struct aggregate_type *type, const char *id,
                           const char *path, const char *snap_path, off_t *truncated,
                           char *note, size_t notelen)
{
    struct stream *s = stream_new(type, id);
    if (!s)
        return NULL;
    s->state = type->state_new();
    if (!s->state) {
        free(s);
        return NULL;
    }
    *truncated = 0;
    note[0] = '\0';
    struct evlog_open_info info;
    int rc;
    off_t snap_offset;
    if (type->snapshot_version && snap_path &&
        stream_from_snapshot(s, path, snap_path, &snap_offset, note, notelen)) {
        rc = evlog_open_at(path, 0, snap_offset, s->version, stream_replay, s, &s->log, &info);
        if (rc != 0 && !(rc == -1 && errno == ENOENT)) {
            snprintf(note, notelen, "snapshot ignored: replay after it failed");
            free(s->detail);
            s->detail = NULL;
            if (stream_reset(s) < 0) {
                stream_free(s);
                return NULL;
            }
            rc = evlog_open(path, 0, stream_replay, s, &s->log, &info);
        }
    } else {
        rc = evlog_open(path, 0, stream_replay, s, &s->log, &info);
    }
    if (rc == 0) {
        *truncated = info.truncated_bytes;
    } else if (rc == -1 && errno == ENOENT) {
        /* a new stream: its file is created by its first append */
    } else if (rc == EVLOG_CORRUPT) {
        char what[512];
        snprintf(what, sizeof what, "%s", s->detail ? s->detail : info.detail);
        /* the reply names the file and the offset, for whoever repairs it */
        stream_set_detail(s, "%.300s: %.200s", path, what);
        s->corrupt = 1;
    } else {
        stream_set_detail(s, "cannot read its log: %s", strerror(errno));
        s->corrupt = -1;
    }
    s->durable = s->version;
    return s;
}

int stream_snapshot(struct stream *s, const char *snap_path)
{
    if (!s->type->snapshot_version || !stream_has_log(s) || s->version == 0 ||
        s->version > s->durable) {
        errno = EINVAL;
        return -1;
    }
    struct snapshot snap = { .snapshot_version = s->type->snapshot_version, .version = s->version,
                             .log_offset = (uint64_t)stream_base(s) };
    uint8_t scratch[512];
    ProtobufCBufferSimple buf = PROTOBUF_C_BUFFER_SIMPLE_INIT(scratch);
    s->type->state_pack(s->state, &buf.base);
    snap.state = buf.data;
    snap.state_len = buf.len;
    size_t n = HASH_COUNT(s->cmds), i = 0;
    snap.cmds = n ? calloc(n, sizeof *snap.cmds) : NULL;
    if (n && !snap.cmds) {
        PROTOBUF_C_BUFFER_SIMPLE_CLEAR(&buf);
        errno = ENOMEM;
        return -1;
    }
    for (struct stream_cmd *c = s->cmds; c; c = c->hh.next)   /* oldest first */
        snap.cmds[i++] = (struct snapshot_cmd){ c->command_id, c->first, c->count };
    snap.n_cmds = n;
    int rc = snapshot_write(snap_path, &snap);
    int e = errno;
    free(snap.cmds);
    PROTOBUF_C_BUFFER_SIMPLE_CLEAR(&buf);
    if (rc == 0)
        s->snap_version = s->version;
    errno = e;
    return rc;
}

void stream_free(struct stream *s)
{
    if (!s)
        return;
    struct stream_cmd *c, *tmp;
    HASH_ITER(hh, s->cmds, c, tmp) {
        HASH_DEL(s->cmds, c);
        free(c->command_id);
        free(c);
    }
    if (s->state)
        s->type->state_free(s->state);
    evlog_free(s->log);
    free(s->recs);
    if (s->pending)
        free(s->pending->data);
    free(s->pending);
    free(s->detail);
    free(s->walk);
    free(s);
}

struct stream_cmd *stream_find_cmd(struct stream *s, const char *command_id)
{
    struct stream_cmd *c;
    HASH_FIND_STR(s->cmds, command_id, c);
    return c;
}

int stream_remember(struct stream *s, const char *command_id, uint64_t first, uint32_t count)
{
    struct stream_cmd *c = stream_find_cmd(s, command_id);
    if (c) {
        if (c->first + c->count == first)   /* more events of the same command */
            c->count += count;
        return 0;
    }
    /* uthash keeps insertion order: the head is the oldest. */
    if (HASH_COUNT(s->cmds) >= STREAM_CMD_WINDOW) {
        struct stream_cmd *old = s->cmds;
        HASH_DEL(s->cmds, old);
        free(old->command_id);
        free(old);
    }
    c = calloc(1, sizeof *c);
    if (!c || !(c->command_id = strdup(command_id))) {
        free(c);
        errno = ENOMEM;
        return -1;
    }
    c->first = first;
    c->count = count;
    HASH_ADD_KEYPTR(hh, s->cmds, c->command_id, strlen(c->command_id), c);
    return 0;
}

int stream_has_log(const struct stream *s)
{
    return s->log || s->detached_size;
}

void stream_detach(struct stream *s)
{
    if (!s->log)
        return;
    s->detached_size = evlog_size(s->log);
    evlog_free(s->log);
    s->log = NULL;
}

int stream_attach(struct stream *s, const char *path)
{
    if (s->log || !s->detached_size)
        return 0;
    if (evlog_attach(path, s->detached_size, &s->log) < 0)
        return -1;
    s->detached_size = 0;
    return 0;
}

int stream_add(struct stream *s, const struct agg_event *ev, int64_t now_us,
               const Cqrs__Command *cmd, uint64_t position, const uint8_t **out, size_t *out_len)
{
    Cqrs__EventRecord rec = CQRS__EVENT_RECORD__INIT;
    rec.version = s->version + 1;
    rec.timestamp_us = now_us;
    rec.type = (char *)ev->desc->short_name;
    rec.data.data = ev->data;
    rec.data.len = ev->len;
    rec.command_id = cmd->command_id;

    Cqrs__EventRecord__MetadataEntry *md = NULL, **mdp = NULL;
    if (cmd->n_metadata) {
        md = calloc(cmd->n_metadata, sizeof *md);
        mdp = calloc(cmd->n_metadata, sizeof *mdp);
        if (!md || !mdp) {
            free(md);
            free(mdp);
            errno = ENOMEM;
            return -1;
        }
        for (size_t i = 0; i < cmd->n_metadata; i++) {
            cqrs__event_record__metadata_entry__init(&md[i]);
            md[i].key = cmd->metadata[i]->key;
            md[i].value = cmd->metadata[i]->value;
            mdp[i] = &md[i];
        }
        rec.n_metadata = cmd->n_metadata;
        rec.metadata = mdp;
    }
    if (!s->pending && !(s->pending = calloc(1, sizeof *s->pending))) {
        free(md);
        free(mdp);
        errno = ENOMEM;
        return -1;
    }
    struct stream_buf *b = s->pending;
    off_t offset = stream_base(s) + (off_t)b->len;
    size_t at = b->len;
    rec.position = position;
    rec.stream = s->id;
    rec.stream_offset = (uint64_t)offset;
    ssize_t size = evlog_encode(&rec, &b->data, &b->len, &b->cap);
    free(md);
    free(mdp);
    if (size < 0)
        return -1;
    if (stream_evolve(s, rec.type, ev->data, ev->len) < 0)
        return -1;
    *out = b->data + at;
    *out_len = (size_t)size;
    return stream_push_rec(s, offset, (size_t)size);
}

int stream_commit(struct stream *s, const char *path, int *created)
{
    *created = 0;
    if (!s->pending || s->pending->len == 0)
        return 0;
    if (!s->log && s->detached_size) {
        if (stream_attach(s, path) < 0)
            return -1;
    } else if (!s->log) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash)
            *slash = '\0';
        if (mkdir(dir, 0700) < 0 && errno != EEXIST)
            return -1;
        if (evlog_open(path, EVLOG_CREATE, NULL, NULL, &s->log, NULL) != 0) {
            if (errno == 0)
                errno = EIO;
            return -1;
        }
        *created = 1;
    }
    if (evlog_append(s->log, s->pending->data, s->pending->len, 0) < 0)
        return -1;
    /* written: the buffer goes, as most streams wait long for their next
     * batch (a hot one pays one malloc a batch) */
    free(s->pending->data);
    free(s->pending);
    s->pending = NULL;
    s->durable = s->version;
    return 0;
}

/* Where record `version` starts and how long it is. Versions before the
 * in-memory index (loaded from a snapshot) are found by walking the
 * headers from the start of the file, resuming from the last walk. */
static int stream_locate(struct stream *s, uint64_t version, off_t *off, size_t *size)
{
    if (version > s->rec_base) {
        struct stream_rec r = s->recs[version - 1 - s->rec_base];
        *off = stream_rec_offset(r);
        *size = stream_rec_size(r);
        return 0;
    }
    if (!s->walk && !(s->walk = calloc(1, sizeof *s->walk))) {
        errno = ENOMEM;
        return -1;
    }
    struct stream_walk *w = s->walk;
    if (!w->v || w->v > version) {
        w->v = 1;
        w->off = EVLOG_MAGIC_LEN;
    }
    uint8_t hdr[EVLOG_HEADER_LEN];
    for (;;) {
        if (pread(evlog_fd(s->log), hdr, sizeof hdr, w->off) != sizeof hdr) {
            w->v = 0;
            errno = EIO;
            return -1;
        }
        size_t len = EVLOG_HEADER_LEN + frame_get32(hdr);
        if (w->v == version) {
            *off = w->off;
            *size = len;
            return 0;
        }
        w->off += (off_t)len;
        w->v++;
    }
}

int stream_pending_record(const struct stream *s, uint64_t version, const uint8_t **p,
                          size_t *len)
{
    if (version <= s->durable || version > s->version || version <= s->rec_base || !s->pending)
        return -1;
    struct stream_rec r = s->recs[version - 1 - s->rec_base];
    *p = s->pending->data + (size_t)(stream_rec_offset(r) - stream_base(s)) + EVLOG_HEADER_LEN;
    *len = stream_rec_size(r) - EVLOG_HEADER_LEN;
    return 0;
}

int stream_read(struct stream *s, uint64_t version, ProtobufCAllocator *alloc,
                Cqrs__EventRecord **out)
{
    if (version == 0 || version > s->version) {
        errno = EINVAL;
        return -1;
    }
    const uint8_t *p;
    size_t len;
    if (stream_pending_record(s, version, &p, &len) < 0) {   /* in the file */
        off_t off;
        if (!s->log) {
            errno = EBADF;   /* detached: stream_attach first */
            return -1;
        }
        if (stream_locate(s, version, &off, &len) < 0)
            return -1;
        return evlog_read(s->log, off, len, alloc, out);
    }
    if (!(*out = cqrs__event_record__unpack(alloc, len, p))) {
        errno = EIO;
        return -1;
    }
    return 0;
}
