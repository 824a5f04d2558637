/* config — see config.h. Parsing is inih's; this file only watches the lines
 * go by (to learn where each section starts, since inih never reports an
 * empty section such as a bare `[child account]`) and checks every value. */
#include "config.h"

#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aggregate.h"
#include "log.h"
#include "sup_policy.h"

struct config_parse {
    FILE *f;
    const char *path;
    int line;
    struct cqrsd_config *cfg;
    int shutdown_set[CONFIG_MAX_CHILDREN];
    int child_line[CONFIG_MAX_CHILDREN];   /* where each [child] section starts */
    int failed;
    char *err;
    size_t errlen;
};

__attribute__((format(printf, 2, 3)))
static int config_fail(struct config_parse *p, const char *fmt, ...)
{
    if (p->failed)
        return 0;
    p->failed = 1;
    int n = snprintf(p->err, p->errlen, "%s:%d: ", p->path, p->line);
    if (n < 0 || (size_t)n >= p->errlen)
        return 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return 0;
}

const char *config_strategy_name(enum sup_strategy s)
{
    static const char *names[] = { "one_for_one", "one_for_all", "rest_for_one" };
    return names[s];
}

const char *config_fsync_name(enum storage_fsync f)
{
    static const char *names[] = { "always", "batch", "never" };
    return names[f];
}

size_t config_worker_args(const struct storage_config *st, char **argv, char *buf, size_t len)
{
    static const char *flags[] = { "--fsync", "--batch-interval-ms", "--checkpoint-ms",
                                   "--segment-mb", "--retention-mb", "--retention-s",
                                   "--snapshot-every", "--open-files", "--max-aggregates",
                                   "--idle-timeout-s" };
    unsigned values[] = { 0, st->batch_interval_ms, st->checkpoint_ms, st->segment_mb,
                          st->retention_mb, st->retention_s, st->snapshot_every, st->open_files,
                          st->max_aggregates, st->idle_timeout_s };
    size_t n = 0, used = 0;
    for (size_t i = 0; i < 10; i++) {
        argv[n++] = (char *)flags[i];
        char *v = buf + used;
        int w = i == 0 ? snprintf(v, len - used, "%s", config_fsync_name(st->fsync))
                       : snprintf(v, len - used, "%u", values[i]);
        if (w < 0 || (size_t)w >= len - used)
            return n - 1;
        used += (size_t)w + 1;
        argv[n++] = v;
    }
    return n;
}

const char *config_restart_name(enum child_restart r)
{
    static const char *names[] = { "permanent", "transient", "temporary" };
    return names[r];
}

static void config_child_defaults(struct child_config *c, const char *name)
{
    snprintf(c->name, sizeof c->name, "%.63s", name);
    c->restart = RESTART_PERMANENT;
    c->shutdown_ms = 0;   /* filled from shutdown_timeout_ms at the end */
    c->kind = CHILD_WORKER;
}

void config_defaults(struct cqrsd_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->strategy = SUP_ONE_FOR_ONE;
    cfg->intensity = 5;
    cfg->period_s = 10;
    cfg->shutdown_timeout_ms = 5000;
    cfg->start_timeout_ms = 5000;
    cfg->heartbeat_ms = 1000;
    cfg->heartbeat_timeout_ms = 3000;
    cfg->standby = 1;
    cfg->log_level = LOG_LVL_INFO;
    cfg->server = (struct server_config){
        .socket_mode = 0660, .allow_uids = { 0 }, .n_allow_uids = 1,
        .max_connections = 1024, .max_frame_bytes = 1u << 20, .max_inflight_per_conn = 1024,
        .worker_queue = 10000, .read_timeout_ms = 10000, .max_string_bytes = 1024,
        .max_metadata_entries = 32, .max_metadata_bytes = 4096,
    };
    cfg->storage = (struct storage_config){ FSYNC_ALWAYS, 10, 1000, 64, 256, 3600, 1000,
                                            1024, 1000000, 3600 };
    for (size_t i = 0; aggregate_registry[i] && cfg->n_children < CONFIG_MAX_CHILDREN; i++) {
        config_child_defaults(&cfg->children[cfg->n_children], aggregate_registry[i]->name);
        cfg->children[cfg->n_children++].shutdown_ms = (int)cfg->shutdown_timeout_ms;
    }
    if (cfg->n_children < CONFIG_MAX_CHILDREN) {
        struct child_config *c = &cfg->children[cfg->n_children++];
        config_child_defaults(c, CONFIG_PROJECTOR_NAME);
        c->kind = CHILD_PROJECTOR;
        c->shutdown_ms = (int)cfg->shutdown_timeout_ms;
    }
}

/* A whole decimal number in [min, max]. */
static int config_uint(struct config_parse *p, const char *section, const char *key,
                       const char *value, unsigned min, unsigned max, unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(value, &end, 10);
    if (!*value || *value == '-' || *value == '+' || *end || errno || v < min || v > max)
        return config_fail(p, "%s in [%s] must be a whole number from %u to %u, not \"%s\"", key,
                           section, min, max, value);
    *out = (unsigned)v;
    return 1;
}

/* Section headers, seen as inih reads each line. */
static void config_section(struct config_parse *p, const char *line)
{
    while (*line == ' ' || *line == '\t')
        line++;
    if (*line != '[')
        return;
    const char *close = strchr(line, ']');
    if (!close)
        return;   /* inih reports the malformed line */
    char name[128];
    snprintf(name, sizeof name, "%.*s", (int)(close - line - 1), line + 1);
    if (strcmp(name, "supervisor") == 0 || strcmp(name, "storage") == 0 ||
        strcmp(name, "server") == 0)
        return;
    if (strncmp(name, "child ", 6) != 0) {
        config_fail(p, "unknown section [%s]", name);
        return;
    }
    const char *type = name + 6;
    while (*type == ' ')
        type++;
    if (agg_id_valid(type, strlen(type)) < 0 || strlen(type) >= sizeof p->cfg->children[0].name) {
        config_fail(p, "[child %s]: a child's name is 1 to 63 of [A-Za-z0-9._-]", type);
        return;
    }
    struct cqrsd_config *cfg = p->cfg;
    for (size_t i = 0; i < cfg->n_children; i++)
        if (strcmp(cfg->children[i].name, type) == 0) {
            config_fail(p, "[child %s] appears twice", type);
            return;
        }
    if (cfg->n_children == CONFIG_MAX_CHILDREN) {
        config_fail(p, "more than %d children", CONFIG_MAX_CHILDREN);
        return;
    }
    p->child_line[cfg->n_children] = p->line;
    config_child_defaults(&cfg->children[cfg->n_children++], type);
}

static char *config_reader(char *str, int num, void *stream)
{
    struct config_parse *p = stream;
    char *r = fgets(str, num, p->f);
    if (r) {
        p->line++;
        config_section(p, r);
    }
    return r;
}

static int config_supervisor_key(struct config_parse *p, const char *key, const char *value)
{
    struct cqrsd_config *cfg = p->cfg;
    if (strcmp(key, "strategy") == 0) {
        for (int s = SUP_ONE_FOR_ONE; s <= SUP_REST_FOR_ONE; s++)
            if (strcmp(value, config_strategy_name(s)) == 0) {
                cfg->strategy = s;
                return 1;
            }
        return config_fail(p, "strategy in [supervisor] must be one_for_one, one_for_all or "
                              "rest_for_one, not \"%s\"", value);
    }
    const char *s = "supervisor";
    if (strcmp(key, "intensity") == 0)
        return config_uint(p, s, key, value, 0, SUP_POLICY_MAX_INTENSITY, &cfg->intensity);
    if (strcmp(key, "period") == 0)
        return config_uint(p, s, key, value, 1, 86400, &cfg->period_s);
    if (strcmp(key, "shutdown_timeout_ms") == 0)
        return config_uint(p, s, key, value, 1, 3600000, &cfg->shutdown_timeout_ms);
    if (strcmp(key, "start_timeout_ms") == 0)
        return config_uint(p, s, key, value, 1, 3600000, &cfg->start_timeout_ms);
    if (strcmp(key, "heartbeat_ms") == 0)
        return config_uint(p, s, key, value, 0, 3600000, &cfg->heartbeat_ms);
    if (strcmp(key, "heartbeat_timeout_ms") == 0)
        return config_uint(p, s, key, value, 1, 3600000, &cfg->heartbeat_timeout_ms);
    if (strcmp(key, "standby") == 0) {
        if (strcmp(value, "true") == 0 || strcmp(value, "false") == 0) {
            cfg->standby = value[0] == 't';
            return 1;
        }
        return config_fail(p, "standby in [supervisor] must be true or false, not \"%s\"", value);
    }
    return config_fail(p, "unknown key \"%s\" in [supervisor]", key);
}

/* "1, 2,3": at most CONFIG_MAX_IDS whole numbers; "" is none. */
static int config_ids(struct config_parse *p, const char *key, const char *value, unsigned *ids,
                      size_t *n)
{
    *n = 0;
    const char *s = value;
    while (*s) {
        while (*s == ' ' || *s == ',')
            s++;
        if (!*s)
            break;
        char *end;
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (end == s || errno || v > 4294967294ul || *n == CONFIG_MAX_IDS ||
            (*end && *end != ',' && *end != ' '))
            return config_fail(p, "%s in [server] must be up to %d comma-separated numbers, "
                                  "not \"%s\"", key, CONFIG_MAX_IDS, value);
        ids[(*n)++] = (unsigned)v;
        s = end;
    }
    return 1;
}

static int config_server_key(struct config_parse *p, const char *key, const char *value)
{
    struct server_config *sv = &p->cfg->server;
    const char *s = "server";
    if (strcmp(key, "socket_mode") == 0) {
        char *end;
        unsigned long m = strtoul(value, &end, 8);
        if (!*value || *end || m > 0777)
            return config_fail(p, "socket_mode in [server] must be an octal mode such as 0660, "
                                  "not \"%s\"", value);
        sv->socket_mode = (unsigned)m;
        return 1;
    }
    if (strcmp(key, "socket_group") == 0) {
        if (strlen(value) >= sizeof sv->socket_group)
            return config_fail(p, "socket_group in [server] is too long");
        snprintf(sv->socket_group, sizeof sv->socket_group, "%s", value);
        return 1;
    }
    if (strcmp(key, "allow_uids") == 0)
        return config_ids(p, key, value, sv->allow_uids, &sv->n_allow_uids);
    if (strcmp(key, "allow_gids") == 0)
        return config_ids(p, key, value, sv->allow_gids, &sv->n_allow_gids);
    if (strcmp(key, "admin_uids") == 0)
        return config_ids(p, key, value, sv->admin_uids, &sv->n_admin_uids);
    if (strcmp(key, "max_connections") == 0)
        return config_uint(p, s, key, value, 1, 1000000, &sv->max_connections);
    if (strcmp(key, "max_frame_bytes") == 0)
        return config_uint(p, s, key, value, 1024, 64u << 20, &sv->max_frame_bytes);
    if (strcmp(key, "max_inflight_per_conn") == 0)
        return config_uint(p, s, key, value, 1, 1000000, &sv->max_inflight_per_conn);
    if (strcmp(key, "worker_queue") == 0)
        return config_uint(p, s, key, value, 0, 10000000, &sv->worker_queue);
    if (strcmp(key, "read_timeout_ms") == 0)
        return config_uint(p, s, key, value, 1, 3600000, &sv->read_timeout_ms);
    if (strcmp(key, "max_string_bytes") == 0)
        return config_uint(p, s, key, value, 128, 1u << 20, &sv->max_string_bytes);
    if (strcmp(key, "max_metadata_entries") == 0)
        return config_uint(p, s, key, value, 0, 100000, &sv->max_metadata_entries);
    if (strcmp(key, "max_metadata_bytes") == 0)
        return config_uint(p, s, key, value, 0, 1u << 20, &sv->max_metadata_bytes);
    if (strcmp(key, "log_level") == 0) {
        enum log_level lvl;
        if (log_level_parse(value, &lvl) < 0)
            return config_fail(p, "log_level in [server] must be error, warning, info or debug, "
                                  "not \"%s\"", value);
        p->cfg->log_level = (int)lvl;
        return 1;
    }
    return config_fail(p, "unknown key \"%s\" in [server]", key);
}

static int config_storage_key(struct config_parse *p, const char *key, const char *value)
{
    struct storage_config *st = &p->cfg->storage;
    const char *s = "storage";
    if (strcmp(key, "fsync") == 0) {
        for (int f = FSYNC_ALWAYS; f <= FSYNC_NEVER; f++)
            if (strcmp(value, config_fsync_name(f)) == 0) {
                st->fsync = f;
                return 1;
            }
        return config_fail(p, "fsync in [storage] must be always, batch or never, not \"%s\"",
                           value);
    }
    if (strcmp(key, "batch_interval_ms") == 0)
        return config_uint(p, s, key, value, 1, 60000, &st->batch_interval_ms);
    if (strcmp(key, "checkpoint_ms") == 0)
        return config_uint(p, s, key, value, 1, 3600000, &st->checkpoint_ms);
    if (strcmp(key, "journal_segment_mb") == 0)
        return config_uint(p, s, key, value, 1, 4096, &st->segment_mb);
    if (strcmp(key, "journal_retention_mb") == 0)
        return config_uint(p, s, key, value, 0, 1048576, &st->retention_mb);
    if (strcmp(key, "journal_retention_s") == 0)
        return config_uint(p, s, key, value, 0, 31536000, &st->retention_s);
    if (strcmp(key, "snapshot_every") == 0)
        return config_uint(p, s, key, value, 0, 100000000, &st->snapshot_every);
    if (strcmp(key, "open_files") == 0)
        return config_uint(p, s, key, value, 1, 1000000, &st->open_files);
    if (strcmp(key, "max_aggregates") == 0)
        return config_uint(p, s, key, value, 1, 100000000, &st->max_aggregates);
    if (strcmp(key, "idle_timeout_s") == 0)
        return config_uint(p, s, key, value, 0, 31536000, &st->idle_timeout_s);
    return config_fail(p, "unknown key \"%s\" in [storage]", key);
}

static int config_child_key(struct config_parse *p, const char *section, const char *key,
                            const char *value)
{
    struct cqrsd_config *cfg = p->cfg;
    if (cfg->n_children == 0)
        return config_fail(p, "key \"%s\" outside a known section", key);
    size_t i = cfg->n_children - 1;   /* inih reports keys of the section just read */
    struct child_config *c = &cfg->children[i];
    if (strcmp(key, "restart") == 0) {
        for (int r = RESTART_PERMANENT; r <= RESTART_TEMPORARY; r++)
            if (strcmp(value, config_restart_name(r)) == 0) {
                c->restart = r;
                return 1;
            }
        return config_fail(p, "restart in [%s] must be permanent, transient or temporary, "
                              "not \"%s\"", section, value);
    }
    if (strcmp(key, "shutdown_ms") == 0) {
        p->shutdown_set[i] = 1;
        if (strcmp(value, "brutal_kill") == 0) {
            c->shutdown_ms = CONFIG_BRUTAL_KILL;
            return 1;
        }
        unsigned ms;
        if (!config_uint(p, section, key, value, 1, 3600000, &ms))
            return 0;
        c->shutdown_ms = (int)ms;
        return 1;
    }
    if (strcmp(key, "kind") == 0) {
        if (strcmp(value, "worker") == 0 || strcmp(value, "projector") == 0) {
            c->kind = value[0] == 'w' ? CHILD_WORKER : CHILD_PROJECTOR;
            return 1;
        }
        return config_fail(p, "kind in [%s] must be worker or projector, not \"%s\"", section,
                           value);
    }
    return config_fail(p, "unknown key \"%s\" in [%s]", key, section);
}

/* Every worker child names an aggregate type; one projector at most. */
static int config_check_children(struct config_parse *p)
{
    const struct cqrsd_config *cfg = p->cfg;
    int projectors = 0;
    for (size_t i = 0; i < cfg->n_children; i++) {
        const struct child_config *c = &cfg->children[i];
        p->line = p->child_line[i];
        if (c->kind == CHILD_WORKER && !aggregate_lookup(c->name))
            return config_fail(p, "[child %s]: no aggregate type is called \"%s\" (a projector "
                               "says kind = projector)", c->name, c->name);
        if (c->kind == CHILD_PROJECTOR && projectors++)
            return config_fail(p, "[child %s]: a second projector (one keeps the read model)",
                               c->name);
    }
    return 1;
}

static int config_handler(void *user, const char *section, const char *key, const char *value)
{
    struct config_parse *p = user;
    if (p->failed)
        return 0;
    if (strcmp(section, "supervisor") == 0)
        return config_supervisor_key(p, key, value);
    if (strcmp(section, "storage") == 0)
        return config_storage_key(p, key, value);
    if (strcmp(section, "server") == 0)
        return config_server_key(p, key, value);
    if (strncmp(section, "child ", 6) == 0)
        return config_child_key(p, section, key, value);
    if (!section[0])
        return config_fail(p, "key \"%s\" comes before any section", key);
    return config_fail(p, "key \"%s\" in unknown section [%s]", key, section);
}

int config_load(const char *path, struct cqrsd_config *cfg, char *err, size_t errlen)
{
    struct config_parse p = { .path = path, .err = err, .errlen = errlen };
    config_defaults(cfg);
    cfg->n_children = 0;   /* a file lists its children */
    p.cfg = cfg;
    p.f = fopen(path, "re");
    if (!p.f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    int rc = ini_parse_stream(config_reader, &p, config_handler, &p);
    fclose(p.f);
    if (!p.failed && rc == 0)
        config_check_children(&p);
    if (p.failed)
        return -1;
    if (rc != 0) {
        snprintf(err, errlen, "%s:%d: not a valid line (expected [section], key = value or a "
                 "comment)", path, rc);
        return -1;
    }
    if (cfg->n_children == 0) {
        snprintf(err, errlen, "%s: no [child TYPE] section: nothing to supervise", path);
        return -1;
    }
    if (cfg->heartbeat_ms && cfg->heartbeat_timeout_ms < cfg->heartbeat_ms) {
        snprintf(err, errlen, "%s: heartbeat_timeout_ms (%u) must not be shorter than "
                 "heartbeat_ms (%u)", path, cfg->heartbeat_timeout_ms, cfg->heartbeat_ms);
        return -1;
    }
    for (size_t i = 0; i < cfg->n_children; i++)
        if (!p.shutdown_set[i])
            cfg->children[i].shutdown_ms = (int)cfg->shutdown_timeout_ms;
    return 0;
}
