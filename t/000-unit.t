# Unit tests and fuzzing of the pure helpers (src/ngx_http_quota_template.c,
# src/ngx_http_quota_period.c, src/ngx_http_quota_parse.c,
# src/ngx_http_quota_breaker.c, src/ngx_http_quota_keys.c).
#
# Every check of the C unit tests under t/unit/test_*.c becomes one TAP
# test.  Each fuzz harness t/unit/fuzz_*.c then runs:
#
#   - always: a deterministic pseudo-random driver (t/unit/fuzz_driver.c),
#     QUOTA_FUZZ_RUNS inputs (default 200000), under ASan and UBSan when
#     the compiler supports them;
#   - when clang has -fsanitize=fuzzer: libFuzzer for QUOTA_FUZZ_SECONDS
#     (default 1) per harness.
#
# QUOTA_FUZZ=off skips both.  Build artefacts go to t/unit/bin/.

use strict;
use warnings;

use Test::More;
use File::Basename qw(basename);
use File::Path qw(make_path remove_tree);
use FindBin;

chdir "$FindBin::Bin/.." or die "chdir: $!";

my @SRC = map { "src/ngx_http_quota_$_.c" } qw(template period parse breaker keys);
my $BIN = 't/unit/bin';
my $CC = $ENV{CC} || 'cc';
my $RUNS = $ENV{QUOTA_FUZZ_RUNS} || 200000;
my $SECONDS = $ENV{QUOTA_FUZZ_SECONDS} || 1;
my $FUZZ = $ENV{QUOTA_FUZZ} || 'on';
my $TIMEOUT = `sh -c 'command -v timeout' 2>/dev/null` ? 'timeout 120 ' : '';

my $SAN = '-fsanitize=address,undefined -fno-sanitize-recover=all';

make_path($BIN);

sub run {
    my ($cmd) = @_;
    my $out = `$cmd 2>&1`;
    return ($? == 0, $out);
}

sub write_file {
    my ($path, $data) = @_;
    open my $fh, '>', $path or die "$path: $!";
    binmode $fh;
    print $fh $data;
    close $fh;
}

# does "$cc $flags" build a program that runs?

sub probe {
    my ($cc, $flags, $src, $args) = @_;
    my $name = "$BIN/probe_" . basename((split ' ', $cc)[0]);
    write_file("$name.c", $src);
    my ($ok) = run("$cc $flags -o $name $name.c");
    ($ok) = run("$name $args") if $ok;
    return $ok;
}

my $san = probe($CC, $SAN, "int main(void) { return 0; }\n", '') ? $SAN : '';

note($san ? "unit tests and driver run under $SAN" : 'no sanitizers');


# the sources as nginx compiles them (warnings are errors there)

for my $src (@SRC) {
    my ($ok, $out) = run("$CC -c -Wall -Wextra -W -Wpointer-arith -Werror"
                         . " -O2 -Isrc -o $BIN/" . basename($src, '.c')
                         . ".o $src");
    ok($ok, "$src compiles with -Wall -Wextra -Werror -O2") or diag($out);

    open my $fh, '<', $src or die "$src: $!";
    my @inc = grep { /^\s*#\s*include/ && !/<(std\w+|string)\.h>/
                     && !/"ngx_http_quota_pure\.h"/ } <$fh>;
    close $fh;
    is_deeply(\@inc, [], "$src includes only C headers and the pure API");
}


# unit tests: one TAP test per C check

for my $test (sort glob 't/unit/test_*.c') {
    my $name = basename($test, '.c');
    my $bin = "$BIN/$name";

    my ($ok, $out) = run("$CC -Wall -Wextra -Werror -O1 -g -Isrc $san"
                         . " -o $bin $test @SRC");
    if (!ok($ok, "$name compiles")) {
        diag($out);
        next;
    }

    $out = `$TIMEOUT$bin 2>&1`;
    my $rc = $?;
    my ($checks, $failed) = (0, 0);
    my @lines = split /\n/, $out;

    for (my $i = 0; $i < @lines; $i++) {
        my $line = $lines[$i];

        if ($line =~ /^(not )?ok - (.*)$/) {
            my $pass = !defined $1;
            $checks++;
            $failed++ unless $pass;

            my @detail;
            while ($i + 1 < @lines && $lines[$i + 1] =~ /^#\s{2,}/) {
                push @detail, $lines[++$i];
            }

            ok($pass, "$name: $2") or diag(join "\n", @detail);

        } elsif ($line =~ /^# \d+ checks/) {
            note(substr($line, 2));

        } elsif ($line =~ /^#/) {
            diag($line);

        } else {
            # sanitizer reports and anything unexpected
            diag($line);
        }
    }

    ok($rc == 0 && $checks > 0 && $failed == 0,
       "$name: exit status 0 after $checks checks")
        or diag("exit status " . ($rc >> 8) . ", signal " . ($rc & 127));
}


# fuzzing

my @fuzz = sort glob 't/unit/fuzz_*.c';
@fuzz = grep { !/fuzz_driver\.c$/ } @fuzz;

if ($FUZZ eq 'off') {
    # a skip record per harness, so the summary says what did not run
    SKIP: {
        skip('QUOTA_FUZZ=off: fuzzing skipped', scalar @fuzz);
    }
    done_testing();
    exit;
}

# seeds for libFuzzer; the driver generates its own inputs

my %seeds = (
    template => [
        "/api/v2/:project/tests/{id}/**\n/api/v2/p/tests/1/x/y",
        "/a/:x/**\n/a/:y",
        "/\n//",
        "/{name}/b/\n/{n}/**",
        "/a/**/b\n/a/b/**",
        "/a//b\n/a/b",
    ],
    values => [
        "9007199254740991", "9007199254740992", "0000000000000001",
        "acme-corp{x}", "\x00\x7f\x80 ~!",
    ],
    period => [
        pack('q<C', 1795330800, 0x81), pack('q<C', -1, 0x9f),
        pack('q<C', 253402300799, 0x22), pack('q<C', 0, 0xff),
    ],
);

my $fuzzer = 'clang -fsanitize=fuzzer,address,undefined'
             . ' -fno-sanitize-recover=all';
my $libfuzzer = $FUZZ ne 'driver'
    && probe($fuzzer, '',
             "#include <stddef.h>\n#include <stdint.h>\n"
             . "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)"
             . " { (void) d; (void) n; return 0; }\n",
             '-runs=1');

note($libfuzzer ? "libFuzzer: $SECONDS s per harness"
                : 'clang -fsanitize=fuzzer unavailable: driver only');

for my $harness (@fuzz) {
    my $name = basename($harness, '.c');
    (my $short = $name) =~ s/^fuzz_//;

    # deterministic driver, reproducible: same inputs on every run

    my $bin = "$BIN/fuzz_driver_$short";
    my ($ok, $out) = run("$CC -Wall -Wextra -Werror -O1 -g -Isrc $san"
                         . " -o $bin t/unit/fuzz_driver.c $harness @SRC");
    if (ok($ok, "$name: driver compiles")) {
        ($ok, $out) = run("$TIMEOUT$bin $RUNS 1");
        my ($n) = $out =~ /^executions: (\d+)/m;
        ok($ok && defined $n && $n == $RUNS,
           "$name: $RUNS deterministic random inputs"
           . ($san ? ' under ASan+UBSan' : ''))
            or diag($out);

    } else {
        diag($out);
    }

    next unless $libfuzzer;

    $bin = "$BIN/$name";
    ($ok, $out) = run("$fuzzer -Wall -Wextra -Werror -O1 -g -Isrc"
                      . " -o $bin $harness @SRC");
    if (!ok($ok, "$name: libFuzzer build")) {
        diag($out);
        next;
    }

    # a fresh corpus from the seeds keeps runs comparable

    my $corpus = "$BIN/corpus_$short";
    remove_tree($corpus);
    make_path($corpus);
    my $i = 0;
    write_file("$corpus/seed" . $i++, $_) for @{ $seeds{$short} || [] };

    ($ok, $out) = run("$TIMEOUT$bin -max_total_time=$SECONDS -seed=1"
                      . " -max_len=8192 -rss_limit_mb=2048"
                      . " -artifact_prefix=$BIN/$short- $corpus");
    my ($n) = $out =~ /^Done (\d+) runs/m;
    ok($ok && defined $n, "$name: libFuzzer, "
       . (defined $n ? $n : 'no') . " executions in $SECONDS s")
        or diag(join "\n", grep { defined } (split /\n/, $out)[-40 .. -1]);
}

done_testing();
