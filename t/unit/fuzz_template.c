
/*
 * Fuzzes quota_tpl_parse, quota_tpl_match and quota_tpl_compare.
 *
 * The input is "TEMPLATE\nPATH".  Checked: parsed segments are
 * well-formed and point into the input, matching agrees with a
 * reference that first splits the whole path, a path built from the
 * template always matches it, and compare is antisymmetric.
 */


#include <stdint.h>
#include <string.h>

#include "ngx_http_quota_pure.h"
#include "fuzz.h"


#define REF_MAX_SEGS  4096


static int
name_ok(const char *p, size_t len)
{
    size_t  i;

    if (len == 0) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (!((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z')
              || (p[i] >= '0' && p[i] <= '9') || p[i] == '_'))
        {
            return 0;
        }
    }

    return 1;
}


/* -1 if the path has too many segments for the reference */

static int
ref_match(const quota_tpl_seg_t *segs, size_t n, const char *path,
    size_t len)
{
    size_t       ns, i, start[REF_MAX_SEGS], slen[REF_MAX_SEGS];
    const char  *p;

    ns = 0;

    for (i = 0; i < len; ) {
        if (path[i] == '/') {
            i++;
            continue;
        }

        if (ns == REF_MAX_SEGS) {
            return -1;
        }

        start[ns] = i;
        while (i < len && path[i] != '/') {
            i++;
        }
        slen[ns] = i - start[ns];
        ns++;
    }

    for (i = 0; i < n; i++) {
        if (segs[i].type == QUOTA_SEG_REST) {
            return 1;
        }

        if (i >= ns) {
            return 0;
        }

        p = path + start[i];

        if (segs[i].type == QUOTA_SEG_LITERAL
            && (slen[i] != segs[i].len
                || memcmp(p, segs[i].data, slen[i]) != 0))
        {
            return 0;
        }
    }

    return ns == n;
}


static int
sign(int v)
{
    return (v > 0) - (v < 0);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int               rc, rc2, ref;
    char              built[8192];
    size_t            tlen, plen, n, n2, i, k, max, blen;
    const char       *s, *path, *nl, *err;
    quota_tpl_seg_t   segs[QUOTA_TPL_MAX_SEGMENTS];
    quota_tpl_seg_t   segs2[QUOTA_TPL_MAX_SEGMENTS];

    s = (const char *) data;
    nl = memchr(s, '\n', size);

    tlen = nl ? (size_t) (nl - s) : size;
    path = nl ? nl + 1 : s + size;
    plen = size - (size_t) (path - s);

    /* a small maximum now and then reaches "too many segments" */

    max = (size % 7 == 0) ? size % 5 : QUOTA_TPL_MAX_SEGMENTS;

    err = NULL;
    n = 12345;
    rc = quota_tpl_parse(s, tlen, segs, max, &n, &err);

    FUZZ_ASSERT(rc == 0 || rc == -1);

    if (rc == -1) {
        FUZZ_ASSERT(err != NULL && err[0] != '\0');
        return 0;
    }

    FUZZ_ASSERT(n <= max);
    FUZZ_ASSERT(tlen > 0 && s[0] == '/');

    for (i = 0; i < n; i++) {
        FUZZ_ASSERT(segs[i].data >= s && segs[i].len > 0
                    && segs[i].data + segs[i].len <= s + tlen);
        FUZZ_ASSERT(memchr(segs[i].data, '/', segs[i].len) == NULL);

        switch (segs[i].type) {

        case QUOTA_SEG_REST:
            FUZZ_ASSERT(i + 1 == n);
            FUZZ_ASSERT(segs[i].len == 2);
            break;

        case QUOTA_SEG_PARAM:
            FUZZ_ASSERT(name_ok(segs[i].data, segs[i].len));
            break;

        case QUOTA_SEG_LITERAL:
            FUZZ_ASSERT(segs[i].data[0] != ':');
            for (k = 0; k < segs[i].len; k++) {
                FUZZ_ASSERT(segs[i].data[k] != '{'
                            && segs[i].data[k] != '}'
                            && segs[i].data[k] != '*');
            }
            break;

        default:
            FUZZ_ASSERT(0);
        }
    }

    rc = quota_tpl_match(segs, n, path, plen);
    ref = ref_match(segs, n, path, plen);

    FUZZ_ASSERT(rc == 0 || rc == 1);
    FUZZ_ASSERT(ref == -1 || rc == ref);

    /* a path made from the template itself must match it */

    if (tlen < sizeof(built) / 2) {
        blen = 0;

        for (i = 0; i < n; i++) {
            built[blen++] = '/';

            if (segs[i].type == QUOTA_SEG_LITERAL) {
                memcpy(built + blen, segs[i].data, segs[i].len);
                blen += segs[i].len;

            } else if (segs[i].type == QUOTA_SEG_PARAM) {
                built[blen++] = (char) ('0' + size % 10);

            } else if (size & 1) {
                memcpy(built + blen, "r//s/", 5);
                blen += 5;
            }
        }

        FUZZ_ASSERT(quota_tpl_match(segs, n, built, blen) == 1);
        FUZZ_ASSERT(quota_tpl_match(segs, n, "/", 1) == (n == 0
                    || (n == 1 && segs[0].type == QUOTA_SEG_REST)));
    }

    /* the path as a second template: compare must be antisymmetric */

    err = NULL;
    rc2 = quota_tpl_parse(path, plen, segs2, QUOTA_TPL_MAX_SEGMENTS, &n2,
                          &err);

    if (rc2 == 0) {
        FUZZ_ASSERT(sign(quota_tpl_compare(segs, n, segs2, n2))
                    == -sign(quota_tpl_compare(segs2, n2, segs, n)));
        FUZZ_ASSERT(quota_tpl_compare(segs2, n2, segs2, n2) == 0);

    } else {
        FUZZ_ASSERT(err != NULL && err[0] != '\0');
    }

    FUZZ_ASSERT(quota_tpl_compare(segs, n, segs, n) == 0);

    return 0;
}
