/*
 * log — the log lines of cqrsd and its workers: one line per event, to
 * stderr, as "ident[pid]: level: message". Only daemon/ and worker/ call it;
 * the rest of lib/ reports errors to its caller instead.
 */
#ifndef CQRS_LOG_H
#define CQRS_LOG_H

enum log_level { LOG_LVL_ERROR = 3, LOG_LVL_WARN = 4, LOG_LVL_INFO = 6, LOG_LVL_DEBUG = 7 };

void log_init(const char *ident, enum log_level max);
void log_set_level(enum log_level max);
/* "error", "warning", "info", "debug". 0 or -1. */
int log_level_parse(const char *name, enum log_level *out);
void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_LVL_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LVL_DEBUG, __VA_ARGS__)

#endif
