
/*
 * Route templates of quota_route: parsing, matching against r->uri and
 * the specificity order used to sort rules.
 *
 * Pure code: no nginx headers, no allocation, no state.
 */


#include <stddef.h>
#include <string.h>

#include "ngx_http_quota_pure.h"


static int quota_tpl_segment(const char *p, size_t slen, int last,
    quota_tpl_seg_t *seg, const char **err);
static int quota_tpl_name_valid(const char *p, size_t len);
static int quota_tpl_rank(const quota_tpl_seg_t *segs, size_t n, size_t i);


int
quota_tpl_parse(const char *s, size_t len, quota_tpl_seg_t *segs, size_t max,
    size_t *nsegs, const char **err)
{
    size_t       n, slen;
    const char  *p, *end, *q;

    *nsegs = 0;

    if (s == NULL || len == 0 || s[0] != '/') {
        *err = "template must start with \"/\"";
        return -1;
    }

    /* "/" alone has no segments and matches only the root */

    if (len == 1) {
        return 0;
    }

    end = s + len;

    /* one trailing slash is cosmetic: "/a/" is "/a" */

    if (end[-1] == '/') {
        end--;
    }

    n = 0;
    p = s + 1;

    for ( ;; ) {
        q = memchr(p, '/', (size_t) (end - p));
        if (q == NULL) {
            q = end;
        }

        slen = (size_t) (q - p);

        if (slen == 0) {
            *err = "empty segment";
            return -1;
        }

        if (n == max) {
            *err = "too many segments";
            return -1;
        }

        if (quota_tpl_segment(p, slen, q == end, &segs[n], err) != 0) {
            return -1;
        }

        n++;

        if (q == end) {
            break;
        }

        p = q + 1;
    }

    *nsegs = n;

    return 0;
}


/* one non-empty segment: "**", ":name", "{name}" or a literal */
static int
quota_tpl_segment(const char *p, size_t slen, int last, quota_tpl_seg_t *seg,
    const char **err)
{
    size_t  k;

    if (slen == 2 && p[0] == '*' && p[1] == '*') {

        /* anything after "**" could never be reached */

        if (!last) {
            *err = "\"**\" must be the last segment";
            return -1;
        }

        seg->type = QUOTA_SEG_REST;
        seg->data = p;
        seg->len = slen;
        return 0;
    }

    if (p[0] == ':') {

        if (!quota_tpl_name_valid(p + 1, slen - 1)) {
            *err = "bad parameter name";
            return -1;
        }

        seg->type = QUOTA_SEG_PARAM;
        seg->data = p + 1;
        seg->len = slen - 1;
        return 0;
    }

    if (p[0] == '{') {

        if (slen < 2 || p[slen - 1] != '}'
            || !quota_tpl_name_valid(p + 1, slen - 2))
        {
            *err = "bad parameter name";
            return -1;
        }

        seg->type = QUOTA_SEG_PARAM;
        seg->data = p + 1;
        seg->len = slen - 2;
        return 0;
    }

    /*
     * Reserve the parameter and wildcard characters: "a*" or "x{id}" would
     * silently be literals that no request uses.
     */

    for (k = 0; k < slen; k++) {
        if (p[k] == '{' || p[k] == '}') {
            *err = "\"{\" and \"}\" may only enclose a whole segment";
            return -1;
        }

        if (p[k] == '*') {
            *err = "\"*\" is only allowed as a whole \"**\" segment";
            return -1;
        }
    }

    seg->type = QUOTA_SEG_LITERAL;
    seg->data = p;
    seg->len = slen;

    return 0;
}


int
quota_tpl_match(const quota_tpl_seg_t *segs, size_t nsegs, const char *path,
    size_t len)
{
    size_t       i, slen;
    const char  *p, *end, *q;

    i = 0;
    p = path;
    end = path + len;

    /*
     * One left-to-right pass: "**" can only be last, so there is never
     * anything to backtrack over.
     */

    while (p < end) {

        if (*p == '/') {
            p++;
            continue;
        }

        q = memchr(p, '/', (size_t) (end - p));
        if (q == NULL) {
            q = end;
        }

        slen = (size_t) (q - p);

        if (i == nsegs) {
            return 0;
        }

        switch (segs[i].type) {

        case QUOTA_SEG_REST:
            return 1;

        case QUOTA_SEG_PARAM:
            break;

        default: /* QUOTA_SEG_LITERAL */
            if (slen != segs[i].len || memcmp(p, segs[i].data, slen) != 0) {
                return 0;
            }
        }

        i++;
        p = q;
    }

    /* the path has ended: only an unused trailing "**" may remain */

    if (i == nsegs) {
        return 1;
    }

    return i + 1 == nsegs && segs[i].type == QUOTA_SEG_REST;
}


int
quota_tpl_compare(const quota_tpl_seg_t *a, size_t na,
    const quota_tpl_seg_t *b, size_t nb)
{
    int     ra, rb;
    size_t  i, n;

    /*
     * Lexicographic order of the rank sequences, each padded with
     * literal ranks after its end: a total preorder, hence safe for any
     * stable sort.
     */

    n = (na > nb) ? na : nb;

    for (i = 0; i < n; i++) {
        ra = quota_tpl_rank(a, na, i);
        rb = quota_tpl_rank(b, nb, i);

        if (ra != rb) {
            return (ra < rb) ? -1 : 1;
        }
    }

    return 0;
}


static int
quota_tpl_name_valid(const char *p, size_t len)
{
    size_t         i;
    unsigned char  c;

    if (len == 0) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        c = (unsigned char) p[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (c >= '0' && c <= '9') || c == '_'))
        {
            return 0;
        }
    }

    return 1;
}


static int
quota_tpl_rank(const quota_tpl_seg_t *segs, size_t n, size_t i)
{
    /* an ended template is as specific as a literal at that position */

    if (i >= n) {
        return 0;
    }

    switch (segs[i].type) {

    case QUOTA_SEG_REST:
        return 2;

    case QUOTA_SEG_PARAM:
        return 1;

    default:
        return 0;
    }
}
