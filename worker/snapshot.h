/*
 * snapshot — one aggregate's state at a version, saved beside its log so a
 * load can start from it and replay only the records after it.
 *
 * The file is `<stream path minus .log>.snap`; the caller gives the path.
 *
 * Format (fixed; every integer big-endian, no protobuf outside `state`):
 *
 *   file      = magic header state cmds crc
 *   magic     = "CQRSSNP1"                           8 bytes
 *   header    = snapshot_version version log_offset
 *     snapshot_version = uint32   the type's snapshot_version when written
 *     version          = uint64   the stream version the state reflects (>= 1)
 *     log_offset       = uint64   byte offset in the stream's log file just
 *                                 after the record of `version`: replay
 *                                 resumes there (> EVLOG_MAGIC_LEN)
 *   state     = length bytes
 *     length           = uint32   bytes of state (may be 0)
 *     bytes            = the type's state_pack output
 *   cmds      = count cmd*
 *     count            = uint32   remembered command ids, oldest first
 *     cmd              = id_length id first events
 *       id_length      = uint32   1.. bytes of id
 *       id             = the command id, no NUL byte, no two alike
 *       first          = uint64   version of its first event (>= 1)
 *       events         = uint32   events it appended; first+events-1 <= version
 *   crc       = uint32   CRC32C (Castagnoli) of every byte before it
 *
 * A whole file is at most SNAPSHOT_MAX_BYTES.
 *
 * Writes are atomic: the bytes go to `<path>.tmp` with one write and an
 * fdatasync, then are renamed over `path` and the directory is synced. A
 * crash leaves the previous snapshot or the new one, never a mix; a leftover
 * `<path>.tmp` is never read, and the next write replaces it.
 *
 * Reads check everything before trusting anything: the magic, the size, the
 * CRC, the snapshot_version against the type's, then each length against
 * the bytes left before reading or allocating. A bad snapshot is only ever
 * a reason to replay the whole log, never to fail the stream. It is the
 * caller's part to check that `log_offset` ends a record of `version` in
 * the log, and that `state` unpacks.
 *
 * This module never logs: it returns 0, or -1 with errno.
 */
#ifndef CQRS_SNAPSHOT_H
#define CQRS_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

#define SNAPSHOT_MAGIC "CQRSSNP1"
#define SNAPSHOT_MAGIC_LEN 8
#define SNAPSHOT_MAX_BYTES (64u << 20)   /* a larger file is refused */

struct snapshot {
    uint32_t snapshot_version;
    uint64_t version;
    uint64_t log_offset;
    uint8_t *state;                      /* state_pack output */
    size_t state_len;
    size_t n_cmds;
    struct snapshot_cmd {                /* one remembered command id */
        char *command_id;
        uint64_t first;                  /* version of its first event */
        uint32_t count;                  /* events it appended */
    } *cmds;                             /* oldest first */
};

/* Writes `snap` to `path` atomically (see above). 0, or -1 with errno
 * (EINVAL: `snap` breaks the format's rules, snapshot_version 0 included;
 * EFBIG: over SNAPSHOT_MAX_BYTES; or the failing call's); on failure no
 * `<path>.tmp` is left behind. If only the final directory sync fails,
 * `path` holds the old snapshot or the new one, both whole. */
int snapshot_write(const char *path, const struct snapshot *snap);

/* Reads the snapshot at `path`. 0 with a new *out (snapshot_free it); -1
 * with errno ENOENT when there is none; -1 with errno EINVAL and one
 * sentence in `why` when it is bad or stale (written under a snapshot_version
 * other than `expected_snapshot_version`); -1 with another errno (EIO,
 * EACCES, ENOMEM...) when it cannot be read, `why` saying so too. */
int snapshot_read(const char *path, uint32_t expected_snapshot_version,
                  struct snapshot **out, char *why, size_t whylen);

/* Frees a snapshot from snapshot_read: its state, ids and itself. NULL: no-op. */
void snapshot_free(struct snapshot *snap);

#endif
