/*
 * fuzz_request — request_check (daemon/request.c), the checks cqrsd makes
 * on every client frame before acting on it, on arbitrary bytes.
 *
 * The input is the frame body. It is checked with the default limits and
 * with small ones, and each verdict is compared with a model written from
 * request.h (so a request is neither refused nor let through wrongly):
 *  - the status is OK or INVALID; OK gives a decoded request, INVALID none
 *    and one sentence (non-empty, one line, NUL-terminated inside `err`);
 *  - the id is the decoded request's (0 when it does not decode);
 *  - OK requests have no NUL in any string, a body, strings and metadata
 *    within the limits, a named command, and a valid aggregate id except
 *    the empty one of a whole-type VERIFY;
 *  - the OK request re-encoded is OK again and re-encodes to the same bytes;
 *  - a 1-byte and a 24-byte error buffer (exact allocations: ASan sees a
 *    write past them) give the same verdict.
 */
#include <string.h>

#include "aggregate.h"
#include "cqrs.pb-c.h"
#include "fuzz_util.h"
#include "pbwire.h"
#include "request.h"

static int too_long(const char *s, const struct request_limits *lim)
{
    return strlen(s) > lim->max_string_bytes;
}

/* request.h's rules, on the decoded request (NULL: does not decode). */
static int model_ok(const Cqrs__Request *req, const uint8_t *body, size_t len,
                    const struct request_limits *lim)
{
    if (!req || pbwire_check_strings(&cqrs__request__descriptor, body, len) < 0)
        return 0;
    switch (req->body_case) {
    case CQRS__REQUEST__BODY_COMMAND: {
        const Cqrs__Command *c = req->command;
        if (!c->name[0] || too_long(c->name, lim) || too_long(c->command_id, lim) ||
            too_long(c->aggregate_type, lim) || c->n_metadata > lim->max_metadata_entries)
            return 0;
        size_t bytes = 0;
        for (size_t i = 0; i < c->n_metadata; i++)
            bytes += strlen(c->metadata[i]->key) + strlen(c->metadata[i]->value);
        return bytes <= lim->max_metadata_bytes &&
               agg_id_valid(c->aggregate_id, strlen(c->aggregate_id)) == 0;
    }
    case CQRS__REQUEST__BODY_QUERY: {
        const Cqrs__Query *q = req->query;
        if (too_long(q->aggregate_type, lim))
            return 0;
        if (q->kind == CQRS__QUERY__KIND__VERIFY && !q->aggregate_id[0])
            return 1;
        if (q->kind == CQRS__QUERY__KIND__READ_MODEL)   /* a type and a query name, no id */
            return q->name[0] && !too_long(q->name, lim);
        if (q->kind == CQRS__QUERY__KIND__SUBSCRIBE || q->kind == CQRS__QUERY__KIND__ALL_EVENTS)
            return 1;
        return agg_id_valid(q->aggregate_id, strlen(q->aggregate_id)) == 0;
    }
    case CQRS__REQUEST__BODY_CONTROL:
        return !too_long(req->control->child, lim);
    default:
        return 0;
    }
}

static void check_sentence(const char *err, size_t errlen)
{
    size_t n = strnlen(err, errlen);
    FUZZ_CHECK(n < errlen, "error not NUL-terminated inside its %zu-byte buffer", errlen);
    if (errlen > 1) {
        FUZZ_CHECK(n > 0, "INVALID without a sentence");
        FUZZ_CHECK(!memchr(err, '\n', n), "error of more than one line: %s", err);
    }
}

/* One request_check with `lim` and an exact error buffer of `errlen`;
 * returns the status, *out as request_check left it. */
static Cqrs__Status check_once(const uint8_t *body, size_t len, const struct request_limits *lim,
                               size_t errlen, Cqrs__Request **out, uint64_t *id)
{
    char *err = malloc(errlen);
    FUZZ_CHECK(err != NULL, "malloc");
    memset(err, 'x', errlen);
    Cqrs__Status st = request_check(body, len, NULL, lim, out, id, err, errlen);
    FUZZ_CHECK(st == CQRS__STATUS__OK || st == CQRS__STATUS__INVALID, "status %d", st);
    if (st == CQRS__STATUS__OK)
        FUZZ_CHECK(*out != NULL, "OK without a request");
    else {
        FUZZ_CHECK(*out == NULL, "INVALID with a request");
        check_sentence(err, errlen);
    }
    free(err);
    return st;
}

static void check_with(const uint8_t *body, size_t len, const struct request_limits *lim,
                       int depth)
{
    Cqrs__Request *decoded = cqrs__request__unpack(NULL, len, body);
    int want = model_ok(decoded, body, len, lim);

    Cqrs__Request *req = NULL;
    uint64_t id = 12345;
    Cqrs__Status st = check_once(body, len, lim, 256, &req, &id);
    FUZZ_CHECK((st == CQRS__STATUS__OK) == want, "request_check says %d, the rules say %s",
               st, want ? "OK" : "INVALID");
    FUZZ_CHECK(id == (decoded ? decoded->id : 0), "id %llu, request's %llu",
               (unsigned long long)id, (unsigned long long)(decoded ? decoded->id : 0));

    for (size_t errlen = 1; errlen <= 24; errlen += 23) {
        Cqrs__Request *small = NULL;
        uint64_t id2;
        Cqrs__Status st2 = check_once(body, len, lim, errlen, &small, &id2);
        FUZZ_CHECK(st2 == st && id2 == id, "an error buffer of %zu bytes changes the verdict", errlen);
        if (small)
            cqrs__request__free_unpacked(small, NULL);
    }

    if (st == CQRS__STATUS__OK && depth == 0) {
        /* The canonical encoding of an accepted request is accepted too, and
         * is a fixed point. */
        size_t n = cqrs__request__get_packed_size(req);
        uint8_t *again = malloc(n ? n : 1);
        FUZZ_CHECK(again != NULL, "malloc");
        FUZZ_CHECK(cqrs__request__pack(req, again) == n, "pack size");
        Cqrs__Request *req2 = NULL;
        uint64_t id2;
        Cqrs__Status st2 = check_once(again, n, lim, 256, &req2, &id2);
        FUZZ_CHECK(st2 == CQRS__STATUS__OK, "the accepted request re-encoded is refused");
        FUZZ_CHECK(id2 == id, "re-encoded id differs");
        size_t n2 = cqrs__request__get_packed_size(req2);
        uint8_t *third = malloc(n2 ? n2 : 1);
        FUZZ_CHECK(third != NULL, "malloc");
        cqrs__request__pack(req2, third);
        FUZZ_CHECK(n2 == n && memcmp(again, third, n) == 0, "re-encoding is not a fixed point");
        check_with(again, n, lim, depth + 1);
        free(third);
        free(again);
        cqrs__request__free_unpacked(req2, NULL);
    }
    if (req)
        cqrs__request__free_unpacked(req, NULL);
    if (decoded)
        cqrs__request__free_unpacked(decoded, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct request_limits lim;
    request_limits_default(&lim);
    FUZZ_CHECK(lim.max_string_bytes > 0 && lim.max_metadata_entries > 0 &&
               lim.max_metadata_bytes > 0, "a default limit of 0");
    check_with(data, size, &lim, 0);

    /* Small limits, so every limit is met and passed by short inputs. */
    struct request_limits small = { .max_string_bytes = 8, .max_metadata_entries = 2,
                                    .max_metadata_bytes = 16 };
    check_with(data, size, &small, 0);
    return 0;
}
