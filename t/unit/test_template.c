
/*
 * Unit tests of quota_tpl_parse, quota_tpl_match and quota_tpl_compare.
 */


#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ngx_http_quota_pure.h"
#include "unit.h"


#define MAXSEG  QUOTA_TPL_MAX_SEGMENTS


typedef struct {
    const char  *tpl;
    const char  *err;           /* NULL: must parse */
} parse_case_t;


typedef struct {
    const char  *tpl;
    const char  *path;
    int          match;
} match_case_t;


static int
parse(const char *tpl, quota_tpl_seg_t *segs, size_t *n, const char **err)
{
    *err = NULL;

    return quota_tpl_parse(tpl, strlen(tpl), segs, MAXSEG, n, err);
}


static void
test_parse_errors(void)
{
    size_t            i, n;
    const char       *err;
    quota_tpl_seg_t   segs[MAXSEG];

    static const parse_case_t  cases[] = {
        { "", "template must start with \"/\"" },
        { "a", "template must start with \"/\"" },
        { "a/b", "template must start with \"/\"" },
        { " /a", "template must start with \"/\"" },
        { "//", "empty segment" },
        { "///", "empty segment" },
        { "/a//b", "empty segment" },
        { "/a//", "empty segment" },
        { "//a", "empty segment" },
        { "/**/a", "\"**\" must be the last segment" },
        { "/**/**", "\"**\" must be the last segment" },
        { "/a/**/b/", "\"**\" must be the last segment" },
        { "/{}", "bad parameter name" },
        { "/:", "bad parameter name" },
        { "/{a", "bad parameter name" },
        { "/{a}b", "bad parameter name" },
        { "/{a}}", "bad parameter name" },
        { "/{{a}", "bad parameter name" },
        { "/:a-b", "bad parameter name" },
        { "/:a:b", "bad parameter name" },
        { "/:{a}", "bad parameter name" },
        { "/{a b}", "bad parameter name" },
        { "/{\xc3\xa9}", "bad parameter name" },
        { "/a}", "\"{\" and \"}\" may only enclose a whole segment" },
        { "/x{id}", "\"{\" and \"}\" may only enclose a whole segment" },
        { "/a*", "\"*\" is only allowed as a whole \"**\" segment" },
        { "/*", "\"*\" is only allowed as a whole \"**\" segment" },
        { "/***", "\"*\" is only allowed as a whole \"**\" segment" },
        { "/a/*/b", "\"*\" is only allowed as a whole \"**\" segment" },
        { "/", NULL },
        { "/a/", NULL },
        { "/**", NULL },
        { "/**/", NULL },
        { "/:_9/{A_z}", NULL },
        { "/a.b/c-d/%20/~x", NULL },
    };

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int  rc = parse(cases[i].tpl, segs, &n, &err);

        if (cases[i].err == NULL) {
            CHECK(rc == 0, "parse \"%s\" succeeds", cases[i].tpl);

        } else {
            CHECK(rc == -1 && err != NULL && strcmp(err, cases[i].err) == 0,
                  "parse \"%s\" fails with \"%s\" (got %d \"%s\")",
                  cases[i].tpl, cases[i].err, rc, err ? err : "(null)");
        }
    }

    CHECK(quota_tpl_parse(NULL, 0, segs, MAXSEG, &n, &err) == -1,
          "parse NULL fails");
}


static void
test_parse_segments(void)
{
    int               ok;
    char              buf[1024];
    size_t            n, n2, i;
    const char       *err, *tpl;
    quota_tpl_seg_t   segs[MAXSEG], segs2[MAXSEG];

    tpl = "/api/v2/:project/tests/{id}/**";
    ok = parse(tpl, segs, &n, &err) == 0 && n == 6
         && segs[0].type == QUOTA_SEG_LITERAL && segs[0].len == 3
         && memcmp(segs[0].data, "api", 3) == 0
         && segs[1].type == QUOTA_SEG_LITERAL && segs[1].len == 2
         && memcmp(segs[1].data, "v2", 2) == 0
         && segs[2].type == QUOTA_SEG_PARAM && segs[2].len == 7
         && memcmp(segs[2].data, "project", 7) == 0
         && segs[3].type == QUOTA_SEG_LITERAL && segs[3].len == 5
         && memcmp(segs[3].data, "tests", 5) == 0
         && segs[4].type == QUOTA_SEG_PARAM && segs[4].len == 2
         && memcmp(segs[4].data, "id", 2) == 0
         && segs[5].type == QUOTA_SEG_REST;
    CHECK(ok, "parse \"%s\" gives literal, literal, param project, literal, "
          "param id, rest", tpl);

    CHECK(parse("/", segs, &n, &err) == 0 && n == 0, "\"/\" has 0 segments");

    ok = parse("/a/", segs, &n, &err) == 0
         && parse("/a", segs2, &n2, &err) == 0
         && n == 1 && n2 == 1 && segs[0].len == 1 && segs2[0].len == 1
         && segs[0].type == QUOTA_SEG_LITERAL;
    CHECK(ok, "\"/a/\" parses like \"/a\"");

    /* the data pointers point into the template, not into a copy */

    tpl = "/x/:name";
    CHECK(parse(tpl, segs, &n, &err) == 0 && segs[1].data == tpl + 4,
          "param name points into the template");

    /* exactly the maximum of segments, then one more */

    for (i = 0; i < MAXSEG; i++) {
        memcpy(buf + 2 * i, "/s", 2);
    }
    buf[2 * MAXSEG] = '\0';
    CHECK(parse(buf, segs, &n, &err) == 0 && n == MAXSEG,
          "%d segments parse", MAXSEG);

    memcpy(buf + 2 * MAXSEG, "/s", 3);
    CHECK(parse(buf, segs, &n, &err) == -1
          && strcmp(err, "too many segments") == 0,
          "%d segments fail with \"too many segments\"", MAXSEG + 1);

    CHECK(quota_tpl_parse("/a/b/c", 6, segs, 2, &n, &err) == -1
          && strcmp(err, "too many segments") == 0,
          "max is honoured (3 segments, max 2)");

    CHECK(quota_tpl_parse("/", 1, NULL, 0, &n, &err) == 0 && n == 0,
          "\"/\" needs no segment storage");

    /* a length shorter than the string: the rest must be ignored */

    CHECK(quota_tpl_parse("/a/**/b", 5, segs, MAXSEG, &n, &err) == 0
          && n == 2 && segs[1].type == QUOTA_SEG_REST,
          "parse honours len, not NUL");
}


static void
test_match(void)
{
    int               rc;
    size_t            i, n;
    const char       *err;
    quota_tpl_seg_t   segs[MAXSEG];

    static const match_case_t  cases[] = {
        { "/", "/", 1 },
        { "/", "", 1 },
        { "/", "//", 1 },
        { "/", "/a", 0 },
        { "/a", "/a", 1 },
        { "/a", "/a/", 1 },
        { "/a/", "/a", 1 },
        { "/a", "//a//", 1 },
        { "/a", "/A", 0 },
        { "/a", "/ab", 0 },
        { "/ab", "/a", 0 },
        { "/a", "/a/b", 0 },
        { "/a", "/", 0 },
        { "/a/b", "//a//b/", 1 },
        { "/a/b", "/a", 0 },
        { "/:x", "/", 0 },
        { "/:x", "//", 0 },
        { "/:x", "/anything", 1 },
        { "/:x", "/a/b", 0 },
        { "/a/:x", "/a", 0 },
        { "/a/:x", "/a/", 0 },
        { "/a/:x", "/a//", 0 },
        { "/a/:x", "/a/1", 1 },
        { "/a/{x}/c", "/a/1/c", 1 },
        { "/a/{x}/c", "/a/1/d", 0 },
        { "/a/**", "/a", 1 },
        { "/a/**", "/a/", 1 },
        { "/a/**", "/a/b", 1 },
        { "/a/**", "/a/b/c/d/", 1 },
        { "/a/**", "/b", 0 },
        { "/a/**", "/", 0 },
        { "/a/**", "/ab", 0 },
        { "/**", "/", 1 },
        { "/**", "", 1 },
        { "/**", "/x/y", 1 },
        { "/a/:x/**", "/a", 0 },
        { "/a/:x/**", "/a/1", 1 },
        { "/a/:x/**", "/a/1/2/3", 1 },
        { "/api/v2/:project/tests/{id}/**", "/api/v2/p1/tests/42", 1 },
        { "/api/v2/:project/tests/{id}/**", "/api/v2/p1/tests/42/x/y", 1 },
        { "/api/v2/:project/tests/{id}/**", "/api/v2/p1/tests", 0 },
        { "/api/v2/:project/tests/{id}/**", "/api/v1/p1/tests/42", 0 },
        { "/a b/%2F", "/a b/%2F", 1 },
        { "/caf\xc3\xa9", "/caf\xc3\xa9", 1 },
        { "/caf\xc3\xa9", "/cafe", 0 },
    };

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        rc = parse(cases[i].tpl, segs, &n, &err);
        if (rc == 0) {
            rc = quota_tpl_match(segs, n, cases[i].path,
                                 strlen(cases[i].path));
        } else {
            rc = -1;
        }

        CHECK(rc == cases[i].match, "\"%s\" %s \"%s\"", cases[i].tpl,
              cases[i].match ? "matches" : "does not match", cases[i].path);
    }

    /* the path length is honoured, NUL bytes are ordinary bytes */

    parse("/a/:x", segs, &n, &err);
    CHECK(quota_tpl_match(segs, n, "/a/bXXX", 3) == 0,
          "match honours len (\"/a/\" of \"/a/bXXX\")");
    CHECK(quota_tpl_match(segs, n, "/a/\0", 4) == 1,
          "a NUL byte is an ordinary segment byte");

    parse("/a", segs, &n, &err);
    CHECK(quota_tpl_match(segs, n, "/a\0", 3) == 0,
          "\"/a\" does not match \"/a<NUL>\"");
}


static void
test_match_long(void)
{
    int               ok;
    char             *path;
    size_t            i, n, len;
    const char       *err;
    quota_tpl_seg_t   segs[MAXSEG];

    /* 5000 one-byte segments: 10 KB, far above nginx' default buffers */

    len = 10000;
    path = malloc(len + 1);
    if (path == NULL) {
        abort();
    }

    for (i = 0; i < len; i += 2) {
        path[i] = '/';
        path[i + 1] = 'a';
    }
    path[len] = '\0';

    parse("/**", segs, &n, &err);
    CHECK(quota_tpl_match(segs, n, path, len) == 1,
          "\"/**\" matches 5000 segments");

    parse("/a/a/:x/**", segs, &n, &err);
    CHECK(quota_tpl_match(segs, n, path, len) == 1,
          "\"/a/a/:x/**\" matches 5000 segments");

    parse("/a/:x", segs, &n, &err);
    CHECK(quota_tpl_match(segs, n, path, len) == 0,
          "\"/a/:x\" does not match 5000 segments");

    parse("/b/**", segs, &n, &err);
    CHECK(quota_tpl_match(segs, n, path, len) == 0,
          "\"/b/**\" does not match 5000 segments");

    /* 64 params against 5000 segments, and against exactly 64 */

    for (i = 0; i < MAXSEG; i++) {
        segs[i].type = QUOTA_SEG_PARAM;
        segs[i].data = "p";
        segs[i].len = 1;
    }

    CHECK(quota_tpl_match(segs, MAXSEG, path, len) == 0,
          "64 params do not match 5000 segments");
    CHECK(quota_tpl_match(segs, MAXSEG, path, 2 * MAXSEG) == 1,
          "64 params match 64 segments");

    /* one 10 KB segment, and 10 KB of slashes */

    memset(path + 1, 'z', len - 1);
    parse("/:x", segs, &n, &err);
    CHECK(quota_tpl_match(segs, n, path, len) == 1,
          "\"/:x\" matches one 9999-byte segment");

    memset(path, '/', len);
    ok = quota_tpl_match(segs, n, path, len) == 0;
    parse("/", segs, &n, &err);
    ok = ok && quota_tpl_match(segs, n, path, len) == 1;
    CHECK(ok, "10000 slashes are the root path");

    free(path);
}


static int
sign(int v)
{
    return (v > 0) - (v < 0);
}


static void
test_compare(void)
{
    int               ok, ab, bc, ac;
    size_t            i, j, k, n[40];
    const char       *err;
    quota_tpl_seg_t   segs[40][MAXSEG];

    static const struct {
        const char  *a;
        const char  *b;
        int          cmp;
    } cases[] = {
        { "/a", "/a/**", -1 },
        { "/a/:x", "/a/:x/**", -1 },
        { "/a/b", "/a/**", -1 },
        { "/a/:x/**", "/a/**", -1 },
        { "/a/b", "/a/:x", -1 },
        { "/a/:x", "/a/**", -1 },
        { "/:x/b", "/a/:y", 1 },
        { "/a/b", "/c/d", 0 },
        { "/a", "/a/b", 0 },
        { "/:x", "/{y}", 0 },
        { "/", "/**", -1 },
        { "/", "/a", 0 },
        { "/", "/:x", -1 },
        { "/**", "/**", 0 },
        { "/a/:x/c", "/a/:x/:y", -1 },
        { "/a/:x/c/**", "/a/:x/:y", -1 },
    };

    static const char  *set[] = {
        "/", "/**", "/a", "/b", "/:x", "/a/**", "/:x/**", "/a/b", "/a/:x",
        "/:x/a", "/:x/:y", "/a/b/**", "/a/:x/**", "/:x/:y/**", "/a/b/c",
        "/:x/b/c", "/a/:x/c", "/a/b/:x", "/:x/:y/:z", "/a/:x/c/**",
        "/:a/:b/:c/:d/**", "/a/b/c/d/e/f",
    };

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        parse(cases[i].a, segs[0], &n[0], &err);
        parse(cases[i].b, segs[1], &n[1], &err);

        ab = sign(quota_tpl_compare(segs[0], n[0], segs[1], n[1]));
        ac = sign(quota_tpl_compare(segs[1], n[1], segs[0], n[0]));

        CHECK(ab == cases[i].cmp && ac == -cases[i].cmp,
              "compare(\"%s\", \"%s\") is %d and the reverse %d (got %d, %d)",
              cases[i].a, cases[i].b, cases[i].cmp, -cases[i].cmp, ab, ac);
    }

    /* strict weak ordering over the whole set, checked exhaustively */

    k = sizeof(set) / sizeof(set[0]);
    for (i = 0; i < k; i++) {
        parse(set[i], segs[i], &n[i], &err);
    }

    ok = 1;

    for (i = 0; i < k && ok; i++) {
        for (j = 0; j < k && ok; j++) {
            ab = sign(quota_tpl_compare(segs[i], n[i], segs[j], n[j]));
            bc = sign(quota_tpl_compare(segs[j], n[j], segs[i], n[i]));

            if (ab != -bc || (i == j && ab != 0)) {
                printf("#   antisymmetry: %s %s\n", set[i], set[j]);
                ok = 0;
            }
        }
    }

    CHECK(ok, "compare is irreflexive and antisymmetric over %zu templates",
          k);

    ok = 1;

    for (i = 0; i < k && ok; i++) {
        for (j = 0; j < k && ok; j++) {
            size_t  l;

            for (l = 0; l < k && ok; l++) {
                ab = sign(quota_tpl_compare(segs[i], n[i], segs[j], n[j]));
                bc = sign(quota_tpl_compare(segs[j], n[j], segs[l], n[l]));
                ac = sign(quota_tpl_compare(segs[i], n[i], segs[l], n[l]));

                /* < is transitive, and so is equivalence */

                if ((ab < 0 && bc < 0 && ac >= 0)
                    || (ab == 0 && bc == 0 && ac != 0)
                    || (ab <= 0 && bc <= 0 && ac > 0))
                {
                    printf("#   transitivity: %s %s %s\n",
                           set[i], set[j], set[l]);
                    ok = 0;
                }
            }
        }
    }

    CHECK(ok, "compare is transitive (and so is equivalence) over %zu "
          "templates", k);
}


/* what the module does: stable sort, then the first matching rule wins */

static void
test_precedence(void)
{
    int               id[8], t;
    size_t            i, j, k, n[8], nt;
    const char       *err;
    quota_tpl_seg_t   segs[8][MAXSEG], ts[MAXSEG];

    static const char  *rules[] = {
        "/**", "/a/**", "/a/:x/**", "/a/:x", "/a/b", "/a", "/a/:y",
        "/a/b/**",
    };

    static const struct {
        const char  *path;
        const char  *winner;
    } cases[] = {
        { "/a/b", "/a/b" },
        { "/a/c", "/a/:x" },        /* first of two equal templates */
        { "/a", "/a" },
        { "/a/b/c", "/a/b/**" },
        { "/a/c/d", "/a/:x/**" },
        { "/b", "/**" },
        { "/", "/**" },
    };

    k = sizeof(rules) / sizeof(rules[0]);

    for (i = 0; i < k; i++) {
        parse(rules[i], segs[i], &n[i], &err);
        id[i] = (int) i;
    }

    /* insertion sort is stable */

    for (i = 1; i < k; i++) {
        for (j = i; j > 0; j--) {
            int  a = id[j - 1], b = id[j];

            if (quota_tpl_compare(segs[b], n[b], segs[a], n[a]) >= 0) {
                break;
            }

            id[j - 1] = b;
            id[j] = a;
        }
    }

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char  *got = NULL;

        for (j = 0; j < k; j++) {
            t = id[j];
            if (quota_tpl_match(segs[t], n[t], cases[i].path,
                                strlen(cases[i].path)))
            {
                got = rules[t];
                break;
            }
        }

        CHECK(got != NULL && strcmp(got, cases[i].winner) == 0,
              "\"%s\" is handled by \"%s\" (got \"%s\")", cases[i].path,
              cases[i].winner, got ? got : "(none)");
    }

    parse("/a/:y", ts, &nt, &err);
    CHECK(quota_tpl_compare(ts, nt, segs[3], n[3]) == 0,
          "\"/a/:x\" and \"/a/:y\" are equally specific");
}


int
main(void)
{
    test_parse_errors();
    test_parse_segments();
    test_match();
    test_match_long();
    test_compare();
    test_precedence();

    return unit_done();
}
