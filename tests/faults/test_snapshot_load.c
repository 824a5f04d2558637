/*
 * Snapshots, end to end: a wallet of 100,000 events loads from its snapshot
 * (proven by damaging a record the snapshot covers: a full replay would
 * quarantine the stream, a snapshot load never reads it), and a corrupted
 * snapshot falls back to a full replay that ends in the same state.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "layout.h"
#include "wallet.pb-c.h"

#define EVENTS 100000
#define DEPTH 256

static struct daemon d;

static void teardown(void)
{
    daemon_cleanup(&d);
}

TestSuite(snapshot_load, .fini = teardown, .timeout = 240);

static void topups(struct cqrs_client *c, const char *id, long n)
{
    struct topup_request tr;
    topup_request_init(&tr, id, 1);
    long sent = 0, got = 0;
    while (got < n) {
        while (sent < n && sent - got < DEPTH) {
            uint64_t rid;
            cr_assert_eq(cqrs_client_send(c, &tr.req, &rid), 0);
            sent++;
        }
        Cqrs__Reply *r;
        cr_assert_eq(cqrs_client_recv_any(c, &r), 0);
        cr_assert_eq(r->status, CQRS__STATUS__OK, "%s", r->error);
        cqrs__reply__free_unpacked(r, NULL);
        got++;
    }
}

/* STATE of wallet `id`: status, balance, version. */
static Cqrs__Status state(const char *id, int64_t *balance, uint64_t *version)
{
    struct cqrs_client *c = daemon_connect(&d);
    Cqrs__Reply *r;
    cr_assert_eq(cqrs_client_state(c, "wallet", id, &r), 0);
    Cqrs__Status st = r->status;
    if (st == CQRS__STATUS__OK) {
        Wallet__WalletState *w = wallet__wallet_state__unpack(NULL, r->state.len, r->state.data);
        cr_assert_not_null(w);
        *balance = w->balance;
        *version = r->version;
        wallet__wallet_state__free_unpacked(w, NULL);
    }
    cqrs__reply__free_unpacked(r, NULL);
    cqrs_client_free(c);
    return st;
}

static void flip_byte(const char *path, off_t at)
{
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
    uint8_t b;
    cr_assert_eq(pread(fd, &b, 1, at), 1);
    b ^= 0x40;
    cr_assert_eq(pwrite(fd, &b, 1, at), 1);
    close(fd);
}

static void restart(void)
{
    int st = daemon_stop(&d);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "cqrsd did not stop cleanly (0x%x)", st);
    daemon_restart(&d);
}

Test(snapshot_load, hundred_thousand_events_load_from_the_snapshot_and_survive_a_bad_one)
{
    /* a checkpoint every 50 ms, so the stream file, not the journal, is what
     * the next start reads */
    daemon_start_conf(&d, "[storage]\nfsync = never\nsnapshot_every = 1000\ncheckpoint_ms = 50\n"
                          "[child wallet]\n[child account]\n", NULL);
    struct cqrs_client *c = daemon_connect(&d);
    topups(c, "big", EVENTS);
    cqrs_client_free(c);
    harness_sleep_ms(300);

    char type_dir[PATH_MAX], log[PATH_MAX], snap[PATH_MAX];
    snprintf(type_dir, sizeof type_dir, "%s/wallet", d.data);
    layout_stream_file(log, sizeof log, type_dir, "big", ".log");
    layout_stream_file(snap, sizeof snap, type_dir, "big", ".snap");
    struct stat st;
    cr_assert_eq(stat(snap, &st), 0, "no snapshot at %s", snap);
    cr_assert_eq(stat(log, &st), 0);
    off_t log_size = st.st_size;

    /* 1. damage a record in the first half: only a full replay reads it */
    restart();
    flip_byte(log, log_size / 3);
    restart();
    int64_t balance = 0;
    uint64_t version = 0;
    cr_assert_eq(state("big", &balance, &version), CQRS__STATUS__OK,
                 "the stream was replayed from the start: its snapshot was not used");
    cr_assert_eq(balance, EVENTS);
    cr_assert_eq(version, EVENTS);
    flip_byte(log, log_size / 3);   /* mend it */

    /* 2. a corrupted snapshot: ignored, full replay, same state */
    restart();
    cr_assert_eq(stat(snap, &st), 0);
    flip_byte(snap, st.st_size / 2);
    restart();
    cr_assert_eq(state("big", &balance, &version), CQRS__STATUS__OK);
    cr_assert_eq(balance, EVENTS);
    cr_assert_eq(version, EVENTS);
    char *logtext = daemon_log(&d);
    cr_assert_not_null(strstr(logtext, "snapshot ignored"),
                       "no log line says the bad snapshot was ignored");
    free(logtext);

    /* and the stream goes on */
    c = daemon_connect(&d);
    topups(c, "big", 1);
    cqrs_client_free(c);
    cr_assert_eq(state("big", &balance, &version), CQRS__STATUS__OK);
    cr_assert_eq(version, EVENTS + 1);
}
