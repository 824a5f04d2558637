/*
 * store — the durable storage of one aggregate type: its write-ahead
 * journal, the stream files behind it, checkpoints and recovery.
 *
 * A batch: the host numbers each new event (store_next_position), encodes
 * it once with its position, stream and stream offset, stages the bytes
 * here (store_stage) and keeps them for the stream file; store_commit
 * appends the staged records to the journal with one write and, with
 * fsync = always, one fdatasync. Only then does the host write the stream
 * files (unsynced, store_written) and reply.
 *
 * Checkpoint: every checkpoint_ms, a background thread fdatasyncs the stream
 * files written since the last checkpoint (and the folders of new files);
 * then a checkpoint record names the position covered, and journal segments
 * wholly before it are deleted beyond the retention. The event loop never
 * waits for those syncs.
 *
 * Recovery (at start, and whenever a stream file write or sync failed):
 * every journal event after the last checkpoint is compared with its stream
 * file at its offset and written there when missing or different (always
 * rewritten after a failed sync, whose pages cannot be trusted), and files
 * are cut after the last journaled record; the next checkpoint syncs them.
 * Until then the journal still holds those events, so a crash during or
 * after recovery is harmless: the next start does the same again.
 *
 * fsync modes: always (journal synced before any reply), batch (synced at
 * most every batch_interval_ms; replies may precede it), never (no fsync at
 * all: the kernel decides).
 */
#ifndef CQRS_STORE_H
#define CQRS_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <event2/event.h>

enum store_fsync { STORE_FSYNC_ALWAYS, STORE_FSYNC_BATCH, STORE_FSYNC_NEVER };

struct store_options {
    enum store_fsync fsync;
    unsigned batch_interval_ms;
    unsigned checkpoint_ms;
    off_t segment_bytes;
    uint64_t retention_bytes;
    unsigned retention_s;
    unsigned snapshot_every;        /* events between snapshots of a stream (0: none) */
    unsigned open_files;            /* stream log files kept open at most */
    unsigned max_aggregates;        /* streams kept in memory at most */
    unsigned idle_timeout_s;        /* unused this long: evicted (0: never) */
};

struct store;

struct store_stats {
    uint64_t batches, events, journal_syncs, position, checkpoint;
};

/* Opens the journal of `type_dir` and recovers the stream files from it.
 * NULL with one sentence in `err` when the journal is corrupt or unusable. */
struct store *store_open(struct event_base *base, const char *type_dir,
                         const struct store_options *opt, char *err, size_t errlen);
void store_free(struct store *st);

/* The position of the last event committed. */
uint64_t store_position(const struct store *st);
/* The position the next event gets. */
uint64_t store_next_position(const struct store *st);
/* Adds one encoded record (position = store_next_position) to the batch. */
int store_stage(struct store *st, const uint8_t *rec, size_t len);
/* Makes the staged batch durable in the journal. 0, or -1 with errno: the
 * batch is gone (cut back) and its positions will be given again. */
int store_commit(struct store *st);
/* The encoded records (evlog records: header + EventRecord) of the batch
 * the last successful store_commit made durable; valid until the next
 * store_stage. *len 0: none. */
const uint8_t *store_committed(const struct store *st, size_t *len);
/* Changes whenever the files written so far have been handed to a
 * checkpoint: a file written again within one epoch need not be listed
 * again. Starts at 1. */
uint64_t store_epoch(const struct store *st);
/* A stream file was written after the commit (`new_file`: created now). */
void store_written(struct store *st, const char *path, int new_file);
/* A stream file write failed after the commit: the journal holds its
 * events; the stream files are repaired from it before any more loads. */
void store_write_failed(struct store *st);
/* Repairs when needed. 0 when the stream files hold every journaled event,
 * -1 with one sentence in `err`. */
int store_ensure_repaired(struct store *st, char *err, size_t errlen);

/* Counters since the worker started, and the journal's positions. */
void store_get_stats(const struct store *st, struct store_stats *out);

#endif
