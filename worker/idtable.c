/* idtable — see idtable.h. */
#include "idtable.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char *idt_key(const struct idtable *t, const void *obj)
{
    return (const char *)obj + t->key_offset;
}

static size_t idt_hash(const char *key)
{
    uint64_t h = 0xcbf29ce484222325ULL;   /* FNV-1a, then mixed */
    for (const unsigned char *p = (const unsigned char *)key; *p; p++)
        h = (h ^ *p) * 0x100000001b3ULL;
    h ^= h >> 29;
    return (size_t)(h * 0xbf58476d1ce4e5b9ULL >> 7);
}

void idtable_init(struct idtable *t, size_t key_offset)
{
    *t = (struct idtable){ .key_offset = key_offset };
}

void idtable_free(struct idtable *t)
{
    free(t->slots);
    t->slots = NULL;
    t->cap = t->n = 0;
}

void *idtable_find(const struct idtable *t, const char *key)
{
    if (!t->cap)
        return NULL;
    size_t mask = t->cap - 1;
    for (size_t i = idt_hash(key) & mask; t->slots[i]; i = (i + 1) & mask)
        if (strcmp(idt_key(t, t->slots[i]), key) == 0)
            return t->slots[i];
    return NULL;
}

static void idt_place(void **slots, size_t cap, const struct idtable *t, void *obj)
{
    size_t i = idt_hash(idt_key(t, obj)) & (cap - 1);
    while (slots[i])
        i = (i + 1) & (cap - 1);
    slots[i] = obj;
}

int idtable_add(struct idtable *t, void *obj)
{
    if ((t->n + 1) * 4 > t->cap * 3) {   /* at most three quarters full */
        size_t cap = t->cap ? t->cap * 2 : 64;
        void **slots = calloc(cap, sizeof *slots);
        if (!slots) {
            errno = ENOMEM;
            return -1;
        }
        for (size_t i = 0; i < t->cap; i++)
            if (t->slots[i])
                idt_place(slots, cap, t, t->slots[i]);
        free(t->slots);
        t->slots = slots;
        t->cap = cap;
    }
    idt_place(t->slots, t->cap, t, obj);
    t->n++;
    return 0;
}

void idtable_del(struct idtable *t, void *obj)
{
    if (!t->cap)
        return;
    size_t mask = t->cap - 1, i = idt_hash(idt_key(t, obj)) & mask;
    while (t->slots[i] && t->slots[i] != obj)
        i = (i + 1) & mask;
    if (!t->slots[i])
        return;
    t->slots[i] = NULL;
    t->n--;
    /* backward shift: the entries after the hole that probed past it move up */
    for (size_t j = (i + 1) & mask; t->slots[j]; j = (j + 1) & mask) {
        size_t home = idt_hash(idt_key(t, t->slots[j])) & mask;
        /* j's entry may move to i when i lies cyclically in [home, j) */
        if (((j - home) & mask) >= ((j - i) & mask)) {
            t->slots[i] = t->slots[j];
            t->slots[j] = NULL;
            i = j;
        }
    }
}

void *idtable_next(const struct idtable *t, size_t *i)
{
    while (*i < t->cap) {
        void *obj = t->slots[(*i)++];
        if (obj)
            return obj;
    }
    return NULL;
}
