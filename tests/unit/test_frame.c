/*
 * test_frame — the framing of every stream socket (lib/frame.c): frames that
 * arrive a byte at a time, the size limit judged from the header alone,
 * empty and tagged frames, garbage input, and the blocking fill/flush
 * helpers over a real socketpair.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "frame.h"
#include "cqrs.pb-c.h"

static struct evbuffer *IN, *OUT;

static void bufs_setup(void)
{
    IN = evbuffer_new();
    OUT = evbuffer_new();
    cr_assert(IN && OUT);
}

static void bufs_teardown(void)
{
    if (IN)
        evbuffer_free(IN);
    if (OUT)
        evbuffer_free(OUT);
    IN = OUT = NULL;
}

TestSuite(frame, .init = bufs_setup, .fini = bufs_teardown);

static uint32_t xorshift(uint32_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    return *x;
}

static void fill_pattern(uint8_t *p, size_t n, uint32_t seed)
{
    uint32_t x = seed ? seed : 1;
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)xorshift(&x);
}

/* Appends a raw 4-byte big-endian header. */
static void put_header(struct evbuffer *b, uint32_t len)
{
    uint8_t h[FRAME_HEADER_LEN];
    frame_set32(h, len);
    cr_assert_eq(evbuffer_add(b, h, sizeof h), 0);
}

/* --- a frame split across reads ----------------------------------------- */

Test(frame, split_at_every_byte_boundary_several_frames_back_to_back)
{
    enum { NFRAMES = 6 };
    static const size_t lens[NFRAMES] = { 5, 0, 1, 300, 4, 4100 };
    uint8_t *bodies[NFRAMES];
    for (int i = 0; i < NFRAMES; i++) {
        bodies[i] = malloc(lens[i] ? lens[i] : 1);
        cr_assert_not_null(bodies[i]);
        fill_pattern(bodies[i], lens[i], (uint32_t)i + 11);
        cr_assert_eq(frame_put_bytes(OUT, NULL, bodies[i], lens[i]), 0);
    }
    size_t total = evbuffer_get_length(OUT);
    size_t want_total = 0;
    for (int i = 0; i < NFRAMES; i++)
        want_total += FRAME_HEADER_LEN + lens[i];
    cr_assert_eq(total, want_total, "frame_put_bytes wrote %zu bytes, want %zu", total, want_total);

    uint8_t *wire = malloc(total);
    cr_assert_not_null(wire);
    cr_assert_eq(evbuffer_remove(OUT, wire, total), (int)total);

    /* feed one byte at a time; a frame must appear exactly when its last
     * byte arrives, never earlier */
    int next = 0;
    size_t frame_end = FRAME_HEADER_LEN + lens[0];
    for (size_t fed = 1; fed <= total; fed++) {
        cr_assert_eq(evbuffer_add(IN, wire + fed - 1, 1), 0);
        struct frame f;
        enum frame_status st;
        while ((st = frame_next(IN, FRAME_MAX_DEFAULT, &f)) == FRAME_OK) {
            cr_assert_lt(next, NFRAMES, "a frame out of nothing after %zu bytes", fed);
            cr_assert_eq(fed, frame_end, "frame %d complete after %zu bytes, expected %zu",
                         next, fed, frame_end);
            cr_assert_eq(f.len, lens[next], "frame %d length", next);
            cr_assert_eq(f.wire, FRAME_HEADER_LEN + lens[next]);
            if (lens[next])
                cr_assert_eq(memcmp(f.body, bodies[next], lens[next]), 0, "frame %d body", next);
            frame_consume(IN, &f);
            next++;
            if (next < NFRAMES)
                frame_end += FRAME_HEADER_LEN + lens[next];
        }
        cr_assert_eq(st, FRAME_NEED_MORE, "after %zu bytes: status %d", fed, (int)st);
    }
    cr_assert_eq(next, NFRAMES, "only %d of %d frames came out", next, NFRAMES);
    cr_assert_eq(evbuffer_get_length(IN), 0);

    free(wire);
    for (int i = 0; i < NFRAMES; i++)
        free(bodies[i]);
}

Test(frame, empty_buffer_and_partial_header_need_more)
{
    struct frame f;
    cr_assert_eq(frame_next(IN, FRAME_MAX_DEFAULT, &f), FRAME_NEED_MORE);
    cr_assert_eq(evbuffer_add(IN, "\0\0\0", 3), 0);
    cr_assert_eq(frame_next(IN, FRAME_MAX_DEFAULT, &f), FRAME_NEED_MORE);
    cr_assert_eq(evbuffer_get_length(IN), 3, "frame_next must not consume");
}

/* --- the limit ----------------------------------------------------------- */

Test(frame, too_big_from_the_header_alone)
{
    struct frame f;
    put_header(IN, 101);
    cr_assert_eq(frame_next(IN, 100, &f), FRAME_TOO_BIG);
    cr_assert_eq(f.len, 101, "the announced length is reported");
    cr_assert_eq(evbuffer_get_length(IN), FRAME_HEADER_LEN, "nothing consumed");
}

Test(frame, huge_announced_length_is_too_big_without_any_body)
{
    struct frame f;
    put_header(IN, UINT32_MAX);
    cr_assert_eq(frame_next(IN, FRAME_MAX_DEFAULT, &f), FRAME_TOO_BIG);
    cr_assert_eq(f.len, UINT32_MAX);

    evbuffer_drain(IN, evbuffer_get_length(IN));
    put_header(IN, FRAME_MAX_DEFAULT + 1);
    cr_assert_eq(frame_next(IN, FRAME_MAX_DEFAULT, &f), FRAME_TOO_BIG);
    cr_assert_eq(f.len, FRAME_MAX_DEFAULT + 1);
}

Test(frame, exactly_the_limit_is_ok)
{
    uint8_t body[100];
    fill_pattern(body, sizeof body, 3);
    cr_assert_eq(frame_put_bytes(IN, NULL, body, sizeof body), 0);
    struct frame f;
    /* header alone: not too big, just not there yet */
    struct evbuffer *hdr_only = evbuffer_new();
    cr_assert_not_null(hdr_only);
    put_header(hdr_only, 100);
    enum frame_status st = frame_next(hdr_only, 100, &f);
    evbuffer_free(hdr_only);
    cr_assert_eq(st, FRAME_NEED_MORE);

    cr_assert_eq(frame_next(IN, 100, &f), FRAME_OK);
    cr_assert_eq(f.len, 100);
    cr_assert_eq(memcmp(f.body, body, sizeof body), 0);
    cr_assert_eq(frame_next(IN, 99, &f), FRAME_TOO_BIG, "one less than the body is too big");
}

Test(frame, zero_length_frame)
{
    cr_assert_eq(frame_put_bytes(IN, NULL, NULL, 0), 0);
    cr_assert_eq(evbuffer_get_length(IN), FRAME_HEADER_LEN);
    struct frame f;
    cr_assert_eq(frame_next(IN, 0, &f), FRAME_OK, "an empty frame fits a limit of 0");
    cr_assert_eq(f.len, 0);
    cr_assert_eq(f.wire, FRAME_HEADER_LEN);
    frame_consume(IN, &f);
    cr_assert_eq(evbuffer_get_length(IN), 0);
}

/* --- tagged frames ------------------------------------------------------- */

Test(frame, tagged_message_round_trip_and_consume_after_untag)
{
    Cqrs__EventRecord rec = CQRS__EVENT_RECORD__INIT;
    rec.version = 42;
    rec.timestamp_us = 1700000000123456LL;
    rec.type = "WalletToppedUp";
    rec.command_id = "cmd-1";
    uint8_t data[] = { 8, 5, 16, 12 };
    rec.data.data = data;
    rec.data.len = sizeof data;
    const uint64_t tags[] = { 0x0102030405060708ULL, 0, UINT64_MAX };

    for (size_t i = 0; i < 3; i++) {
        rec.version = 42 + i;
        cr_assert_eq(frame_put(OUT, &tags[i], &rec.base), 0);
    }
    cr_assert_eq(frame_put_bytes(OUT, NULL, "tail", 4), 0);   /* an untagged frame after */
    cr_assert_eq(evbuffer_add_buffer(IN, OUT), 0);

    size_t packed = cqrs__event_record__get_packed_size(&rec);
    for (size_t i = 0; i < 3; i++) {
        struct frame f;
        cr_assert_eq(frame_next(IN, FRAME_MAX_DEFAULT, &f), FRAME_OK, "frame %zu", i);
        cr_assert_eq(f.len, FRAME_TAG_LEN + packed);
        cr_assert_eq(frame_untag(&f), 0);
        cr_assert_eq(f.tag, tags[i], "frame %zu tag 0x%016llx", i, (unsigned long long)f.tag);
        cr_assert_eq(f.len, packed);
        cr_assert_eq(f.wire, FRAME_HEADER_LEN + FRAME_TAG_LEN + packed, "untag must not shrink wire");

        Cqrs__EventRecord *u = cqrs__event_record__unpack(NULL, f.len, f.body);
        cr_assert_not_null(u, "body after the tag does not decode");
        int same = u->version == 42 + i && u->timestamp_us == rec.timestamp_us &&
                   strcmp(u->type, "WalletToppedUp") == 0 && strcmp(u->command_id, "cmd-1") == 0 &&
                   u->data.len == sizeof data && memcmp(u->data.data, data, sizeof data) == 0;
        cqrs__event_record__free_unpacked(u, NULL);
        cr_assert(same, "frame %zu decoded to a different record", i);
        frame_consume(IN, &f);
    }
    struct frame f;
    cr_assert_eq(frame_next(IN, FRAME_MAX_DEFAULT, &f), FRAME_OK, "the frame after must parse");
    cr_assert_eq(f.len, 4);
    cr_assert_eq(memcmp(f.body, "tail", 4), 0);
    frame_consume(IN, &f);
    cr_assert_eq(evbuffer_get_length(IN), 0);
}

Test(frame, tagged_bytes_big_endian_on_the_wire)
{
    uint64_t tag = 0x1122334455667788ULL;
    cr_assert_eq(frame_put_bytes(IN, &tag, "ab", 2), 0);
    uint8_t wire[FRAME_HEADER_LEN + FRAME_TAG_LEN + 2];
    cr_assert_eq(evbuffer_get_length(IN), sizeof wire);
    evbuffer_copyout(IN, wire, sizeof wire);
    static const uint8_t want[] = { 0, 0, 0, 10, 0x11, 0x22, 0x33, 0x44,
                                    0x55, 0x66, 0x77, 0x88, 'a', 'b' };
    cr_assert_eq(memcmp(wire, want, sizeof want), 0, "wire layout is length, tag, body");
}

Test(frame, tagged_empty_body)
{
    uint64_t tag = 7;
    cr_assert_eq(frame_put_bytes(IN, &tag, NULL, 0), 0);
    struct frame f;
    cr_assert_eq(frame_next(IN, FRAME_MAX_DEFAULT, &f), FRAME_OK);
    cr_assert_eq(f.len, FRAME_TAG_LEN);
    cr_assert_eq(frame_untag(&f), 0);
    cr_assert_eq(f.tag, 7);
    cr_assert_eq(f.len, 0);
    frame_consume(IN, &f);
    cr_assert_eq(evbuffer_get_length(IN), 0);
}

Test(frame, untag_of_a_short_body_fails)
{
    for (size_t n = 0; n < FRAME_TAG_LEN; n++) {
        cr_assert_eq(frame_put_bytes(IN, NULL, "1234567", n), 0);
        struct frame f;
        cr_assert_eq(frame_next(IN, FRAME_MAX_DEFAULT, &f), FRAME_OK);
        cr_assert_eq(f.len, n);
        cr_assert_eq(frame_untag(&f), -1, "a %zu-byte body has no tag", n);
        frame_consume(IN, &f);
        cr_assert_eq(evbuffer_get_length(IN), 0);
    }
}

/* --- garbage ------------------------------------------------------------- */

/* Random bytes, with headers often small enough to be frames: the decoder
 * either needs more, says too big (with the announced length), or gives a
 * frame whose body is exactly the bytes after its header. */
Test(frame, random_garbage_never_crashes_and_is_decoded_consistently)
{
    uint32_t x = 0xC0FFEE;
    uint8_t *junk = malloc(8192);
    cr_assert_not_null(junk);
    for (int round = 0; round < 500; round++) {
        size_t n = xorshift(&x) % 8192;
        for (size_t i = 0; i < n; i++)
            junk[i] = (uint8_t)xorshift(&x);
        /* plant plausible headers */
        for (size_t at = 0; at + 4 <= n; at += 1 + xorshift(&x) % 64)
            if (xorshift(&x) % 3 == 0)
                frame_set32(junk + at, xorshift(&x) % 96);
        uint32_t max = xorshift(&x) % 2 ? 64 : FRAME_MAX_DEFAULT;

        evbuffer_drain(IN, evbuffer_get_length(IN));
        /* arrive in random-sized chunks */
        size_t pos = 0, fed = 0;
        int done = 0;
        while (!done) {
            if (fed < n) {
                size_t chunk = 1 + xorshift(&x) % 200;
                if (chunk > n - fed)
                    chunk = n - fed;
                cr_assert_eq(evbuffer_add(IN, junk + fed, chunk), 0);
                fed += chunk;
            }
            struct frame f;
            enum frame_status st;
            while ((st = frame_next(IN, max, &f)) == FRAME_OK) {
                cr_assert_leq(f.len, max);
                cr_assert_leq(pos + f.wire, fed);
                cr_assert_eq(f.len, frame_get32(junk + pos));
                cr_assert_eq(memcmp(f.body, junk + pos + FRAME_HEADER_LEN, f.len), 0,
                             "round %d: body at %zu is not the bytes after the header", round, pos);
                frame_consume(IN, &f);
                pos += f.wire;
            }
            cr_assert_eq(evbuffer_get_length(IN), fed - pos);
            if (st == FRAME_TOO_BIG) {
                cr_assert_gt(f.len, max);
                cr_assert_eq(f.len, frame_get32(junk + pos));
                done = 1;                   /* a peer would be closed here */
            } else {
                cr_assert_eq(st, FRAME_NEED_MORE, "round %d: status %d", round, (int)st);
                size_t left = fed - pos;
                if (left >= FRAME_HEADER_LEN)
                    cr_assert_gt(frame_get32(junk + pos), left - FRAME_HEADER_LEN,
                                 "round %d: a whole frame was there but NEED_MORE", round);
                if (fed == n)
                    done = 1;
            }
        }
    }
    free(junk);
}

/* --- blocking fill / flush over a socketpair ----------------------------- */

#define PAIR_FRAMES 2000

static size_t pair_len(int i)
{
    return (size_t)(i * 37) % 3000;   /* 0 .. 2999, including empty frames */
}

/* The writer: a child process, so the reader drains while it writes. */
static void pair_writer(int fd)
{
    struct evbuffer *out = evbuffer_new();
    uint8_t body[3000];
    if (!out)
        _exit(2);
    for (int i = 0; i < PAIR_FRAMES; i++) {
        size_t len = pair_len(i);
        fill_pattern(body, len, (uint32_t)i + 1);
        uint64_t tag = (uint64_t)i * 0x100000001ULL;
        if (frame_put_bytes(out, &tag, body, len) < 0)
            _exit(3);
        if (i % 7 == 0 && frame_flush(out, fd) < 0)   /* flush in batches of 7 */
            _exit(4);
    }
    if (frame_flush(out, fd) < 0 || evbuffer_get_length(out) != 0)
        _exit(5);
    evbuffer_free(out);
    close(fd);
    _exit(0);
}

Test(frame, fill_and_flush_round_trip_many_frames_over_a_socketpair)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        close(sv[0]);
        pair_writer(sv[1]);
    }
    close(sv[1]);

    uint8_t want[3000];
    int got = 0;
    int eof = 0;
    while (!eof) {
        int n = frame_fill(IN, sv[0]);
        cr_assert_geq(n, 0, "frame_fill: %s", strerror(errno));
        if (n == 0)
            eof = 1;
        struct frame f;
        enum frame_status st;
        while ((st = frame_next(IN, FRAME_MAX_DEFAULT, &f)) == FRAME_OK) {
            cr_assert_lt(got, PAIR_FRAMES);
            cr_assert_eq(frame_untag(&f), 0);
            cr_assert_eq(f.tag, (uint64_t)got * 0x100000001ULL, "frame %d tag", got);
            size_t len = pair_len(got);
            cr_assert_eq(f.len, len, "frame %d length", got);
            fill_pattern(want, len, (uint32_t)got + 1);
            cr_assert_eq(memcmp(f.body, want, len), 0, "frame %d body", got);
            frame_consume(IN, &f);
            got++;
        }
        cr_assert_eq(st, FRAME_NEED_MORE);
    }
    close(sv[0]);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "writer failed (status 0x%x)", status);
    cr_assert_eq(got, PAIR_FRAMES, "got %d of %d frames", got, PAIR_FRAMES);
    cr_assert_eq(evbuffer_get_length(IN), 0, "bytes left after the last frame");
}

Test(frame, fill_returns_zero_at_eof)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    cr_assert_eq(write(sv[1], "\0\0\0\2hi", 6), 6);
    close(sv[1]);
    cr_assert_eq(frame_fill(IN, sv[0]), 6);
    cr_assert_eq(frame_fill(IN, sv[0]), 0, "EOF must read as 0");
    close(sv[0]);
    struct frame f;
    cr_assert_eq(frame_next(IN, FRAME_MAX_DEFAULT, &f), FRAME_OK);
    cr_assert_eq(memcmp(f.body, "hi", 2), 0);
}

Test(frame, flush_to_a_closed_peer_fails_without_sigpipe)
{
    /* SIGPIPE at its default would kill the process (and fail the test) */
    signal(SIGPIPE, SIG_DFL);
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    close(sv[1]);
    cr_assert_eq(frame_put_bytes(OUT, NULL, "hello", 5), 0);
    errno = 0;
    cr_assert_eq(frame_flush(OUT, sv[0]), -1);
    cr_assert_eq(errno, EPIPE, "errno %d (%s)", errno, strerror(errno));
    close(sv[0]);
}
