/*
 * evlog — one append-only event log file per stream.
 *
 * Format (fixed):
 *
 *   file   = magic record*
 *   magic  = "CQRSLOG1"                       8 bytes
 *   record = length crc payload
 *   length = uint32 big-endian                bytes of payload (1..EVLOG_MAX_RECORD)
 *   crc    = uint32 big-endian                CRC32C (Castagnoli) of payload
 *   payload = one cqrs.EventRecord, protobuf-encoded
 *
 * Versions inside a file are consecutive from 1.
 *
 * Recovery rules (evlog_open):
 *   - a file shorter than the magic that is a prefix of it (a crash while
 *     creating it) is an empty stream: it is reset to the bare magic;
 *   - a last record that runs past the end of the file, or whose CRC fails
 *     and that ends exactly at the end of the file or where only zeros
 *     follow, is a torn tail: it is truncated away (its bytes kept in
 *     `<path>.torn-<µs>`) and the caller is told how many bytes went; so is
 *     a tail of zeros where a record would start (a file grown by a crash
 *     before its data reached the disk);
 *   - with EVLOG_PREALLOCATED, a tail of zeros is space made ready for
 *     appends (evlog_preallocate): it is left as it is and not counted;
 *   - anything else that fails (bad magic, a bad record followed by more
 *     bytes, an undecodable payload, a version out of sequence) is
 *     corruption: EVLOG_CORRUPT, and the file is left as it is; so is a
 *     record that claims to run past the end while a whole record with a
 *     good CRC lies further on (its length was damaged: cutting there would
 *     lose acknowledged events).
 *
 * Appends write a whole batch with one write at the end of the file, then
 * (when asked) fdatasync; on failure the file is cut back to its previous
 * length so no unacknowledged record remains.
 *
 * This module never logs: it returns 0, -1 with errno, or EVLOG_CORRUPT.
 */
#ifndef CQRS_EVLOG_H
#define CQRS_EVLOG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "cqrs.pb-c.h"

#define EVLOG_MAGIC "CQRSLOG1"
#define EVLOG_MAGIC_LEN 8
#define EVLOG_HEADER_LEN 8               /* length + crc */
#define EVLOG_MAX_RECORD (16u << 20)     /* a record larger than this is corrupt */

enum { EVLOG_CORRUPT = -2 };

/* evlog_open flags */
enum {
    EVLOG_CREATE = 1,         /* create a missing file (mode 0600) */
    EVLOG_READONLY = 2,       /* check only: never truncate or write (a torn
                                 tail is reported, not cut) */
    EVLOG_ANY_VERSIONS = 4,   /* records of many streams (the journal): no
                                 version sequence to check */
    EVLOG_PREALLOCATED = 8,   /* the file may run on past its records in
                                 zeros: see the recovery rules */
};

struct evlog;

/* One record met during replay. `rec` is valid for the call only. */
typedef int (*evlog_replay_fn)(void *arg, const Cqrs__EventRecord *rec,
                               off_t offset, size_t size);

struct evlog_open_info {
    uint64_t records;          /* records replayed */
    off_t truncated_bytes;     /* torn tail cut away (0: none) */
    char detail[160];          /* on EVLOG_CORRUPT: what and where */
};

/* Opens the log at `path` (flags above), checks it and replays every record
 * through `fn` (may be NULL) in order. A non-zero return from `fn` stops and
 * is returned. A torn tail is copied to `<path>.torn-<µs since the epoch>`
 * before it is cut away. Returns 0, -1 (errno; ENOENT when absent and not
 * EVLOG_CREATE), or EVLOG_CORRUPT. */
int evlog_open(const char *path, int flags, evlog_replay_fn fn, void *arg,
               struct evlog **out, struct evlog_open_info *info);
/* The same, trusting the bytes before `start` (a record boundary, e.g. from
 * a snapshot) and replaying from there; `start_version` is the version of
 * the record that ends at `start` (info->records counts from it). A start
 * outside the file is EVLOG_CORRUPT. */
int evlog_open_at(const char *path, int flags, off_t start, uint64_t start_version,
                  evlog_replay_fn fn, void *arg, struct evlog **out, struct evlog_open_info *info);
/* Opens again, for appending and reading, a log this process opened before
 * and whose size it kept (see evlog_size): no checks, no replay. 0, or -1
 * with errno. */
int evlog_attach(const char *path, off_t size, struct evlog **out);
void evlog_free(struct evlog *log);
/* The file descriptor (for reads by the caller), reopened if parked; -1. */
int evlog_fd(struct evlog *log);
/* Closes the file descriptor until the log is used again (a bounded number
 * of open files for many streams). */
void evlog_park(struct evlog *log);
int evlog_is_open(const struct evlog *log);

/* Bytes in the file (magic included): where the next record goes. */
off_t evlog_size(const struct evlog *log);

/* Encodes one record (header + payload) onto `buf`/`len`/`cap` (grown with
 * realloc). Returns the record's size, or -1 (ENOMEM, or EFBIG when over
 * EVLOG_MAX_RECORD). */
ssize_t evlog_encode(const Cqrs__EventRecord *rec, uint8_t **buf, size_t *len, size_t *cap);

/* Makes the file `bytes` long ahead of the appends (fallocate: the blocks
 * are reserved and read as zeros), so that a sync after an append writes
 * data only, not a new size and new blocks each time; open such a file with
 * EVLOG_PREALLOCATED. 0, or -1 with errno (the log is unchanged and works
 * as before: nothing depends on it). */
int evlog_preallocate(struct evlog *log, off_t bytes);
/* Cuts the file back to its records (the preallocated rest). 0 or -1. */
int evlog_trim(struct evlog *log);

/* Appends `len` bytes of encoded records, then fdatasyncs when `sync`.
 * On failure the file is cut back and -1 returned with errno. */
int evlog_append(struct evlog *log, const uint8_t *buf, size_t len, int sync);

/* fdatasync (and, for a new file, its directory entry). 0 or -1 with errno. */
int evlog_sync(struct evlog *log);

/* Reads and decodes, with `alloc` (NULL: malloc), the record at `offset` of
 * `size` bytes (as given to the replay callback or returned by
 * evlog_encode). Free with cqrs__event_record__free_unpacked(rec, alloc). */
int evlog_read(struct evlog *log, off_t offset, size_t size, ProtobufCAllocator *alloc,
               Cqrs__EventRecord **out);

#endif
