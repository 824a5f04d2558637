/*
 * frame — the framing of every stream socket of cqrsd.
 *
 *   frame = length body
 *   length = uint32 big-endian, bytes of body (0..max)
 *
 * Between cqrsd and a worker the body starts with an 8-byte big-endian tag
 * (cqrsd's own request number), then the protobuf message; clients never
 * see tags. Tag 0 is the supervisor channel (ready, heartbeats, stop), and
 * tag FRAME_TAG_COMMIT carries committed events (a cqrs.Commit) from a
 * worker to cqrsd and from cqrsd to the projectors.
 *
 * There is one decoder, frame_next, over a libevent buffer: event-loop
 * callbacks call it on their input buffer; blocking code fills a buffer from
 * its fd with frame_fill and calls the same. The length is checked against
 * the limit from the header alone, before any body is read or allocated.
 */
#ifndef CQRS_FRAME_H
#define CQRS_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include <event2/buffer.h>
#include <protobuf-c/protobuf-c.h>

#define FRAME_HEADER_LEN 4
#define FRAME_TAG_LEN 8
#define FRAME_MAX_DEFAULT (1u << 20)
#define FRAME_TAG_COMMIT UINT64_MAX

enum frame_status {
    FRAME_OK = 1,          /* a whole frame is at the front of the buffer */
    FRAME_NEED_MORE = 0,   /* not yet */
    FRAME_TOO_BIG = -2,    /* the header announces more than the limit */
};

struct frame {
    const uint8_t *body;   /* points into the buffer until frame_consume */
    uint32_t len;
    uint64_t tag;          /* set by frame_untag */
    size_t wire;           /* bytes the whole frame takes in the buffer */
};

/* Looks at the front of `in`: FRAME_OK with `f` set (body contiguous),
 * FRAME_NEED_MORE, or FRAME_TOO_BIG (`f->len` holds the announced length). */
enum frame_status frame_next(struct evbuffer *in, uint32_t max, struct frame *f);
/* Drops the frame returned by frame_next from `in`. */
void frame_consume(struct evbuffer *in, const struct frame *f);
/* Splits the 8-byte tag off the body. -1 if the body is shorter. */
int frame_untag(struct frame *f);

/* Appends one frame; `tag` NULL for a client frame. 0 or -1 (ENOMEM). */
int frame_put(struct evbuffer *out, const uint64_t *tag, const ProtobufCMessage *msg);
int frame_put_bytes(struct evbuffer *out, const uint64_t *tag, const void *body, size_t len);

/* Blocking I/O helpers: reads what `fd` has (at least one byte, blocking)
 * into `in`; returns bytes read, 0 on EOF, -1 with errno. */
int frame_fill(struct evbuffer *in, int fd);
/* Writes all of `out` to the blocking `fd`. 0 or -1 with errno. */
int frame_flush(struct evbuffer *out, int fd);

/* Big-endian helpers shared by the on-disk and wire formats. */
static inline uint32_t frame_get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void frame_set32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline uint64_t frame_get64(const uint8_t *p)
{
    return (uint64_t)frame_get32(p) << 32 | frame_get32(p + 4);
}
static inline void frame_set64(uint8_t *p, uint64_t v)
{
    frame_set32(p, (uint32_t)(v >> 32)); frame_set32(p + 4, (uint32_t)v);
}

#endif
