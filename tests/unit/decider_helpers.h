/*
 * decider_helpers — given / when / then for the unit tests of aggregate
 * types (header-only; every function is static).
 *
 *   given: an event is packed, unpacked with the descriptor the type lists
 *          under that event's name (as the host does with a log record), and
 *          evolved into the scenario's state;
 *   when:  a command goes the same wire round trip, then validate, then
 *          decide; accepted events are evolved into the state, as the host
 *          does after appending them;
 *   then:  the decision's events decoded by name, or the verdict, or the
 *          state through state_pack and the type's state message.
 *
 * Everything decoded is owned by the scenario and freed by scenario_fini,
 * which a suite's .fini runs even when an assertion failed.
 */
#ifndef CQRS_TEST_DECIDER_HELPERS_H
#define CQRS_TEST_DECIDER_HELPERS_H

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "aggregates/types.h"

enum when_outcome {
    WHEN_ACCEPTED,      /* validate passed, decide said AGG_ACCEPT */
    WHEN_REJECTED,      /* decide said AGG_REJECT: error in d.error */
    WHEN_INVALID,       /* validate refused the payload: error in err */
};

#define SCENARIO_MAX_OWNED 64

struct scenario {
    const struct aggregate_type *type;
    void *state;
    struct agg_decision d;          /* the last command's decision */
    char err[AGG_ERROR_MAX];        /* the last validate sentence */
    ProtobufCMessage *owned[SCENARIO_MAX_OWNED];
    size_t n_owned;
};

static void scenario_init(struct scenario *s, const struct aggregate_type *type)
{
    memset(s, 0, sizeof *s);
    s->type = type;
    s->state = type->state_new();
    cr_assert_not_null(s->state, "state_new failed");
}

static void scenario_fini(struct scenario *s)
{
    agg_decision_clear(&s->d);
    for (size_t i = 0; i < s->n_owned; i++)
        protobuf_c_message_free_unpacked(s->owned[i], NULL);
    s->n_owned = 0;
    if (s->type && s->state)
        s->type->state_free(s->state);
    s->state = NULL;
}

static ProtobufCMessage *scenario_own(struct scenario *s, ProtobufCMessage *m)
{
    cr_assert_lt(s->n_owned, SCENARIO_MAX_OWNED, "too many decoded messages in one test");
    s->owned[s->n_owned++] = m;
    return m;
}

/* Decodes `len` bytes as the message named `name` in `list`; caller frees. */
static ProtobufCMessage *helper_unpack(const ProtobufCMessageDescriptor *const *list,
                                       const char *name, const uint8_t *data, size_t len)
{
    const ProtobufCMessageDescriptor *desc = agg_find_desc(list, name);
    cr_assert_not_null(desc, "%s is not listed by the type", name);
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, len, data);
    cr_assert_not_null(m, "%s does not decode", name);
    return m;
}

/* The wire round trip of a message built in a test; caller frees. */
static ProtobufCMessage *helper_roundtrip(const ProtobufCMessageDescriptor *const *list,
                                          const ProtobufCMessage *m)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(len ? len : 1);
    cr_assert_not_null(buf);
    protobuf_c_message_pack(m, buf);
    ProtobufCMessage *out = helper_unpack(list, m->descriptor->short_name, buf, len);
    free(buf);
    return out;
}

/* Evolves one event from its wire form; returns evolve's result. */
static int given_event(struct scenario *s, const ProtobufCMessage *event)
{
    ProtobufCMessage *m = helper_roundtrip(s->type->events, event);
    int rc = s->type->evolve(s->state, m);
    protobuf_c_message_free_unpacked(m, NULL);
    return rc;
}

/* For the given step of a test: the event must apply. */
#define given(call) cr_assert_eq((call), 0, "given %s did not apply", #call)

static enum when_outcome when_command(struct scenario *s, const ProtobufCMessage *cmd)
{
    agg_decision_clear(&s->d);
    s->err[0] = '\0';
    ProtobufCMessage *m = helper_roundtrip(s->type->commands, cmd);
    enum when_outcome out;
    if (s->type->validate(m, s->err, sizeof s->err) != 0)
        out = WHEN_INVALID;
    else if (s->type->decide(s->state, m, &s->d) == AGG_ACCEPT)
        out = WHEN_ACCEPTED;
    else
        out = WHEN_REJECTED;
    protobuf_c_message_free_unpacked(m, NULL);

    if (out == WHEN_ACCEPTED) {
        for (size_t i = 0; i < s->d.n_events; i++) {
            const struct agg_event *e = &s->d.events[i];
            ProtobufCMessage *ev = helper_unpack(s->type->events, e->desc->short_name,
                                                 e->data, e->len);
            int rc = s->type->evolve(s->state, ev);
            protobuf_c_message_free_unpacked(ev, NULL);
            cr_assert_eq(rc, 0, "evolve refused the %s that decide emitted", e->desc->short_name);
        }
    }
    return out;
}

/* Event i of the last decision, which must be a `desc`, decoded by name. */
static const ProtobufCMessage *then_event(struct scenario *s, size_t i,
                                          const ProtobufCMessageDescriptor *desc)
{
    cr_assert_lt(i, s->d.n_events, "expected an event #%zu, got %zu events", i, s->d.n_events);
    const struct agg_event *e = &s->d.events[i];
    cr_assert_str_eq(e->desc->short_name, desc->short_name);
    return scenario_own(s, helper_unpack(s->type->events, e->desc->short_name, e->data, e->len));
}

/* Exactly one event, a `desc`. */
static const ProtobufCMessage *then_only_event(struct scenario *s,
                                               const ProtobufCMessageDescriptor *desc)
{
    cr_assert_eq(s->d.n_events, 1, "expected one %s, got %zu events",
                 desc->short_name, s->d.n_events);
    return then_event(s, 0, desc);
}

static void then_accepted_without_events(struct scenario *s, enum when_outcome out)
{
    cr_assert_eq(out, WHEN_ACCEPTED, "expected acceptance, got outcome %d (%s%s)",
                 out, s->err, s->d.error);
    cr_assert_eq(s->d.n_events, 0, "expected no event, got %zu", s->d.n_events);
}

/* REJECTED by decide, nothing emitted, and the sentence contains `reason`. */
static void then_rejected(struct scenario *s, enum when_outcome out, const char *reason)
{
    cr_assert_eq(out, WHEN_REJECTED, "expected a rejection, got outcome %d (%s)", out, s->err);
    cr_assert_eq(s->d.n_events, 0);
    cr_assert_not_null(strstr(s->d.error, reason), "rejection \"%s\" lacks \"%s\"",
                       s->d.error, reason);
}

/* INVALID by validate, nothing decided, and the sentence contains `reason`. */
static void then_invalid(struct scenario *s, enum when_outcome out, const char *reason)
{
    cr_assert_eq(out, WHEN_INVALID, "expected INVALID, got outcome %d (%s)", out, s->d.error);
    cr_assert_eq(s->d.n_events, 0);
    cr_assert_not_null(strstr(s->err, reason), "error \"%s\" lacks \"%s\"", s->err, reason);
}

/* The state as a STATE query sees it: state_pack, decoded as state_desc.
 * Also checks that state_pack reports what it wrote and that its bytes are
 * the canonical encoding (repacking the decoded message gives the same). */
static const ProtobufCMessage *then_state(struct scenario *s)
{
    uint8_t init[64];
    ProtobufCBufferSimple buf = PROTOBUF_C_BUFFER_SIMPLE_INIT(init);
    size_t n = s->type->state_pack(s->state, &buf.base);
    cr_assert_eq(n, buf.len, "state_pack returned %zu but wrote %zu bytes", n, buf.len);

    ProtobufCMessage *m = protobuf_c_message_unpack(s->type->state_desc, NULL, buf.len, buf.data);
    cr_assert_not_null(m, "state does not decode");
    scenario_own(s, m);
    size_t repacked_len = protobuf_c_message_get_packed_size(m);
    uint8_t *repacked = malloc(repacked_len ? repacked_len : 1);
    cr_assert_not_null(repacked);
    protobuf_c_message_pack(m, repacked);
    int same = repacked_len == buf.len && memcmp(repacked, buf.data, buf.len) == 0;
    free(repacked);
    PROTOBUF_C_BUFFER_SIMPLE_CLEAR(&buf);
    cr_assert(same, "state_pack is not the canonical encoding");
    return m;
}

#endif
