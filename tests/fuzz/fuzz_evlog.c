/*
 * fuzz_evlog — opening (recovering) an event log file (lib/evlog.c) of
 * arbitrary bytes, replayed into a wallet as a worker does (decode each
 * event with the wallet type's descriptors, evolve the state).
 *
 * Input:
 *   byte 0      mode: bit 0 = the file starts with the "CQRSLOG1" magic,
 *               then the rest (else the rest alone); bit 1 = EVLOG_ANY_VERSIONS;
 *               bit 2 = the harness rewrites the checksum of each record
 *               that fits (from byte 8, while lengths chain), so mutated
 *               payloads still reach decoding and the wallet
 *   bytes 1-2   start offset for evlog_open_at (big-endian, taken modulo
 *               the file's size + 9, so it falls inside and outside)
 *   byte 3      start version for evlog_open_at
 *   the rest    file content
 *
 * Properties, per evlog.h:
 *  - evlog_open and evlog_open_at return 0, -1 or EVLOG_CORRUPT;
 *  - a read-only open changes nothing and agrees with the read-write open
 *    (same result, records and torn bytes);
 *  - after 0 the file's size is evlog_size: the torn tail is cut, and kept
 *    byte for byte in the one <path>.torn-* file; what stays is the
 *    original prefix; a file shorter than the magic becomes the magic;
 *  - after EVLOG_CORRUPT the file is left as it is, with a detail;
 *  - replay visits records back to back from the start, with consecutive
 *    versions unless EVLOG_ANY_VERSIONS, and evlog_read finds them again;
 *  - after 0, one more record appended opens cleanly as one more record;
 *  - a replayed wallet state packs, unpacks and packs to the same bytes;
 *  - a start outside the file is EVLOG_CORRUPT.
 *
 * Files live in one mkdtemp directory per process (under $TMPDIR), one log
 * path reused for every input; the directory is emptied between opens.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "aggregate.h"
#include "crc32c.h"
#include "evlog.h"
#include "frame.h"
#include "fuzz_util.h"
#include "types.h"

static char DIR_[4096];
static char PATH[4200];

static void dir_empty(int and_remove)
{
    DIR *d = opendir(DIR_);
    if (!d)
        return;
    struct dirent *e;
    char p[8400];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof p, "%s/%s", DIR_, e->d_name);
        unlink(p);
    }
    closedir(d);
    if (and_remove)
        rmdir(DIR_);
}

static void dir_remove(void)
{
    dir_empty(1);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *tmp = getenv("TMPDIR");
    snprintf(DIR_, sizeof DIR_, "%s/fuzz_evlog.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(DIR_)) {
        perror("fuzz_evlog: mkdtemp");
        exit(1);
    }
    snprintf(PATH, sizeof PATH, "%s/log", DIR_);
    atexit(dir_remove);
    return 0;
}

static void write_file(const uint8_t *p, size_t len)
{
    int fd = open(PATH, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    FUZZ_CHECK(fd >= 0, "open %s: %s", PATH, strerror(errno));
    FUZZ_CHECK(len == 0 || write(fd, p, len) == (ssize_t)len, "write: %s", strerror(errno));
    close(fd);
}

/* The whole content of `path` (malloc'd; *len its size). */
static uint8_t *read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    FUZZ_CHECK(fd >= 0, "open %s: %s", path, strerror(errno));
    struct stat st;
    FUZZ_CHECK(fstat(fd, &st) == 0, "fstat");
    *len = (size_t)st.st_size;
    uint8_t *p = malloc(*len ? *len : 1);
    FUZZ_CHECK(p != NULL, "malloc");
    FUZZ_CHECK(*len == 0 || read(fd, p, *len) == (ssize_t)*len, "read %s", path);
    close(fd);
    return p;
}

static int file_is(const uint8_t *want, size_t len)
{
    size_t n;
    uint8_t *p = read_file(PATH, &n);
    int same = n == len && (len == 0 || memcmp(p, want, len) == 0);
    free(p);
    return same;
}

/* The number of <PATH>.torn-* files; the content of the last in *torn. */
static int torn_files(uint8_t **torn, size_t *len)
{
    DIR *d = opendir(DIR_);
    FUZZ_CHECK(d != NULL, "opendir");
    struct dirent *e;
    int n = 0;
    *torn = NULL;
    *len = 0;
    char p[8400];
    while ((e = readdir(d)) != NULL)
        if (strncmp(e->d_name, "log.torn-", 9) == 0) {
            n++;
            free(*torn);
            snprintf(p, sizeof p, "%s/%s", DIR_, e->d_name);
            *torn = read_file(p, len);
        }
    closedir(d);
    return n;
}

#define MAX_SEEN 32

struct replay {
    const struct aggregate_type *type;
    void *state;
    int check_versions;
    int evolve;                   /* apply the events (not from a start offset: no snapshot state) */
    uint64_t next_version;        /* expected version of the next record */
    off_t next_offset;            /* where the next record must start */
    size_t file_size;
    uint64_t calls;
    int refused;                  /* replay_fn returned non-zero (the open returns that) */
    struct { off_t offset; size_t size; uint64_t version; } seen[MAX_SEEN];
    size_t n_seen;
};

static void replay_init(struct replay *r, off_t start, uint64_t start_version, int check_versions,
                        size_t file_size)
{
    int evolve = start == EVLOG_MAGIC_LEN && start_version == 0;
    memset(r, 0, sizeof *r);
    r->type = aggregate_lookup("wallet");
    FUZZ_CHECK(r->type != NULL, "no wallet type");
    r->state = r->type->state_new();
    FUZZ_CHECK(r->state != NULL, "state_new");
    r->check_versions = check_versions;
    r->evolve = evolve;
    r->next_version = start_version + 1;
    r->next_offset = start;
    r->file_size = file_size;
}

/* As worker/stream.c replays: an unknown or undecodable event, or one the
 * state refuses, is corruption. From a start offset the state before it
 * (a snapshot's) is unknown: events are decoded, not applied. */
static int replay_fn(void *arg, const Cqrs__EventRecord *rec, off_t offset, size_t size)
{
    struct replay *r = arg;
    FUZZ_CHECK(offset == r->next_offset, "record at %lld, the previous ended at %lld",
               (long long)offset, (long long)r->next_offset);
    FUZZ_CHECK(size > EVLOG_HEADER_LEN && (size_t)offset + size <= r->file_size,
               "record of %zu bytes at %lld in a file of %zu", size, (long long)offset,
               r->file_size);
    if (r->check_versions)
        FUZZ_CHECK(rec->version == r->next_version, "version %llu, expected %llu",
                   (unsigned long long)rec->version, (unsigned long long)r->next_version);
    if (r->n_seen < MAX_SEEN) {
        r->seen[r->n_seen].offset = offset;
        r->seen[r->n_seen].size = size;
        r->seen[r->n_seen].version = rec->version;
        r->n_seen++;
    }
    r->next_version++;
    r->next_offset = offset + (off_t)size;
    r->calls++;

    const ProtobufCMessageDescriptor *d = agg_find_desc(r->type->events, rec->type);
    ProtobufCMessage *ev = d ? protobuf_c_message_unpack(d, NULL, rec->data.len, rec->data.data)
                             : NULL;
    if (!ev) {
        r->refused = 1;
        return EVLOG_CORRUPT;
    }
    if (!r->evolve) {
        protobuf_c_message_free_unpacked(ev, NULL);
        return 0;
    }
    errno = 0;
    int rc = r->type->evolve(r->state, ev);
    int e = errno;
    protobuf_c_message_free_unpacked(ev, NULL);
    if (rc < 0) {
        r->refused = 1;
        return e == ENOMEM ? -1 : EVLOG_CORRUPT;
    }
    return 0;
}

/* state_pack(state_unpack(state_pack(s))) == state_pack(s) (aggregate.h). */
static void replay_check_state(struct replay *r)
{
    uint8_t scratch_a[64], scratch_b[64];
    ProtobufCBufferSimple a = PROTOBUF_C_BUFFER_SIMPLE_INIT(scratch_a);
    r->type->state_pack(r->state, &a.base);
    void *back = r->type->state_unpack(a.data, a.len);
    FUZZ_CHECK(back != NULL, "a replayed state does not unpack (errno %d)", errno);
    ProtobufCBufferSimple b = PROTOBUF_C_BUFFER_SIMPLE_INIT(scratch_b);
    r->type->state_pack(back, &b.base);
    FUZZ_CHECK(a.len == b.len && memcmp(a.data, b.data, a.len) == 0,
               "state_pack(state_unpack(state_pack(s))) != state_pack(s)");
    r->type->state_free(back);
    PROTOBUF_C_BUFFER_SIMPLE_CLEAR(&a);
    PROTOBUF_C_BUFFER_SIMPLE_CLEAR(&b);
}

static void replay_done(struct replay *r)
{
    r->type->state_free(r->state);
}

static void check_rc(int rc, const char *what)
{
    FUZZ_CHECK(rc == 0 || rc == -1 || rc == EVLOG_CORRUPT, "%s returned %d", what, rc);
}

/* evlog's own EVLOG_CORRUPT says what and where; one passed on from the
 * replay callback carries the callback's own detail (worker/stream.c). */
static void check_detail(const struct evlog_open_info *info, const struct replay *r)
{
    if (r->refused)
        return;
    size_t n = strnlen(info->detail, sizeof info->detail);
    FUZZ_CHECK(n > 0 && n < sizeof info->detail, "EVLOG_CORRUPT without a detail");
}

/* After a read-write open returned 0 on a file that held `orig`. */
static void check_opened(struct evlog *log, const struct evlog_open_info *info,
                         const uint8_t *orig, size_t orig_size, off_t start)
{
    off_t size = evlog_size(log);
    struct stat st;
    FUZZ_CHECK(stat(PATH, &st) == 0, "stat");
    FUZZ_CHECK(st.st_size == size, "file of %lld bytes, evlog_size %lld",
               (long long)st.st_size, (long long)size);
    uint8_t *torn;
    size_t torn_len;
    int n_torn = torn_files(&torn, &torn_len);
    if (orig_size < EVLOG_MAGIC_LEN) {
        FUZZ_CHECK(size == EVLOG_MAGIC_LEN && file_is((const uint8_t *)EVLOG_MAGIC, EVLOG_MAGIC_LEN),
                   "a %zu-byte file did not become the bare magic", orig_size);
        FUZZ_CHECK(info->truncated_bytes == 0 && n_torn == 0, "a torn tail in a new file");
    } else {
        FUZZ_CHECK(size >= start && (size_t)size <= orig_size, "size %lld", (long long)size);
        FUZZ_CHECK((off_t)orig_size == size + info->truncated_bytes,
                   "%zu bytes were %lld kept + %lld cut", orig_size, (long long)size,
                   (long long)info->truncated_bytes);
        FUZZ_CHECK(file_is(orig, (size_t)size), "what stays is not the original prefix");
        if (info->truncated_bytes > 0) {
            FUZZ_CHECK(n_torn == 1, "%d torn files for one cut", n_torn);
            FUZZ_CHECK(torn_len == (size_t)info->truncated_bytes &&
                       memcmp(torn, orig + size, torn_len) == 0,
                       "the torn file does not hold the bytes cut");
        } else {
            FUZZ_CHECK(n_torn == 0, "a torn file without a cut");
        }
    }
    free(torn);
}

/* Every replayed record (the first MAX_SEEN) reads back with evlog_read. */
static void check_reads(struct evlog *log, const struct replay *r)
{
    for (size_t i = 0; i < r->n_seen; i++) {
        Cqrs__EventRecord *rec;
        int rc = evlog_read(log, r->seen[i].offset, r->seen[i].size, NULL, &rec);
        FUZZ_CHECK(rc == 0, "evlog_read of a replayed record: %s", strerror(errno));
        FUZZ_CHECK(rec->version == r->seen[i].version, "evlog_read: another version");
        cqrs__event_record__free_unpacked(rec, NULL);
    }
}

/* One record more, appended to a log that opened cleanly, opens as one
 * record more. */
static void check_append(struct evlog *log, const struct evlog_open_info *info, int flags)
{
    off_t before = evlog_size(log);
    Cqrs__EventRecord rec = CQRS__EVENT_RECORD__INIT;
    rec.version = info->records + 1;
    rec.type = "WalletRenamed";
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    ssize_t n = evlog_encode(&rec, &buf, &len, &cap);
    FUZZ_CHECK(n > 0 && (size_t)n == len, "evlog_encode");
    FUZZ_CHECK(evlog_append(log, buf, len, 0) == 0, "evlog_append: %s", strerror(errno));
    FUZZ_CHECK(evlog_size(log) == before + n, "evlog_size after append");
    free(buf);
    evlog_free(log);

    struct evlog *again;
    struct evlog_open_info info2;
    int rc = evlog_open_at(PATH, flags, EVLOG_MAGIC_LEN, 0, NULL, NULL, &again, &info2);
    FUZZ_CHECK(rc == 0, "reopen after an append: %d (%s)", rc, info2.detail);
    FUZZ_CHECK(evlog_size(again) == before + n && info2.truncated_bytes == 0 &&
               info2.records == info->records + 1,
               "reopen after an append: size %lld, cut %lld, %llu records", (long long)evlog_size(again),
               (long long)info2.truncated_bytes, (unsigned long long)info2.records);
    evlog_free(again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    uint8_t mode = data[0];
    int flags = (mode & 2) ? EVLOG_ANY_VERSIONS : 0;
    int check_versions = !(flags & EVLOG_ANY_VERSIONS);
    uint16_t start_raw = (uint16_t)(data[1] << 8 | data[2]);
    uint64_t start_version = data[3];
    size_t body_len = size - 4;
    size_t orig_size = body_len + ((mode & 1) ? EVLOG_MAGIC_LEN : 0);
    uint8_t *orig = malloc(orig_size ? orig_size : 1);
    FUZZ_CHECK(orig != NULL, "malloc");
    if (mode & 1)
        memcpy(orig, EVLOG_MAGIC, EVLOG_MAGIC_LEN);
    if (body_len)
        memcpy(orig + orig_size - body_len, data + 4, body_len);
    if (mode & 4) {
        size_t pos = EVLOG_MAGIC_LEN;
        while (pos <= orig_size && orig_size - pos >= EVLOG_HEADER_LEN) {
            uint32_t len = frame_get32(orig + pos);
            if (len == 0 || len > orig_size - pos - EVLOG_HEADER_LEN)
                break;
            frame_set32(orig + pos + 4, crc32c(0, orig + pos + EVLOG_HEADER_LEN, len));
            pos += EVLOG_HEADER_LEN + len;
        }
    }

    /* 1. read-only: changes nothing */
    dir_empty(0);
    write_file(orig, orig_size);
    struct replay ro_r;
    replay_init(&ro_r, EVLOG_MAGIC_LEN, 0, check_versions, orig_size);
    struct evlog *log;
    struct evlog_open_info ro_info;
    int ro_rc = evlog_open(PATH, flags | EVLOG_READONLY, replay_fn, &ro_r, &log, &ro_info);
    check_rc(ro_rc, "evlog_open (read-only)");
    FUZZ_CHECK(file_is(orig, orig_size), "a read-only open changed the file");
    uint8_t *torn;
    size_t torn_len;
    FUZZ_CHECK(torn_files(&torn, &torn_len) == 0, "a read-only open wrote a torn file");
    if (ro_rc == 0) {
        FUZZ_CHECK(log != NULL, "0 without a log");
        off_t want = orig_size < EVLOG_MAGIC_LEN ? EVLOG_MAGIC_LEN
                                                 : (off_t)orig_size - ro_info.truncated_bytes;
        FUZZ_CHECK(evlog_size(log) == want, "read-only evlog_size %lld, expected %lld",
                   (long long)evlog_size(log), (long long)want);
        check_reads(log, &ro_r);
        evlog_free(log);
    } else {
        FUZZ_CHECK(log == NULL, "a failed open left a log");
        if (ro_rc == EVLOG_CORRUPT)
            check_detail(&ro_info, &ro_r);
    }
    replay_done(&ro_r);

    /* 2. read-write: the real recovery */
    struct replay rw_r;
    replay_init(&rw_r, EVLOG_MAGIC_LEN, 0, check_versions, orig_size);
    struct evlog_open_info info;
    int rc = evlog_open(PATH, flags, replay_fn, &rw_r, &log, &info);
    check_rc(rc, "evlog_open");
    if (rc != -1 && ro_rc != -1) {
        FUZZ_CHECK(rc == ro_rc, "read-only %d, read-write %d", ro_rc, rc);
        FUZZ_CHECK(info.records == ro_info.records &&
                   info.truncated_bytes == ro_info.truncated_bytes,
                   "read-only and read-write opens disagree on records or torn bytes");
    }
    if (rc == 0) {
        FUZZ_CHECK(info.records == rw_r.calls, "%llu records, %llu replayed",
                   (unsigned long long)info.records, (unsigned long long)rw_r.calls);
        check_opened(log, &info, orig, orig_size, EVLOG_MAGIC_LEN);
        check_reads(log, &rw_r);
        replay_check_state(&rw_r);
        check_append(log, &info, flags);
    } else {
        FUZZ_CHECK(log == NULL, "a failed open left a log");
        if (rc == EVLOG_CORRUPT) {
            check_detail(&info, &rw_r);
            FUZZ_CHECK(file_is(orig, orig_size), "a corrupt log was modified");
            FUZZ_CHECK(torn_files(&torn, &torn_len) == 0, "a corrupt log got a torn file");
        }
    }
    replay_done(&rw_r);

    /* 3. from a start offset, as after a snapshot */
    dir_empty(0);
    write_file(orig, orig_size);
    off_t start = (off_t)(start_raw % (orig_size + 9));
    struct replay at_r;
    replay_init(&at_r, start, start_version, check_versions, orig_size);
    rc = evlog_open_at(PATH, flags, start, start_version, replay_fn, &at_r, &log, &info);
    check_rc(rc, "evlog_open_at");
    /* "A start outside the file is EVLOG_CORRUPT"; a file shorter than the
     * magic is an empty stream (the bare magic): its only start is byte 8. */
    size_t file_end = orig_size < EVLOG_MAGIC_LEN ? EVLOG_MAGIC_LEN : orig_size;
    if (start < EVLOG_MAGIC_LEN || (size_t)start > file_end)
        FUZZ_CHECK(rc != 0, "a start at byte %lld of a %zu-byte file opened", (long long)start,
                   orig_size);
    if (rc == 0) {
        if (orig_size >= EVLOG_MAGIC_LEN)
            FUZZ_CHECK(info.records == start_version + at_r.calls,
                       "%llu records from version %llu, %llu replayed",
                       (unsigned long long)info.records, (unsigned long long)start_version,
                       (unsigned long long)at_r.calls);
        check_opened(log, &info, orig, orig_size, orig_size < EVLOG_MAGIC_LEN ? 0 : start);
        check_reads(log, &at_r);
        evlog_free(log);
    } else {
        FUZZ_CHECK(log == NULL, "a failed open left a log");
        if (rc == EVLOG_CORRUPT) {
            check_detail(&info, &at_r);
            FUZZ_CHECK(file_is(orig, orig_size), "a corrupt log was modified");
        }
    }
    replay_done(&at_r);
    free(orig);
    return 0;
}
