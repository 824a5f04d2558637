/* frame — see frame.h for the format. */
#include "frame.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

enum frame_status frame_next(struct evbuffer *in, uint32_t max, struct frame *f)
{
    uint8_t hdr[FRAME_HEADER_LEN];
    size_t have = evbuffer_get_length(in);
    if (have < FRAME_HEADER_LEN)
        return FRAME_NEED_MORE;
    evbuffer_copyout(in, hdr, FRAME_HEADER_LEN);
    f->len = frame_get32(hdr);
    f->tag = 0;
    if (f->len > max)
        return FRAME_TOO_BIG;
    if (have - FRAME_HEADER_LEN < f->len)
        return FRAME_NEED_MORE;
    uint8_t *p = evbuffer_pullup(in, (ev_ssize_t)(FRAME_HEADER_LEN + f->len));
    if (!p)
        return FRAME_NEED_MORE;   /* cannot happen: the bytes are there */
    f->body = p + FRAME_HEADER_LEN;
    f->wire = FRAME_HEADER_LEN + (size_t)f->len;
    return FRAME_OK;
}

void frame_consume(struct evbuffer *in, const struct frame *f)
{
    evbuffer_drain(in, f->wire);
}

int frame_untag(struct frame *f)
{
    if (f->len < FRAME_TAG_LEN)
        return -1;
    f->tag = frame_get64(f->body);
    f->body += FRAME_TAG_LEN;
    f->len -= FRAME_TAG_LEN;
    return 0;
}

/* Reserves one contiguous region for header, tag and body. */
static uint8_t *frame_reserve(struct evbuffer *out, const uint64_t *tag, size_t len,
                              struct evbuffer_iovec *v)
{
    size_t total = FRAME_HEADER_LEN + (tag ? FRAME_TAG_LEN : 0) + len;
    if (len > UINT32_MAX - FRAME_TAG_LEN) {
        errno = EFBIG;
        return NULL;
    }
    if (evbuffer_reserve_space(out, (ev_ssize_t)total, v, 1) != 1) {
        errno = ENOMEM;
        return NULL;
    }
    uint8_t *p = v->iov_base;
    frame_set32(p, (uint32_t)(total - FRAME_HEADER_LEN));
    p += FRAME_HEADER_LEN;
    if (tag) {
        frame_set64(p, *tag);
        p += FRAME_TAG_LEN;
    }
    v->iov_len = total;
    return p;
}

int frame_put(struct evbuffer *out, const uint64_t *tag, const ProtobufCMessage *msg)
{
    struct evbuffer_iovec v;
    size_t len = protobuf_c_message_get_packed_size(msg);
    uint8_t *p = frame_reserve(out, tag, len, &v);
    if (!p)
        return -1;
    protobuf_c_message_pack(msg, p);
    return evbuffer_commit_space(out, &v, 1);
}

int frame_put_bytes(struct evbuffer *out, const uint64_t *tag, const void *body, size_t len)
{
    struct evbuffer_iovec v;
    uint8_t *p = frame_reserve(out, tag, len, &v);
    if (!p)
        return -1;
    if (len)
        memcpy(p, body, len);
    return evbuffer_commit_space(out, &v, 1);
}

int frame_fill(struct evbuffer *in, int fd)
{
    for (;;) {
        int n = evbuffer_read(in, fd, 65536);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return -1;
    }
}

int frame_flush(struct evbuffer *out, int fd)
{
    /* sendmsg with MSG_NOSIGNAL: a closed peer is an error, not SIGPIPE. */
    while (evbuffer_get_length(out) > 0) {
        struct evbuffer_iovec v[16];
        int n = evbuffer_peek(out, -1, NULL, v, 16);
        if (n > 16)
            n = 16;
        struct iovec iov[16];
        for (int i = 0; i < n; i++)
            iov[i] = (struct iovec){ v[i].iov_base, v[i].iov_len };
        struct msghdr m = { .msg_iov = iov, .msg_iovlen = (size_t)n };
        ssize_t w = sendmsg(fd, &m, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (evbuffer_drain(out, (size_t)w) < 0) {
            errno = EINVAL;   /* a frozen buffer: sending it again would loop */
            return -1;
        }
    }
    return 0;
}
