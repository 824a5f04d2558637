/*
 * types — the aggregate types shipped with cqrsd, one per file in this
 * folder (wallet.c, account.c), listed once in registry.c.
 */
#ifndef CQRS_AGG_TYPES_H
#define CQRS_AGG_TYPES_H

#include "aggregate.h"

extern const struct aggregate_type wallet_type;
extern const struct aggregate_type account_type;

#endif
