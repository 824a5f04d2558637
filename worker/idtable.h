/*
 * idtable — the worker's table of loaded streams by aggregate id: open
 * addressing with linear probing over an array of pointers, so a stream
 * costs the table one or two pointers, not a hash handle of its own (a
 * worker holds up to a million streams).
 *
 * The table keeps pointers to objects that start their key at `key_offset`
 * (a NUL-terminated string inside the object, such as struct stream's id);
 * it never owns them.
 */
#ifndef CQRS_IDTABLE_H
#define CQRS_IDTABLE_H

#include <stddef.h>

struct idtable {
    void **slots;          /* NULL: empty */
    size_t cap;            /* a power of two, or 0 */
    size_t n;
    size_t key_offset;
};

void idtable_init(struct idtable *t, size_t key_offset);
void idtable_free(struct idtable *t);
/* The object whose key is `key`, or NULL. */
void *idtable_find(const struct idtable *t, const char *key);
/* Adds `obj` (its key not present yet). 0, or -1 (ENOMEM). */
int idtable_add(struct idtable *t, void *obj);
/* Removes `obj` (present). */
void idtable_del(struct idtable *t, void *obj);
/* Every object once, in no particular order: start with *i = 0; NULL at
 * the end. The table must not change during the walk. */
void *idtable_next(const struct idtable *t, size_t *i);
/* The object in slot i (< t->cap), or NULL: for a clock sweeping the table,
 * which may remove the object it finds (the slot may then hold another one
 * moved back: look at it again). */
static inline void *idtable_slot(const struct idtable *t, size_t i)
{
    return t->slots[i];
}

#endif
