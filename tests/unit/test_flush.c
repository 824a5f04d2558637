/*
 * test_flush — a connection's output written once per turn of the event loop
 * (lib/flush.c), over real non-blocking AF_UNIX socketpairs and a real
 * event_base: output queued before the loop and inside callbacks (a read
 * callback answering its peer, a timer) reaches the peer without the
 * bufferevent ever asking for EV_WRITE; several outputs in one turn; a write
 * far bigger than the socket takes, left to the bufferevent and drained in
 * order; the write callback after a direct write (low watermark honoured) and
 * a bufferevent freed from inside it; outputs unwatched while dirty; and a
 * write to a closed peer reported through the event callback.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/util.h>

#include "flush.h"

static struct event_base *BASE;
static struct flusher *FL;

static void flush_setup(void)
{
    BASE = event_base_new();
    FL = flusher_new();
    cr_assert(BASE && FL);
}

static void flush_teardown(void)
{
    if (FL)
        flusher_free(FL);
    if (BASE)
        event_base_free(BASE);
    FL = NULL;
    BASE = NULL;
}

/* Every test is bounded: a safety loopexit inside, this outside. */
TestSuite(flush, .init = flush_setup, .fini = flush_teardown, .timeout = 60);

/* --- helpers ------------------------------------------------------------- */

static void pair_open(int sv[2])
{
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0, "socketpair: %s", strerror(errno));
    cr_assert_eq(evutil_make_socket_nonblocking(sv[0]), 0);
    cr_assert_eq(evutil_make_socket_nonblocking(sv[1]), 0);
}

/* A bufferevent on fd (closed with it) whose output the flusher watches. */
static struct bufferevent *bev_watched(evutil_socket_t fd, struct flush_out **o)
{
    struct bufferevent *bev = bufferevent_socket_new(BASE, fd, BEV_OPT_CLOSE_ON_FREE);
    cr_assert_not_null(bev);
    *o = flusher_watch(FL, bev);
    cr_assert_not_null(*o);
    return bev;
}

static void bev_close(struct bufferevent *bev, struct flush_out *o)
{
    flusher_unwatch(o);
    bufferevent_free(bev);
}

static int write_enabled(struct bufferevent *bev)
{
    return (bufferevent_get_enabled(bev) & EV_WRITE) != 0;
}

static void out_add(struct bufferevent *bev, const void *p, size_t n)
{
    cr_assert_eq(evbuffer_add(bufferevent_get_output(bev), p, n), 0);
}

static size_t out_len(struct bufferevent *bev)
{
    return evbuffer_get_length(bufferevent_get_output(bev));
}

/* What the peer fd holds right now (non-blocking): the byte count, 0 at EOF,
 * -1 with errno EAGAIN when nothing has arrived. */
static ssize_t peer_take(int fd, void *buf, size_t cap)
{
    size_t got = 0;
    for (;;) {
        ssize_t n = recv(fd, (char *)buf + got, cap - got, 0);
        if (n > 0) {
            got += (size_t)n;
            if (got == cap)
                return (ssize_t)got;
            continue;
        }
        if (n == 0 || got > 0)
            return (ssize_t)got;
        return -1;
    }
}

/* The peer holds exactly `want` now, and nothing more. */
static void peer_expect(int fd, const char *want)
{
    char buf[256];
    size_t n = strlen(want);
    ssize_t got = peer_take(fd, buf, sizeof buf);
    cr_assert_eq(got, (ssize_t)n, "peer got %zd bytes, want %zu (\"%s\")", got, n, want);
    cr_assert_eq(memcmp(buf, want, n), 0, "peer got \"%.*s\", want \"%s\"", (int)got, buf, want);
}

static void peer_expect_nothing_yet(int fd)
{
    char c;
    errno = 0;
    cr_assert_eq(recv(fd, &c, 1, MSG_PEEK), -1, "the peer already has data");
    cr_assert(errno == EAGAIN || errno == EWOULDBLOCK, "recv: %s", strerror(errno));
}

/* The peer's end was freed with nothing written to it. A freed bufferevent
 * closes its fd from a finalizer the loop runs, hence the turn. */
static void peer_expect_eof_empty(int fd)
{
    char c;
    ssize_t n = recv(fd, &c, 1, 0);
    cr_assert(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK), "the peer got data or EOF: %zd", n);
    cr_assert_geq(event_base_loop(BASE, EVLOOP_NONBLOCK), 0);
    cr_assert_eq(recv(fd, &c, 1, 0), 0, "the peer got data or no EOF");
}

/* Runs flusher_loop until something breaks it, at most `secs` seconds (a
 * bound, never a pass condition: the caller checks who ended it). */
static void loop_at_most(int secs)
{
    struct timeval tv = { secs, 0 };
    cr_assert_eq(event_base_loopexit(BASE, &tv), 0);
    cr_assert_eq(flusher_loop(FL, BASE), 0);
}

/* A position-dependent byte: any byte lost, doubled or reordered shows. */
static uint8_t pattern_at(size_t i)
{
    uint32_t x = (uint32_t)i * 2654435761u;
    return (uint8_t)((x >> 24) ^ (uint8_t)(i >> 16));
}

/* --- 1. output queued before the loop ------------------------------------ */

Test(flush, output_queued_before_the_loop_is_written_and_loopexit_ends_it)
{
    int sv[2];
    pair_open(sv);
    struct flush_out *o;
    struct bufferevent *bev = bev_watched(sv[0], &o);
    bufferevent_enable(bev, EV_READ);
    /* a new bufferevent asks for writes by default; watched, it does not */
    cr_assert_not(write_enabled(bev), "watching must turn the bufferevent's EV_WRITE off");

    out_add(bev, "hello", 5);
    peer_expect_nothing_yet(sv[1]);

    struct timeval tv = { 0, 50 * 1000 };
    cr_assert_eq(event_base_loopexit(BASE, &tv), 0);
    cr_assert_eq(flusher_loop(FL, BASE), 0);
    cr_assert(event_base_got_exit(BASE), "flusher_loop returned without being told to");

    peer_expect(sv[1], "hello");
    cr_assert_eq(out_len(bev), 0);
    cr_assert_not(write_enabled(bev));
    bev_close(bev, o);
    close(sv[1]);
}

Test(flush, loop_with_no_events_left_writes_and_returns_zero)
{
    int sv[2];
    pair_open(sv);
    struct flush_out *o;
    struct bufferevent *bev = bev_watched(sv[0], &o);   /* reading not enabled: no events */
    out_add(bev, "last words", 10);
    cr_assert_eq(flusher_loop(FL, BASE), 0);
    peer_expect(sv[1], "last words");
    bev_close(bev, o);
    close(sv[1]);
}

Test(flush, output_holding_data_when_watched_is_written_by_the_next_run)
{
    int sv[2];
    pair_open(sv);
    struct bufferevent *bev = bufferevent_socket_new(BASE, sv[0], BEV_OPT_CLOSE_ON_FREE);
    cr_assert_not_null(bev);
    out_add(bev, "early", 5);   /* before the flusher knows it */
    struct flush_out *o = flusher_watch(FL, bev);
    cr_assert_not_null(o);
    cr_assert_not(write_enabled(bev));
    flusher_run(FL);
    peer_expect(sv[1], "early");
    bev_close(bev, o);
    close(sv[1]);
}

/* --- 2. output added inside callbacks ------------------------------------ */

#define ECHO_ROUNDS 50

struct echo {
    int sv[2];
    struct bufferevent *bev;
    struct event *peer_ev;
    int reads;          /* the bufferevent's read callback */
    int rounds;         /* "pong"s the peer received */
    int write_on_seen;  /* EV_WRITE found enabled while the loop ran */
    int bad;            /* the peer got something other than "pong" */
    int done;
};

static void echo_on_read(struct bufferevent *bev, void *arg)
{
    struct echo *e = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    char buf[4];
    e->reads++;
    while (evbuffer_get_length(in) >= 4) {
        evbuffer_remove(in, buf, 4);
        if (memcmp(buf, "ping", 4) == 0)
            evbuffer_add(bufferevent_get_output(bev), "pong", 4);
    }
    e->write_on_seen |= write_enabled(bev);
}

static void echo_peer_on_read(evutil_socket_t fd, short what, void *arg)
{
    struct echo *e = arg;
    (void)what;
    char buf[4];
    e->write_on_seen |= write_enabled(e->bev);
    ssize_t n = recv(fd, buf, sizeof buf, MSG_PEEK);
    if (n < 4)
        return;   /* the rest comes later */
    recv(fd, buf, 4, 0);
    if (memcmp(buf, "pong", 4) != 0) {
        e->bad = 1;
        event_base_loopbreak(BASE);
        return;
    }
    if (++e->rounds == ECHO_ROUNDS) {
        e->done = 1;
        event_base_loopbreak(BASE);
    } else if (send(fd, "ping", 4, 0) != 4) {
        e->bad = 1;
        event_base_loopbreak(BASE);
    }
}

/* The peer's "ping" is answered from the read callback; each "pong" reaches
 * the peer while the loop runs (only what the flusher wrote between turns
 * can wake the peer's event), and EV_WRITE is never asked for. */
Test(flush, echo_reply_added_in_a_read_callback_reaches_the_peer_without_ev_write)
{
    struct echo e = { 0 };
    struct flush_out *o;
    pair_open(e.sv);
    e.bev = bev_watched(e.sv[0], &o);
    bufferevent_setcb(e.bev, echo_on_read, NULL, NULL, &e);
    bufferevent_enable(e.bev, EV_READ);
    e.peer_ev = event_new(BASE, e.sv[1], EV_READ | EV_PERSIST, echo_peer_on_read, &e);
    cr_assert_not_null(e.peer_ev);
    cr_assert_eq(event_add(e.peer_ev, NULL), 0);
    cr_assert_eq(send(e.sv[1], "ping", 4, 0), 4);

    loop_at_most(10);

    cr_assert_not(e.bad, "the peer got something other than \"pong\"");
    cr_assert(e.done, "the peer got %d of %d replies before the loop was stopped", e.rounds,
              ECHO_ROUNDS);
    cr_assert_eq(e.reads, ECHO_ROUNDS, "read callbacks: %d", e.reads);
    cr_assert_not(e.write_on_seen, "the bufferevent asked for EV_WRITE while the loop ran");
    cr_assert_not(write_enabled(e.bev));
    cr_assert_eq(out_len(e.bev), 0);
    event_free(e.peer_ev);
    bev_close(e.bev, o);
    close(e.sv[1]);
}

/* --- 3. several outputs in one turn --------------------------------------- */

#define NPAIRS 3

struct multi {
    int sv[NPAIRS][2];
    struct bufferevent *bev[NPAIRS];
    struct flush_out *o[NPAIRS];
    struct event *peer_ev[NPAIRS];
    char got[NPAIRS][64];
    size_t gotn[NPAIRS];
    int complete;
    int write_on_seen;
};

static const char *multi_msg(int i)
{
    static const char *msgs[NPAIRS] = { "first reply", "the second, longer reply", "3" };
    return msgs[i];
}

static void multi_on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct multi *m = arg;
    (void)fd;
    (void)what;
    for (int i = 0; i < NPAIRS; i++) {
        evbuffer_add(bufferevent_get_output(m->bev[i]), multi_msg(i), strlen(multi_msg(i)));
        m->write_on_seen |= write_enabled(m->bev[i]);
    }
}

static void multi_peer_on_read(evutil_socket_t fd, short what, void *arg)
{
    struct multi *m = arg;
    (void)what;
    int i = 0;
    while (i < NPAIRS && m->sv[i][1] != fd)
        i++;
    if (i == NPAIRS)
        return;
    ssize_t n = recv(fd, m->got[i] + m->gotn[i], sizeof m->got[i] - m->gotn[i], 0);
    if (n <= 0)
        return;
    m->gotn[i] += (size_t)n;
    if (m->gotn[i] >= strlen(multi_msg(i))) {
        event_del(m->peer_ev[i]);
        if (++m->complete == NPAIRS)
            event_base_loopbreak(BASE);
    }
}

Test(flush, several_outputs_written_in_one_run_all_arrive)
{
    int sv[NPAIRS][2];
    struct bufferevent *bev[NPAIRS];
    struct flush_out *o[NPAIRS];
    for (int i = 0; i < NPAIRS; i++) {
        pair_open(sv[i]);
        bev[i] = bev_watched(sv[i][0], &o[i]);
        out_add(bev[i], multi_msg(i), strlen(multi_msg(i)));
    }
    for (int i = 0; i < NPAIRS; i++)
        peer_expect_nothing_yet(sv[i][1]);
    flusher_run(FL);
    for (int i = 0; i < NPAIRS; i++) {
        peer_expect(sv[i][1], multi_msg(i));
        cr_assert_not(write_enabled(bev[i]));
        bev_close(bev[i], o[i]);
        close(sv[i][1]);
    }
}

Test(flush, several_outputs_added_in_a_timer_callback_all_arrive_while_the_loop_runs)
{
    struct multi m = { 0 };
    for (int i = 0; i < NPAIRS; i++) {
        pair_open(m.sv[i]);
        m.bev[i] = bev_watched(m.sv[i][0], &m.o[i]);
        bufferevent_enable(m.bev[i], EV_READ);
        m.peer_ev[i] = event_new(BASE, m.sv[i][1], EV_READ | EV_PERSIST, multi_peer_on_read, &m);
        cr_assert_not_null(m.peer_ev[i]);
        cr_assert_eq(event_add(m.peer_ev[i], NULL), 0);
    }
    struct event *timer = evtimer_new(BASE, multi_on_timer, &m);
    cr_assert_not_null(timer);
    struct timeval now = { 0, 0 };
    cr_assert_eq(evtimer_add(timer, &now), 0);

    loop_at_most(10);

    cr_assert_eq(m.complete, NPAIRS, "%d of %d peers got their reply while the loop ran",
                 m.complete, NPAIRS);
    cr_assert_not(m.write_on_seen);
    for (int i = 0; i < NPAIRS; i++) {
        size_t n = strlen(multi_msg(i));
        cr_assert_eq(m.gotn[i], n, "peer %d got %zu bytes, want %zu", i, m.gotn[i], n);
        cr_assert_eq(memcmp(m.got[i], multi_msg(i), n), 0, "peer %d got the wrong bytes", i);
        cr_assert_not(write_enabled(m.bev[i]));
        event_free(m.peer_ev[i]);
        bev_close(m.bev[i], m.o[i]);
        close(m.sv[i][1]);
    }
    event_free(timer);
}

/* --- 4. more than the socket takes --------------------------------------- */

#define BIG ((size_t)8 << 20)

struct big {
    int sv[2];
    struct bufferevent *bev;
    struct event *peer_ev;
    uint8_t *got;
    size_t gotn;
    int writecbs;
    size_t out_at_writecb;
    size_t out_when_all_read;
    int writecbs_when_all_read;
    int done;
};

static void big_on_write(struct bufferevent *bev, void *arg)
{
    struct big *b = arg;
    b->writecbs++;
    b->out_at_writecb = out_len(bev);
}

static void big_peer_on_read(evutil_socket_t fd, short what, void *arg)
{
    struct big *b = arg;
    (void)what;
    for (;;) {
        size_t room = BIG + 1 - b->gotn;   /* one more: a surplus byte shows */
        ssize_t n = recv(fd, b->got + b->gotn, room > (256 << 10) ? (256 << 10) : room, 0);
        if (n <= 0)
            break;
        b->gotn += (size_t)n;
    }
    if (b->gotn >= BIG && !b->done) {
        b->done = 1;
        b->out_when_all_read = out_len(b->bev);
        b->writecbs_when_all_read = b->writecbs;
        event_base_loopbreak(BASE);
    }
}

static uint8_t *big_data(void)
{
    uint8_t *p = malloc(BIG);
    cr_assert_not_null(p);
    for (size_t i = 0; i < BIG; i++)
        p[i] = pattern_at(i);
    return p;
}

/* A small send buffer, so that BIG is far above what the socket holds. */
static void small_sndbuf(int fd)
{
    int sz = 64 << 10;
    cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz), 0);
}

Test(flush, big_write_left_to_the_bufferevent_arrives_whole_and_in_order)
{
    struct big b = { 0 };
    struct flush_out *o;
    pair_open(b.sv);
    small_sndbuf(b.sv[0]);
    b.bev = bev_watched(b.sv[0], &o);
    bufferevent_setcb(b.bev, NULL, big_on_write, NULL, &b);
    b.got = malloc(BIG + 1);
    cr_assert_not_null(b.got);
    uint8_t *data = big_data();
    out_add(b.bev, data, BIG);
    free(data);

    flusher_run(FL);
    size_t left = out_len(b.bev);
    cr_assert_gt(left, 0, "the socket took all %zu bytes at once: the test proves nothing", BIG);
    cr_assert_lt(left, BIG, "nothing was written directly");
    cr_assert(write_enabled(b.bev), "what the socket did not take must be left to the bufferevent");
    cr_assert_eq(b.writecbs, 0, "write callback with %zu bytes still queued (low watermark 0)",
                 left);

    b.peer_ev = event_new(BASE, b.sv[1], EV_READ | EV_PERSIST, big_peer_on_read, &b);
    cr_assert_not_null(b.peer_ev);
    cr_assert_eq(event_add(b.peer_ev, NULL), 0);
    loop_at_most(30);

    cr_assert(b.done, "the peer got %zu of %zu bytes before the loop was stopped", b.gotn, BIG);
    cr_assert_eq(b.gotn, BIG, "the peer got %zu bytes, want %zu", b.gotn, BIG);
    for (size_t i = 0; i < BIG; i++)
        if (b.got[i] != pattern_at(i))
            cr_assert_fail("byte %zu is 0x%02x, want 0x%02x", i, b.got[i], pattern_at(i));
    cr_assert_eq(b.out_when_all_read, 0);
    cr_assert_eq(b.writecbs_when_all_read, 1, "write callbacks once drained: %d",
                 b.writecbs_when_all_read);
    cr_assert_eq(b.out_at_writecb, 0);

    /* once drained, the next small write goes out directly and EV_WRITE is off again */
    out_add(b.bev, "tail", 4);
    flusher_run(FL);
    cr_assert_eq(out_len(b.bev), 0);
    cr_assert_not(write_enabled(b.bev), "EV_WRITE still on after the backlog drained");
    peer_expect(b.sv[1], "tail");
    cr_assert_eq(b.writecbs, 2);

    event_free(b.peer_ev);
    bev_close(b.bev, o);
    close(b.sv[1]);
    free(b.got);
}

/* --- 5. the write callback ----------------------------------------------- */

Test(flush, write_callback_runs_when_a_partial_write_leaves_output_under_low_watermark)
{
    struct big b = { 0 };
    struct flush_out *o;
    pair_open(b.sv);
    small_sndbuf(b.sv[0]);
    b.bev = bev_watched(b.sv[0], &o);
    bufferevent_setcb(b.bev, NULL, big_on_write, NULL, &b);
    bufferevent_setwatermark(b.bev, EV_WRITE, BIG, 0);
    uint8_t *data = big_data();
    out_add(b.bev, data, BIG);
    free(data);

    flusher_run(FL);
    cr_assert_eq(b.writecbs, 1, "write callbacks: %d", b.writecbs);
    cr_assert_gt(b.out_at_writecb, 0, "the callback ran with the output already empty");
    cr_assert_leq(b.out_at_writecb, BIG);
    cr_assert(write_enabled(b.bev));

    bev_close(b.bev, o);
    close(b.sv[1]);
}

/* The socket full: the direct write takes nothing, so no write callback,
 * though what is queued is under the low watermark. */
Test(flush, write_callback_does_not_run_when_the_socket_took_nothing)
{
    struct big b = { 0 };
    struct flush_out *o;
    pair_open(b.sv);
    small_sndbuf(b.sv[0]);
    static char junk[4096];
    while (send(b.sv[0], junk, sizeof junk, 0) > 0)
        ;   /* until EAGAIN */
    cr_assert(errno == EAGAIN || errno == EWOULDBLOCK, "send: %s", strerror(errno));
    b.bev = bev_watched(b.sv[0], &o);
    bufferevent_setcb(b.bev, NULL, big_on_write, NULL, &b);
    bufferevent_setwatermark(b.bev, EV_WRITE, 1 << 20, 0);
    out_add(b.bev, "waits", 5);
    flusher_run(FL);
    cr_assert_eq(b.writecbs, 0, "write callback though nothing was written");
    cr_assert_eq(out_len(b.bev), 5);
    cr_assert(write_enabled(b.bev), "what the socket did not take must be left to the bufferevent");
    bev_close(b.bev, o);
    close(b.sv[1]);
}

struct closer {
    struct bufferevent *bev;
    struct flush_out *o;
    int writecbs;
    size_t out_at_writecb;
    struct bufferevent *victim;   /* another one to free from the callback */
    struct flush_out *victim_o;
};

/* Closes its connection once everything queued is written, as a server
 * does after its last reply. */
static void closer_on_write(struct bufferevent *bev, void *arg)
{
    struct closer *c = arg;
    c->writecbs++;
    c->out_at_writecb = out_len(bev);
    if (c->victim) {
        flusher_unwatch(c->victim_o);
        bufferevent_free(c->victim);
        c->victim = NULL;
        c->victim_o = NULL;
    }
    flusher_unwatch(c->o);
    c->o = NULL;
    bufferevent_free(bev);
    c->bev = NULL;
}

Test(flush, write_callback_after_a_direct_write_can_free_its_bufferevent)
{
    int sv[2];
    pair_open(sv);
    struct closer c = { 0 };
    c.bev = bev_watched(sv[0], &c.o);
    bufferevent_setcb(c.bev, NULL, closer_on_write, NULL, &c);
    out_add(c.bev, "bye", 3);

    flusher_run(FL);
    cr_assert_eq(c.writecbs, 1, "write callbacks: %d", c.writecbs);
    cr_assert_eq(c.out_at_writecb, 0);
    cr_assert_null(c.bev);
    peer_expect(sv[1], "bye");
    peer_expect_eof_empty(sv[1]);   /* closed by the callback's free */
    flusher_run(FL);                /* nothing of it is left in the flusher */
    close(sv[1]);
}

struct quitter {
    struct closer c;
    int sv[2];
    struct event *peer_ev;
    char got[16];
    size_t gotn;
    int eof;
};

static void quitter_on_read(struct bufferevent *bev, void *arg)
{
    struct quitter *q = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (evbuffer_get_length(in) < 4)
        return;
    evbuffer_drain(in, 4);
    evbuffer_add(bufferevent_get_output(bev), "bye", 3);
    bufferevent_setcb(bev, NULL, closer_on_write, NULL, &q->c);   /* close once written */
}

static void quitter_peer_on_read(evutil_socket_t fd, short what, void *arg)
{
    struct quitter *q = arg;
    (void)what;
    ssize_t n = recv(fd, q->got + q->gotn, sizeof q->got - q->gotn, 0);
    if (n > 0) {
        q->gotn += (size_t)n;
    } else if (n == 0) {
        q->eof = 1;
        event_del(q->peer_ev);
        event_base_loopbreak(BASE);
    }
}

/* In the loop: a "quit" is answered and the connection closed from the
 * write callback the flusher runs after writing the answer. */
Test(flush, connection_closed_from_its_write_callback_inside_the_loop)
{
    struct quitter q = { 0 };
    pair_open(q.sv);
    q.c.bev = bev_watched(q.sv[0], &q.c.o);
    bufferevent_setcb(q.c.bev, quitter_on_read, NULL, NULL, &q);
    bufferevent_enable(q.c.bev, EV_READ);
    q.peer_ev = event_new(BASE, q.sv[1], EV_READ | EV_PERSIST, quitter_peer_on_read, &q);
    cr_assert_not_null(q.peer_ev);
    cr_assert_eq(event_add(q.peer_ev, NULL), 0);
    cr_assert_eq(send(q.sv[1], "quit", 4, 0), 4);

    loop_at_most(10);

    cr_assert(q.eof, "the connection was not closed while the loop ran");
    cr_assert_eq(q.c.writecbs, 1);
    cr_assert_null(q.c.bev);
    cr_assert_eq(q.gotn, 3);
    cr_assert_eq(memcmp(q.got, "bye", 3), 0);
    event_free(q.peer_ev);
    close(q.sv[1]);
}

/* The last connection of a drain closes from its write callback and ends
 * the loop (event_base_loopbreak), as cqrsd's router does: the loop ends
 * there, not at its exit timer, although the callback ran between turns. */
static void breaker_on_write(struct bufferevent *bev, void *arg)
{
    closer_on_write(bev, arg);
    event_base_loopbreak(BASE);
}

static void breaker_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct closer *c = arg;
    out_add(c->bev, "last", 4);
}

Test(flush, loop_broken_from_a_write_callback_ends_there)
{
    int sv[2];
    pair_open(sv);
    struct closer c = { 0 };
    c.bev = bev_watched(sv[0], &c.o);
    bufferevent_setcb(c.bev, NULL, breaker_on_write, NULL, &c);
    struct event *t = evtimer_new(BASE, breaker_on_timer, &c);
    cr_assert_not_null(t);
    struct timeval now = { 0, 0 };
    cr_assert_eq(evtimer_add(t, &now), 0);

    loop_at_most(30);

    cr_assert(event_base_got_break(BASE), "the break of the write callback was lost");
    cr_assert_not(event_base_got_exit(BASE), "the loop ran until its exit timer");
    cr_assert_eq(c.writecbs, 1);
    char got[8];
    cr_assert_eq(recv(sv[1], got, sizeof got, MSG_DONTWAIT), 4);
    cr_assert_eq(memcmp(got, "last", 4), 0);
    event_free(t);
    close(sv[1]);
}

/* A write callback frees another connection whose output is queued for the
 * same run: that one is skipped, the ones after it still written. */
Test(flush, write_callback_freeing_another_dirty_output_in_the_same_run)
{
    int sv[3][2];
    struct flush_out *o[3];
    struct bufferevent *bev[3];
    for (int i = 0; i < 3; i++) {
        pair_open(sv[i]);
        bev[i] = bev_watched(sv[i][0], &o[i]);
    }
    struct closer c = { .bev = bev[0], .o = o[0], .victim = bev[1], .victim_o = o[1] };
    bufferevent_setcb(bev[0], NULL, closer_on_write, NULL, &c);
    out_add(bev[0], "zero", 4);   /* queued in this order */
    out_add(bev[1], "one", 3);
    out_add(bev[2], "two", 3);

    flusher_run(FL);

    cr_assert_eq(c.writecbs, 1);
    cr_assert_null(c.victim, "the victim was not freed");
    peer_expect(sv[0][1], "zero");
    peer_expect_eof_empty(sv[1][1]);   /* freed before its turn: nothing written */
    peer_expect(sv[2][1], "two");
    bev_close(bev[2], o[2]);
    for (int i = 0; i < 3; i++)
        close(sv[i][1]);
}

/* --- 6. unwatching a dirty output ---------------------------------------- */

Test(flush, unwatched_dirty_output_is_not_touched_by_the_next_run)
{
    int sv[2];
    pair_open(sv);
    struct flush_out *o;
    struct bufferevent *bev = bev_watched(sv[0], &o);
    out_add(bev, "never", 5);
    flusher_unwatch(o);
    bufferevent_free(bev);   /* what was queued goes with it */
    /* its memory and fd are released by a finalizer the loop runs: run it,
     * so that a flusher still holding it reads freed memory */
    cr_assert_geq(event_base_loop(BASE, EVLOOP_NONBLOCK), 0);
    flusher_run(FL);         /* must not reach the freed bufferevent */
    char c;
    cr_assert_eq(recv(sv[1], &c, 1, 0), 0, "the peer got data or no EOF");
    close(sv[1]);
}

Test(flush, unwatching_one_of_several_dirty_outputs_leaves_the_others_written)
{
    int sv[3][2];
    struct flush_out *o[3];
    struct bufferevent *bev[3];
    static const char *msg[3] = { "alpha", "beta", "gamma" };
    for (int i = 0; i < 3; i++) {
        pair_open(sv[i]);
        bev[i] = bev_watched(sv[i][0], &o[i]);
        out_add(bev[i], msg[i], strlen(msg[i]));
    }
    bev_close(bev[1], o[1]);   /* the middle one */
    cr_assert_geq(event_base_loop(BASE, EVLOOP_NONBLOCK), 0);   /* really freed */
    flusher_run(FL);
    char c;
    peer_expect(sv[0][1], "alpha");
    cr_assert_eq(recv(sv[1][1], &c, 1, 0), 0, "the unwatched one's peer got data or no EOF");
    peer_expect(sv[2][1], "gamma");

    /* the list is still whole: later runs write the survivors again */
    out_add(bev[2], "delta", 5);
    out_add(bev[0], "omega", 5);
    flusher_run(FL);
    peer_expect(sv[0][1], "omega");
    peer_expect(sv[2][1], "delta");
    bev_close(bev[0], o[0]);
    bev_close(bev[2], o[2]);
    for (int i = 0; i < 3; i++)
        close(sv[i][1]);
}

Test(flush, unwatched_output_is_no_longer_written_by_the_flusher)
{
    int sv[2];
    pair_open(sv);
    struct flush_out *o;
    struct bufferevent *bev = bev_watched(sv[0], &o);
    flusher_unwatch(o);
    out_add(bev, "own", 3);   /* no longer noticed by the flusher */
    flusher_run(FL);
    peer_expect_nothing_yet(sv[1]);
    bufferevent_free(bev);
    close(sv[1]);
}

/* --- 7. write errors ------------------------------------------------------ */

struct failing {
    struct bufferevent *bev;
    int events;
    short what;
};

static void failing_on_event(struct bufferevent *bev, short what, void *arg)
{
    struct failing *fa = arg;
    (void)bev;
    fa->events++;
    fa->what = what;
    event_base_loopbreak(BASE);
}

Test(flush, write_to_a_closed_peer_is_reported_through_the_event_callback)
{
    signal(SIGPIPE, SIG_IGN);
    int sv[2];
    pair_open(sv);
    struct failing fa = { 0 };
    struct flush_out *o;
    fa.bev = bev_watched(sv[0], &o);
    bufferevent_setcb(fa.bev, NULL, NULL, failing_on_event, &fa);
    close(sv[1]);
    out_add(fa.bev, "into the void", 13);

    flusher_run(FL);
    cr_assert_eq(fa.events, 0, "reported before the loop ran");
    cr_assert(write_enabled(fa.bev), "the error must be left to the bufferevent");

    loop_at_most(10);

    cr_assert_eq(fa.events, 1, "event callbacks: %d", fa.events);
    cr_assert(fa.what & BEV_EVENT_WRITING, "what = 0x%x", fa.what);
    cr_assert(fa.what & (BEV_EVENT_ERROR | BEV_EVENT_EOF), "what = 0x%x", fa.what);
    bev_close(fa.bev, o);
}

Test(flush, write_to_a_closed_peer_inside_the_loop_is_reported)
{
    signal(SIGPIPE, SIG_IGN);
    int sv[2];
    pair_open(sv);
    struct failing fa = { 0 };
    struct flush_out *o;
    fa.bev = bev_watched(sv[0], &o);
    bufferevent_setcb(fa.bev, NULL, NULL, failing_on_event, &fa);
    out_add(fa.bev, "before", 6);
    close(sv[1]);

    loop_at_most(10);

    cr_assert_eq(fa.events, 1, "event callbacks: %d", fa.events);
    cr_assert(fa.what & BEV_EVENT_WRITING, "what = 0x%x", fa.what);
    cr_assert(fa.what & (BEV_EVENT_ERROR | BEV_EVENT_EOF), "what = 0x%x", fa.what);
    bev_close(fa.bev, o);
}

/* --- 8. at exit --------------------------------------------------------- */

struct drain {
    int fd;
    uint8_t *got;
    size_t n;
};

static void *drain_run(void *arg)
{
    struct drain *dr = arg;
    int flags = fcntl(dr->fd, F_GETFL);
    fcntl(dr->fd, F_SETFL, flags & ~O_NONBLOCK);
    ssize_t r;
    while (dr->n < BIG && (r = read(dr->fd, dr->got + dr->n, BIG - dr->n)) > 0)
        dr->n += (size_t)r;
    return NULL;
}

/* What the socket did not take when the loop ended goes out, whole and in
 * order, waiting for the peer: the last replies of a stopping worker. */
Test(flush, finish_writes_what_is_left_waiting_for_the_peer)
{
    int sv[2];
    pair_open(sv);
    small_sndbuf(sv[0]);
    struct flush_out *o;
    struct bufferevent *bev = bev_watched(sv[0], &o);
    uint8_t *data = big_data();
    out_add(bev, data, BIG);
    free(data);
    flusher_run(FL);
    cr_assert_gt(out_len(bev), 0, "the socket took all %zu bytes at once: the test proves nothing",
                 BIG);

    struct drain dr = { .fd = sv[1], .got = malloc(BIG) };
    cr_assert_not_null(dr.got);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, drain_run, &dr), 0);
    cr_assert_eq(flusher_finish(o), 0, "flusher_finish: %s", strerror(errno));
    cr_assert_eq(out_len(bev), 0);
    pthread_join(t, NULL);
    cr_assert_eq(dr.n, BIG, "the peer got %zu of %zu bytes", dr.n, BIG);
    for (size_t i = 0; i < BIG; i++)
        if (dr.got[i] != pattern_at(i))
            cr_assert_fail("byte %zu is 0x%02x, want 0x%02x", i, dr.got[i], pattern_at(i));
    cr_assert_eq(flusher_finish(o), 0, "nothing left: still 0");
    free(dr.got);
    bev_close(bev, o);
    close(sv[1]);
}
