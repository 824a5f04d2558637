/*
 * test_pbarena — decoding memory given back all at once (lib/pbarena.c):
 * messages decoded into a caller's buffer and into the arena's own, the
 * same bytes as a malloc'ed decode; records larger than the buffer spill
 * to malloc and come back at the reset (LeakSanitizer watches); the arena's
 * own buffer grows to fit what spilled, up to its bound.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "cqrs.pb-c.h"
#include "pbarena.h"

/* An EventRecord with `data_len` bytes of data, packed into *out. */
static size_t packed_record(uint64_t version, size_t data_len, uint8_t **out)
{
    Cqrs__EventRecord rec = CQRS__EVENT_RECORD__INIT;
    rec.version = version;
    rec.type = "WalletToppedUp";
    rec.command_id = "cmd-1";
    rec.stream = "w1";
    uint8_t *data = malloc(data_len ? data_len : 1);
    for (size_t i = 0; i < data_len; i++)
        data[i] = (uint8_t)(i * 7 + version);
    rec.data.data = data;
    rec.data.len = data_len;
    size_t n = cqrs__event_record__get_packed_size(&rec);
    *out = malloc(n);
    cqrs__event_record__pack(&rec, *out);
    free(data);
    return n;
}

static void assert_same(const Cqrs__EventRecord *a, const Cqrs__EventRecord *b)
{
    cr_assert_eq(a->version, b->version);
    cr_assert_str_eq(a->type, b->type);
    cr_assert_str_eq(a->command_id, b->command_id);
    cr_assert_str_eq(a->stream, b->stream);
    cr_assert_eq(a->data.len, b->data.len);
    cr_assert_eq(memcmp(a->data.data, b->data.data, a->data.len), 0);
}

Test(pbarena, decodes_into_a_callers_buffer_like_malloc)
{
    _Alignas(16) uint8_t mem[1024];
    struct pbarena a;
    pbarena_init(&a, mem, sizeof mem);
    for (uint64_t v = 1; v <= 100; v++) {
        uint8_t *buf;
        size_t n = packed_record(v, 40, &buf);
        Cqrs__EventRecord *want = cqrs__event_record__unpack(NULL, n, buf);
        Cqrs__EventRecord *got = cqrs__event_record__unpack(&a.alloc, n, buf);
        cr_assert_not_null(got);
        cr_assert((uint8_t *)got >= mem && (uint8_t *)got < mem + sizeof mem,
                  "the message is not in the caller's buffer");
        assert_same(got, want);
        cr_assert_eq(a.nbig, 0, "a small record spilled");
        pbarena_reset(&a);
        cr_assert_eq(a.used, 0);
        cqrs__event_record__free_unpacked(want, NULL);
        free(buf);
    }
    pbarena_free(&a);
}

Test(pbarena, a_record_larger_than_the_buffer_spills_and_comes_back)
{
    _Alignas(16) uint8_t mem[256];
    struct pbarena a;
    pbarena_init(&a, mem, sizeof mem);
    uint8_t *buf;
    size_t n = packed_record(7, 64 << 10, &buf);
    Cqrs__EventRecord *want = cqrs__event_record__unpack(NULL, n, buf);
    Cqrs__EventRecord *got = cqrs__event_record__unpack(&a.alloc, n, buf);
    cr_assert_not_null(got);
    assert_same(got, want);
    cr_assert_gt(a.nbig, 0, "64 KB of data fit in 256 bytes?");
    pbarena_reset(&a);   /* frees the spill, with no pbarena_free: LeakSanitizer watches */
    cr_assert_eq(a.nbig, 0);
    cr_assert_null(a.big, "the spill list outlived the reset");
    cr_assert_eq(a.cap, sizeof mem, "the caller's buffer was replaced");
    cqrs__event_record__free_unpacked(want, NULL);
    free(buf);
}

Test(pbarena, its_own_buffer_grows_to_fit_up_to_its_bound)
{
    struct pbarena a;
    cr_assert_eq(pbarena_init_own(&a, 1024, 32 << 10), 0);
    uint8_t *buf;
    size_t n = packed_record(1, 8 << 10, &buf);
    cr_assert_not_null(cqrs__event_record__unpack(&a.alloc, n, buf));
    cr_assert_gt(a.nbig, 0);
    pbarena_reset(&a);
    cr_assert_gt(a.cap, 8 << 10, "the buffer did not grow to fit");
    cr_assert_not_null(cqrs__event_record__unpack(&a.alloc, n, buf));
    cr_assert_eq(a.nbig, 0, "it still spilled after growing");
    pbarena_reset(&a);
    free(buf);

    n = packed_record(2, 64 << 10, &buf);   /* beyond the bound: spills every time */
    for (int i = 0; i < 3; i++) {
        cr_assert_not_null(cqrs__event_record__unpack(&a.alloc, n, buf));
        cr_assert_gt(a.nbig, 0);
        pbarena_reset(&a);
        cr_assert_leq(a.cap, 32 << 10, "grew past its bound");
    }
    free(buf);
    pbarena_free(&a);
}

Test(pbarena, a_truncated_record_fails_and_the_reset_cleans_up)
{
    _Alignas(16) uint8_t mem[512];
    struct pbarena a;
    pbarena_init(&a, mem, sizeof mem);
    uint8_t *buf;
    size_t n = packed_record(3, 2000, &buf);
    cr_assert_null(cqrs__event_record__unpack(&a.alloc, n - 5, buf));
    pbarena_reset(&a);
    cr_assert_eq(a.nbig, 0);
    free(buf);
    pbarena_free(&a);
}
