/* durable — see durable.h. */
#include "durable.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int durable_sync_fd_of(const char *path, int flags, int data_only)
{
    int fd = open(path, flags | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = data_only ? fdatasync(fd) : fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

int durable_sync_dir(const char *dir)
{
    return durable_sync_fd_of(dir, O_RDONLY | O_DIRECTORY, 0);
}

int durable_sync_parent(const char *path)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        return durable_sync_dir(".");
    if (slash == dir)
        slash[1] = '\0';
    else
        *slash = '\0';
    return durable_sync_dir(dir);
}

int durable_sync_file(const char *path)
{
    if (durable_sync_fd_of(path, O_RDONLY, 1) == 0)
        return 0;
    return errno == ENOENT ? 0 : -1;
}
