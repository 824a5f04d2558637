/* snapshot — see snapshot.h for the file format and the write protocol. */
#include "snapshot.h"

#include "durable.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crc32c.h"
#include "evlog.h"
#include "frame.h"

#define SNAPSHOT_HEAD_LEN (SNAPSHOT_MAGIC_LEN + 4 + 8 + 8)    /* magic + header */
#define SNAPSHOT_CRC_LEN 4
#define SNAPSHOT_MIN_LEN (SNAPSHOT_HEAD_LEN + 4 + 4 + SNAPSHOT_CRC_LEN)
#define SNAPSHOT_CMD_FIXED (4 + 8 + 4)                        /* a cmd without its id */

static void snapshot_why(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void snapshot_why(char *why, size_t whylen, const char *fmt, ...)
{
    if (!why || whylen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, whylen, fmt, ap);
    va_end(ap);
}

/* --- the rules both sides keep ------------------------------------------ */

static int snapshot_cmp_id(const void *a, const void *b)
{
    return strcmp((*(const struct snapshot_cmd *const *)a)->command_id,
                  (*(const struct snapshot_cmd *const *)b)->command_id);
}

/* 0 if no two remembered commands share an id, 1 if two do, -1 on ENOMEM. */
static int snapshot_has_duplicate_ids(const struct snapshot *snap)
{
    if (snap->n_cmds < 2)
        return 0;
    const struct snapshot_cmd **sorted = malloc(snap->n_cmds * sizeof *sorted);
    if (!sorted)
        return -1;
    for (size_t i = 0; i < snap->n_cmds; i++)
        sorted[i] = &snap->cmds[i];
    qsort(sorted, snap->n_cmds, sizeof *sorted, snapshot_cmp_id);
    int dup = 0;
    for (size_t i = 1; i < snap->n_cmds && !dup; i++)
        dup = strcmp(sorted[i - 1]->command_id, sorted[i]->command_id) == 0;
    free(sorted);
    return dup;
}

/* The rules of the format beyond its lengths (see snapshot.h): 0, or -1
 * with errno EINVAL (a sentence in why) or ENOMEM. */
static int snapshot_check(const struct snapshot *snap, char *why, size_t whylen)
{
    if (snap->version == 0) {
        snapshot_why(why, whylen, "snapshot is of version 0, which has no events");
        goto invalid;
    }
    if (snap->log_offset <= EVLOG_MAGIC_LEN || snap->log_offset > INT64_MAX) {
        snapshot_why(why, whylen, "snapshot has an impossible log offset %llu",
                     (unsigned long long)snap->log_offset);
        goto invalid;
    }
    if (snap->state_len > 0 && !snap->state) {
        snapshot_why(why, whylen, "snapshot has %zu bytes of state but no state", snap->state_len);
        goto invalid;
    }
    if (snap->n_cmds > 0 && !snap->cmds) {
        snapshot_why(why, whylen, "snapshot has %zu command ids but no list", snap->n_cmds);
        goto invalid;
    }
    for (size_t i = 0; i < snap->n_cmds; i++) {
        const struct snapshot_cmd *c = &snap->cmds[i];
        if (!c->command_id || !c->command_id[0]) {
            snapshot_why(why, whylen, "snapshot command #%zu has an empty id", i);
            goto invalid;
        }
        /* its events lie in 1..version: first + count - 1 <= version */
        if (c->first == 0 || c->first > snap->version || c->count > snap->version - c->first + 1) {
            snapshot_why(why, whylen, "snapshot command #%zu claims versions %llu+%u beyond "
                         "version %llu", i, (unsigned long long)c->first, c->count,
                         (unsigned long long)snap->version);
            goto invalid;
        }
    }
    int dup = snapshot_has_duplicate_ids(snap);
    if (dup < 0) {
        snapshot_why(why, whylen, "out of memory checking the snapshot's command ids");
        errno = ENOMEM;
        return -1;
    }
    if (dup) {
        snapshot_why(why, whylen, "snapshot remembers the same command id twice");
        goto invalid;
    }
    return 0;
invalid:
    errno = EINVAL;
    return -1;
}

/* --- write --------------------------------------------------------------- */

/* The encoded file, or NULL with errno (EINVAL, EFBIG, ENOMEM). */
static uint8_t *snapshot_encode(const struct snapshot *snap, size_t *len)
{
    if (snap->snapshot_version == 0 || snapshot_check(snap, NULL, 0) < 0) {
        if (errno != ENOMEM)
            errno = EINVAL;
        return NULL;
    }
    /* Every term is checked against the limit before it is added, so the
     * sum cannot wrap. */
    size_t size = SNAPSHOT_MIN_LEN;
    if (snap->state_len > SNAPSHOT_MAX_BYTES - size || snap->n_cmds > UINT32_MAX)
        goto too_big;
    size += snap->state_len;
    for (size_t i = 0; i < snap->n_cmds; i++) {
        size_t idlen = strlen(snap->cmds[i].command_id);
        if (idlen > SNAPSHOT_MAX_BYTES || SNAPSHOT_CMD_FIXED + idlen > SNAPSHOT_MAX_BYTES - size)
            goto too_big;
        size += SNAPSHOT_CMD_FIXED + idlen;
    }

    uint8_t *buf = malloc(size);
    if (!buf) {
        errno = ENOMEM;
        return NULL;
    }
    uint8_t *p = buf;
    memcpy(p, SNAPSHOT_MAGIC, SNAPSHOT_MAGIC_LEN);
    p += SNAPSHOT_MAGIC_LEN;
    frame_set32(p, snap->snapshot_version);
    frame_set64(p + 4, snap->version);
    frame_set64(p + 12, snap->log_offset);
    frame_set32(p + 20, (uint32_t)snap->state_len);
    p += 24;
    if (snap->state_len)
        memcpy(p, snap->state, snap->state_len);
    p += snap->state_len;
    frame_set32(p, (uint32_t)snap->n_cmds);
    p += 4;
    for (size_t i = 0; i < snap->n_cmds; i++) {
        const struct snapshot_cmd *c = &snap->cmds[i];
        size_t idlen = strlen(c->command_id);
        frame_set32(p, (uint32_t)idlen);
        memcpy(p + 4, c->command_id, idlen);
        p += 4 + idlen;
        frame_set64(p, c->first);
        frame_set32(p + 8, c->count);
        p += 12;
    }
    frame_set32(p, crc32c(0, buf, (size_t)(p - buf)));
    *len = size;
    return buf;

too_big:
    errno = EFBIG;
    return NULL;
}

static int snapshot_write_all(int fd, const uint8_t *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0) {
            errno = EIO;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}


int snapshot_write(const char *path, const struct snapshot *snap)
{
    size_t len;
    uint8_t *buf = snapshot_encode(snap, &len);
    if (!buf)
        return -1;
    size_t plen = strlen(path);
    char *tmp = malloc(plen + sizeof ".tmp");
    if (!tmp) {
        free(buf);
        errno = ENOMEM;
        return -1;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", sizeof ".tmp");

    int rc = -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        goto done;
    if (snapshot_write_all(fd, buf, len) < 0 || fdatasync(fd) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        goto unlink_tmp;
    }
    if (close(fd) < 0 || rename(tmp, path) < 0)
        goto unlink_tmp;
    rc = durable_sync_parent(path);   /* the new snapshot is in place either way */
    goto done;

unlink_tmp:
    {
        int e = errno;
        unlink(tmp);
        errno = e;
    }
done:
    {
        int e = errno;
        free(tmp);
        free(buf);
        errno = e;
    }
    return rc;
}

/* --- read ---------------------------------------------------------------- */

/* A bounded reader over the file's bytes: each take checks what is left. */
struct snapshot_cursor {
    const uint8_t *p;
    size_t left;
};

static const uint8_t *snapshot_take(struct snapshot_cursor *c, size_t n)
{
    if (n > c->left)
        return NULL;
    const uint8_t *at = c->p;
    c->p += n;
    c->left -= n;
    return at;
}

static int snapshot_take32(struct snapshot_cursor *c, uint32_t *v)
{
    const uint8_t *p = snapshot_take(c, 4);
    if (!p)
        return -1;
    *v = frame_get32(p);
    return 0;
}

static int snapshot_take64(struct snapshot_cursor *c, uint64_t *v)
{
    const uint8_t *p = snapshot_take(c, 8);
    if (!p)
        return -1;
    *v = frame_get64(p);
    return 0;
}

/* Decodes the part after the magic and snapshot_version, whose CRC already
 * matched, into `snap`: -1 with errno EINVAL (and why) or ENOMEM. */
static int snapshot_decode(struct snapshot_cursor *c, struct snapshot *snap,
                           char *why, size_t whylen)
{
    uint32_t state_len, n_cmds;
    if (snapshot_take64(c, &snap->version) < 0 || snapshot_take64(c, &snap->log_offset) < 0 ||
        snapshot_take32(c, &state_len) < 0) {
        snapshot_why(why, whylen, "snapshot header is truncated");
        goto invalid;
    }
    const uint8_t *state = snapshot_take(c, state_len);
    if (!state) {
        snapshot_why(why, whylen, "snapshot state of %u bytes runs past the end", state_len);
        goto invalid;
    }
    snap->state = malloc(state_len ? state_len : 1);
    if (!snap->state)
        goto nomem;
    if (state_len)
        memcpy(snap->state, state, state_len);
    snap->state_len = state_len;

    if (snapshot_take32(c, &n_cmds) < 0) {
        snapshot_why(why, whylen, "snapshot ends before its command id count");
        goto invalid;
    }
    /* each cmd takes at least its fixed fields and a 1-byte id */
    if (n_cmds > c->left / (SNAPSHOT_CMD_FIXED + 1)) {
        snapshot_why(why, whylen, "snapshot claims %u command ids in %zu bytes", n_cmds, c->left);
        goto invalid;
    }
    if (n_cmds) {
        snap->cmds = calloc(n_cmds, sizeof *snap->cmds);
        if (!snap->cmds)
            goto nomem;
    }
    for (uint32_t i = 0; i < n_cmds; i++) {
        uint32_t idlen;
        const uint8_t *id;
        /* the id, then its first (8) and events (4), must fit in what is left */
        if (snapshot_take32(c, &idlen) < 0 || idlen == 0 || c->left < 12 ||
            idlen > c->left - 12 || !(id = snapshot_take(c, idlen))) {
            snapshot_why(why, whylen, "snapshot command #%u has an id length (%u) out of bounds",
                         i, idlen);
            goto invalid;
        }
        if (memchr(id, '\0', idlen)) {
            snapshot_why(why, whylen, "snapshot command #%u has a NUL byte in its id", i);
            goto invalid;
        }
        struct snapshot_cmd *cmd = &snap->cmds[i];
        cmd->command_id = malloc((size_t)idlen + 1);
        if (!cmd->command_id)
            goto nomem;
        memcpy(cmd->command_id, id, idlen);
        cmd->command_id[idlen] = '\0';
        snap->n_cmds = i + 1;
        if (snapshot_take64(c, &cmd->first) < 0 || snapshot_take32(c, &cmd->count) < 0) {
            snapshot_why(why, whylen, "snapshot command #%u is truncated", i);
            goto invalid;
        }
    }
    if (c->left != 0) {
        snapshot_why(why, whylen, "snapshot has %zu bytes after its last command id", c->left);
        goto invalid;
    }
    return snapshot_check(snap, why, whylen);

invalid:
    errno = EINVAL;
    return -1;
nomem:
    snapshot_why(why, whylen, "out of memory reading the snapshot");
    errno = ENOMEM;
    return -1;
}

/* Checks the frame of the file (magic, size, CRC, snapshot_version) and
 * decodes the rest. 0 or -1 with errno (EINVAL with why, ENOMEM). */
static int snapshot_parse(const uint8_t *buf, size_t len, uint32_t expected,
                          struct snapshot *snap, char *why, size_t whylen)
{
    size_t magic = len < SNAPSHOT_MAGIC_LEN ? len : SNAPSHOT_MAGIC_LEN;
    if (memcmp(buf, SNAPSHOT_MAGIC, magic) != 0) {
        snapshot_why(why, whylen, "snapshot has a bad magic (not a %s file)", SNAPSHOT_MAGIC);
        goto invalid;
    }
    if (len < SNAPSHOT_MIN_LEN) {
        snapshot_why(why, whylen, "snapshot is truncated: %zu bytes, at least %d needed",
                     len, SNAPSHOT_MIN_LEN);
        goto invalid;
    }
    size_t body = len - SNAPSHOT_CRC_LEN;
    uint32_t want = frame_get32(buf + body), got = crc32c(0, buf, body);
    if (want != got) {
        snapshot_why(why, whylen, "snapshot fails its checksum (truncated or corrupt): "
                     "CRC32C %08x, recorded %08x", got, want);
        goto invalid;
    }
    snap->snapshot_version = frame_get32(buf + SNAPSHOT_MAGIC_LEN);
    if (expected == 0) {
        snapshot_why(why, whylen, "snapshot_version 0: the type takes no snapshots");
        goto invalid;
    }
    if (snap->snapshot_version != expected) {
        snapshot_why(why, whylen, "snapshot is stale: written under snapshot_version %u, "
                     "the type is at %u", snap->snapshot_version, expected);
        goto invalid;
    }
    struct snapshot_cursor c = {
        .p = buf + SNAPSHOT_MAGIC_LEN + 4,
        .left = body - SNAPSHOT_MAGIC_LEN - 4,
    };
    return snapshot_decode(&c, snap, why, whylen);
invalid:
    errno = EINVAL;
    return -1;
}

/* Reads the whole file (at most SNAPSHOT_MAX_BYTES) into a new buffer. */
static uint8_t *snapshot_slurp(int fd, size_t *len, char *why, size_t whylen)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        snapshot_why(why, whylen, "cannot stat the snapshot: %s", strerror(errno));
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        snapshot_why(why, whylen, "snapshot is not a regular file");
        errno = EINVAL;
        return NULL;
    }
    if (st.st_size > (off_t)SNAPSHOT_MAX_BYTES) {
        snapshot_why(why, whylen, "snapshot of %lld bytes is over the %u-byte limit",
                     (long long)st.st_size, SNAPSHOT_MAX_BYTES);
        errno = EINVAL;
        return NULL;
    }
    size_t size = (size_t)st.st_size;
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) {
        snapshot_why(why, whylen, "out of memory reading the snapshot");
        errno = ENOMEM;
        return NULL;
    }
    size_t got = 0;
    while (got < size) {          /* a file that shrank meanwhile is short */
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            snapshot_why(why, whylen, "cannot read the snapshot: %s", strerror(e));
            free(buf);
            errno = e;
            return NULL;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    *len = got;
    return buf;
}

int snapshot_read(const char *path, uint32_t expected_snapshot_version,
                  struct snapshot **out, char *why, size_t whylen)
{
    *out = NULL;
    snapshot_why(why, whylen, "%s", "");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT)
            snapshot_why(why, whylen, "there is no snapshot");
        else
            snapshot_why(why, whylen, "cannot open the snapshot: %s", strerror(e));
        errno = e;
        return -1;
    }
    size_t len = 0;
    uint8_t *buf = snapshot_slurp(fd, &len, why, whylen);
    int e = errno;
    close(fd);
    if (!buf) {
        errno = e;
        return -1;
    }
    struct snapshot *snap = calloc(1, sizeof *snap);
    int rc = -1;
    if (!snap) {
        snapshot_why(why, whylen, "out of memory reading the snapshot");
        errno = ENOMEM;
    } else {
        rc = snapshot_parse(buf, len, expected_snapshot_version, snap, why, whylen);
    }
    e = errno;
    free(buf);
    if (rc < 0) {
        snapshot_free(snap);
        errno = e;
        return -1;
    }
    *out = snap;
    return 0;
}

void snapshot_free(struct snapshot *snap)
{
    if (!snap)
        return;
    for (size_t i = 0; i < snap->n_cmds; i++)
        free(snap->cmds[i].command_id);
    free(snap->cmds);
    free(snap->state);
    free(snap);
}
