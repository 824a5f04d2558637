/*
 * notify — systemd's service notification protocol, written by hand: one
 * datagram of "KEY=VALUE\n" lines to the AF_UNIX socket named by
 * NOTIFY_SOCKET (a leading '@' means the abstract namespace). It is twenty
 * lines, so cqrsd does not link libsystemd for it.
 *
 * notify_init reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID and then
 * removes them from the environment, so the workers cqrsd spawns never
 * inherit them. Without NOTIFY_SOCKET every call does nothing.
 */
#ifndef CQRS_NOTIFY_H
#define CQRS_NOTIFY_H

#include <stdint.h>

void notify_init(void);
/* Sends one notification ("READY=1", "STATUS=...", ...). 0, or -1. */
int notify_send(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* WATCHDOG_USEC when it was meant for this process, else 0. */
uint64_t notify_watchdog_usec(void);
int notify_enabled(void);

#endif
