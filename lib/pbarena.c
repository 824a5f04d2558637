/* pbarena — see pbarena.h. */
#include "pbarena.h"

#include <errno.h>
#include <stdlib.h>

static void *pbarena_alloc(void *data, size_t n)
{
    struct pbarena *a = data;
    n = (n + 15) & ~(size_t)15;
    if (n <= a->cap - a->used) {
        void *r = a->p + a->used;
        a->used += n;
        return r;
    }
    if (a->nbig == a->capbig) {
        size_t ncap = a->capbig ? a->capbig * 2 : 16;
        void **nb = realloc(a->big, ncap * sizeof *nb);
        if (!nb)
            return NULL;
        a->big = nb;
        a->capbig = ncap;
    }
    void *r = malloc(n);
    if (!r)
        return NULL;
    a->big[a->nbig++] = r;
    a->spill += n;
    return r;
}

static void pbarena_nofree(void *data, void *ptr)
{
    (void)data, (void)ptr;   /* all at once, by pbarena_reset */
}

void pbarena_init(struct pbarena *a, void *buf, size_t cap)
{
    *a = (struct pbarena){ .alloc = { pbarena_alloc, pbarena_nofree, a }, .p = buf, .cap = cap };
}

int pbarena_init_own(struct pbarena *a, size_t cap, size_t max)
{
    pbarena_init(a, malloc(cap), cap);
    if (!a->p) {
        errno = ENOMEM;
        return -1;
    }
    a->max = max;
    return 0;
}

void pbarena_reset(struct pbarena *a)
{
    for (size_t i = 0; i < a->nbig; i++)
        free(a->big[i]);
    a->nbig = 0;
    if (!a->max) {   /* over a caller's buffer: nothing may outlive the reset */
        free(a->big);
        a->big = NULL;
        a->capbig = 0;
    }
    if (a->max && a->spill && a->cap + a->spill <= a->max) {
        uint8_t *p = malloc(a->cap + a->spill);
        if (p) {
            free(a->p);
            a->p = p;
            a->cap += a->spill;
        }
    }
    a->spill = 0;
    a->used = 0;
}

void pbarena_free(struct pbarena *a)
{
    pbarena_reset(a);
    free(a->big);
    if (a->max)
        free(a->p);
    a->big = NULL;
    a->capbig = 0;
    a->p = NULL;
    a->cap = 0;
}
