
/*
 * Unit tests of the quota_fallback circuit breaker and of the arithmetic
 * of local decisions (src/ngx_http_quota_breaker.c).
 */


#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ngx_http_quota_pure.h"
#include "unit.h"


static void
test_open_close(void)
{
    int              i, opened;
    quota_breaker_t  b;

    memset(&b, 0, sizeof(b));

    CHECK(!quota_breaker_is_open(&b), "a new breaker is closed");

    CHECK(quota_breaker_failure(&b, 3) == 0, "failure 1 of 3: closed");
    CHECK(quota_breaker_failure(&b, 3) == 0, "failure 2 of 3: closed");
    CHECK(!quota_breaker_is_open(&b), "still closed after 2 failures");

    CHECK(quota_breaker_success(&b) == 0,
          "a success while closed closes nothing");
    CHECK(b.failures == 0, "a success resets the consecutive failures");

    CHECK(quota_breaker_failure(&b, 3) == 0
          && quota_breaker_failure(&b, 3) == 0,
          "2 failures after a success: closed");
    CHECK(quota_breaker_failure(&b, 3) == 1, "the 3rd consecutive opens it");
    CHECK(quota_breaker_is_open(&b), "open after 3 consecutive failures");
    CHECK(b.opened == 1, "one outage counted");

    opened = 0;

    for (i = 0; i < 10; i++) {
        opened += quota_breaker_failure(&b, 3);
    }

    CHECK(opened == 0, "more failures while open: it opened only once");
    CHECK(b.opened == 1, "still one outage counted");

    CHECK(quota_breaker_success(&b) == 1, "a success closes it, once");
    CHECK(!quota_breaker_is_open(&b), "closed after a success");
    CHECK(quota_breaker_success(&b) == 0,
          "the next success does not 'close' it again (one flush)");
    CHECK(b.failures == 0, "failures reset when it closes");

    CHECK(quota_breaker_failure(&b, 1) == 1, "threshold 1: one failure opens");
    CHECK(b.opened == 2, "a second outage counted");
}


static void
test_probe(void)
{
    quota_breaker_t  b;

    memset(&b, 0, sizeof(b));

    CHECK(quota_breaker_probe_take(&b, 1000, 100) == 1,
          "the first worker takes the probe");
    CHECK(quota_breaker_probe_take(&b, 1050, 100) == 0,
          "another worker cannot while it runs");
    CHECK(quota_breaker_probe_take(&b, 1099, 100) == 0,
          "... up to its deadline");
    CHECK(quota_breaker_probe_take(&b, 1100, 100) == 1,
          "a probe whose worker died is taken over at its deadline");
    CHECK(b.probe == 1200, "held until now + hold");

    quota_breaker_probe_done(&b);

    CHECK(quota_breaker_probe_take(&b, 1101, 100) == 1,
          "after probe_done the next worker takes it at once");
}


static void
test_share(void)
{
    CHECK(quota_fallback_share(-1, 5, 4) == -1, "no limit: unlimited");
    CHECK(quota_fallback_share(100, 20, 4) == 20, "(100 - 20) / 4 = 20");
    CHECK(quota_fallback_share(100, 20, 3) == 26, "(100 - 20) / 3 = 26");
    CHECK(quota_fallback_share(100, 20, 1) == 80, "nodes=1: all remaining");
    CHECK(quota_fallback_share(100, 100, 2) == 0, "exhausted: 0");
    CHECK(quota_fallback_share(100, 150, 2) == 0, "past the limit: 0");
    CHECK(quota_fallback_share(3, 0, 4) == 0, "3 / 4 rounds down to 0");
    CHECK(quota_fallback_share(0, 0, 1) == 0, "limit 0: nothing");
    CHECK(quota_fallback_share(INT64_MAX, 0, 1) == INT64_MAX,
          "huge limit, no overflow");
}


static void
test_enforce(void)
{
    CHECK(quota_enforce_point(-1, 10) == -1, "no limit stays none");
    CHECK(quota_enforce_point(1000, 0) == 1000, "no grace");
    CHECK(quota_enforce_point(1000, 10) == 1100, "10%% grace");
    CHECK(quota_enforce_point(5, 10) == 5, "floor(5 * 1.1) = 5");
    CHECK(quota_enforce_point(10, 15) == 11, "floor(10 * 1.15) = 11");
    CHECK(quota_enforce_point(199, 50) == 298, "floor(199 * 1.5) = 298");
    CHECK(quota_enforce_point(9007199254740991LL, 10)
          == 9007199254740991LL + 900719925474099LL,
          "2^53 - 1 with 10%%: exact");
    CHECK(quota_enforce_point(INT64_MAX, 100) == INT64_MAX, "saturates");
}


int
main(void)
{
    test_open_close();
    test_probe();
    test_share();
    test_enforce();

    return unit_done();
}
