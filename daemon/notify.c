/* notify — see notify.h. */
#include "notify.h"

#include <errno.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static struct sockaddr_un notify_addr;
static socklen_t notify_len;
static int notify_fd = -1;
static uint64_t notify_wd_usec;

void notify_init(void)
{
    const char *path = getenv("NOTIFY_SOCKET");
    const char *wd = getenv("WATCHDOG_USEC"), *wdpid = getenv("WATCHDOG_PID");
    if (wd && (!wdpid || strtol(wdpid, NULL, 10) == (long)getpid()))
        notify_wd_usec = strtoull(wd, NULL, 10);
    size_t len = path ? strlen(path) : 0;
    if (len >= 2 && len < sizeof notify_addr.sun_path && (path[0] == '/' || path[0] == '@')) {
        notify_addr.sun_family = AF_UNIX;
        memcpy(notify_addr.sun_path, path, len);
        if (path[0] == '@')
            notify_addr.sun_path[0] = '\0';
        notify_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
        notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    }
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
}

int notify_enabled(void)
{
    return notify_fd >= 0;
}

uint64_t notify_watchdog_usec(void)
{
    return notify_wd_usec;
}

int notify_send(const char *fmt, ...)
{
    if (notify_fd < 0)
        return 0;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    if ((size_t)n >= sizeof msg)
        n = sizeof msg - 1;
    ssize_t w;
    do
        w = sendto(notify_fd, msg, (size_t)n, MSG_NOSIGNAL, (struct sockaddr *)&notify_addr,
                   notify_len);
    while (w < 0 && errno == EINTR);
    return w < 0 ? -1 : 0;
}
