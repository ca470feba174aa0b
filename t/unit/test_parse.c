
/*
 * Unit tests of quota_parse_cost and quota_tenant_valid.
 */


#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ngx_http_quota_pure.h"
#include "unit.h"


static void
test_cost(void)
{
    int       rc;
    char      buf[2048];
    size_t    i;
    int64_t   v;

    static const struct {
        const char  *s;
        int64_t      v;
    } good[] = {
        { "0", 0 },
        { "1", 1 },
        { "007", 7 },
        { "1000", 1000 },
        { "9007199254740991", 9007199254740991LL },
        { "0000000000000001", 1 },
        { "0000000000000000", 0 },
        { "999999999999999", 999999999999999LL },
        { "4503599627370496", 4503599627370496LL },
    };

    static const char  *bad[] = {
        "", "+1", "-1", "-0", "1.5", " 1", "1 ", "1e3", "0x10", "1,000",
        "9007199254740992", "9999999999999999", "00000000000000001",
        "18446744073709551616", "99999999999999999999999999999999",
        "９", "1\n", "a", "/", ":",
    };

    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        v = -5;
        rc = quota_parse_cost(good[i].s, strlen(good[i].s), &v);
        CHECK(rc == 0 && v == good[i].v, "cost \"%s\" = %lld (got %d, %lld)",
              good[i].s, (long long) good[i].v, rc, (long long) v);
    }

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = -5;
        rc = quota_parse_cost(bad[i], strlen(bad[i]), &v);
        CHECK(rc == -1 && v == -5, "cost \"%s\" is rejected, out untouched",
              bad[i]);
    }

    CHECK(quota_parse_cost("1\0", 2, &v) == -1, "cost \"1<NUL>\" rejected");
    CHECK(quota_parse_cost("12", 1, &v) == 0 && v == 1,
          "cost honours len (\"1\" of \"12\")");
    CHECK(quota_parse_cost(NULL, 0, &v) == -1, "cost NULL rejected");

    /* long inputs: no overflow whatever the length */

    memset(buf, '9', sizeof(buf));
    CHECK(quota_parse_cost(buf, sizeof(buf), &v) == -1,
          "2048 nines rejected");

    memset(buf, '0', sizeof(buf));
    CHECK(quota_parse_cost(buf, sizeof(buf), &v) == -1,
          "2048 zeros rejected (more than 16 digits)");
    CHECK(quota_parse_cost(buf, 16, &v) == 0 && v == 0,
          "16 zeros accepted");

    /* every single byte */

    rc = 1;
    for (i = 0; i < 256; i++) {
        char  c = (char) i;
        int   digit = (i >= '0' && i <= '9');

        v = -5;
        if (quota_parse_cost(&c, 1, &v) != (digit ? 0 : -1)
            || (digit && v != (int64_t) (i - '0')))
        {
            printf("#   byte 0x%02zx\n", i);
            rc = 0;
        }
    }
    CHECK(rc, "of the 256 single bytes exactly the digits are costs");
}


static void
test_tenant(void)
{
    int     ok;
    char    buf[300];
    size_t  i;

    static const char  *good[] = {
        "a", "!", "~", "acme-corp", "user@example.com", "a:b|c\"d'e",
        "sk_live_0123456789abcdef", "%7B",
    };

    static const char  *bad[] = {
        "", " ", "a b", "{", "}", "a{b}", "{tenant}", "\t", "a\n", "\x7f",
        "\x80", "caf\xc3\xa9", "a\r\nSET x 1",
    };

    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        CHECK(quota_tenant_valid(good[i], strlen(good[i])) == 1,
              "tenant \"%s\" is valid", good[i]);
    }

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK(quota_tenant_valid(bad[i], strlen(bad[i])) == 0,
              "tenant \"%s\" is invalid", bad[i]);
    }

    CHECK(quota_tenant_valid("a\0", 2) == 0, "tenant \"a<NUL>\" invalid");
    CHECK(quota_tenant_valid("ab{", 2) == 1, "tenant honours len");
    CHECK(quota_tenant_valid(NULL, 0) == 0, "tenant NULL invalid");

    memset(buf, 'x', sizeof(buf));
    CHECK(quota_tenant_valid(buf, 256) == 1, "256-byte tenant is valid");
    CHECK(quota_tenant_valid(buf, 257) == 0, "257-byte tenant is invalid");
    CHECK(quota_tenant_valid(buf, sizeof(buf)) == 0,
          "300-byte tenant is invalid");

    ok = 1;
    for (i = 0; i < 256; i++) {
        char  c = (char) i;
        int   want = (i >= 0x21 && i <= 0x7e && i != '{' && i != '}');

        if (quota_tenant_valid(&c, 1) != want) {
            printf("#   byte 0x%02zx\n", i);
            ok = 0;
        }

        /* and in the middle of an otherwise valid id */

        buf[0] = 'a';
        buf[1] = c;
        buf[2] = 'b';
        if (quota_tenant_valid(buf, 3) != want) {
            printf("#   byte 0x%02zx inside\n", i);
            ok = 0;
        }
    }
    CHECK(ok, "of the 256 bytes exactly 0x21-0x7e but braces are valid");
}


int
main(void)
{
    test_cost();
    test_tenant();

    return unit_done();
}
