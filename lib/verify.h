/*
 * verify — checks event logs without changing them: `cqrsd --verify`
 * (offline) and the VERIFY query (live, in the type's worker).
 *
 * A stream file is checked the way a worker loads it, but read-only
 * (EVLOG_READONLY: a torn tail is reported, not cut, and nothing is
 * written): the evlog rules first (header, lengths, checksums, version
 * sequence, torn tail), then every event from a new state on: its type must
 * be one of the aggregate type's events, its data must decode as that
 * message, and evolve must accept it given the events before it. Once an
 * event could not be applied the state is unknown, so later events are
 * still checked for their type and data but no longer evolved: one bad
 * event is one problem, not a cascade.
 *
 * A type's folder holds <shard>/<id>.log files (layout.h). Its `journal`
 * folder is not a stream and is skipped, as are snapshots (*.snap),
 * temporary files (*.tmp) and kept torn tails (*.torn-*). A *.log whose
 * name minus ".log" is not a valid aggregate id, or that is not where
 * layout_stream_file puts its id, is a problem too.
 *
 * Every problem is one sentence given to the caller's callback, with the
 * path it concerns; this module never logs, never exits, never writes.
 */
#ifndef CQRS_VERIFY_H
#define CQRS_VERIFY_H

#include <stddef.h>

#include "aggregate.h"

/* One problem: `path` the file (or folder) concerned, `problem` one
 * sentence without a trailing newline. Both valid for the call only. */
typedef void (*verify_problem_fn)(void *arg, const char *path, const char *problem);

/* Checks the stream log at `path` for aggregate type `t`. Returns the number
 * of problems found (0: clean), or -1 with errno when the file cannot be
 * read or memory runs out (also reported as a problem). */
int verify_stream(const struct aggregate_type *t, const char *path,
                  verify_problem_fn fn, void *arg);

/* Checks the stream `id` of type `t` under `type_dir` (<data_dir>/<type>),
 * or with `id` NULL every *.log under it (a missing folder holds no
 * streams). A missing stream `id` is a problem ("no such stream"). Returns
 * the total number of problems, or -1 with errno when something could not
 * be read (every file that could was still checked, every problem
 * reported). */
int verify_type(const struct aggregate_type *t, const char *type_dir, const char *id,
                verify_problem_fn fn, void *arg);

/* verify_type, adding to *streams the number of stream files it met. */
int verify_type_counted(const struct aggregate_type *t, const char *type_dir, const char *id,
                        verify_problem_fn fn, void *arg, size_t *streams);

#endif
