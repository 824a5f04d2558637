/*
 * sup_policy — OTP's restart intensity as a pure function: a supervisor
 * that sees more than `intensity` restarts within `period` seconds gives up.
 * The history is a ring of the last restart times; no clock is read here.
 */
#ifndef CQRS_SUP_POLICY_H
#define CQRS_SUP_POLICY_H

#include <stddef.h>
#include <stdint.h>

#define SUP_POLICY_MAX_INTENSITY 1000

struct sup_policy {
    unsigned intensity;            /* restarts allowed within period */
    int64_t period_us;
    int64_t times[SUP_POLICY_MAX_INTENSITY + 1];   /* most recent restarts */
    size_t n;
};

/* intensity is capped at SUP_POLICY_MAX_INTENSITY. */
void sup_policy_init(struct sup_policy *p, unsigned intensity, int64_t period_us);

/* Records a restart at `now_us`. Returns 1 if it is allowed, 0 if it makes
 * more than `intensity` restarts within the last `period` (give up). A
 * restart exactly `period` after an older one no longer counts it (OTP's
 * window is (now - period, now]). */
int sup_policy_allow(struct sup_policy *p, int64_t now_us);

#endif
