/*
 * registry — the one table of aggregate types. Adding a type is one line here
 * (plus its own file and .proto); nothing else in the daemon changes.
 */
#include "types.h"

#include <string.h>

const struct aggregate_type *const aggregate_registry[] = {
    &wallet_type,
    &account_type,
    NULL,
};

const struct aggregate_type *aggregate_lookup(const char *name)
{
    if (!name)
        return NULL;
    for (const struct aggregate_type *const *t = aggregate_registry; *t; t++)
        if (strcmp((*t)->name, name) == 0)
            return *t;
    return NULL;
}
