/*
 * fuzz_frame — the frame decoder (lib/frame.c) over a libevent buffer that
 * fills in pieces, as a socket's input does.
 *
 * Input:
 *   byte 0      mode: bits 0-2 = n-1 chunk sizes follow; bit 3 = tagged
 *               frames (frame_untag each, as cqrsd ↔ worker); bit 4 = chunks
 *               added by reference from exact-size allocations (so ASan
 *               sees any read past a chunk), else copied; bits 5-6 = the
 *               limit: 1 MiB (the default), 0, 16 or 256 bytes
 *   n bytes     chunk sizes, each byte + 1, used in turn
 *   the rest    the byte stream
 *
 * After every chunk the harness takes frames while frame_next says
 * FRAME_OK, and checks each answer against a model of the stream: OK
 * exactly when a whole frame within the limit is there, with the right
 * length, wire size and body bytes; NEED_MORE exactly when it is not;
 * TOO_BIG only when the header announces more than the limit (then the
 * stream ends, as cqrsd closes such a connection); frame_untag splits the
 * tag off bodies of 8 bytes or more and refuses shorter ones untouched.
 */
#include <string.h>

#include <event2/buffer.h>

#include "frame.h"
#include "fuzz_util.h"

static void chunk_free(const void *data, size_t len, void *arg)
{
    (void)len;
    (void)arg;
    free((void *)data);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    size_t n_sizes = (size_t)(mode & 7) + 1;
    int tagged = (mode >> 3) & 1;
    int by_ref = (mode >> 4) & 1;
    static const uint32_t limits[4] = { FRAME_MAX_DEFAULT, 0, 16, 256 };
    uint32_t max = limits[(mode >> 5) & 3];
    if (size < 1 + n_sizes)
        return 0;
    const uint8_t *sizes = data + 1;
    const uint8_t *stream = data + 1 + n_sizes;
    size_t stream_len = size - 1 - n_sizes;

    struct evbuffer *in = evbuffer_new();
    FUZZ_CHECK(in != NULL, "evbuffer_new");
    size_t fed = 0, pos = 0;   /* stream bytes added; stream offset of the buffer's front */
    size_t turn = 0;
    int closed = 0;
    while (!closed) {
        size_t chunk = (size_t)sizes[turn++ % n_sizes] + 1;
        if (chunk > stream_len - fed)
            chunk = stream_len - fed;
        if (chunk > 0) {
            if (by_ref) {
                uint8_t *copy = malloc(chunk);
                FUZZ_CHECK(copy != NULL, "malloc");
                memcpy(copy, stream + fed, chunk);
                FUZZ_CHECK(evbuffer_add_reference(in, copy, chunk, chunk_free, NULL) == 0,
                           "evbuffer_add_reference");
            } else {
                FUZZ_CHECK(evbuffer_add(in, stream + fed, chunk) == 0, "evbuffer_add");
            }
            fed += chunk;
        }

        for (;;) {
            size_t have = fed - pos;
            FUZZ_CHECK(evbuffer_get_length(in) == have, "buffer holds %zu bytes, expected %zu",
                       evbuffer_get_length(in), have);
            struct frame f;
            memset(&f, 0xa5, sizeof f);
            enum frame_status st = frame_next(in, max, &f);
            if (have < FRAME_HEADER_LEN) {
                FUZZ_CHECK(st == FRAME_NEED_MORE, "%zu bytes, no header yet: status %d", have, st);
                break;
            }
            uint32_t hdr = frame_get32(stream + pos);
            if (hdr > max) {
                FUZZ_CHECK(st == FRAME_TOO_BIG, "header %u over limit %u: status %d", hdr, max, st);
                FUZZ_CHECK(f.len == hdr, "TOO_BIG reports %u, header says %u", f.len, hdr);
                closed = 1;   /* cqrsd answers INVALID and closes the connection */
                break;
            }
            FUZZ_CHECK(st != FRAME_TOO_BIG, "TOO_BIG from header %u within limit %u", hdr, max);
            if (have - FRAME_HEADER_LEN < hdr) {
                FUZZ_CHECK(st == FRAME_NEED_MORE, "%zu of %u body bytes: status %d",
                           have - FRAME_HEADER_LEN, hdr, st);
                break;
            }
            FUZZ_CHECK(st == FRAME_OK, "a whole frame of %u bytes is there: status %d", hdr, st);
            FUZZ_CHECK(f.len == hdr, "len %u, header %u", f.len, hdr);
            FUZZ_CHECK(f.wire == FRAME_HEADER_LEN + (size_t)hdr, "wire %zu for len %u", f.wire, hdr);
            FUZZ_CHECK(f.tag == 0, "tag %llu before frame_untag", (unsigned long long)f.tag);
            FUZZ_CHECK(hdr == 0 || memcmp(f.body, stream + pos + FRAME_HEADER_LEN, hdr) == 0,
                       "body bytes differ from the stream's");
            if (tagged) {
                const uint8_t *body = f.body;
                int rc = frame_untag(&f);
                if (hdr < FRAME_TAG_LEN) {
                    FUZZ_CHECK(rc == -1, "untag of a %u-byte body: %d", hdr, rc);
                    FUZZ_CHECK(f.body == body && f.len == hdr, "a refused untag changed the frame");
                } else {
                    FUZZ_CHECK(rc == 0, "untag of a %u-byte body: %d", hdr, rc);
                    FUZZ_CHECK(f.tag == frame_get64(stream + pos + FRAME_HEADER_LEN), "wrong tag");
                    FUZZ_CHECK(f.body == body + FRAME_TAG_LEN && f.len == hdr - FRAME_TAG_LEN,
                               "untag moved the body wrong");
                    FUZZ_CHECK(f.len == 0 || memcmp(f.body, stream + pos + FRAME_HEADER_LEN +
                                                    FRAME_TAG_LEN, f.len) == 0,
                               "untagged body differs");
                }
            }
            frame_consume(in, &f);
            pos += FRAME_HEADER_LEN + (size_t)hdr;
        }
        if (fed == stream_len)
            break;
    }
    if (!closed)
        FUZZ_CHECK(evbuffer_get_length(in) == fed - pos, "bytes lost at the end");
    evbuffer_free(in);
    return 0;
}
