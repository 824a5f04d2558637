/*
 * control — the supervisor's control operations seen by clients:
 * STATUS (which_children), KILL (SIGKILL one worker, to watch it come back)
 * and RESTART (terminate_child; it is restarted as after any exit).
 */
#ifndef CQRS_CONTROL_H
#define CQRS_CONTROL_H

#include <event2/buffer.h>
#include "cqrs.pb-c.h"
#include "sup.h"

/* Acts on `ctl` and appends the reply frame for request `id` to `out`. */
int control_reply(struct sup *sup, uint64_t id, const Cqrs__Control *ctl, struct evbuffer *out);

#endif
