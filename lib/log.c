/* log — see log.h. One write(2) per line, so lines of the daemon and its
 * workers, which share stderr, never interleave. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static char log_ident[32] = "cqrs";
static enum log_level log_max = LOG_LVL_INFO;

void log_init(const char *ident, enum log_level max)
{
    snprintf(log_ident, sizeof log_ident, "%s", ident);
    log_max = max;
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
    static const char *names[] = { [LOG_LVL_ERROR] = "error", [LOG_LVL_WARN] = "warning",
                                   [LOG_LVL_INFO] = "info", [LOG_LVL_DEBUG] = "debug" };
    if (lvl > log_max)
        return;
    char line[1024];
    int n = snprintf(line, sizeof line, "%s[%d]: %s: ", log_ident, (int)getpid(),
                     names[lvl] ? names[lvl] : "log");
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}
