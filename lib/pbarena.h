/* pbarena — memory for protobuf messages that are all dropped at once.
 *
 * A protobuf-c allocator that hands out pieces of one buffer and frees
 * nothing until pbarena_reset: decoding a record costs no malloc and free
 * per field (replaying a log decodes millions). The buffer is the caller's
 * (on its stack, say) or the arena's own, grown at a reset up to a bound
 * when the last messages did not fit; what does not fit is malloc'ed beside
 * it and freed by the reset. Never protobuf_c_message_free_unpacked a
 * message decoded here: reset the arena instead.
 */
#ifndef CQRS_PBARENA_H
#define CQRS_PBARENA_H

#include <stddef.h>
#include <stdint.h>
#include <protobuf-c/protobuf-c.h>

struct pbarena {
    ProtobufCAllocator alloc;   /* give &a->alloc to protobuf-c */
    uint8_t *p;
    size_t cap, used;
    size_t max;                 /* the arena's own buffer grows up to this; 0: the caller's */
    size_t spill;               /* bytes malloc'ed beside it since the last reset */
    void **big;
    size_t nbig, capbig;
};

/* Over the caller's `buf` of `cap` bytes (16-byte aligned). */
void pbarena_init(struct pbarena *a, void *buf, size_t cap);
/* Over a buffer of its own, `cap` bytes growing up to `max`. 0, or -1 (ENOMEM). */
int pbarena_init_own(struct pbarena *a, size_t cap, size_t max);
/* Everything handed out is given back at once. An arena over a caller's
 * buffer holds nothing after it: it needs no pbarena_free. */
void pbarena_reset(struct pbarena *a);
void pbarena_free(struct pbarena *a);

#endif
