/* log — see log.h. One write(2) per line, so lines of the daemon and its
 * workers, which share stderr, never interleave. Under journald (stderr is
 * the stream named by JOURNAL_STREAM) each line starts with the syslog
 * priority "<3>".."<7>", which journald turns into the entry's priority. */
#include "log.h"

#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static char log_ident[32] = "cqrs";
static enum log_level log_max = LOG_LVL_INFO;
static int log_journal;   /* stderr is journald's: "<N>" prefixes, no ident */

void log_init(const char *ident, enum log_level max)
{
    snprintf(log_ident, sizeof log_ident, "%s", ident);
    log_max = max;
    /* JOURNAL_STREAM names the stream journald gave us ("dev:inode"); it
     * counts only while stderr is still that stream */
    const char *js = getenv("JOURNAL_STREAM");
    struct stat st;
    unsigned long long dev, ino;
    log_journal = js && sscanf(js, "%llu:%llu", &dev, &ino) == 2 &&
                  fstat(STDERR_FILENO, &st) == 0 && st.st_dev == (dev_t)dev &&
                  st.st_ino == (ino_t)ino;
}

void log_set_level(enum log_level max)
{
    log_max = max;
}

int log_level_parse(const char *name, enum log_level *out)
{
    static const struct { const char *name; enum log_level lvl; } levels[] = {
        { "error", LOG_LVL_ERROR }, { "warning", LOG_LVL_WARN },
        { "info", LOG_LVL_INFO }, { "debug", LOG_LVL_DEBUG },
    };
    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++)
        if (strcmp(name, levels[i].name) == 0) {
            *out = levels[i].lvl;
            return 0;
        }
    return -1;
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
    static const char *names[] = { [LOG_LVL_ERROR] = "error", [LOG_LVL_WARN] = "warning",
                                   [LOG_LVL_INFO] = "info", [LOG_LVL_DEBUG] = "debug" };
    if (lvl > log_max)
        return;
    char line[1024];
    int n = log_journal
                ? snprintf(line, sizeof line, "<%d>%s: ", (int)lvl, log_ident)
                : snprintf(line, sizeof line, "%s[%d]: %s: ", log_ident, (int)getpid(),
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
