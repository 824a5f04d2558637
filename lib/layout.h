/*
 * layout — where a type's files live under the data directory.
 *
 *   <data_dir>/<type>/<shard>/<id>.log    a stream's event log
 *   <data_dir>/<type>/<shard>/<id>.snap   its latest snapshot
 *   <data_dir>/<type>/journal/            the type's write-ahead journal
 *
 * <shard> is two lowercase hex digits, the low byte of CRC32C(id): 256
 * folders, so a type with millions of streams does not put them all in one
 * directory.
 */
#ifndef CQRS_LAYOUT_H
#define CQRS_LAYOUT_H

#include <stddef.h>

#define LAYOUT_JOURNAL "journal"

/* "<type_dir>/<shard>" into buf; returns snprintf's count. */
int layout_shard_dir(char *buf, size_t len, const char *type_dir, const char *id);
/* "<type_dir>/<shard>/<id><suffix>" (suffix ".log" or ".snap"). */
int layout_stream_file(char *buf, size_t len, const char *type_dir, const char *id,
                       const char *suffix);

#endif
