/* pbwire: NUL bytes inside string fields are found at any depth; other
 * bytes fields, empty map values and unknown fields pass. */
#include <criterion/criterion.h>
#include <string.h>

#include "cqrs.pb-c.h"
#include "pbwire.h"
#include "wallet.pb-c.h"

static size_t pack_request(Cqrs__Command *cmd, uint8_t *buf)
{
    Cqrs__Request req = CQRS__REQUEST__INIT;
    req.body_case = CQRS__REQUEST__BODY_COMMAND;
    req.command = cmd;
    return cqrs__request__pack(&req, buf);
}

/* Replaces the first occurrence of `from` in buf with `to` (same length). */
static void patch(uint8_t *buf, size_t len, const char *from, const char *to, size_t n)
{
    uint8_t *p = memmem(buf, len, from, n);
    cr_assert_not_null(p);
    memcpy(p, to, n);
}

Test(pbwire, clean_request_passes)
{
    Cqrs__Command cmd = CQRS__COMMAND__INIT;
    cmd.aggregate_type = "wallet";
    cmd.aggregate_id = "w1";
    cmd.name = "TopUp";
    uint8_t payload[3] = { 0x08, 0x00, 0x00 };   /* bytes may hold NULs */
    cmd.payload.data = payload;
    cmd.payload.len = sizeof payload;
    uint8_t buf[256];
    size_t n = pack_request(&cmd, buf);
    cr_assert_eq(pbwire_check_strings(&cqrs__request__descriptor, buf, n), 0);
}

Test(pbwire, nul_in_id_is_found)
{
    Cqrs__Command cmd = CQRS__COMMAND__INIT;
    cmd.aggregate_type = "wallet";
    cmd.aggregate_id = "w1Zx";
    cmd.name = "TopUp";
    uint8_t buf[256];
    size_t n = pack_request(&cmd, buf);
    patch(buf, n, "w1Zx", "w1\0x", 4);
    cr_assert_eq(pbwire_check_strings(&cqrs__request__descriptor, buf, n), -1);
}

Test(pbwire, nul_in_metadata_value_is_found)
{
    Cqrs__Command cmd = CQRS__COMMAND__INIT;
    Cqrs__Command__MetadataEntry e = CQRS__COMMAND__METADATA_ENTRY__INIT, *ep = &e;
    e.key = "user";
    e.value = "aliceZ";
    cmd.aggregate_type = "wallet";
    cmd.aggregate_id = "w1";
    cmd.n_metadata = 1;
    cmd.metadata = &ep;
    uint8_t buf[256];
    size_t n = pack_request(&cmd, buf);
    cr_assert_eq(pbwire_check_strings(&cqrs__request__descriptor, buf, n), 0);
    patch(buf, n, "aliceZ", "alice\0", 6);
    cr_assert_eq(pbwire_check_strings(&cqrs__request__descriptor, buf, n), -1);
}

Test(pbwire, empty_map_value_written_out_passes)
{
    /* field 7 (metadata), entry { key "k" (1), value "" (2) written out } */
    const uint8_t buf[] = { 0x3a, 0x05, 0x0a, 0x01, 'k', 0x12, 0x00 };
    cr_assert_eq(pbwire_check_strings(&cqrs__command__descriptor, buf, sizeof buf), 0);
}

Test(pbwire, payload_string_with_nul_is_found)
{
    const uint8_t ok[] = { 0x0a, 0x03, 'a', 'b', 'c' };
    const uint8_t bad[] = { 0x0a, 0x03, 'a', 0x00, 'c' };
    cr_assert_eq(pbwire_check_strings(&wallet__rename_wallet__descriptor, ok, sizeof ok), 0);
    cr_assert_eq(pbwire_check_strings(&wallet__rename_wallet__descriptor, bad, sizeof bad), -1);
}

Test(pbwire, malformed_wire_is_refused)
{
    const uint8_t overrun[] = { 0x0a, 0x09, 'a' };          /* length past the end */
    const uint8_t group[] = { 0x0b };                       /* wire type 3 */
    const uint8_t varint[] = { 0x08, 0xff, 0xff };          /* unterminated varint */
    const uint8_t unknown[] = { 0xf8, 0x01, 0x05 };         /* field 31 varint: fine */
    cr_assert_eq(pbwire_check_strings(&wallet__rename_wallet__descriptor, overrun, sizeof overrun), -1);
    cr_assert_eq(pbwire_check_strings(&wallet__rename_wallet__descriptor, group, sizeof group), -1);
    cr_assert_eq(pbwire_check_strings(&wallet__top_up__descriptor, varint, sizeof varint), -1);
    cr_assert_eq(pbwire_check_strings(&wallet__top_up__descriptor, unknown, sizeof unknown), 0);
}

Test(pbwire, field_number_zero_is_refused)
{
    /* found by fuzz_request: an over-long tag for field 0, which protobuf-c
     * decodes (keeping an unknown field 0) but cannot decode again */
    const uint8_t over_long[] = { 0x80, 0x00, 0x00, 0x22, 0x00 };
    const uint8_t plain[] = { 0x00, 0x01 };
    cr_assert_eq(pbwire_check_strings(&cqrs__request__descriptor, over_long, sizeof over_long), -1);
    cr_assert_eq(pbwire_check_strings(&cqrs__request__descriptor, plain, sizeof plain), -1);
}

/* cqrsd reads a Reply's `more` and a Commit's position without decoding
 * the events around them. */
Test(pbwire, varint_field_found_absent_and_malformed)
{
    Cqrs__EventRecord ev = CQRS__EVENT_RECORD__INIT;
    ev.type = "WalletToppedUp";
    ev.position = 77;
    Cqrs__EventRecord *evs[] = { &ev, &ev };
    Cqrs__Reply r = CQRS__REPLY__INIT;
    r.id = 5;
    r.n_events = 2;
    r.events = evs;
    r.more = 1;
    r.position = 1234567890123ULL;
    uint8_t buf[512];
    size_t n = cqrs__reply__pack(&r, buf);
    uint64_t v = 0;
    cr_assert_eq(pbwire_varint_field(buf, n, 11, &v), 1);
    cr_assert_eq(v, 1);
    cr_assert_eq(pbwire_varint_field(buf, n, 10, &v), 1);
    cr_assert_eq(v, 1234567890123ULL);
    cr_assert_eq(pbwire_varint_field(buf, n, 2, &v), 0, "status OK is not written");
    r.more = 0;
    n = cqrs__reply__pack(&r, buf);
    cr_assert_eq(pbwire_varint_field(buf, n, 11, &v), 0, "more = false is not written");
    cr_assert_eq(pbwire_varint_field(buf, n - 1, 10, &v), -1, "a cut varint");
    uint8_t bad[] = { 0x0a, 0x7f, 0x00 };   /* a length past the end */
    cr_assert_eq(pbwire_varint_field(bad, sizeof bad, 1, &v), -1);
}
