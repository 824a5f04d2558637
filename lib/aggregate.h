/*
 * aggregate — the interface every aggregate type implements, and the registry.
 *
 * An aggregate type is one C file (worker/aggregates/<name>.c) holding its
 * name, its protobuf-c descriptors and two pure functions in the decider
 * shape:
 *
 *   decide(state, command) -> events | rejection   (never touches state)
 *   evolve(state, event)   -> state                 (updates state in place)
 *
 * plus `validate`, the first of the two checks of a command's life cycle
 * (payload fields inside their domain, no state needed: INVALID), while
 * decide makes the second (business rules against the state: REJECTED).
 *
 * The state is the type's own C struct, opaque to the host; `state_pack`
 * turns it into the type's state message for STATE queries and snapshots,
 * and `state_unpack` turns a snapshot's state message back into the struct,
 * exactly: state_pack(state_unpack(state_pack(s))) == state_pack(s), byte
 * for byte. `snapshot_version` names the meaning of a snapshot: a snapshot
 * written under another number is stale and the stream is replayed from its
 * log instead (worker/snapshot.h). Events are
 * emitted as protobuf messages and packed at once (agg_emit), so a decider
 * can build them on the stack.
 *
 * The registry (worker/aggregates/registry.c) is the one table listing
 * every type; adding a type touches its file, its .proto and one line there.
 */
#ifndef CQRS_AGGREGATE_H
#define CQRS_AGGREGATE_H

#include <stddef.h>
#include <stdint.h>
#include <protobuf-c/protobuf-c.h>

#define AGG_MAX_EVENTS 16      /* events one command may produce */
#define AGG_ERROR_MAX 256      /* one sentence */
#define AGG_ID_MAX 128         /* aggregate id length */

/* One emitted event, packed. */
struct agg_event {
    const ProtobufCMessageDescriptor *desc;
    uint8_t *data;
    size_t len;
};

/* What decide produces: events, or a rejection sentence in `error`. */
struct agg_decision {
    struct agg_event events[AGG_MAX_EVENTS];
    size_t n_events;
    char error[AGG_ERROR_MAX];
};

enum agg_verdict {
    AGG_ACCEPT = 0,    /* zero or more events in the decision */
    AGG_REJECT = 1,    /* a business rule said no; reason in decision.error */
};

/*
 * The type's projection: how its events change the read model (SQLite,
 * kept by cqrs-projector) and the queries the read model answers. All of
 * it is SQL with named parameters, bound by the projector from protobuf
 * descriptors:
 *   - in an event statement, :id (the aggregate id), :version, :position,
 *     :timestamp_us, and :<field> for each field of the event message;
 *   - in a query, :<field> for each field of the query message.
 * A query's result columns are named after the fields of its result
 * message (or, with `repeated`, of the item message of that field).
 */
struct agg_projection_rule {
    const char *event;                  /* event message short name */
    const char *const *sql;             /* statements, in order; NULL-terminated */
};

struct agg_query {
    const ProtobufCMessageDescriptor *request;   /* e.g. GetWallet */
    const ProtobufCMessageDescriptor *result;    /* e.g. WalletView */
    const char *sql;
    /* NULL: the first row fills the result (no row: NOT_FOUND); else the
     * name of a repeated message field of the result, one item per row. */
    const char *repeated;
    /* Optional payload check, as a command's validate (INVALID). */
    int (*validate)(const ProtobufCMessage *q, char *err, size_t errlen);
};

struct agg_projection {
    /* Bump whenever the tables or the statements change: the read model
     * then drops this type's tables and applies every event again. */
    uint32_t version;
    const char *const *schema;          /* CREATE ... IF NOT EXISTS; NULL-terminated */
    const char *const *tables;          /* the tables it owns (a rebuild drops them) */
    const struct agg_projection_rule *rules;   /* ends with event NULL */
    const struct agg_query *queries;           /* ends with request NULL */
};

struct aggregate_type {
    const char *name;                                   /* "wallet" */
    const ProtobufCMessageDescriptor *state_desc;       /* WalletState */
    const ProtobufCMessageDescriptor *const *commands;  /* NULL-terminated */
    const ProtobufCMessageDescriptor *const *events;    /* NULL-terminated */

    void *(*state_new)(void);                 /* a new aggregate's state; NULL on ENOMEM */
    void (*state_free)(void *state);
    /* Packs the state message into `out`; returns bytes written. */
    size_t (*state_pack)(const void *state, ProtobufCBuffer *out);

    /* Payload check: 0 if every field is inside its domain, else -1 with one
     * sentence in err (INVALID). */
    int (*validate)(const ProtobufCMessage *cmd, char *err, size_t errlen);
    /* Business rules: fills d with events (agg_emit) or a rejection. */
    enum agg_verdict (*decide)(const void *state, const ProtobufCMessage *cmd,
                               struct agg_decision *d);
    /* Applies one event; returns 0, or -1 if the event cannot apply to this
     * state (errno EINVAL: a log that contradicts the rules, the stream is
     * corrupt) or memory ran out (errno ENOMEM). */
    int (*evolve)(void *state, const ProtobufCMessage *event);

    /* Bump whenever decide, evolve or the state's layout changes: snapshots
     * written under another number are stale and ignored. 0: the type
     * takes no snapshots (and may leave state_unpack NULL). */
    uint32_t snapshot_version;
    /* The inverse of state_pack: a new state built from a packed state
     * message. NULL (errno EINVAL) when the bytes do not decode, a string
     * holds a NUL byte, or the state breaks an invariant evolve enforces;
     * NULL (errno ENOMEM) when out of memory. Free with state_free. */
    void *(*state_unpack)(const uint8_t *data, size_t len);

    /* The read model's part for this type; NULL: none. */
    const struct agg_projection *projection;
};

/* The query of `t`'s projection named `name` ("GetWallet"); NULL if none. */
const struct agg_query *agg_find_query(const struct aggregate_type *t, const char *name);

/* Packs `event` into the decision. Returns AGG_ACCEPT, or AGG_REJECT with an
 * error sentence when out of memory or over AGG_MAX_EVENTS. */
enum agg_verdict agg_emit(struct agg_decision *d, const ProtobufCMessage *event);

/* Sets a rejection sentence (printf-style) and returns AGG_REJECT. */
enum agg_verdict agg_reject(struct agg_decision *d, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Frees the packed events of a decision and resets it. */
void agg_decision_clear(struct agg_decision *d);

/* Looks a command or event descriptor up by its short name ("TopUp") in a
 * NULL-terminated list; NULL if absent. */
const ProtobufCMessageDescriptor *
agg_find_desc(const ProtobufCMessageDescriptor *const *list, const char *name);

/* 0 if `id` is a valid aggregate id (1..128 of [A-Za-z0-9._-], not "." or
 * ".."), else -1. `len` is the id's length in bytes as received (so an
 * embedded NUL is caught). */
int agg_id_valid(const char *id, size_t len);

/* The registry: NULL-terminated table, and lookup by type name. */
extern const struct aggregate_type *const aggregate_registry[];
const struct aggregate_type *aggregate_lookup(const char *name);

#endif
