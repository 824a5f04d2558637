/* layout — see layout.h. */
#include "layout.h"

#include <stdio.h>
#include <string.h>

#include "crc32c.h"

static unsigned layout_shard(const char *id)
{
    return crc32c(0, id, strlen(id)) & 0xff;
}

int layout_shard_dir(char *buf, size_t len, const char *type_dir, const char *id)
{
    return snprintf(buf, len, "%s/%02x", type_dir, layout_shard(id));
}

int layout_stream_file(char *buf, size_t len, const char *type_dir, const char *id,
                       const char *suffix)
{
    return snprintf(buf, len, "%s/%02x/%s%s", type_dir, layout_shard(id), id, suffix);
}
