/* The worker's table of streams by id: random adds, finds and deletes
 * checked against a plain list, and a walk that sees each entry once. */
#include <criterion/criterion.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idtable.h"

struct item {
    int live;
    char key[24];
};

#define N 5000

static struct item items[N];

static void check_all(const struct idtable *t)
{
    size_t live = 0;
    for (size_t i = 0; i < N; i++) {
        void *found = idtable_find(t, items[i].key);
        if (items[i].live) {
            live++;
            cr_assert_eq(found, &items[i], "%s: not found, or another entry", items[i].key);
        } else {
            cr_assert_null(found, "%s: found after its removal", items[i].key);
        }
    }
    cr_assert_eq(t->n, live);
}

Test(idtable, random_adds_and_deletes_match_a_plain_list)
{
    struct idtable t;
    idtable_init(&t, offsetof(struct item, key));
    for (size_t i = 0; i < N; i++)
        snprintf(items[i].key, sizeof items[i].key, "w%zu", i * 7919 % 100003);
    srand(7);
    for (int round = 0; round < 40000; round++) {
        struct item *it = &items[rand() % N];
        if (it->live) {
            idtable_del(&t, it);
            it->live = 0;
        } else {
            cr_assert_eq(idtable_add(&t, it), 0);
            it->live = 1;
        }
        if (round % 5000 == 0)
            check_all(&t);
    }
    check_all(&t);
    /* the walk sees every live entry exactly once */
    size_t i = 0, seen = 0;
    for (struct item *it; (it = idtable_next(&t, &i)) != NULL; seen++) {
        cr_assert(it->live, "%s walked but removed", it->key);
        it->live = 2;
    }
    for (size_t k = 0; k < N; k++)
        cr_assert_neq(items[k].live, 1, "%s live but not walked", items[k].key);
    cr_assert_eq(seen, t.n);
    idtable_free(&t);
}

Test(idtable, empty_table)
{
    struct idtable t;
    idtable_init(&t, offsetof(struct item, key));
    cr_assert_null(idtable_find(&t, "w1"));
    size_t i = 0;
    cr_assert_null(idtable_next(&t, &i));
    idtable_free(&t);
}
