/* readmodel — see readmodel.h. */
#include "readmodel.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sqlite3.h>

#include "pbwire.h"

struct rm_rule {
    const ProtobufCMessageDescriptor *event;
    sqlite3_stmt **stmts;
    size_t n;
};

struct rm_query {
    const struct agg_query *q;
    sqlite3_stmt *stmt;
};

struct rm_type {
    const struct aggregate_type *t;
    struct rm_rule *rules;
    size_t n_rules;
    struct rm_query *queries;
    size_t n_queries;
    uint64_t applied;          /* in the open transaction */
    uint64_t committed;
};

struct readmodel {
    sqlite3 *db;
    char note[512];            /* projections whose version changed, at open */
    struct rm_type *types;
    size_t n_types;
    sqlite3_stmt *set_position;
    sqlite3_stmt *begin, *commit, *rollback;
    int in_tx;
};

__attribute__((format(printf, 3, 4)))
static int rm_fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static int rm_exec(struct readmodel *rm, const char *sql, char *err, size_t errlen)
{
    char *msg = NULL;
    if (sqlite3_exec(rm->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        rm_fail(err, errlen, "%s: %s", sql, msg ? msg : sqlite3_errmsg(rm->db));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

static sqlite3_stmt *rm_prepare(struct readmodel *rm, const char *sql, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v3(rm->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK) {
        rm_fail(err, errlen, "cannot prepare \"%s\": %s", sql, sqlite3_errmsg(rm->db));
        return NULL;
    }
    return st;
}

/* The parameters every event statement may use besides its fields. */
static const char *const rm_event_params[] = { "id", "version", "position", "timestamp_us", NULL };

static int rm_is_event_param(const char *name)
{
    for (const char *const *p = rm_event_params; *p; p++)
        if (strcmp(*p, name) == 0)
            return 1;
    return 0;
}

/* Every named parameter of `st` is a field of `desc` (NULL: none) or, for
 * an event statement, one of rm_event_params. */
static int rm_check_params(sqlite3_stmt *st, const ProtobufCMessageDescriptor *desc, int event,
                           char *err, size_t errlen)
{
    for (int i = 1; i <= sqlite3_bind_parameter_count(st); i++) {
        const char *name = sqlite3_bind_parameter_name(st, i);
        if (!name || name[0] != ':')
            return rm_fail(err, errlen, "\"%s\": parameters must be named :field",
                           sqlite3_sql(st));
        if ((event && rm_is_event_param(name + 1)) ||
            (desc && protobuf_c_message_descriptor_get_field_by_name(desc, name + 1)))
            continue;
        return rm_fail(err, errlen, "\"%s\": no value for parameter %s%s%s", sqlite3_sql(st),
                       name, desc ? " in " : "", desc ? desc->name : "");
    }
    return 0;
}

static int rm_prepare_list(struct readmodel *rm, const char *const *sql,
                           const ProtobufCMessageDescriptor *desc, sqlite3_stmt ***out,
                           size_t *n, char *err, size_t errlen)
{
    size_t count = 0;
    while (sql && sql[count])
        count++;
    *out = calloc(count ? count : 1, sizeof **out);
    if (!*out)
        return rm_fail(err, errlen, "out of memory");
    for (size_t i = 0; i < count; i++) {
        if (!((*out)[i] = rm_prepare(rm, sql[i], err, errlen)))
            return -1;
        (*n)++;
        if (rm_check_params((*out)[i], desc, 1, err, errlen) < 0)
            return -1;
    }
    return 0;
}

static int rm_type_init(struct readmodel *rm, struct rm_type *rt, char *err, size_t errlen)
{
    const struct agg_projection *p = rt->t->projection;
    for (const char *const *s = p->schema; s && *s; s++)
        if (rm_exec(rm, *s, err, errlen) < 0)
            return -1;
    size_t n = 0;
    while (p->rules[n].event)
        n++;
    if (!(rt->rules = calloc(n ? n : 1, sizeof *rt->rules)))
        return rm_fail(err, errlen, "out of memory");
    for (size_t i = 0; i < n; i++) {
        struct rm_rule *r = &rt->rules[rt->n_rules++];
        r->event = agg_find_desc(rt->t->events, p->rules[i].event);
        if (!r->event)
            return rm_fail(err, errlen, "%s projection: no event %s", rt->t->name,
                           p->rules[i].event);
        if (rm_prepare_list(rm, p->rules[i].sql, r->event, &r->stmts, &r->n, err, errlen) < 0)
            return -1;
    }
    n = 0;
    while (p->queries[n].request)
        n++;
    if (!(rt->queries = calloc(n ? n : 1, sizeof *rt->queries)))
        return rm_fail(err, errlen, "out of memory");
    for (size_t i = 0; i < n; i++) {
        struct rm_query *q = &rt->queries[rt->n_queries++];
        q->q = &p->queries[i];
        if (!(q->stmt = rm_prepare(rm, q->q->sql, err, errlen)) ||
            rm_check_params(q->stmt, q->q->request, 0, err, errlen) < 0)
            return -1;
    }
    return 0;
}

/* A projection stored under another version (or none: a new database, or
 * one from before versions) loses its tables and its position, so the
 * projector applies every event of its type again into the new tables. */
static int rm_check_version(struct readmodel *rm, const struct aggregate_type *t, char *err,
                            size_t errlen)
{
    const struct agg_projection *p = t->projection;
    sqlite3_stmt *st;
    int64_t stored = -1;
    if (sqlite3_prepare_v2(rm->db, "SELECT version FROM projections WHERE type = ?", -1, &st,
                           NULL) != SQLITE_OK)
        return rm_fail(err, errlen, "cannot read the projections' versions: %s",
                       sqlite3_errmsg(rm->db));
    sqlite3_bind_text(st, 1, t->name, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW)
        stored = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    if (stored == (int64_t)p->version)
        return 0;
    if (rm_exec(rm, "BEGIN IMMEDIATE", err, errlen) < 0)
        return -1;
    char sql[256];
    for (const char *const *tb = p->tables; tb && *tb; tb++) {
        snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s", *tb);
        if (rm_exec(rm, sql, err, errlen) < 0)
            goto fail;
    }
    const char *const stmts[] = { "DELETE FROM positions WHERE type = ?1",
                                  "INSERT INTO projections(type, version) VALUES(?1, ?2) "
                                  "ON CONFLICT(type) DO UPDATE SET version = excluded.version" };
    for (size_t i = 0; i < 2; i++) {
        if (sqlite3_prepare_v2(rm->db, stmts[i], -1, &st, NULL) != SQLITE_OK) {
            rm_fail(err, errlen, "%s: %s", stmts[i], sqlite3_errmsg(rm->db));
            goto fail;
        }
        sqlite3_bind_text(st, 1, t->name, -1, SQLITE_STATIC);
        if (i == 1)
            sqlite3_bind_int64(st, 2, p->version);
        int rc = sqlite3_step(st);
        sqlite3_finalize(st);
        if (rc != SQLITE_DONE) {
            rm_fail(err, errlen, "%s: %s", stmts[i], sqlite3_errmsg(rm->db));
            goto fail;
        }
    }
    if (rm_exec(rm, "COMMIT", err, errlen) < 0)
        goto fail;
    if (stored >= 0) {
        size_t used = strlen(rm->note);
        snprintf(rm->note + used, sizeof rm->note - used, "%s%s: projection %u replaces %lld: "
                 "its tables are made again from every event", used ? "; " : "", t->name,
                 (unsigned)p->version, (long long)stored);
    }
    return 0;
fail:
    rm_exec(rm, "ROLLBACK", err, errlen);
    return -1;
}

const char *readmodel_note(const struct readmodel *rm)
{
    return rm->note;
}

static int rm_load_positions(struct readmodel *rm)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(rm->db, "SELECT position FROM positions WHERE type = ?", -1, &st,
                           NULL) != SQLITE_OK)
        return -1;
    for (size_t i = 0; i < rm->n_types; i++) {
        struct rm_type *rt = &rm->types[i];
        sqlite3_bind_text(st, 1, rt->t->name, -1, SQLITE_STATIC);
        rt->committed = sqlite3_step(st) == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(st, 0) : 0;
        rt->applied = rt->committed;
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    return 0;
}

struct readmodel *readmodel_open(const char *path, char *err, size_t errlen)
{
    struct readmodel *rm = calloc(1, sizeof *rm);
    if (!rm) {
        rm_fail(err, errlen, "out of memory");
        return NULL;
    }
    if (sqlite3_open_v2(path, &rm->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                        SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        rm_fail(err, errlen, "cannot open %s: %s", path,
                rm->db ? sqlite3_errmsg(rm->db) : "out of memory");
        goto fail;
    }
    size_t n = 0;
    for (const struct aggregate_type *const *t = aggregate_registry; *t; t++)
        n += (*t)->projection != NULL;
    if (!(rm->types = calloc(n ? n : 1, sizeof *rm->types))) {
        rm_fail(err, errlen, "out of memory");
        goto fail;
    }
    if (rm_exec(rm, "PRAGMA journal_mode = WAL", err, errlen) < 0 ||
        rm_exec(rm, "PRAGMA synchronous = NORMAL", err, errlen) < 0 ||
        rm_exec(rm, "CREATE TABLE IF NOT EXISTS positions(type TEXT PRIMARY KEY, "
                "position INTEGER NOT NULL) WITHOUT ROWID", err, errlen) < 0 ||
        rm_exec(rm, "CREATE TABLE IF NOT EXISTS projections(type TEXT PRIMARY KEY, "
                "version INTEGER NOT NULL) WITHOUT ROWID", err, errlen) < 0)
        goto fail;
    for (const struct aggregate_type *const *t = aggregate_registry; *t; t++) {
        if (!(*t)->projection)
            continue;
        if (rm_check_version(rm, *t, err, errlen) < 0)
            goto fail;
        rm->types[rm->n_types].t = *t;
        if (rm_type_init(rm, &rm->types[rm->n_types++], err, errlen) < 0)
            goto fail;
    }
    if (!(rm->set_position = rm_prepare(rm, "INSERT INTO positions(type, position) VALUES(?, ?) "
                                        "ON CONFLICT(type) DO UPDATE SET position = excluded.position",
                                        err, errlen)) ||
        !(rm->begin = rm_prepare(rm, "BEGIN IMMEDIATE", err, errlen)) ||
        !(rm->commit = rm_prepare(rm, "COMMIT", err, errlen)) ||
        !(rm->rollback = rm_prepare(rm, "ROLLBACK", err, errlen)))
        goto fail;
    if (rm_load_positions(rm) < 0) {
        rm_fail(err, errlen, "cannot read the applied positions: %s", sqlite3_errmsg(rm->db));
        goto fail;
    }
    return rm;
fail:
    readmodel_close(rm);
    return NULL;
}

static void rm_finalize_all(struct readmodel *rm)
{
    for (size_t i = 0; i < rm->n_types; i++) {
        struct rm_type *rt = &rm->types[i];
        for (size_t r = 0; r < rt->n_rules; r++) {
            for (size_t k = 0; k < rt->rules[r].n; k++)
                sqlite3_finalize(rt->rules[r].stmts[k]);
            free(rt->rules[r].stmts);
        }
        free(rt->rules);
        for (size_t q = 0; q < rt->n_queries; q++)
            sqlite3_finalize(rt->queries[q].stmt);
        free(rt->queries);
    }
}

void readmodel_close(struct readmodel *rm)
{
    if (!rm)
        return;
    if (rm->in_tx)
        readmodel_rollback(rm);
    rm_finalize_all(rm);
    free(rm->types);
    sqlite3_finalize(rm->set_position);
    sqlite3_finalize(rm->begin);
    sqlite3_finalize(rm->commit);
    sqlite3_finalize(rm->rollback);
    sqlite3_close(rm->db);
    free(rm);
}

static struct rm_type *rm_type(const struct readmodel *rm, const struct aggregate_type *t)
{
    for (size_t i = 0; i < rm->n_types; i++)
        if (rm->types[i].t == t)
            return &rm->types[i];
    return NULL;
}

uint64_t readmodel_position(const struct readmodel *rm, const struct aggregate_type *t)
{
    struct rm_type *rt = rm_type(rm, t);
    return rt ? rt->applied : 0;
}

static int rm_step_done(struct readmodel *rm, sqlite3_stmt *st, char *err, size_t errlen)
{
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        ;
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return rm_fail(err, errlen, "\"%s\": %s", sqlite3_sql(st), sqlite3_errmsg(rm->db));
    return 0;
}

int readmodel_begin(struct readmodel *rm, char *err, size_t errlen)
{
    if (rm->in_tx)
        return 0;
    if (rm_step_done(rm, rm->begin, err, errlen) < 0)
        return -1;
    rm->in_tx = 1;
    return 0;
}

int readmodel_commit(struct readmodel *rm, char *err, size_t errlen)
{
    if (!rm->in_tx)
        return 0;
    for (size_t i = 0; i < rm->n_types; i++) {
        struct rm_type *rt = &rm->types[i];
        if (rt->applied == rt->committed)
            continue;
        sqlite3_bind_text(rm->set_position, 1, rt->t->name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(rm->set_position, 2, (sqlite3_int64)rt->applied);
        if (rm_step_done(rm, rm->set_position, err, errlen) < 0) {
            readmodel_rollback(rm);
            return -1;
        }
    }
    if (rm_step_done(rm, rm->commit, err, errlen) < 0) {
        readmodel_rollback(rm);
        return -1;
    }
    rm->in_tx = 0;
    for (size_t i = 0; i < rm->n_types; i++)
        rm->types[i].committed = rm->types[i].applied;
    return 0;
}

void readmodel_rollback(struct readmodel *rm)
{
    char err[256];
    if (rm->in_tx && sqlite3_get_autocommit(rm->db) == 0)
        rm_step_done(rm, rm->rollback, err, sizeof err);
    rm->in_tx = 0;
    for (size_t i = 0; i < rm->n_types; i++)
        rm->types[i].applied = rm->types[i].committed;
}

/* Binds field `f` of `m` (a scalar; anything else binds NULL). */
static int rm_bind_field(sqlite3_stmt *st, int i, const ProtobufCMessage *m,
                         const ProtobufCFieldDescriptor *f)
{
    const void *p = (const char *)m + f->offset;
    if (f->label == PROTOBUF_C_LABEL_REPEATED)
        return sqlite3_bind_null(st, i);
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_ENUM:
        return sqlite3_bind_int64(st, i, *(const int32_t *)p);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        return sqlite3_bind_int64(st, i, *(const uint32_t *)p);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        return sqlite3_bind_int64(st, i, *(const int64_t *)p);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return sqlite3_bind_int64(st, i, (sqlite3_int64) * (const uint64_t *)p);
    case PROTOBUF_C_TYPE_BOOL:
        return sqlite3_bind_int(st, i, *(const protobuf_c_boolean *)p ? 1 : 0);
    case PROTOBUF_C_TYPE_FLOAT:
        return sqlite3_bind_double(st, i, *(const float *)p);
    case PROTOBUF_C_TYPE_DOUBLE:
        return sqlite3_bind_double(st, i, *(const double *)p);
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        return sqlite3_bind_text(st, i, s ? s : "", -1, SQLITE_STATIC);
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *b = p;
        return sqlite3_bind_blob(st, i, b->data ? (const void *)b->data : (const void *)"",
                                 (int)b->len, SQLITE_STATIC);
    }
    default:
        return sqlite3_bind_null(st, i);
    }
}

/* Binds every parameter of `st` from the message `m` and, for an event
 * statement, its record `rec`. */
static void rm_bind(sqlite3_stmt *st, const ProtobufCMessage *m, const Cqrs__EventRecord *rec)
{
    for (int i = 1; i <= sqlite3_bind_parameter_count(st); i++) {
        const char *name = sqlite3_bind_parameter_name(st, i) + 1;
        const ProtobufCFieldDescriptor *f =
            m ? protobuf_c_message_descriptor_get_field_by_name(m->descriptor, name) : NULL;
        if (rec && strcmp(name, "id") == 0)
            sqlite3_bind_text(st, i, rec->stream, -1, SQLITE_STATIC);
        else if (rec && strcmp(name, "version") == 0)
            sqlite3_bind_int64(st, i, (sqlite3_int64)rec->version);
        else if (rec && strcmp(name, "position") == 0)
            sqlite3_bind_int64(st, i, (sqlite3_int64)rec->position);
        else if (rec && strcmp(name, "timestamp_us") == 0)
            sqlite3_bind_int64(st, i, rec->timestamp_us);
        else if (f)
            rm_bind_field(st, i, m, f);
        else
            sqlite3_bind_null(st, i);
    }
}

static int rm_run(struct readmodel *rm, sqlite3_stmt *st, const ProtobufCMessage *m,
                  const Cqrs__EventRecord *rec, char *err, size_t errlen)
{
    rm_bind(st, m, rec);
    int rc = rm_step_done(rm, st, err, errlen);
    sqlite3_clear_bindings(st);
    return rc;
}

int readmodel_apply(struct readmodel *rm, const struct aggregate_type *t,
                    const Cqrs__EventRecord *rec, char *err, size_t errlen)
{
    struct rm_type *rt = rm_type(rm, t);
    if (!rt)
        return rm_fail(err, errlen, "%s has no projection", t->name);
    if (rec->position <= rt->applied)
        return READMODEL_SKIPPED;
    if (rec->position != rt->applied + 1)
        return READMODEL_GAP;
    if (!rm->in_tx)
        return rm_fail(err, errlen, "an event applied outside a transaction");
    struct rm_rule *rule = NULL;
    for (size_t i = 0; i < rt->n_rules; i++)
        if (strcmp(rt->rules[i].event->short_name, rec->type) == 0)
            rule = &rt->rules[i];
    const ProtobufCMessageDescriptor *d = rule ? rule->event : agg_find_desc(t->events, rec->type);
    if (!d)
        return rm_fail(err, errlen, "%s event at position %llu has unknown type \"%s\"", t->name,
                       (unsigned long long)rec->position, rec->type);
    ProtobufCMessage *ev = protobuf_c_message_unpack(d, NULL, rec->data.len, rec->data.data);
    if (!ev)
        return rm_fail(err, errlen, "%s event at position %llu does not decode as %s", t->name,
                       (unsigned long long)rec->position, d->name);
    int rc = 0;
    for (size_t i = 0; rc == 0 && rule && i < rule->n; i++)
        rc = rm_run(rm, rule->stmts[i], ev, rec, err, errlen);
    protobuf_c_message_free_unpacked(ev, NULL);
    if (rc < 0)
        return -1;
    rt->applied = rec->position;
    return READMODEL_APPLIED;
}

/* Sets field `f` of `m` from column `col` of the current row. */
static int rm_set_field(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f, sqlite3_stmt *st,
                        int col)
{
    void *p = (char *)m + f->offset;
    if (f->label == PROTOBUF_C_LABEL_REPEATED || sqlite3_column_type(st, col) == SQLITE_NULL)
        return 0;
    sqlite3_int64 v = sqlite3_column_int64(st, col);
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_ENUM:    *(int32_t *)p = (int32_t)v; break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32: *(uint32_t *)p = (uint32_t)v; break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64: *(int64_t *)p = v; break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: *(uint64_t *)p = (uint64_t)v; break;
    case PROTOBUF_C_TYPE_BOOL:    *(protobuf_c_boolean *)p = v != 0; break;
    case PROTOBUF_C_TYPE_FLOAT:   *(float *)p = (float)sqlite3_column_double(st, col); break;
    case PROTOBUF_C_TYPE_DOUBLE:  *(double *)p = sqlite3_column_double(st, col); break;
    case PROTOBUF_C_TYPE_STRING: {
        const unsigned char *s = sqlite3_column_text(st, col);
        char *copy = strdup(s ? (const char *)s : "");
        if (!copy)
            return -1;
        *(char **)p = copy;
        break;
    }
    default:
        break;
    }
    return 0;
}

/* A new message of `desc` filled from the current row (columns by name). */
static ProtobufCMessage *rm_row(const ProtobufCMessageDescriptor *desc, sqlite3_stmt *st)
{
    ProtobufCMessage *m = malloc(desc->sizeof_message);
    if (!m)
        return NULL;
    protobuf_c_message_init(desc, m);
    for (int c = 0; c < sqlite3_column_count(st); c++) {
        const ProtobufCFieldDescriptor *f =
            protobuf_c_message_descriptor_get_field_by_name(desc, sqlite3_column_name(st, c));
        if (f && rm_set_field(m, f, st, c) < 0) {
            protobuf_c_message_free_unpacked(m, NULL);
            return NULL;
        }
    }
    return m;
}

/* Appends `item` to the repeated message field `f` of `m`. */
static int rm_append(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f, ProtobufCMessage *item)
{
    size_t *n = (size_t *)((char *)m + f->quantifier_offset);
    ProtobufCMessage ***arr = (ProtobufCMessage ***)((char *)m + f->offset);
    if ((*n & (*n - 1)) == 0) {   /* 0, 1, 2, 4, ...: grow to the next power of two */
        ProtobufCMessage **g = realloc(*arr, (*n ? *n * 2 : 1) * sizeof *g);
        if (!g)
            return -1;
        *arr = g;
    }
    (*arr)[(*n)++] = item;
    return 0;
}

Cqrs__Status readmodel_query(struct readmodel *rm, const struct aggregate_type *t,
                             const char *name, const uint8_t *payload, size_t len,
                             uint8_t **out, size_t *out_len, const char **result_type,
                             char *err, size_t errlen)
{
    struct rm_type *rt = rm_type(rm, t);
    struct rm_query *q = NULL;
    for (size_t i = 0; rt && i < rt->n_queries; i++)
        if (strcmp(rt->queries[i].q->request->short_name, name) == 0)
            q = &rt->queries[i];
    if (!q) {
        rm_fail(err, errlen, "%s has no query \"%s\"", t->name, name);
        return CQRS__STATUS__INVALID;
    }
    const struct agg_query *aq = q->q;
    if (pbwire_check_strings(aq->request, payload, len) < 0) {
        rm_fail(err, errlen, "payload of %s is not well-formed or has a string with a NUL byte",
                aq->request->name);
        return CQRS__STATUS__INVALID;
    }
    ProtobufCMessage *req = protobuf_c_message_unpack(aq->request, NULL, len, payload);
    if (!req) {
        rm_fail(err, errlen, "payload does not decode as %s", aq->request->name);
        return CQRS__STATUS__INVALID;
    }
    Cqrs__Status status = CQRS__STATUS__OK;
    ProtobufCMessage *res = NULL;
    if (aq->validate && aq->validate(req, err, errlen) < 0) {
        protobuf_c_message_free_unpacked(req, NULL);
        return CQRS__STATUS__INVALID;
    }
    const ProtobufCFieldDescriptor *list = NULL;
    if (aq->repeated) {
        list = protobuf_c_message_descriptor_get_field_by_name(aq->result, aq->repeated);
        if (!(res = malloc(aq->result->sizeof_message)))
            goto nomem;
        protobuf_c_message_init(aq->result, res);
    }
    rm_bind(q->stmt, req, NULL);
    int rc;
    while ((rc = sqlite3_step(q->stmt)) == SQLITE_ROW) {
        if (!list) {
            if (!(res = rm_row(aq->result, q->stmt)))
                goto nomem;
            break;
        }
        ProtobufCMessage *item = rm_row(list->descriptor, q->stmt);
        if (!item || rm_append(res, list, item) < 0) {
            if (item)
                protobuf_c_message_free_unpacked(item, NULL);
            goto nomem;
        }
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        rm_fail(err, errlen, "%s: %s", name, sqlite3_errmsg(rm->db));
        status = CQRS__STATUS__INTERNAL;
    } else if (!res) {
        rm_fail(err, errlen, "%s found nothing", name);
        status = CQRS__STATUS__NOT_FOUND;
    } else {
        *out_len = protobuf_c_message_get_packed_size(res);
        if (!(*out = malloc(*out_len ? *out_len : 1)))
            goto nomem;
        protobuf_c_message_pack(res, *out);
        *result_type = aq->result->short_name;
    }
    goto done;
nomem:
    rm_fail(err, errlen, "out of memory answering %s", name);
    status = CQRS__STATUS__INTERNAL;
done:
    sqlite3_reset(q->stmt);
    sqlite3_clear_bindings(q->stmt);
    if (res)
        protobuf_c_message_free_unpacked(res, NULL);
    protobuf_c_message_free_unpacked(req, NULL);
    return status;
}

int readmodel_reset(struct readmodel *rm, char *err, size_t errlen)
{
    if (rm->in_tx)
        readmodel_rollback(rm);
    if (rm_exec(rm, "BEGIN IMMEDIATE", err, errlen) < 0)
        return -1;
    char sql[256];
    for (size_t i = 0; i < rm->n_types; i++) {
        const struct agg_projection *p = rm->types[i].t->projection;
        for (const char *const *tb = p->tables; tb && *tb; tb++) {
            snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s", *tb);
            if (rm_exec(rm, sql, err, errlen) < 0)
                goto fail;
        }
        for (const char *const *s = p->schema; s && *s; s++)
            if (rm_exec(rm, *s, err, errlen) < 0)
                goto fail;
    }
    if (rm_exec(rm, "DELETE FROM positions", err, errlen) < 0 ||
        rm_exec(rm, "COMMIT", err, errlen) < 0)
        goto fail;
    for (size_t i = 0; i < rm->n_types; i++)
        rm->types[i].applied = rm->types[i].committed = 0;
    return 0;
fail:
    rm_exec(rm, "ROLLBACK", err, errlen);
    return -1;
}
