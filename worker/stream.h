/*
 * stream — one aggregate as its worker holds it: the state rebuilt from its
 * log, its version, where each of its records lies, the window of recent
 * command ids (idempotency), and the records of the current batch that are
 * not yet written.
 *
 * Invariants: records 1..durable are in the log file; durable+1..version
 * are in `pending` (encoded, in order) and reach the file at commit; the
 * state reflects every record 1..version.
 */
#ifndef CQRS_STREAM_H
#define CQRS_STREAM_H

#include <stdint.h>
#include <sys/types.h>
#include <uthash.h>

#include "aggregate.h"
#include "cqrs.pb-c.h"
#include "evlog.h"

#define STREAM_CMD_WINDOW 1000   /* command ids remembered per stream */

/* Where a record lies in the log, in 8 bytes: its offset (40 bits: logs
 * up to 1 TB) and its payload's length less one (24 bits: 1 to 16 MB, as
 * EVLOG_MAX_RECORD allows). */
struct stream_rec {
    uint64_t at;
};
#define STREAM_REC_MAX_OFFSET ((1ull << 40) - 1)

/* `size`: the whole record's, header included (checked by the caller). */
static inline struct stream_rec stream_rec_make(off_t offset, size_t size)
{
    return (struct stream_rec){ (uint64_t)offset << 24 | (uint64_t)(size - EVLOG_HEADER_LEN - 1) };
}

static inline off_t stream_rec_offset(struct stream_rec r)
{
    return (off_t)(r.at >> 24);
}

/* The whole record's size, header included. */
static inline size_t stream_rec_size(struct stream_rec r)
{
    return (size_t)(r.at & ((1u << 24) - 1)) + 1 + EVLOG_HEADER_LEN;
}

struct stream_buf {
    uint8_t *data;
    size_t len, cap;
};

struct stream_walk {             /* where stream_read's walk through older records is */
    uint64_t v;
    off_t off;
};

struct stream_cmd {              /* one remembered command id */
    char *command_id;
    uint64_t first;              /* version of its first event */
    uint32_t count;              /* events it appended */
    UT_hash_handle hh;
};

struct stream {
    const struct aggregate_type *type;
    void *state;
    uint64_t version;
    uint64_t durable;             /* version in the file */
    struct evlog *log;            /* NULL until the first append, and while detached */
    off_t detached_size;          /* detached (log NULL): its log's size; 0: no log */
    struct stream_rec *recs;      /* recs[v-1-rec_base] for version v > rec_base */
    uint64_t rec_base;            /* versions up to here came from a snapshot */
    uint64_t snap_version;        /* version of the latest snapshot (0: none) */
    struct stream_walk *walk;     /* allocated by the first walk (reads before rec_base) */
    struct stream_cmd *cmds;      /* hash by command id, oldest first */
    struct stream_buf *pending;   /* encoded records not yet written (NULL: none) */
    char *detail;                 /* why, for CORRUPT replies: file and offset (NULL: none) */
    uint32_t recs_cap;
    uint32_t written_epoch;       /* store_epoch (low bits) when last listed for a checkpoint */
    uint32_t last_used_s;         /* monotonic seconds */
    uint32_t open_slot;           /* in_open: its place in the host's array of open logs */
    /* flags, as bits: a worker holds up to a million streams */
    unsigned dirty : 1;           /* in the batch's list of streams to write */
    unsigned in_lru : 1, in_open : 1;   /* counted as loaded; its log in the open array */
    unsigned used : 1, used_open : 1;   /* used since the eviction clocks last passed */
    unsigned drop_candidate : 1;  /* in the batch's list of streams maybe to drop */
    unsigned batch_failed : 1;    /* its batch never reached the journal */
    signed int corrupt : 2;       /* 1 quarantined: every request gets CORRUPT;
                                     -1 failed (I/O): dropped after the batch */
    char id[];                    /* the aggregate id, as long as it is */
};

/* A stream with no events and no log yet (stream_load fills it), or NULL
 * when out of memory. */
struct stream *stream_new(const struct aggregate_type *type, const char *id);
/* Sets the sentence that CORRUPT and INTERNAL replies give (printf-style;
 * kept short). */
void stream_set_detail(struct stream *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* That sentence, or "" when there is none. */
const char *stream_detail(const struct stream *s);

/* Loads the stream `id` of `type` from `path` (absent: a new, empty stream),
 * starting from the snapshot at `snap_path` when there is a good one (a bad
 * or stale one is ignored, with the reason in `note`, and the whole log is
 * replayed). Returns NULL only when out of memory; a log that fails its
 * checks gives a quarantined stream, an I/O error a stream with `corrupt` =
 * -1 (INTERNAL, not kept). `truncated` is set to the bytes of a torn tail
 * cut away. */
struct stream *stream_load(const struct aggregate_type *type, const char *id,
                           const char *path, const char *snap_path, off_t *truncated,
                           char *note, size_t notelen);
/* Writes a snapshot of the (durable) state to `snap_path`. 0 or -1. */
int stream_snapshot(struct stream *s, const char *snap_path);
void stream_free(struct stream *s);

/* The remembered command, or NULL. */
struct stream_cmd *stream_find_cmd(struct stream *s, const char *command_id);

/* Adds one event (already decided) to the batch: encodes its record, with
 * `position` and its place in the file, into `pending`, evolves the state,
 * and points *rec / *len at the encoded bytes (valid until the next add).
 * -1 with errno on failure (ENOMEM, EFBIG, or EINVAL when the state refuses
 * the event: a decider bug). */
int stream_add(struct stream *s, const struct agg_event *ev, int64_t now_us,
               const Cqrs__Command *cmd, uint64_t position, const uint8_t **rec, size_t *len);
/* Remembers that `command_id` appended versions first..first+count-1. */
int stream_remember(struct stream *s, const char *command_id, uint64_t first, uint32_t count);

/* Writes `pending` to the log, unsynced (the journal holds the durable
 * copy), creating the file at `path` and its folder if needed (*created
 * says so). -1 with errno on failure. */
int stream_commit(struct stream *s, const char *path, int *created);

/* Reads record `version` (1-based) from the file or from pending, decoded
 * with `alloc` (NULL: malloc); a detached stream must be attached first
 * when the record is in its file. */
int stream_read(struct stream *s, uint64_t version, ProtobufCAllocator *alloc,
                Cqrs__EventRecord **out);
/* The encoded EventRecord of `version` while it is still pending (appended
 * in this batch, not yet written): 0 with *p and *len, or -1. */
int stream_pending_record(const struct stream *s, uint64_t version, const uint8_t **p,
                          size_t *len);

/* Closes the log file and frees what keeps it, remembering only its size:
 * most loaded streams wait, their files closed (open_files), and cost
 * nothing for them. */
void stream_detach(struct stream *s);
/* Opens the log at `path` again after stream_detach (nothing to do when
 * attached or without a log). 0, or -1 with errno. */
int stream_attach(struct stream *s, const char *path);
/* It has a log file (attached or not). */
int stream_has_log(const struct stream *s);

#endif
