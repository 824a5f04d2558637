/*
 * cqrsctl — the bundled client of cqrsd: send commands, query state, dump a
 * stream, query the read model, follow a type's events as they commit,
 * check the event logs, show the supervision tree, kill a worker to watch
 * it come back.
 *
 *   cqrsctl [-s PATH] [--json] <subcommand> ...      (see usage() below)
 *
 * Commands, states and events are built and printed generically from the
 * protobuf-c descriptors of the aggregate registry (pbtext): a new aggregate
 * type needs no change here. Everything the user typed is checked before
 * connecting (unknown type, command or field, unparseable value: exit 64),
 * except what only the daemon can judge (ids, payload domains: INVALID).
 *
 * Output: human text on stdout by default, or with --json exactly one JSON
 * document (also for a non-OK reply: {"status":..,"error":..}); subscribe
 * prints one line (one JSON object) per event instead. Errors go to
 * stderr as one sentence prefixed "cqrsctl: ". Exit codes follow sysexits:
 * 0 ok, 1 rejected/conflict/not found (verify: problems found), 64 usage,
 * 65 INVALID, 69 unreachable UNAVAILABLE BUSY, 70 INTERNAL CORRUPT or a
 * protocol error.
 *
 * Replies are untrusted: strings from the daemon are repaired into valid
 * UTF-8 for JSON, event and state payloads that fail to decode are protocol
 * errors, EVENTS paging stops unless versions go forward, and ALL_EVENTS
 * paging unless positions do.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <time.h>
#include <jansson.h>

#include "aggregate.h"
#include "client.h"
#include "pbtext.h"

#ifndef CQRS_VERSION
#define CQRS_VERSION "unknown"
#endif

#define CTL_EXIT_NO 1                      /* rejected, conflict, not found */
#define CTL_SOCKET_SYSTEM "/run/cqrsd/cqrsd.sock"
#define CTL_SOCKET_LOCAL "var/cqrsd.sock"
#define CTL_PROJECTOR_CHILD "readmodel"    /* cqrsd's built-in projector child */

struct ctl {
    const char *socket;
    int json;
    struct cqrs_client *client;
};

static void ctl_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void ctl_error(const char *fmt, ...)
{
    va_list ap;
    fputs("cqrsctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static int ctl_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int ctl_usage_error(const char *fmt, ...)
{
    va_list ap;
    fputs("cqrsctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return EX_USAGE;
}

static void usage(FILE *out)
{
    fputs(
"usage: cqrsctl [-s PATH] [--json] <subcommand> [arguments]\n"
"\n"
"Subcommands:\n"
"  send TYPE ID COMMAND [field=value ...] [--command-id ID] [--expect-version N]\n"
"                      build COMMAND from the field=value pairs and send it to\n"
"                      aggregate ID of TYPE; prints the new version, the\n"
"                      position of its last event and the events appended.\n"
"                      The command id (--command-id, else a random one)\n"
"                      makes the retries of UNAVAILABLE safe; --expect-version\n"
"                      applies it only at that version (0: new)\n"
"  get TYPE ID         print the aggregate's state and version\n"
"  events TYPE ID [--from N]\n"
"                      print the aggregate's events from version N (default 1)\n"
"  query TYPE QUERY [field=value ...] [--eventual] [--min-position N]\n"
"        [--timeout-ms N]\n"
"                      ask the read model: build QUERY from the field=value\n"
"                      pairs; prints the result and the position of TYPE the\n"
"                      read model had applied. By default the answer waits\n"
"                      until every event acknowledged before the query is\n"
"                      applied (read-your-writes); --eventual does not wait,\n"
"                      --min-position waits for position N, --timeout-ms\n"
"                      bounds the wait (default 5000: then UNAVAILABLE)\n"
"  subscribe TYPE [--from POSITION] [--count N]\n"
"                      print the events of TYPE in position order, from\n"
"                      POSITION (default 1), then each new one as it commits,\n"
"                      one per line: position, id, version, type, fields;\n"
"                      resumes by itself when the stream is interrupted. Runs\n"
"                      until killed, or until N events are printed\n"
"  readmodel rebuild   empty the read model and apply every event again;\n"
"                      prints how many were applied\n"
"  verify [TYPE [ID]]  check event logs in the daemon, read-only: the stream ID\n"
"                      of TYPE, every stream of TYPE, or of every type; prints\n"
"                      one line per problem, nothing when all is well\n"
"  status              print the supervised workers: pid, state, restarts,\n"
"                      uptime, last exit\n"
"  kill TYPE           SIGKILL the worker of TYPE, to watch cqrsd restart it;\n"
"                      TYPE " CTL_PROJECTOR_CHILD ": the read model's projector\n"
"  restart TYPE        stop the worker of TYPE (or " CTL_PROJECTOR_CHILD ") gracefully and\n"
"                      start it again\n"
"  reload              make cqrsd re-read its configuration; returns once the\n"
"                      change is applied (children added, removed, restarted)\n"
"\n"
"Options:\n"
"  -s, --socket PATH   the daemon's socket; default $CQRS_SOCKET, else\n"
"                      " CTL_SOCKET_SYSTEM " if it exists, else " CTL_SOCKET_LOCAL "\n"
"  --json              print one JSON document on stdout (field names as in\n"
"                      the .proto files; bytes in base64); subscribe: one\n"
"                      JSON object per event and line\n"
"  -h, --help          print this help and exit\n"
"  --version           print the version and exit\n"
"\n"
"Field values: integers in decimal, bool true/false/1/0, float or double,\n"
"strings and bytes as given, enums by value name or number; give a repeated\n"
"field once per element.\n"
"\n"
"Exit status:\n"
"  0   success\n"
"  1   rejected by a business rule, version conflict, or not found; verify:\n"
"      problems were found\n"
"  64  usage error: unknown subcommand, option, type, command, query or\n"
"      field, or an unparseable value\n"
"  65  invalid request: the daemon answered INVALID (bad id or payload)\n"
"  69  daemon unreachable, or it answered UNAVAILABLE or BUSY (retry later,\n"
"      with the same --command-id); subscribe: dropped as too slow, or could\n"
"      not resume for 30 s\n"
"  70  internal error: the daemon answered INTERNAL or CORRUPT, or a protocol\n"
"      error\n"
"\n"
"Aggregate types and their commands:\n", out);
    for (const struct aggregate_type *const *t = aggregate_registry; *t; t++) {
        fprintf(out, "  %s:", (*t)->name);
        for (const ProtobufCMessageDescriptor *const *c = (*t)->commands; c && *c; c++)
            fprintf(out, " %s", (*c)->short_name);
        fputc('\n', out);
    }
    /* Read by the bash completion too, like the list above. */
    fputs("\nRead model queries:\n", out);
    for (const struct aggregate_type *const *t = aggregate_registry; *t; t++) {
        const struct agg_projection *p = (*t)->projection;
        if (!p || !p->queries || !p->queries[0].request)
            continue;
        fprintf(out, "  %s:", (*t)->name);
        for (const struct agg_query *q = p->queries; q->request; q++)
            fprintf(out, " %s", q->request->short_name);
        fputc('\n', out);
    }
}

/* --- small parsers -------------------------------------------------------- */

static int parse_u64(const char *s, uint64_t *out)
{
    if (*s < '0' || *s > '9')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

/* Matches `--name VALUE` or `--name=VALUE` at argv[*i]; advances *i past the
 * value. 1 matched, 0 not this option, -1 value missing. */
static int opt_value(int argc, char **argv, int *i, const char *name, const char **value)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0)
        return 0;
    if (argv[*i][n] == '=') {
        *value = argv[*i] + n + 1;
        return 1;
    }
    if (argv[*i][n] != '\0')
        return 0;
    if (*i + 1 >= argc)
        return -1;
    *value = argv[++*i];
    return 1;
}

/* The value options of a subcommand: names[k] fills *slots[k], at most
 * once. 1 when argv[*i] was one of them (taken), 0 when it is none of them,
 * or EX_USAGE after saying why (no value, given twice). */
static int opt_values(int argc, char **argv, int *i, const char *const names[],
                      const char **const slots[])
{
    for (size_t k = 0; names[k]; k++) {
        const char *v;
        int m = opt_value(argc, argv, i, names[k], &v);
        if (m == 0)
            continue;
        if (m < 0)
            return ctl_usage_error("option %s needs a value", names[k]);
        if (*slots[k])
            return ctl_usage_error("option %s is given more than once", names[k]);
        *slots[k] = v;
        return 1;
    }
    return 0;
}

static const struct aggregate_type *ctl_type(const char *name)
{
    const struct aggregate_type *t = aggregate_lookup(name);
    if (t)
        return t;
    char known[512] = "";
    size_t at = 0;
    for (const struct aggregate_type *const *p = aggregate_registry; *p && at < sizeof known; p++) {
        int n = snprintf(known + at, sizeof known - at, "%s%s", at ? ", " : "", (*p)->name);
        if (n < 0)
            break;
        at += (size_t)n;
    }
    ctl_usage_error("unknown aggregate type \"%s\" (known: %s)", name, known);
    return NULL;
}

/* --- talking to the daemon ---------------------------------------------- */

static const char *ctl_default_socket(void)
{
    const char *env = getenv("CQRS_SOCKET");
    if (env && *env)
        return env;
    struct stat st;
    if (stat(CTL_SOCKET_SYSTEM, &st) == 0)
        return CTL_SOCKET_SYSTEM;
    return CTL_SOCKET_LOCAL;
}

static int ctl_connect(struct ctl *c)
{
    c->client = cqrs_client_connect(c->socket);
    if (!c->client) {
        ctl_error("cannot connect to the daemon at %s: %s", c->socket, strerror(errno));
        return EX_UNAVAILABLE;
    }
    return 0;
}

/* A failed call of the client library (no reply). `command`: the request
 * was a command, which may or may not have been applied. */
static int ctl_call_failed(const struct ctl *c, int command)
{
    int e = errno;
    if (e == EPROTO) {
        ctl_error("protocol error: the daemon at %s sent an invalid reply", c->socket);
        return EX_SOFTWARE;
    }
    if (e == ENOMEM) {
        ctl_error("out of memory");
        return EX_SOFTWARE;
    }
    if (e == ECONNRESET || e == EPIPE) {
        ctl_error("the daemon at %s closed the connection before replying%s", c->socket,
                  command ? " (the command may or may not have been applied: retry "
                            "with the same --command-id)" : "");
        return EX_UNAVAILABLE;
    }
    ctl_error("lost the daemon at %s: %s", c->socket, strerror(e));
    return EX_UNAVAILABLE;
}

static int ctl_status_exit(Cqrs__Status s)
{
    switch (s) {
    case CQRS__STATUS__OK:          return EX_OK;
    case CQRS__STATUS__REJECTED:
    case CQRS__STATUS__CONFLICT:
    case CQRS__STATUS__NOT_FOUND:   return CTL_EXIT_NO;
    case CQRS__STATUS__INVALID:     return EX_DATAERR;
    case CQRS__STATUS__UNAVAILABLE:
    case CQRS__STATUS__BUSY:        return EX_UNAVAILABLE;
    default:                        return EX_SOFTWARE;
    }
}

static int ctl_print_json(json_t *doc)
{
    if (!doc) {
        ctl_error("out of memory");
        return EX_SOFTWARE;
    }
    int rc = json_dumpf(doc, stdout, JSON_COMPACT);
    json_decref(doc);
    fputc('\n', stdout);
    return rc < 0 ? EX_SOFTWARE : EX_OK;
}

/* A non-OK reply on stderr: "cqrsctl: busy: <the daemon's sentence><then>". */
static void ctl_reply_error(const Cqrs__Reply *r, const char *then)
{
    const char *name = cqrs_status_name(r->status);
    char lower[32];
    size_t i;
    for (i = 0; name[i] && i + 1 < sizeof lower; i++)
        lower[i] = name[i] == '_' ? ' ' : (char)(name[i] | 0x20);
    lower[i] = '\0';
    if (r->error && r->error[0])
        ctl_error("%s: %s%s", lower, r->error, then);
    else
        ctl_error("the daemon answered %s%s", name, then);
}

/* A non-OK reply: the daemon's sentence on stderr (and the status as JSON
 * on stdout with --json); returns the exit code. */
static int ctl_reply_failed(const struct ctl *c, const Cqrs__Reply *r)
{
    const char *name = cqrs_status_name(r->status);
    ctl_reply_error(r, "");
    if (c->json)
        ctl_print_json(json_pack("{s:s, s:o}", "status", name,
                                 "error", pbtext_json_string(r->error)));
    return ctl_status_exit(r->status);
}

/* --- events and states ---------------------------------------------------- */

/* Decodes an event's data: 0 with *out set, 0 with *out NULL for an event
 * type this cqrsctl does not know, or -1 (prints) if it does not decode. */
static int ctl_event_decode(const struct aggregate_type *t, const Cqrs__EventRecord *ev,
                            ProtobufCMessage **out)
{
    *out = NULL;
    const ProtobufCMessageDescriptor *d = agg_find_desc(t->events, ev->type);
    if (!d)
        return 0;
    *out = protobuf_c_message_unpack(d, NULL, ev->data.len, ev->data.data);
    if (!*out) {
        ctl_error("protocol error: event %" PRIu64 " (%s) does not decode as %s",
                  ev->version, ev->type, d->name);
        return -1;
    }
    return 0;
}

/* `  4 FundsCaptured amount=8 tx_id="123"`, with the command id if any. */
static void ctl_event_print(const char *indent, const Cqrs__EventRecord *ev,
                            const ProtobufCMessage *data, int with_command_id)
{
    printf("%s%" PRIu64 " %s", indent, ev->version, ev->type);
    if (data) {
        if (data->descriptor->n_fields)
            fputc(' ', stdout);
        pbtext_print_inline(stdout, data);
    } else {
        printf(" <%zu bytes of an unknown event type>", ev->data.len);
    }
    if (with_command_id && ev->command_id && ev->command_id[0]) {
        fputs(" command_id=", stdout);
        pbtext_print_quoted(stdout, (const uint8_t *)ev->command_id, strlen(ev->command_id));
    }
    fputc('\n', stdout);
}

/* The event's data as JSON: the decoded message, or base64 when unknown. */
static json_t *ctl_event_data_json(const Cqrs__EventRecord *ev, const ProtobufCMessage *data)
{
    return data ? pbtext_to_json(data) : pbtext_json_bytes(ev->data.data, ev->data.len);
}

/* --- subcommands ---------------------------------------------------------- */

/* "A, B, C": the short names of a NULL-terminated descriptor list. */
static const char *ctl_desc_names(const ProtobufCMessageDescriptor *const *list,
                                  char *buf, size_t len)
{
    size_t at = 0;
    buf[0] = '\0';
    for (; list && *list && at < len; list++) {
        int n = snprintf(buf + at, len - at, "%s%s", at ? ", " : "", (*list)->short_name);
        if (n < 0)
            break;
        at += (size_t)n;
    }
    return buf;
}

/* A `field=value` argument into the message being built: 0, or the exit
 * code after printing why. */
static int ctl_set_field(struct pbtext_builder *b, char *arg)
{
    char err[1024];
    char *eq = strchr(arg, '=');
    if (!eq || eq == arg)
        return ctl_usage_error("expected field=value, got \"%s\"", arg);
    *eq = '\0';     /* argv is ours to edit */
    int set = pbtext_builder_set(b, arg, eq + 1, err, sizeof err);
    *eq = '=';
    if (set < 0 && errno == ENOMEM) {
        ctl_error("out of memory");
        return EX_SOFTWARE;
    }
    if (set < 0)
        return ctl_usage_error("%s", err);
    return 0;
}

struct send_args {
    const struct aggregate_type *type;
    const char *id;
    const ProtobufCMessageDescriptor *cmd;
    struct pbtext_builder *fields;      /* the command being built */
    const char *command_id;             /* NULL: none */
    int64_t expected_version;           /* -1: none */
};

/* Reads `TYPE ID COMMAND [field=value ...]` and the options (anywhere) into
 * a; 0, or the exit code after printing why. The first three plain
 * arguments are TYPE ID COMMAND: the command's descriptor is needed before
 * any field can be read. */
static int send_parse(struct ctl *c, int argc, char **argv, struct send_args *a)
{
    const char *expect = NULL;
    int npos = 0;

    for (int i = 0; i < argc; i++) {
        int m;
        static const char *const names[] = { "--command-id", "--expect-version", NULL };
        const char **const slots[] = { &a->command_id, &expect };
        if ((m = opt_values(argc, argv, &i, names, slots)) != 0) {
            if (m == EX_USAGE)
                return m;
        } else if (strcmp(argv[i], "--json") == 0) {
            c->json = 1;
        } else if (strncmp(argv[i], "--", 2) == 0) {
            return ctl_usage_error("unknown option %s for send", argv[i]);
        } else if (npos == 0) {
            if (!(a->type = ctl_type(argv[i])))
                return EX_USAGE;
            npos++;
        } else if (npos == 1) {
            a->id = argv[i];
            npos++;
        } else if (npos == 2) {
            if (!(a->cmd = agg_find_desc(a->type->commands, argv[i]))) {
                char names[512];
                return ctl_usage_error("%s has no command \"%s\" (its commands: %s)",
                                       a->type->name, argv[i],
                                       ctl_desc_names(a->type->commands, names, sizeof names));
            }
            if (!(a->fields = pbtext_builder_new(a->cmd))) {
                ctl_error("out of memory");
                return EX_SOFTWARE;
            }
            npos++;
        } else {
            int rc = ctl_set_field(a->fields, argv[i]);
            if (rc)
                return rc;
        }
    }
    if (npos < 3)
        return ctl_usage_error("send needs TYPE ID COMMAND");
    a->expected_version = -1;
    if (expect) {
        uint64_t v;
        if (parse_u64(expect, &v) < 0 || v > INT64_MAX)
            return ctl_usage_error("invalid --expect-version \"%s\": not a version number",
                                   expect);
        a->expected_version = (int64_t)v;
    }
    return 0;
}

/* An OK reply to a command: its version and the events it appended. */
static int send_print(const struct ctl *c, const struct aggregate_type *t, const Cqrs__Reply *r)
{
    json_t *events = c->json ? json_array() : NULL;
    if (c->json && !events)
        return ctl_print_json(NULL);
    if (!c->json && r->position)
        printf("OK version %" PRIu64 " position %" PRIu64 "\n", r->version, r->position);
    else if (!c->json)
        printf("OK version %" PRIu64 "\n", r->version);
    for (size_t i = 0; i < r->n_events; i++) {
        const Cqrs__EventRecord *ev = r->events[i];
        ProtobufCMessage *data;
        int fail = 0;
        if (ctl_event_decode(t, ev, &data) < 0) {
            json_decref(events);
            return EX_SOFTWARE;
        }
        if (c->json)
            fail = json_array_append_new(events, json_pack("{s:I, s:o, s:o}",
                        "version", (json_int_t)ev->version,
                        "type", pbtext_json_string(ev->type),
                        "data", ctl_event_data_json(ev, data))) < 0;
        else
            ctl_event_print("  ", ev, data, 0);
        if (data)
            protobuf_c_message_free_unpacked(data, NULL);
        if (fail) {
            json_decref(events);
            return ctl_print_json(NULL);
        }
    }
    if (!c->json)
        return EX_OK;
    return ctl_print_json(json_pack("{s:s, s:I, s:I, s:o}", "status", "OK",
                                    "version", (json_int_t)r->version,
                                    "position", (json_int_t)r->position, "events", events));
}

static int cmd_send(struct ctl *c, int argc, char **argv)
{
    struct send_args a = { .type = NULL };
    uint8_t *payload = NULL;
    size_t len;
    Cqrs__Reply *r = NULL;
    int rc = send_parse(c, argc, argv, &a);
    if (rc)
        goto out;
    if (pbtext_builder_pack(a.fields, &payload, &len) < 0) {
        ctl_error("out of memory");
        rc = EX_SOFTWARE;
        goto out;
    }
    if ((rc = ctl_connect(c)) != 0)
        goto out;
    if (cqrs_client_command(c->client, a.type->name, a.id, a.cmd->short_name, payload, len,
                            a.command_id, a.expected_version, &r) < 0)
        rc = ctl_call_failed(c, 1);
    else if (r->status != CQRS__STATUS__OK)
        rc = ctl_reply_failed(c, r);
    else
        rc = send_print(c, a.type, r);
out:
    if (r)
        cqrs__reply__free_unpacked(r, NULL);
    free(payload);
    pbtext_builder_free(a.fields);
    return rc;
}

/* Collects TYPE ID positionals and --json; *from_opt set if --from given
 * (NULL: not accepted). */
static int ctl_type_id_args(struct ctl *c, const char *sub, int argc, char **argv,
                            const char **type, const char **id, const char **from_opt)
{
    int npos = 0;
    for (int i = 0; i < argc; i++) {
        const char *v;
        int m;
        if (from_opt && (m = opt_value(argc, argv, &i, "--from", &v)) != 0) {
            if (m < 0)
                return ctl_usage_error("option --from needs a value");
            *from_opt = v;
        } else if (strcmp(argv[i], "--json") == 0) {
            c->json = 1;
        } else if (strncmp(argv[i], "--", 2) == 0) {
            return ctl_usage_error("unknown option %s for %s", argv[i], sub);
        } else if (npos == 0) {
            *type = argv[i];
            npos++;
        } else if (npos == 1 && id) {
            *id = argv[i];
            npos++;
        } else {
            return ctl_usage_error("too many arguments for %s", sub);
        }
    }
    if (npos < (id ? 2 : 1))
        return ctl_usage_error("%s needs %s", sub, id ? "TYPE ID" : "TYPE");
    return 0;
}

static int cmd_get(struct ctl *c, int argc, char **argv)
{
    const char *type = NULL, *id = NULL;
    Cqrs__Reply *r = NULL;
    ProtobufCMessage *state = NULL;
    int rc = ctl_type_id_args(c, "get", argc, argv, &type, &id, NULL);
    if (rc)
        return rc;
    const struct aggregate_type *t = ctl_type(type);
    if (!t)
        return EX_USAGE;
    if ((rc = ctl_connect(c)) != 0)
        return rc;
    if (cqrs_client_state(c->client, t->name, id, &r) < 0)
        return ctl_call_failed(c, 0);
    if (r->status != CQRS__STATUS__OK) {
        rc = ctl_reply_failed(c, r);
        goto out;
    }
    if (r->state_type && r->state_type[0] && strcmp(r->state_type, t->state_desc->short_name) != 0) {
        ctl_error("protocol error: the daemon sent a %s state, expected %s",
                  r->state_type, t->state_desc->short_name);
        rc = EX_SOFTWARE;
        goto out;
    }
    state = protobuf_c_message_unpack(t->state_desc, NULL, r->state.len, r->state.data);
    if (!state) {
        ctl_error("protocol error: the state of %s %s does not decode as %s",
                  t->name, id, t->state_desc->name);
        rc = EX_SOFTWARE;
        goto out;
    }
    if (c->json) {
        rc = ctl_print_json(json_pack("{s:s, s:o, s:I, s:o}", "type", t->name,
                                      "id", pbtext_json_string(id),
                                      "version", (json_int_t)r->version,
                                      "state", pbtext_to_json(state)));
    } else {
        printf("%s %s version %" PRIu64 "\n", t->name, id, r->version);
        pbtext_print_lines(stdout, state, "  ");
        rc = EX_OK;
    }
out:
    if (state)
        protobuf_c_message_free_unpacked(state, NULL);
    cqrs__reply__free_unpacked(r, NULL);
    return rc;
}

static int cmd_events(struct ctl *c, int argc, char **argv)
{
    const char *type = NULL, *id = NULL, *from_opt = NULL;
    uint64_t from = 1;
    json_t *list = NULL;
    int rc = ctl_type_id_args(c, "events", argc, argv, &type, &id, &from_opt);
    if (rc)
        return rc;
    const struct aggregate_type *t = ctl_type(type);
    if (!t)
        return EX_USAGE;
    if (from_opt && parse_u64(from_opt, &from) < 0)
        return ctl_usage_error("invalid --from \"%s\": not a version number", from_opt);
    if ((rc = ctl_connect(c)) != 0)
        return rc;
    if (c->json && !(list = json_array()))
        return ctl_print_json(NULL);

    /* The daemon may cut a large answer short: ask again after the last
     * version received until an answer brings nothing. */
    for (;;) {
        Cqrs__Reply *r;
        if (cqrs_client_events(c->client, t->name, id, from, 0, &r) < 0) {
            rc = ctl_call_failed(c, 0);
            goto out;
        }
        if (r->status != CQRS__STATUS__OK) {
            rc = ctl_reply_failed(c, r);
            cqrs__reply__free_unpacked(r, NULL);
            goto out;
        }
        size_t n = r->n_events;
        for (size_t i = 0; i < n; i++) {
            const Cqrs__EventRecord *ev = r->events[i];
            ProtobufCMessage *data;
            if (ev->version < from) {
                ctl_error("protocol error: asked for events from version %" PRIu64
                          ", got version %" PRIu64, from, ev->version);
                cqrs__reply__free_unpacked(r, NULL);
                rc = EX_SOFTWARE;
                goto out;
            }
            if (ctl_event_decode(t, ev, &data) < 0) {
                cqrs__reply__free_unpacked(r, NULL);
                rc = EX_SOFTWARE;
                goto out;
            }
            from = ev->version + 1;
            if (c->json) {
                rc = json_array_append_new(list, json_pack("{s:I, s:I, s:o, s:o, s:o}",
                        "version", (json_int_t)ev->version,
                        "timestamp_us", (json_int_t)ev->timestamp_us,
                        "type", pbtext_json_string(ev->type),
                        "data", ctl_event_data_json(ev, data),
                        "command_id", pbtext_json_string(ev->command_id)));
            } else {
                ctl_event_print("", ev, data, 1);
                rc = 0;
            }
            if (data)
                protobuf_c_message_free_unpacked(data, NULL);
            if (rc < 0) {
                cqrs__reply__free_unpacked(r, NULL);
                rc = ctl_print_json(NULL);
                goto out;
            }
        }
        cqrs__reply__free_unpacked(r, NULL);
        if (n == 0)
            break;
    }
    rc = EX_OK;
    if (c->json)
        rc = ctl_print_json(json_pack("{s:s, s:o, s:O}", "type", t->name,
                                      "id", pbtext_json_string(id), "events", list));
out:
    json_decref(list);
    return rc;
}

/* A line from the daemon, kept on one line whatever bytes it holds. */
static void ctl_print_line(const char *s)
{
    for (; s && *s; s++)
        fputc((unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s, stdout);
    fputc('\n', stdout);
}

/* VERIFY of one type (every stream when `id` is NULL): its problems are
 * printed, or appended to `list` (--json), and counted in *problems. 0, or
 * the exit code after printing why. */
static int verify_one_type(struct ctl *c, const struct aggregate_type *t, const char *id,
                           json_t *list, size_t *problems)
{
    Cqrs__Request req = CQRS__REQUEST__INIT;
    Cqrs__Query q = CQRS__QUERY__INIT;
    q.aggregate_type = (char *)t->name;
    q.aggregate_id = (char *)(id ? id : "");
    q.kind = CQRS__QUERY__KIND__VERIFY;
    req.body_case = CQRS__REQUEST__BODY_QUERY;
    req.query = &q;
    Cqrs__Reply *r;
    if (cqrs_client_call(c->client, &req, &r) < 0)
        return ctl_call_failed(c, 0);
    int rc = 0;
    if (r->status != CQRS__STATUS__OK) {
        rc = ctl_reply_failed(c, r);
    } else {
        for (size_t i = 0; i < r->n_problems && rc == 0; i++) {
            (*problems)++;
            if (!list)
                ctl_print_line(r->problems[i]);
            else if (json_array_append_new(list, pbtext_json_string(r->problems[i])) < 0)
                rc = ctl_print_json(NULL);
        }
    }
    cqrs__reply__free_unpacked(r, NULL);
    return rc;
}

static int cmd_verify(struct ctl *c, int argc, char **argv)
{
    const char *type = NULL, *id = NULL;
    int npos = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            c->json = 1;
        else if (strncmp(argv[i], "--", 2) == 0)
            return ctl_usage_error("unknown option %s for verify", argv[i]);
        else if (npos >= 2)
            return ctl_usage_error("too many arguments for verify");
        else if (npos++ == 0)
            type = argv[i];
        else
            id = argv[i];
    }
    const struct aggregate_type *only = NULL;
    if (type && !(only = ctl_type(type)))
        return EX_USAGE;
    if (id && !id[0])
        return ctl_usage_error("verify needs a non-empty ID (leave it out to check every "
                               "stream of %s)", only->name);
    int rc = ctl_connect(c);
    if (rc)
        return rc;
    json_t *list = NULL;
    if (c->json && !(list = json_array()))
        return ctl_print_json(NULL);

    /* No TYPE: every registered type, in registry order. */
    const struct aggregate_type *const one[] = { only, NULL };
    size_t problems = 0;
    for (const struct aggregate_type *const *t = only ? one : aggregate_registry; *t; t++)
        if ((rc = verify_one_type(c, *t, id, list, &problems)) != 0)
            goto out;
    rc = problems ? CTL_EXIT_NO : EX_OK;
    if (c->json) {
        int jrc = ctl_print_json(json_pack("{s:O, s:b}", "problems", list, "clean", problems == 0));
        if (jrc != EX_OK)
            rc = jrc;
    }
out:
    json_decref(list);
    return rc;
}

/* "3d04h", "2h05m", "7m09s", "12s". */
static void fmt_uptime(char *buf, size_t len, int64_t started_at_us)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    if (started_at_us <= 0 || now_us < started_at_us) {
        snprintf(buf, len, "-");
        return;
    }
    int64_t s = (now_us - started_at_us) / 1000000;
    if (s >= 86400)
        snprintf(buf, len, "%" PRId64 "d%02" PRId64 "h", s / 86400, s % 86400 / 3600);
    else if (s >= 3600)
        snprintf(buf, len, "%" PRId64 "h%02" PRId64 "m", s / 3600, s % 3600 / 60);
    else if (s >= 60)
        snprintf(buf, len, "%" PRId64 "m%02" PRId64 "s", s / 60, s % 60);
    else
        snprintf(buf, len, "%" PRId64 "s", s);
}

static const char *or_dash(const char *s)
{
    return s && s[0] ? s : "-";
}

/* A control request without arguments (status, reload): *out is the OK
 * reply, or the exit code is returned (and *out is NULL). */
static int ctl_control_call(struct ctl *c, int argc, char **argv, const char *verb,
                            Cqrs__Control__Op op, Cqrs__Reply **out)
{
    *out = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            c->json = 1;
        else
            return ctl_usage_error("%s takes no arguments", verb);
    }
    Cqrs__Reply *r;
    int rc = ctl_connect(c);
    if (rc)
        return rc;
    if (cqrs_client_control(c->client, op, NULL, &r) < 0)
        return ctl_call_failed(c, 0);
    if (r->status != CQRS__STATUS__OK) {
        rc = ctl_reply_failed(c, r);
        cqrs__reply__free_unpacked(r, NULL);
        return rc;
    }
    *out = r;
    return EX_OK;
}

/* reload: returns once cqrsd has applied the file (or refused it). */
static int cmd_reload(struct ctl *c, int argc, char **argv)
{
    Cqrs__Reply *r;
    int rc = ctl_control_call(c, argc, argv, "reload", CQRS__CONTROL__OP__RELOAD, &r);
    if (!r)
        return rc;
    if (c->json) {
        rc = ctl_print_json(json_pack("{s:s}", "status", "OK"));
    } else {
        printf("OK configuration reloaded\n");
        rc = EX_OK;
    }
    cqrs__reply__free_unpacked(r, NULL);
    return rc;
}

static int cmd_status(struct ctl *c, int argc, char **argv)
{
    Cqrs__Reply *r;
    int rc = ctl_control_call(c, argc, argv, "status", CQRS__CONTROL__OP__STATUS, &r);
    if (!r)
        return rc;
    if (c->json) {
        json_t *list = json_array();
        for (size_t i = 0; list && i < r->n_children; i++) {
            const Cqrs__ChildInfo *ch = r->children[i];
            json_t *o = json_pack("{s:o, s:i, s:o, s:I, s:I, s:o}",
                    "name", pbtext_json_string(ch->name), "pid", (int)ch->pid,
                    "state", pbtext_json_string(ch->state),
                    "restarts", (json_int_t)ch->restarts,
                    "started_at_us", (json_int_t)ch->started_at_us,
                    "last_exit", pbtext_json_string(ch->last_exit));
            if (o && ch->stats)   /* the worker's counters, when it has answered a heartbeat */
                json_object_set_new(o, "stats", pbtext_to_json(&ch->stats->base));
            if (json_array_append_new(list, o) < 0) {
                json_decref(list);
                list = NULL;
            }
        }
        rc = ctl_print_json(list ? json_pack("{s:o}", "children", list) : NULL);
    } else {
        int w = 4;
        for (size_t i = 0; i < r->n_children; i++) {
            int n = (int)strlen(or_dash(r->children[i]->name));
            if (n > w)
                w = n;
        }
        printf("%-*s  %7s  %-10s  %8s  %7s  %s\n", w, "NAME", "PID", "STATE",
               "RESTARTS", "UPTIME", "LAST EXIT");
        for (size_t i = 0; i < r->n_children; i++) {
            const Cqrs__ChildInfo *ch = r->children[i];
            char up[32], pid[16];
            fmt_uptime(up, sizeof up, ch->started_at_us);
            if (ch->pid > 0)
                snprintf(pid, sizeof pid, "%" PRId32, ch->pid);
            else
                snprintf(pid, sizeof pid, "-");
            printf("%-*s  %7s  %-10s  %8" PRIu32 "  %7s  %s\n", w, or_dash(ch->name), pid,
                   or_dash(ch->state), ch->restarts, up, or_dash(ch->last_exit));
        }
        rc = EX_OK;
    }
    cqrs__reply__free_unpacked(r, NULL);
    return rc;
}

/* kill and restart: one control operation on one child. */
static int ctl_child_op(struct ctl *c, int argc, char **argv, const char *verb,
                        Cqrs__Control__Op op)
{
    const char *type = NULL, *child, *what = "worker";
    Cqrs__Reply *r;
    int rc = ctl_type_id_args(c, verb, argc, argv, &type, NULL, NULL);
    if (rc)
        return rc;
    if (strcmp(type, CTL_PROJECTOR_CHILD) == 0) {
        child = CTL_PROJECTOR_CHILD;
        what = "projector";
    } else {
        const struct aggregate_type *t = ctl_type(type);
        if (!t)
            return EX_USAGE;
        child = t->name;
    }
    if ((rc = ctl_connect(c)) != 0)
        return rc;
    if (cqrs_client_control(c->client, op, child, &r) < 0)
        return ctl_call_failed(c, 0);
    int kill = op == CQRS__CONTROL__OP__KILL;
    if (r->status != CQRS__STATUS__OK) {
        rc = ctl_reply_failed(c, r);
    } else if (c->json) {
        rc = ctl_print_json(json_pack("{s:s, s:s}", "status", "OK", kill ? "killed" : "restarted",
                                      child));
    } else {
        if (kill)
            printf("OK sent SIGKILL to the %s %s\n", child, what);
        else
            printf("OK restarting the %s %s\n", child, what);
        rc = EX_OK;
    }
    cqrs__reply__free_unpacked(r, NULL);
    return rc;
}

static int cmd_kill(struct ctl *c, int argc, char **argv)
{
    return ctl_child_op(c, argc, argv, "kill", CQRS__CONTROL__OP__KILL);
}

static int cmd_restart(struct ctl *c, int argc, char **argv)
{
    return ctl_child_op(c, argc, argv, "restart", CQRS__CONTROL__OP__RESTART);
}

/* --- the read model ------------------------------------------------------- */

/* "GetWallet, ListWallets": the names of t's read model queries. */
static const char *ctl_query_names(const struct aggregate_type *t, char *buf, size_t len)
{
    size_t at = 0;
    buf[0] = '\0';
    if (!t->projection || !t->projection->queries)
        return buf;
    for (const struct agg_query *q = t->projection->queries; q->request && at < len; q++) {
        int n = snprintf(buf + at, len - at, "%s%s", at ? ", " : "", q->request->short_name);
        if (n < 0)
            break;
        at += (size_t)n;
    }
    return buf;
}

struct query_args {
    const struct aggregate_type *type;
    const struct agg_query *query;
    struct pbtext_builder *fields;      /* the query message being built */
    uint64_t min_position;
    uint32_t timeout_ms;
    int eventual;
};

/* Reads `TYPE QUERY [field=value ...]` and the options (anywhere) into a;
 * 0, or the exit code after printing why. */
static int query_parse(struct ctl *c, int argc, char **argv, struct query_args *a)
{
    const char *min_opt = NULL, *timeout_opt = NULL;
    int npos = 0;

    for (int i = 0; i < argc; i++) {
        int m;
        static const char *const names[] = { "--min-position", "--timeout-ms", NULL };
        const char **const slots[] = { &min_opt, &timeout_opt };
        if ((m = opt_values(argc, argv, &i, names, slots)) != 0) {
            if (m == EX_USAGE)
                return m;
        } else if (strcmp(argv[i], "--eventual") == 0) {
            a->eventual = 1;
        } else if (strcmp(argv[i], "--json") == 0) {
            c->json = 1;
        } else if (strncmp(argv[i], "--", 2) == 0) {
            return ctl_usage_error("unknown option %s for query", argv[i]);
        } else if (npos == 0) {
            if (!(a->type = ctl_type(argv[i])))
                return EX_USAGE;
            npos++;
        } else if (npos == 1) {
            char names[512];
            if (!(a->query = agg_find_query(a->type, argv[i]))) {
                if (!ctl_query_names(a->type, names, sizeof names)[0])
                    return ctl_usage_error("%s has no read model queries", a->type->name);
                return ctl_usage_error("%s has no query \"%s\" (its queries: %s)",
                                       a->type->name, argv[i], names);
            }
            if (!(a->fields = pbtext_builder_new(a->query->request))) {
                ctl_error("out of memory");
                return EX_SOFTWARE;
            }
            npos++;
        } else {
            int rc = ctl_set_field(a->fields, argv[i]);
            if (rc)
                return rc;
        }
    }
    if (npos == 1) {
        char names[512];
        if (!ctl_query_names(a->type, names, sizeof names)[0])
            return ctl_usage_error("%s has no read model queries", a->type->name);
        return ctl_usage_error("query needs a QUERY after %s (its queries: %s)",
                               a->type->name, names);
    }
    if (npos < 2)
        return ctl_usage_error("query needs TYPE QUERY");
    if (min_opt && parse_u64(min_opt, &a->min_position) < 0)
        return ctl_usage_error("invalid --min-position \"%s\": not a position", min_opt);
    if (timeout_opt) {
        uint64_t v;
        if (parse_u64(timeout_opt, &v) < 0 || v > UINT32_MAX)
            return ctl_usage_error("invalid --timeout-ms \"%s\": not a number of "
                                   "milliseconds (0 to %" PRIu32 ")", timeout_opt, UINT32_MAX);
        a->timeout_ms = (uint32_t)v;
    }
    return 0;
}

/* The repeated message field of a list result, one item per row (NULL:
 * the result is one row). */
static const ProtobufCFieldDescriptor *query_list_field(const struct agg_query *q)
{
    if (!q->repeated)
        return NULL;
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(q->result, q->repeated);
    if (!f || f->label != PROTOBUF_C_LABEL_REPEATED || f->type != PROTOBUF_C_TYPE_MESSAGE)
        return NULL;
    return f;
}

/* `WalletView position 7` and the result's fields one per line, as get
 * prints a state; a list result's items one per line, in one-line form. */
static void query_print(const struct agg_query *q, const ProtobufCMessage *res,
                        uint64_t position)
{
    printf("%s position %" PRIu64 "\n", res->descriptor->short_name, position);
    const ProtobufCFieldDescriptor *f = query_list_field(q);
    if (!f) {
        pbtext_print_lines(stdout, res, "  ");
        return;
    }
    pbtext_print_lines_except(stdout, res, "  ", f->name);
    size_t n = *(const size_t *)(const void *)((const char *)res + f->quantifier_offset);
    ProtobufCMessage *const *items =
        *(ProtobufCMessage *const *const *)(const void *)((const char *)res + f->offset);
    printf("  %s: %zu\n", f->name, n);
    for (size_t i = 0; i < n; i++) {
        fputs("    ", stdout);
        pbtext_print_inline(stdout, items[i]);
        fputc('\n', stdout);
    }
}

static int cmd_query(struct ctl *c, int argc, char **argv)
{
    struct query_args a = { .type = NULL };
    uint8_t *payload = NULL;
    size_t len;
    Cqrs__Reply *r = NULL;
    ProtobufCMessage *res = NULL;
    int rc = query_parse(c, argc, argv, &a);
    if (rc)
        goto out;
    if (pbtext_builder_pack(a.fields, &payload, &len) < 0) {
        ctl_error("out of memory");
        rc = EX_SOFTWARE;
        goto out;
    }
    if ((rc = ctl_connect(c)) != 0)
        goto out;
    const ProtobufCMessageDescriptor *rd = a.query->result;
    if (cqrs_client_read_model(c->client, a.type->name, a.query->request->short_name, payload,
                               len, a.min_position, !a.eventual, a.timeout_ms, &r) < 0) {
        rc = ctl_call_failed(c, 0);
        goto out;
    }
    if (r->status != CQRS__STATUS__OK) {
        rc = ctl_reply_failed(c, r);
        goto out;
    }
    if (r->state_type && r->state_type[0] && strcmp(r->state_type, rd->short_name) != 0) {
        ctl_error("protocol error: the daemon answered %s %s with %s, expected %s",
                  a.type->name, a.query->request->short_name, r->state_type, rd->short_name);
        rc = EX_SOFTWARE;
        goto out;
    }
    if (!(res = protobuf_c_message_unpack(rd, NULL, r->state.len, r->state.data))) {
        ctl_error("protocol error: the answer to %s %s does not decode as %s",
                  a.type->name, a.query->request->short_name, rd->name);
        rc = EX_SOFTWARE;
        goto out;
    }
    if (c->json) {
        rc = ctl_print_json(json_pack("{s:s, s:s, s:o, s:I}", "status", "OK",
                                      "type", rd->short_name, "result", pbtext_to_json(res),
                                      "position", (json_int_t)r->position));
    } else {
        query_print(a.query, res, r->position);
        rc = EX_OK;
    }
out:
    if (res)
        protobuf_c_message_free_unpacked(res, NULL);
    if (r)
        cqrs__reply__free_unpacked(r, NULL);
    free(payload);
    pbtext_builder_free(a.fields);
    return rc;
}

/* readmodel rebuild: returns once the read model is rebuilt. */
static int cmd_readmodel(struct ctl *c, int argc, char **argv)
{
    const char *action = NULL;
    char *rest[2];
    int nrest = 0;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "-", 1) != 0 && !action)
            action = argv[i];
        else if (nrest < 2)
            rest[nrest++] = argv[i];
        else
            return ctl_usage_error("readmodel rebuild takes no arguments");
    }
    if (!action)
        return ctl_usage_error("readmodel needs an action: rebuild");
    if (strcmp(action, "rebuild") != 0)
        return ctl_usage_error("unknown readmodel action \"%s\" (known: rebuild)", action);
    Cqrs__Reply *r;
    int rc = ctl_control_call(c, nrest, rest, "readmodel rebuild", CQRS__CONTROL__OP__REBUILD,
                              &r);
    if (!r)
        return rc;
    if (c->json) {
        rc = ctl_print_json(json_pack("{s:s, s:I}", "status", "OK",
                                      "events_applied", (json_int_t)r->version));
    } else {
        printf("read model rebuilt: %" PRIu64 " events applied\n", r->version);
        rc = EX_OK;
    }
    cqrs__reply__free_unpacked(r, NULL);
    return rc;
}

/* --- subscribe ------------------------------------------------------------ */

#define SUB_DONE (-1)             /* --count reached, or SIGINT/SIGTERM: exit 0 */
#define SUB_RETRY (-2)            /* the stream ended or broke: resume */
#define SUB_RETRY_MS 200          /* pause before resuming */
#define SUB_GIVE_UP_MS 30000      /* of failing to resume, in a row */
#define SUB_SETTLED_MS 1000       /* a stream open this long was not a failure */

/* SIGINT/SIGTERM: exit 0 at once while blocked (stdout is flushed then),
 * else once the reply being printed is out. */
static volatile sig_atomic_t sub_blocked, sub_stop;

static void sub_on_signal(int sig)
{
    (void)sig;
    if (sub_blocked)
        _exit(EX_OK);
    sub_stop = 1;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct sub {
    struct ctl *c;
    const struct aggregate_type *t;
    uint64_t last;                /* position of the last event printed (or --from - 1) */
    uint64_t printed, count;      /* events printed; --count (0: none) */
    int settled;                  /* the current subscription has proved itself */
    int quiet;                    /* a note about resuming is out already */
};

/* The untrusted text s on stdout, control bytes as '?'. */
static void ctl_print_text(const char *s)
{
    for (; s && *s; s++)
        fputc((unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s, stdout);
}

/* One event of the stream: `12 w1 v3 FundsCaptured amount=8 tx_id="123"`,
 * or its JSON object; 0, or the exit code. */
static int sub_print_event(const struct sub *s, const Cqrs__EventRecord *ev,
                           const ProtobufCMessage *data)
{
    if (s->c->json) {
        json_t *o = json_pack("{s:I, s:o, s:I, s:o, s:I, s:o, s:o}",
                              "position", (json_int_t)ev->position,
                              "id", pbtext_json_string(ev->stream),
                              "version", (json_int_t)ev->version,
                              "type", pbtext_json_string(ev->type),
                              "timestamp_us", (json_int_t)ev->timestamp_us,
                              "command_id", pbtext_json_string(ev->command_id),
                              "data", ctl_event_data_json(ev, data));
        return ctl_print_json(o);
    }
    printf("%" PRIu64 " ", ev->position);
    ctl_print_text(ev->stream);
    printf(" v%" PRIu64 " ", ev->version);
    ctl_print_text(ev->type);
    if (data) {
        if (data->descriptor->n_fields)
            fputc(' ', stdout);
        pbtext_print_inline(stdout, data);
    } else {
        printf(" <%zu bytes of an unknown event type>", ev->data.len);
    }
    fputc('\n', stdout);
    return EX_OK;
}

/* Prints the events of r past the last one printed, and flushes: 0,
 * SUB_DONE, or the exit code. */
static int sub_print(struct sub *s, const Cqrs__Reply *r)
{
    int rc = 0;
    for (size_t i = 0; i < r->n_events && rc == 0; i++) {
        const Cqrs__EventRecord *ev = r->events[i];
        ProtobufCMessage *data;
        if (ev->position <= s->last)      /* delivered again after a resume */
            continue;
        if (ctl_event_decode(s->t, ev, &data) < 0)
            return EX_SOFTWARE;
        rc = sub_print_event(s, ev, data);
        if (data)
            protobuf_c_message_free_unpacked(data, NULL);
        s->last = ev->position;
        if (rc == 0 && s->count && ++s->printed >= s->count)
            rc = SUB_DONE;
    }
    if (fflush(stdout) != 0) {
        ctl_error("cannot write the output: %s", strerror(errno));
        return EX_SOFTWARE;
    }
    if (rc == 0 && sub_stop)
        rc = SUB_DONE;
    return rc;
}

/* A resume note on stderr, once per run of failures. */
static void sub_note(struct sub *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sub_note(struct sub *s, const char *fmt, ...)
{
    if (s->quiet)
        return;
    s->quiet = 1;
    va_list ap;
    fputs("cqrsctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "; resuming after position %" PRIu64 "\n", s->last);
}

/* A failed call on the connection: SUB_RETRY when the daemon went away,
 * else the exit code. */
static int sub_lost(struct sub *s)
{
    if (errno == EPROTO || errno == ENOMEM)
        return ctl_call_failed(s->c, 0);
    sub_note(s, "lost the daemon at %s: %s", s->c->socket,
             errno == ECONNRESET || errno == EPIPE ? "it closed the connection"
                                                   : strerror(errno));
    return SUB_RETRY;
}

/* A non-OK reply: SUB_RETRY when worth resuming, else the exit code. */
static int sub_failed(struct sub *s, const Cqrs__Reply *r, int subscribed)
{
    if (r->status == CQRS__STATUS__UNAVAILABLE ||
        (r->status == CQRS__STATUS__BUSY && !subscribed)) {
        if (!s->quiet) {
            char then[64];
            snprintf(then, sizeof then, "; resuming after position %" PRIu64, s->last);
            ctl_reply_error(r, then);
            s->quiet = 1;
        }
        return SUB_RETRY;
    }
    /* BUSY on the stream: dropped as too slow, resuming would only repeat it. */
    ctl_reply_error(r, "");
    return ctl_status_exit(r->status);
}

/* Pages with ALL_EVENTS until caught up, then follows the SUBSCRIBE stream
 * until it ends: SUB_DONE, SUB_RETRY, or the exit code. */
static int sub_run(struct sub *s)
{
    struct cqrs_client *cl = s->c->client;
    Cqrs__Reply *r;
    int rc;
    s->settled = 0;
    for (;;) {
        uint64_t before = s->last;
        sub_blocked = 1;
        if (sub_stop)
            return SUB_DONE;
        rc = cqrs_client_all_events(cl, s->t->name, s->last + 1, 0, &r);
        sub_blocked = 0;
        if (rc < 0)
            return sub_lost(s);
        if (r->status != CQRS__STATUS__OK) {
            rc = sub_failed(s, r, 0);
            cqrs__reply__free_unpacked(r, NULL);
            return rc;
        }
        rc = sub_print(s, r);
        size_t n = r->n_events;
        uint64_t head = r->position;
        cqrs__reply__free_unpacked(r, NULL);
        if (rc)
            return rc;
        if (n == 0 || s->last >= head)
            break;
        if (s->last == before) {
            ctl_error("protocol error: asked for the events of %s from position %" PRIu64
                      ", got none past it", s->t->name, before + 1);
            return EX_SOFTWARE;
        }
    }

    uint64_t id;
    if (cqrs_client_subscribe_start(cl, s->t->name, s->last + 1, &id) < 0)
        return sub_lost(s);
    int64_t since = now_ms();
    for (;;) {
        sub_blocked = 1;
        if (sub_stop)
            return SUB_DONE;
        rc = cqrs_client_recv(cl, id, &r);
        sub_blocked = 0;
        if (!s->settled && now_ms() - since >= SUB_SETTLED_MS) {
            s->settled = 1;       /* a stream that stayed open: the next end is news */
            s->quiet = 0;
        }
        if (rc < 0)
            return sub_lost(s);
        if (r->status != CQRS__STATUS__OK) {
            rc = sub_failed(s, r, 1);
            cqrs__reply__free_unpacked(r, NULL);
            return rc;
        }
        s->settled = 1;
        s->quiet = 0;
        int more = r->more;
        rc = sub_print(s, r);
        cqrs__reply__free_unpacked(r, NULL);
        if (rc)
            return rc;
        if (!more) {
            sub_note(s, "the event stream of %s ended", s->t->name);
            return SUB_RETRY;
        }
    }
}

static void sub_sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    sub_blocked = 1;
    if (!sub_stop)
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
            ;
    sub_blocked = 0;
}

static int cmd_subscribe(struct ctl *c, int argc, char **argv)
{
    const char *type = NULL, *from_opt = NULL, *count_opt = NULL;
    uint64_t from = 1;
    for (int i = 0; i < argc; i++) {
        int m;
        static const char *const names[] = { "--from", "--count", NULL };
        const char **const slots[] = { &from_opt, &count_opt };
        if ((m = opt_values(argc, argv, &i, names, slots)) != 0) {
            if (m == EX_USAGE)
                return m;
        } else if (strcmp(argv[i], "--json") == 0) {
            c->json = 1;
        } else if (strncmp(argv[i], "--", 2) == 0) {
            return ctl_usage_error("unknown option %s for subscribe", argv[i]);
        } else if (!type) {
            type = argv[i];
        } else {
            return ctl_usage_error("too many arguments for subscribe");
        }
    }
    if (!type)
        return ctl_usage_error("subscribe needs TYPE");
    struct sub s = { .c = c, .t = ctl_type(type) };
    if (!s.t)
        return EX_USAGE;
    if (from_opt && parse_u64(from_opt, &from) < 0)
        return ctl_usage_error("invalid --from \"%s\": not a position", from_opt);
    if (count_opt && (parse_u64(count_opt, &s.count) < 0 || s.count == 0))
        return ctl_usage_error("invalid --count \"%s\": not a positive number", count_opt);
    s.last = from ? from - 1 : 0;

    struct sigaction sa = { .sa_handler = sub_on_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    int rc = ctl_connect(c);
    if (rc)
        return rc;
    int64_t failing_since = -1;
    for (;;) {
        rc = c->client ? sub_run(&s) : SUB_RETRY;
        if (rc == SUB_DONE)
            return EX_OK;
        if (rc != SUB_RETRY)
            return rc;
        /* Resume: the time spent failing runs from the end of the last
         * stream that proved itself. */
        int64_t now = now_ms();
        if (s.settled || failing_since < 0)
            failing_since = now;
        s.settled = 0;
        if (now - failing_since >= SUB_GIVE_UP_MS) {
            ctl_error("gave up: the event stream of %s could not be resumed for %d s",
                      s.t->name, SUB_GIVE_UP_MS / 1000);
            return EX_UNAVAILABLE;
        }
        sub_sleep_ms(SUB_RETRY_MS);
        if (sub_stop)
            return EX_OK;
        cqrs_client_free(c->client);
        if (!(c->client = cqrs_client_connect(c->socket)))
            sub_note(&s, "cannot connect to the daemon at %s: %s", c->socket, strerror(errno));
    }
}

int main(int argc, char **argv)
{
    struct ctl c = { .socket = NULL, .json = 0, .client = NULL };
    int i;

    /* A daemon that goes away mid-write is an error to report, not a death. */
    signal(SIGPIPE, SIG_IGN);

    for (i = 1; i < argc; i++) {
        const char *v;
        int m;
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return fflush(stdout) == 0 ? EX_OK : EX_SOFTWARE;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("cqrsctl %s\n", CQRS_VERSION);
            return fflush(stdout) == 0 ? EX_OK : EX_SOFTWARE;
        } else if (strcmp(argv[i], "--json") == 0) {
            c.json = 1;
        } else if (strncmp(argv[i], "-s", 2) == 0 && argv[i][2] != '\0') {
            c.socket = argv[i] + 2;
        } else if ((m = opt_value(argc, argv, &i, "-s", &v)) != 0 ||
                   (m = opt_value(argc, argv, &i, "--socket", &v)) != 0) {
            if (m < 0)
                return ctl_usage_error("option %s needs a path", argv[i]);
            c.socket = v;
        } else if (argv[i][0] == '-') {
            return ctl_usage_error("unknown option %s; see cqrsctl --help", argv[i]);
        } else {
            break;
        }
    }
    if (i >= argc)
        return ctl_usage_error("no subcommand given; see cqrsctl --help");
    if (!c.socket)
        c.socket = ctl_default_socket();

    static const struct {
        const char *name;
        int (*run)(struct ctl *, int, char **);
    } subs[] = {
        { "send", cmd_send }, { "get", cmd_get }, { "events", cmd_events },
        { "status", cmd_status }, { "kill", cmd_kill },
        { "restart", cmd_restart },
        { "reload", cmd_reload }, { "verify", cmd_verify },
        { "query", cmd_query }, { "subscribe", cmd_subscribe },
        { "readmodel", cmd_readmodel },
    };
    int rc = -1;
    for (size_t k = 0; k < sizeof subs / sizeof subs[0]; k++)
        if (strcmp(argv[i], subs[k].name) == 0)
            rc = subs[k].run(&c, argc - i - 1, argv + i + 1);
    if (rc < 0)
        rc = ctl_usage_error("unknown subcommand \"%s\"; see cqrsctl --help", argv[i]);
    cqrs_client_free(c.client);
    if (fflush(stdout) != 0 && rc == EX_OK) {
        ctl_error("cannot write the output: %s", strerror(errno));
        rc = EX_SOFTWARE;
    }
    return rc;
}
