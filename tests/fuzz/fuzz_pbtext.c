/*
 * fuzz_pbtext — cqrsctl's field parser (client/pbtext.c) on arbitrary
 * `name=value` arguments, for every command of every aggregate type.
 *
 * The input is split at newlines and NUL bytes into arguments; each one
 * with a non-empty name before its first '=' is set on a builder (as
 * cqrsctl does with its argv), for each command descriptor of each type of
 * the registry (found with aggregate_lookup). Then:
 *  - pbtext_builder_set returns 0, or -1 with errno EINVAL and a sentence
 *    NUL-terminated inside the error buffer (an exact allocation, of a
 *    size taken from the input, so ASan sees a write past it), or ENOMEM;
 *  - the packed message decodes as its descriptor and packs back to the
 *    same bytes;
 *  - the message prints (inline, lines, JSON) without a crash; the type's
 *    validate takes it, and when valid, decide on a new state, whose
 *    events (if any) evolve that state without a refusal.
 */
#include <errno.h>
#include <string.h>

#include <jansson.h>

#include "aggregate.h"
#include "fuzz_util.h"
#include "pbtext.h"

#define MAX_ARGS 16

struct arg {
    char *name, *value;
};

static void exercise(const struct aggregate_type *t, const ProtobufCMessageDescriptor *desc,
                     const struct arg *args, size_t n_args, size_t errlen, FILE *sink)
{
    struct pbtext_builder *b = pbtext_builder_new(desc);
    FUZZ_CHECK(b != NULL, "pbtext_builder_new");
    char *err = malloc(errlen);
    FUZZ_CHECK(err != NULL, "malloc");
    for (size_t i = 0; i < n_args; i++) {
        memset(err, 'x', errlen);
        errno = 0;
        int rc = pbtext_builder_set(b, args[i].name, args[i].value, err, errlen);
        FUZZ_CHECK(rc == 0 || rc == -1, "pbtext_builder_set returned %d", rc);
        if (rc < 0) {
            FUZZ_CHECK(errno == EINVAL || errno == ENOMEM, "errno %d", errno);
            if (errno == EINVAL) {
                size_t n = strnlen(err, errlen);
                FUZZ_CHECK(n < errlen, "error not NUL-terminated in %zu bytes", errlen);
                FUZZ_CHECK(errlen == 1 || n > 0, "EINVAL without a sentence");
            }
        }
    }
    free(err);

    uint8_t *packed;
    size_t len;
    FUZZ_CHECK(pbtext_builder_pack(b, &packed, &len) == 0, "pbtext_builder_pack");
    FUZZ_CHECK(len == protobuf_c_message_get_packed_size(pbtext_builder_message(b)), "packed size");
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, len, packed);
    FUZZ_CHECK(m != NULL, "%s as built does not decode", desc->short_name);
    size_t len2 = protobuf_c_message_get_packed_size(m);
    uint8_t *again = malloc(len2 ? len2 : 1);
    FUZZ_CHECK(again != NULL, "malloc");
    protobuf_c_message_pack(m, again);
    FUZZ_CHECK(len2 == len && memcmp(again, packed, len) == 0,
               "%s as built does not pack back to the same bytes", desc->short_name);
    free(again);

    pbtext_print_inline(sink, pbtext_builder_message(b));
    pbtext_print_lines(sink, m, "  ");
    json_t *j = pbtext_to_json(m);
    FUZZ_CHECK(j != NULL, "pbtext_to_json");
    char *s = json_dumps(j, JSON_COMPACT);
    FUZZ_CHECK(s != NULL, "json_dumps");
    free(s);
    json_decref(j);

    char verr[AGG_ERROR_MAX];
    if (t->validate(m, verr, sizeof verr) == 0) {
        void *state = t->state_new();
        FUZZ_CHECK(state != NULL, "state_new");
        struct agg_decision d;
        memset(&d, 0, sizeof d);
        enum agg_verdict v = t->decide(state, m, &d);
        FUZZ_CHECK(v == AGG_ACCEPT || v == AGG_REJECT, "verdict %d", v);
        /* What decide emits, evolve applies. */
        for (size_t i = 0; v == AGG_ACCEPT && i < d.n_events; i++) {
            ProtobufCMessage *ev = protobuf_c_message_unpack(d.events[i].desc, NULL,
                                                             d.events[i].len, d.events[i].data);
            FUZZ_CHECK(ev != NULL, "an emitted %s does not decode", d.events[i].desc->short_name);
            FUZZ_CHECK(t->evolve(state, ev) == 0, "evolve refuses the %s that decide emitted",
                       d.events[i].desc->short_name);
            protobuf_c_message_free_unpacked(ev, NULL);
        }
        agg_decision_clear(&d);
        t->state_free(state);
    }
    protobuf_c_message_free_unpacked(m, NULL);
    free(packed);
    pbtext_builder_free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t errlen = (size_t)(data[0] % 64) + 1;
    char *text = malloc(size);   /* data[1..size) and a final NUL */
    FUZZ_CHECK(text != NULL, "malloc");
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';

    struct arg args[MAX_ARGS];
    size_t n_args = 0;
    char *p = text, *end = text + size - 1;
    while (p <= end && n_args < MAX_ARGS) {
        char *stop = p;
        while (stop < end && *stop != '\n' && *stop != '\0')
            stop++;
        *stop = '\0';
        char *eq = strchr(p, '=');
        if (eq && eq != p) {      /* cqrsctl refuses "=v" and "v" itself */
            *eq = '\0';
            args[n_args++] = (struct arg){ p, eq + 1 };
        }
        p = stop + 1;
    }

    FILE *sink = fopen("/dev/null", "w");
    FUZZ_CHECK(sink != NULL, "/dev/null");
    for (const struct aggregate_type *const *tp = aggregate_registry; *tp; tp++) {
        const struct aggregate_type *t = aggregate_lookup((*tp)->name);
        FUZZ_CHECK(t == *tp, "aggregate_lookup(\"%s\")", (*tp)->name);
        for (const ProtobufCMessageDescriptor *const *c = t->commands; *c; c++)
            exercise(t, *c, args, n_args, errlen, sink);
    }
    fclose(sink);
    free(text);
    return 0;
}
