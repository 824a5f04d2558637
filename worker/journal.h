/*
 * journal — the write-ahead journal of one aggregate type.
 *
 *   <type_dir>/journal/<first position, 20 digits>.wal
 *
 * Segments are evlog files (lib/evlog.h: magic, then length + CRC32C +
 * EventRecord) holding two kinds of record:
 *   - an event: the exact record that goes into its stream's log, with
 *     `position` (its place in the type's global order, consecutive from 1
 *     across segments), `stream` (the aggregate id) and `stream_offset`
 *     (where it lies in the stream's log file);
 *   - a checkpoint: type "$checkpoint", `version` = the position up to
 *     which every stream file is known to be synced.
 * The current segment is preallocated to its full size (fallocate), so
 * that a sync writes data only, not a new file size and new blocks each
 * time; its zeros after the last record are room, not a torn tail
 * (EVLOG_PREALLOCATED), and a full segment is cut back to its records when
 * the next one begins.
 * A batch is appended with one write and made durable with one fdatasync
 * before any reply leaves; the stream files are written without a sync, and
 * a checkpoint later syncs them. After a crash, the events after the last
 * checkpoint are written again into their stream files (see host.c).
 *
 * The journal folder is flock'ed while open: a second process (a second
 * worker of the type, or a second cqrsd on the same data directory) is
 * refused instead of interleaving writes.
 *
 * `journal/checkpoint` holds the last checkpoint's position (with a CRC) as
 * a hint: opening trusts the segments wholly before it and checks only the
 * rest.
 *
 * Opening checks every segment it reads: a torn tail is allowed in the last one only
 * (cut away, as evlog does); positions must follow each other; anything
 * else is corruption and the worker refuses to start. A failed sync never
 * counts as success (PostgreSQL's fsyncgate lesson): the batch is cut back,
 * its commands fail, and the journal continues in a new segment.
 */
#ifndef CQRS_JOURNAL_H
#define CQRS_JOURNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "cqrs.pb-c.h"

#define JOURNAL_CHECKPOINT "$checkpoint"

struct journal;

struct journal_info {
    uint64_t last_position;    /* of the last event (0: none yet) */
    uint64_t checkpoint;       /* position covered by the last checkpoint */
    size_t segments;
    off_t truncated_bytes;     /* torn tail cut from the last segment */
    uint64_t unchecked;        /* events after the checkpoint */
};

/* Opens (creating) the journal in `dir`. 0, -1 with errno, or EVLOG_CORRUPT
 * with one sentence in `err` (also when another process holds it). */
int journal_open(const char *dir, off_t segment_bytes, struct journal **out,
                 struct journal_info *info, char *err, size_t errlen);
void journal_free(struct journal *j);

/* Every event record with position > `after`, in order, with its encoded
 * bytes (`raw`, `len`: what belongs in its stream file). A non-zero return
 * from `fn` stops and is returned. */
typedef int (*journal_fn)(void *arg, const Cqrs__EventRecord *rec, const uint8_t *raw, size_t len);
int journal_replay(struct journal *j, uint64_t after, journal_fn fn, void *arg);

/* Appends encoded event records (one write), the last of which has
 * `last_position`, and syncs when `sync`. On failure the segment is cut
 * back to where it was, the next append goes to a new segment, and -1 is
 * returned with errno. */
int journal_append(struct journal *j, const uint8_t *buf, size_t len, uint64_t last_position,
                   int sync);
/* Position of the last event appended. */
uint64_t journal_last(const struct journal *j);
/* fdatasync of what was appended unsynced (fsync = batch). */
int journal_sync(struct journal *j);
/* Appends a synced checkpoint record for `position`. */
int journal_checkpoint(struct journal *j, uint64_t position);
uint64_t journal_checkpointed(const struct journal *j);

/* Deletes segments wholly at or before the checkpoint once they are beyond
 * `keep_bytes` of journal or older than `keep_s` seconds. Returns how many. */
int journal_gc(struct journal *j, uint64_t keep_bytes, unsigned keep_s);

#endif
