/*
 * readmodel — the read model in SQLite: every aggregate type's projection
 * (lib/aggregate.h) applied to its tables, with each type's last applied
 * position kept in the same transaction, and the types' queries answered
 * from the tables. No sockets, no processes: cqrs-projector drives it.
 *
 * Each type's projection carries a version, kept in projections(type,
 * version): opened under another one, that type's tables are dropped and
 * its position set to 0, and catch-up applies every event again.
 *
 * Database: WAL mode, synchronous NORMAL (a crash of the process loses
 * nothing committed; a power loss may lose the last transactions, and their
 * positions with them, so catch-up applies them again). Tables:
 *   positions(type TEXT PRIMARY KEY, position INTEGER)   applied, per type
 *   and each projection's own tables.
 *
 * Exactly once: an event is applied only if its position is the type's
 * applied position + 1; one at or below it is skipped; one above it is a
 * gap (the caller catches up from the journal first). Applied positions are
 * written with the rows, at readmodel_commit.
 *
 * Every statement is prepared once with bound parameters (see
 * lib/aggregate.h for the names); a projection whose SQL names a parameter
 * the event cannot bind is refused when the database is opened.
 */
#ifndef CQRS_READMODEL_H
#define CQRS_READMODEL_H

#include <stddef.h>
#include <stdint.h>

#include "aggregate.h"
#include "cqrs.pb-c.h"

struct readmodel;

enum readmodel_apply {
    READMODEL_APPLIED = 0,
    READMODEL_SKIPPED = 1,     /* position already applied */
    READMODEL_GAP = 2,         /* position beyond applied + 1: nothing done */
};

/* Opens (creating) the database at `path` (":memory:" in tests) and every
 * registered type's schema. NULL with one sentence in `err`. */
struct readmodel *readmodel_open(const char *path, char *err, size_t errlen);
/* What opening did beyond the expected, in one line ("" when nothing): a
 * projection whose `version` differs from the one the database was built
 * with has lost its tables and position (they are made again from every
 * event). */
const char *readmodel_note(const struct readmodel *rm);
void readmodel_close(struct readmodel *rm);

/* The last position of `t` applied (committed or in the open transaction). */
uint64_t readmodel_position(const struct readmodel *rm, const struct aggregate_type *t);

/* A transaction around many applies. 0, or -1 with `err`. */
int readmodel_begin(struct readmodel *rm, char *err, size_t errlen);
/* Writes the applied positions and commits. 0, or -1 with `err` (rolled
 * back: the positions go back to the last commit). */
int readmodel_commit(struct readmodel *rm, char *err, size_t errlen);
void readmodel_rollback(struct readmodel *rm);

/* Applies one event record of type `t` (inside a transaction): a value of
 * enum readmodel_apply, or -1 with `err` (the event's type is unknown, its
 * data does not decode, or a statement failed). */
int readmodel_apply(struct readmodel *rm, const struct aggregate_type *t,
                    const Cqrs__EventRecord *rec, char *err, size_t errlen);

/* Runs `t`'s query `name` with the encoded query message `payload`.
 * OK with *out (malloc'ed, packed result message) and *result_type (its
 * short name, e.g. "WalletView"); INVALID (unknown query, payload that does
 * not decode or fails its check), NOT_FOUND (a one-row query found none) or
 * INTERNAL, with one sentence in `err`. */
Cqrs__Status readmodel_query(struct readmodel *rm, const struct aggregate_type *t,
                             const char *name, const uint8_t *payload, size_t len,
                             uint8_t **out, size_t *out_len, const char **result_type,
                             char *err, size_t errlen);

/* Empties the read model: drops every projection's tables, recreates
 * them, and sets every applied position to 0 (one transaction). */
int readmodel_reset(struct readmodel *rm, char *err, size_t errlen);

#endif
