/* sup_policy — see sup_policy.h. */
#include "sup_policy.h"

void sup_policy_init(struct sup_policy *p, unsigned intensity, int64_t period_us)
{
    p->intensity = intensity > SUP_POLICY_MAX_INTENSITY ? SUP_POLICY_MAX_INTENSITY : intensity;
    p->period_us = period_us;
    p->n = 0;
}

int sup_policy_allow(struct sup_policy *p, int64_t now_us)
{
    /* keep only restarts inside the window, then add this one */
    size_t kept = 0;
    for (size_t i = 0; i < p->n; i++)
        if (now_us - p->times[i] < p->period_us)
            p->times[kept++] = p->times[i];
    p->n = kept;
    if (p->n == p->intensity + 1) {    /* full: the oldest falls out */
        for (size_t i = 1; i < p->n; i++)
            p->times[i - 1] = p->times[i];
        p->n--;
    }
    p->times[p->n++] = now_us;
    return p->n <= p->intensity;
}
