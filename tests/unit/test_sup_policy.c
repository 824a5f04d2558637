/*
 * test_sup_policy — OTP restart intensity (daemon/sup_policy.c) as a pure
 * function of restart times: the burst that makes the supervisor give up,
 * the edge of the (now - period, now] window, intensity 0, a steady rate just
 * under the limit, the cap on intensity, and the history after a refusal.
 */
#include <criterion/criterion.h>
#include <stdint.h>

#include "sup_policy.h"

#define SEC 1000000LL

TestSuite(sup_policy);

Test(sup_policy, three_in_ten_seconds_allowed_the_fourth_refused)
{
    struct sup_policy p;
    sup_policy_init(&p, 3, 10 * SEC);
    cr_assert_eq(sup_policy_allow(&p, 0 * SEC), 1);
    cr_assert_eq(sup_policy_allow(&p, 1 * SEC), 1);
    cr_assert_eq(sup_policy_allow(&p, 2 * SEC), 1);
    cr_assert_eq(sup_policy_allow(&p, 3 * SEC), 0, "4 restarts within 10 s must give up");
}

Test(sup_policy, the_first_restarts_allowed_at_any_clock_value)
{
    /* The monotonic clock may be large or negative-based: only differences count. */
    const int64_t bases[] = { 0, 1, 123456789LL * SEC, -50 * SEC, INT64_MAX / 2 };
    for (size_t i = 0; i < sizeof bases / sizeof bases[0]; i++) {
        struct sup_policy p;
        sup_policy_init(&p, 2, 5 * SEC);
        int64_t t = bases[i];
        cr_assert_eq(sup_policy_allow(&p, t), 1, "base %lld", (long long)t);
        cr_assert_eq(sup_policy_allow(&p, t + 1), 1, "base %lld", (long long)t);
        cr_assert_eq(sup_policy_allow(&p, t + 2), 0, "base %lld", (long long)t);
    }
}

Test(sup_policy, restarts_exactly_one_period_apart_are_all_allowed)
{
    /* intensity 1: a restart exactly period later no longer counts the old one */
    struct sup_policy p;
    sup_policy_init(&p, 1, 10 * SEC);
    for (int i = 0; i < 100; i++)
        cr_assert_eq(sup_policy_allow(&p, i * 10 * SEC), 1, "restart %d at %d s", i, i * 10);
}

Test(sup_policy, window_edge_exactly_period_drops_the_old_restart)
{
    struct sup_policy p;
    sup_policy_init(&p, 3, 10 * SEC);
    cr_assert_eq(sup_policy_allow(&p, 0), 1);
    cr_assert_eq(sup_policy_allow(&p, 1 * SEC), 1);
    cr_assert_eq(sup_policy_allow(&p, 2 * SEC), 1);
    /* at exactly 10 s the restart at 0 is out of (0, 10]: 3 in the window */
    cr_assert_eq(sup_policy_allow(&p, 10 * SEC), 1);
}

Test(sup_policy, one_microsecond_less_than_period_still_counts)
{
    struct sup_policy p;
    sup_policy_init(&p, 3, 10 * SEC);
    cr_assert_eq(sup_policy_allow(&p, 0), 1);
    cr_assert_eq(sup_policy_allow(&p, 1 * SEC), 1);
    cr_assert_eq(sup_policy_allow(&p, 2 * SEC), 1);
    /* 0 is inside (10 s - 1 µs - 10 s, 10 s - 1 µs]: 4 in the window */
    cr_assert_eq(sup_policy_allow(&p, 10 * SEC - 1), 0);
}

Test(sup_policy, intensity_zero_refuses_the_first_restart)
{
    struct sup_policy p;
    sup_policy_init(&p, 0, 10 * SEC);
    cr_assert_eq(sup_policy_allow(&p, 5 * SEC), 0);
}

Test(sup_policy, steady_rate_just_under_the_limit_never_gives_up)
{
    const unsigned intensities[] = { 1, 3, 5, SUP_POLICY_MAX_INTENSITY };
    for (size_t k = 0; k < sizeof intensities / sizeof intensities[0]; k++) {
        unsigned n = intensities[k];
        int64_t period = 10 * SEC;
        int64_t step = period / n + 1;
        struct sup_policy p;
        sup_policy_init(&p, n, period);
        int64_t t = 1000 * SEC;
        for (int i = 0; i < 10000; i++, t += step)
            cr_assert_eq(sup_policy_allow(&p, t), 1,
                         "intensity %u: restart %d (every %lld µs) refused", n, i,
                         (long long)step);
    }
}

Test(sup_policy, steady_rate_exactly_at_the_limit_gives_up)
{
    /* every period/intensity exactly: the restart period ago is out of the
     * window, so intensity+1 are never inside; one µs faster and they are */
    struct sup_policy p;
    sup_policy_init(&p, 4, 8 * SEC);
    int64_t t = 0;
    for (int i = 0; i < 50; i++, t += 2 * SEC)
        cr_assert_eq(sup_policy_allow(&p, t), 1, "restart %d", i);

    sup_policy_init(&p, 4, 8 * SEC);
    t = 0;
    int i;
    for (i = 0; i < 50; i++, t += 2 * SEC - 1)
        if (!sup_policy_allow(&p, t))
            break;
    cr_assert_eq(i, 4, "a 5th restart within 8 s must be refused (refused at #%d)", i);
}

Test(sup_policy, intensity_is_capped_at_the_maximum)
{
    struct sup_policy p;
    sup_policy_init(&p, SUP_POLICY_MAX_INTENSITY + 100, 10 * SEC);
    cr_assert_eq(p.intensity, SUP_POLICY_MAX_INTENSITY);
    int i;
    for (i = 0; i < SUP_POLICY_MAX_INTENSITY + 10; i++)
        if (!sup_policy_allow(&p, i))
            break;
    cr_assert_eq(i, SUP_POLICY_MAX_INTENSITY, "gave up after %d restarts", i);
}

Test(sup_policy, init_resets_the_history)
{
    struct sup_policy p;
    sup_policy_init(&p, 1, 10 * SEC);
    cr_assert_eq(sup_policy_allow(&p, 0), 1);
    cr_assert_eq(sup_policy_allow(&p, 1), 0);
    sup_policy_init(&p, 1, 10 * SEC);
    cr_assert_eq(sup_policy_allow(&p, 2), 1, "a fresh policy must forget the old restarts");
}

Test(sup_policy, after_a_refusal_a_burst_keeps_refusing_then_a_quiet_period_allows)
{
    struct sup_policy p;
    sup_policy_init(&p, 3, 10 * SEC);
    int64_t t = 0;
    for (int i = 0; i < 3; i++, t += SEC)
        cr_assert_eq(sup_policy_allow(&p, t), 1);
    /* far more refused calls than the history holds: no overflow, all refused */
    for (int i = 0; i < 4 * (SUP_POLICY_MAX_INTENSITY + 1); i++, t += 1000)
        cr_assert_eq(sup_policy_allow(&p, t), 0, "call %d of the burst allowed", i);
    cr_assert_leq(p.n, (size_t)SUP_POLICY_MAX_INTENSITY + 1);
    /* a whole period after the last call, nothing is in the window */
    t += 10 * SEC;
    cr_assert_eq(sup_policy_allow(&p, t), 1);
    cr_assert_eq(sup_policy_allow(&p, t + 1), 1);
    cr_assert_eq(sup_policy_allow(&p, t + 2), 1);
    cr_assert_eq(sup_policy_allow(&p, t + 3), 0);
}

Test(sup_policy, same_history_gives_same_answers)
{
    /* an irregular schedule, run twice on fresh policies */
    int64_t times[200];
    uint32_t x = 12345;
    int64_t t = 0;
    for (size_t i = 0; i < 200; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        t += (int64_t)(x % (6 * SEC));
        times[i] = t;
    }
    struct sup_policy a, b;
    sup_policy_init(&a, 3, 10 * SEC);
    sup_policy_init(&b, 3, 10 * SEC);
    for (size_t i = 0; i < 200; i++)
        cr_assert_eq(sup_policy_allow(&a, times[i]), sup_policy_allow(&b, times[i]),
                     "call %zu", i);
}

/*
 * Every call records a restart at now_us (sup_policy.h: "Records a restart
 * at now_us"; the history holds the most recent restarts), refused ones
 * included: after a burst the window (now - period, now] must count the
 * latest restarts of the burst, not only the oldest ones that fit the ring.
 */
Test(sup_policy, after_a_refusal_the_window_counts_the_latest_restarts)
{
    struct sup_policy p;
    sup_policy_init(&p, 2, 10 * SEC);
    cr_assert_eq(sup_policy_allow(&p, 0 * SEC), 1);
    cr_assert_eq(sup_policy_allow(&p, 1 * SEC), 1);
    cr_assert_eq(sup_policy_allow(&p, 2 * SEC), 0);
    cr_assert_eq(sup_policy_allow(&p, 3 * SEC), 0);
    /* (1 s, 11 s] holds the restarts at 2 s, 3 s and 11 s: 3 > 2 */
    cr_assert_eq(sup_policy_allow(&p, 11 * SEC), 0,
                 "restarts at 2 s and 3 s are within 10 s of 11 s: must give up");
}
