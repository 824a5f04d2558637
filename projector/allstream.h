/*
 * allstream — the events of one aggregate type in position order, read from
 * disk while its worker appends to the same files.
 *
 * Sources, both in the evlog record format (lib/evlog.h; docs/storage.md):
 *   <type_dir>/journal/<first position, 20 digits>.wal
 *       every event since retention, positions consecutive from the one in
 *       the name, with "$checkpoint" records between them (skipped);
 *   <type_dir>/<shard>/<id>.log   (and <type_dir>/<id>.log, the old layout)
 *       every event of one stream, each record carrying its position too.
 * A position the journal still holds is read from it: segment by segment,
 * in large preads, resuming from where the last read stopped (or from a
 * mark every 1024 positions of a segment). A position older than the
 * journal's first segment, or any position when there is no journal, is
 * found in the stream files: they are scanned for a window of 32K
 * positions at a time, whose records are indexed by position (and kept, up
 * to 8 MiB; the others are read again), then delivered in that order. The
 * next window resumes each file where the last one stopped, so pages that
 * follow each other scan the files once. Their records carry positions
 * increasing along each file; *.snap, *.torn-* and journal/ are not read.
 *
 * Reading never locks, writes or truncates anything. The caller names an
 * upper bound it knows committed: no journal record past it is decoded,
 * and the stream files are read only for positions older than the journal
 * (a tail torn there ends the file), so a torn tail being written is never
 * an error. A segment deleted by retention between listing and opening
 * sends the read to the stream files. Memory: the marks, a 256 KiB read
 * buffer, and once the stream files have been needed, about 9 MiB for
 * their window, kept for the next page until allstream_free.
 *
 * Every record delivered has had its CRC32C checked; a failed check, a
 * record that does not decode, a position out of sequence, or a position
 * found nowhere is EVLOG_CORRUPT with one sentence naming the file and
 * position. Events before the failing one have been delivered.
 *
 * This module never logs and never exits.
 */
#ifndef CQRS_ALLSTREAM_H
#define CQRS_ALLSTREAM_H

#include <stddef.h>
#include <stdint.h>

#include "cqrs.pb-c.h"
#include "evlog.h"

struct allstream;

/* A reader of the type directory `type_dir` (which may not exist yet).
 * NULL with errno. */
struct allstream *allstream_open(const char *type_dir);
void allstream_free(struct allstream *as);

/* One event: `rec` decoded, `raw`/`len` its packed payload (the EventRecord
 * bytes, without the length and CRC header). Both are valid for the call
 * only. A non-zero return stops the read. */
typedef int (*allstream_fn)(void *arg, const Cqrs__EventRecord *rec, const uint8_t *raw,
                            size_t len);

/* Delivers every event with from <= position <= to (from 0 is 1), in
 * position order, `to` being a position known committed. Returns 0 when
 * all were delivered, fn's non-zero return when it stopped, -1 with errno,
 * or EVLOG_CORRUPT with one sentence in `err`. *fallback (may be NULL) is
 * set to 1 when some positions came from the stream files (the journal no
 * longer held them), 0 otherwise. */
int allstream_read(struct allstream *as, uint64_t from, uint64_t to, allstream_fn fn, void *arg,
                   int *fallback, char *err, size_t errlen);

#endif
