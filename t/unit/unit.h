
/*
 * A minimal check harness for the C unit tests: every check prints one
 * "ok - ..." or "not ok - ..." line that t/000-unit.t turns into a TAP
 * test; the exit status is non-zero if any check failed.
 */

#ifndef _QUOTA_UNIT_H_INCLUDED_
#define _QUOTA_UNIT_H_INCLUDED_


#include <stdarg.h>
#include <stdio.h>


static unsigned  unit_checks;
static unsigned  unit_failed;


#define CHECK(cond, ...)                                                      \
    unit_check((cond) != 0, __FILE__, __LINE__, __VA_ARGS__)


static int
unit_check(int ok, const char *file, int line, const char *fmt, ...)
{
    char           msg[1024];
    size_t         i;
    va_list        ap;
    unsigned char  c;

    unit_checks++;

    if (!ok) {
        unit_failed++;
    }

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    /* one line per check: escape what the inputs under test contain */

    printf("%s - ", ok ? "ok" : "not ok");

    for (i = 0; msg[i] != '\0'; i++) {
        c = (unsigned char) msg[i];

        if (c < 0x20 || c > 0x7e || c == '\\') {
            printf("\\x%02x", c);

        } else {
            putchar(c);
        }
    }

    printf("\n");

    if (!ok) {
        printf("#   failed at %s line %d\n", file, line);
    }

    fflush(stdout);

    return ok;
}


static int
unit_done(void)
{
    printf("# %u checks, %u failed\n", unit_checks, unit_failed);

    return (unit_failed == 0 && unit_checks > 0) ? 0 : 1;
}


#endif /* _QUOTA_UNIT_H_INCLUDED_ */
