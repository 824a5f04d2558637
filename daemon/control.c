/* control — see control.h. */
#include "control.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "log.h"

static int control_status(struct sup *sup, Cqrs__Reply *r, struct evbuffer *out)
{
    size_t n = sup_count(sup);
    Cqrs__ChildInfo *infos = calloc(n ? n : 1, sizeof *infos);
    Cqrs__ChildInfo **ptrs = calloc(n ? n : 1, sizeof *ptrs);
    Cqrs__WorkerStats **stats = calloc(n ? n : 1, sizeof *stats);
    if (!infos || !ptrs || !stats) {
        free(infos);
        free(ptrs);
        free(stats);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        struct child *c = sup_child(sup, i);
        cqrs__child_info__init(&infos[i]);
        infos[i].name = c->cfg.name;
        infos[i].pid = (int32_t)c->pid;
        infos[i].state = (char *)sup_state_name(c);
        infos[i].restarts = c->restarts;
        infos[i].started_at_us = c->started_at_us;
        infos[i].last_exit = c->last_exit;
        if (c->pid > 0 && c->stats_seen)   /* an all-zero WorkerStats is zero bytes long */
            infos[i].stats = stats[i] = cqrs__worker_stats__unpack(NULL, c->stats_len, c->stats);
        ptrs[i] = &infos[i];
    }
    r->n_children = n;
    r->children = ptrs;
    int rc = frame_put(out, NULL, &r->base);
    for (size_t i = 0; i < n; i++)
        if (stats[i])
            cqrs__worker_stats__free_unpacked(stats[i], NULL);
    free(stats);
    free(infos);
    free(ptrs);
    return rc;
}

int control_reply(struct sup *sup, uint64_t id, const Cqrs__Control *ctl, struct evbuffer *out)
{
    Cqrs__Reply r = CQRS__REPLY__INIT;
    char msg[200];
    r.id = id;
    if (ctl->op == CQRS__CONTROL__OP__STATUS)
        return control_status(sup, &r, out);

    struct child *c = sup_find(sup, ctl->child);
    if (ctl->op != CQRS__CONTROL__OP__KILL && ctl->op != CQRS__CONTROL__OP__RESTART) {
        r.status = CQRS__STATUS__INVALID;
        snprintf(msg, sizeof msg, "unknown control operation %d", (int)ctl->op);
    } else if (!c) {
        r.status = CQRS__STATUS__INVALID;
        snprintf(msg, sizeof msg, "no child named \"%.64s\"", ctl->child);
    } else if (c->pid <= 0 && ctl->op == CQRS__CONTROL__OP__KILL) {
        r.status = CQRS__STATUS__UNAVAILABLE;
        snprintf(msg, sizeof msg, "child %s is not running", c->name);
    } else if (ctl->op == CQRS__CONTROL__OP__KILL) {
        log_info("control: killing child %s (pid %d)", c->name, (int)c->pid);
        kill(c->pid, SIGKILL);
        msg[0] = '\0';
    } else {
        log_info("control: restarting child %s (pid %d)", c->name, (int)c->pid);
        sup_restart_child(c);
        msg[0] = '\0';
    }
    r.error = msg;
    return frame_put(out, NULL, &r.base);
}
