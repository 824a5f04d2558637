/*
 * test_crc32c — the checksum of the event log records (lib/crc32c.c): the
 * published CRC-32C check values, continuing a checksum across calls, and
 * agreement with a bit-at-a-time reference on short, unaligned inputs (the
 * inputs where a hardware path and its byte tail meet).
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "crc32c.h"

/* Reference: one bit at a time, reflected polynomial 0x82F63B78. */
static uint32_t ref_crc32c(uint32_t crc, const uint8_t *p, size_t len)
{
    crc = ~crc;
    while (len--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++)
            crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
    }
    return ~crc;
}

/* Deterministic bytes (xorshift32), so a failure can be replayed. */
static void fill_pattern(uint8_t *p, size_t n, uint32_t seed)
{
    uint32_t x = seed ? seed : 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (uint8_t)x;
    }
}

TestSuite(crc32c);

Test(crc32c, check_value_of_123456789)
{
    cr_assert_eq(crc32c(0, "123456789", 9), 0xE3069283u);
}

/* RFC 3720 (iSCSI), appendix B.4. */
Test(crc32c, rfc3720_32_zero_bytes)
{
    uint8_t z[32];
    memset(z, 0, sizeof z);
    cr_assert_eq(crc32c(0, z, sizeof z), 0x8A9136AAu);
}

Test(crc32c, rfc3720_32_ff_bytes)
{
    uint8_t f[32];
    memset(f, 0xFF, sizeof f);
    cr_assert_eq(crc32c(0, f, sizeof f), 0x62A8AB43u);
}

Test(crc32c, rfc3720_incrementing_and_decrementing)
{
    uint8_t up[32], down[32];
    for (int i = 0; i < 32; i++) {
        up[i] = (uint8_t)i;
        down[i] = (uint8_t)(31 - i);
    }
    cr_assert_eq(crc32c(0, up, sizeof up), 0x46DD794Eu);
    cr_assert_eq(crc32c(0, down, sizeof down), 0x113FDB5Cu);
}

Test(crc32c, empty_input_returns_the_running_value)
{
    cr_assert_eq(crc32c(0, "", 0), 0u);
    uint32_t c = crc32c(0, "abc", 3);
    cr_assert_eq(crc32c(c, "", 0), c);
}

Test(crc32c, two_calls_equal_one_call_at_every_split)
{
    const char *s = "123456789";
    for (size_t cut = 0; cut <= 9; cut++) {
        uint32_t c = crc32c(crc32c(0, s, cut), s + cut, 9 - cut);
        cr_assert_eq(c, 0xE3069283u, "split at %zu gave 0x%08X", cut, c);
    }

    uint8_t big[4096 + 13];
    fill_pattern(big, sizeof big, 42);
    uint32_t whole = crc32c(0, big, sizeof big);
    const size_t cuts[] = { 1, 7, 8, 9, 63, 64, 1000, 4096, 4108 };
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        size_t cut = cuts[i];
        uint32_t c = crc32c(crc32c(0, big, cut), big + cut, sizeof big - cut);
        cr_assert_eq(c, whole, "split at %zu: 0x%08X, whole 0x%08X", cut, c, whole);
    }
}

Test(crc32c, matches_bytewise_reference_for_lengths_0_to_64_at_every_alignment)
{
    uint8_t buf[64 + 8 + 8];
    fill_pattern(buf, sizeof buf, 0x9E3779B9u);
    for (size_t off = 0; off < 8; off++) {
        for (size_t len = 0; len <= 64; len++) {
            uint32_t want = ref_crc32c(0, buf + off, len);
            uint32_t got = crc32c(0, buf + off, len);
            cr_assert_eq(got, want, "offset %zu length %zu: got 0x%08X, want 0x%08X",
                         off, len, got, want);
            /* continuing from a non-zero value too */
            uint32_t seed = 0xDEADBEEFu;
            cr_assert_eq(crc32c(seed, buf + off, len), ref_crc32c(seed, buf + off, len),
                         "offset %zu length %zu continuing from 0x%08X", off, len, seed);
        }
    }
}

Test(crc32c, a_single_flipped_bit_changes_the_value)
{
    uint8_t buf[256];
    fill_pattern(buf, sizeof buf, 7);
    uint32_t orig = crc32c(0, buf, sizeof buf);
    for (size_t bit = 0; bit < sizeof buf * 8; bit += 13) {
        buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        cr_assert_neq(crc32c(0, buf, sizeof buf), orig, "bit %zu flipped unnoticed", bit);
        buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    cr_assert_eq(crc32c(0, buf, sizeof buf), orig);
}
