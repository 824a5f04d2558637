/*
 * durable — making file-system changes survive a power cut: a file's data
 * (fdatasync) and a directory's entries (fsync of the directory, after a
 * file in it was created, renamed or removed). Returns 0 or -1 with errno.
 */
#ifndef CQRS_DURABLE_H
#define CQRS_DURABLE_H

/* fsync of the directory `dir`. */
int durable_sync_dir(const char *dir);
/* fsync of the directory that holds `path`. */
int durable_sync_parent(const char *path);
/* fdatasync of the file at `path`; a file that is gone is not an error. */
int durable_sync_file(const char *path);

#endif
