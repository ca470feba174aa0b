# Self-test of the test runner on plain nginx (no quota module needed):
# every section the suite relies on (these blocks pass under the real
# Test::Nginx too), then nested runs of the fallback runner proving that it
# behaves like the real one (t/lib/Test/Nginx/Socket.pm says where): failing
# blocks are detected, unsupported sections fail, alert lines fail, the
# error log is read per request, timeouts have units, blocks are shuffled.
# The nested runs test our runner only; they are skipped under the real one.

use strict; use warnings;
use FindBin; BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::Nginx::Socket 'no_plan';
use QuotaTest;
use IO::Socket::INET;
use Time::HiRes qw(time);
use File::Temp ();

# an upstream that accepts connections and never answers: lets a request
# hang so that --- timeout / --- abort can be exercised without any module
my $blackhole = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                      Listen => 128, Proto => 'tcp')
    or die "blackhole: $!";
$ENV{TEST_NGINX_BLACKHOLE_PORT} = $blackhole->sockport;
$ENV{TEST_NGINX_GREETING} = 'hello';

our $fallback = !$INC{'Test/Nginx/Socket.pm'}
                || $INC{'Test/Nginx/Socket.pm'} =~ m{\Q$FindBin::Bin\E/lib/};

no_root_location();
run_tests();

# --- the fallback runner's parity: nested runs --------------------------------
# run_nested($name, $perl_text, %env) -> the child's TAP output
my $nested_dir = File::Temp::tempdir('quota-runner-XXXXXX', TMPDIR => 1,
                                     CLEANUP => 1);
sub run_nested {
    my ($name, $text, %env) = @_;
    my $file = "$nested_dir/$name.pl";
    open my $fh, '>', $file or die "$file: $!";
    print {$fh} $text;
    close $fh;
    local $ENV{TEST_NGINX_SERVROOT} = "$nested_dir/servroot";
    local $ENV{TEST_NGINX_SERVER_PORT};
    delete $ENV{TEST_NGINX_SERVER_PORT};
    local $ENV{TEST_NGINX_USE_VALGRIND};
    delete $ENV{TEST_NGINX_USE_VALGRIND};
    local $ENV{TEST_NGINX_NO_SHUFFLE};
    delete $ENV{TEST_NGINX_NO_SHUFFLE};
    local @ENV{keys %env} = values %env;
    # bounded: a runner reading "300ms" as 300 s must not hang the suite
    my $out = `timeout 60 $^X -I$FindBin::Bin/lib $file 2>&1`;
    return $out;
}

sub failed_tests { my %h = map { $_ => 1 } $_[0] =~ /^not ok \d+ - (.*)$/mg; \%h }
sub passed_tests { my %h = map { $_ => 1 } $_[0] =~ /^ok \d+ - (.*)$/mg; \%h }

SKIP: {
    skip 'nested runs test the fallback runner only', 15 unless $fallback;

    my $t0 = time;
    my $out = run_nested('neg', <<'_EOT_');
use strict; use warnings;
use Test::Nginx::Socket 'no_plan';
use QuotaTest;
no_shuffle();
run_tests();
__DATA__

=== TEST 1: wrong status
--- config
    location = /t { return 404; }
--- request
GET /t

=== TEST 2: wrong body and header
--- config
    location = /t { add_header X-A 1; return 200 "a\n"; }
--- request
GET /t
--- response_headers
X-A: 2
--- response_body
b

=== TEST 3: error_log misses, no_error_log hits
--- config
    location = /t { return 200; }
--- request
GET /t
--- error_log
no such line
--- no_error_log
[notice]

=== TEST 4: timeout 300ms without abort
--- http_config
    upstream bh { server 127.0.0.1:$TEST_NGINX_BLACKHOLE_PORT; }
--- config
    location = /t { proxy_read_timeout 30s; proxy_pass http://bh; }
--- request
GET /t
--- timeout: 300ms
--- ignore_response

=== TEST 5: nginx does not start
--- config
    no_such_directive;
--- request
GET /t
--- error_logg
typo in a section name

=== TEST 6: a real Test::Nginx section we do not implement
--- config
    location = /t { return 200; }
--- request
GET /t
--- shutdown_error_log
exiting

=== TEST 7: response_body_unlike matches
--- config
    location = /t { return 200 "secret\n"; }
--- request
GET /t
--- response_body_unlike: secret

=== TEST 8: pipelined_requests, second answer wrong
--- config
    location = /a { return 200 "A"; }
    location = /b { return 500 "B"; }
--- pipelined_requests eval
["GET /a", "GET /b"]
--- response_body eval
["A", "B"]

=== TEST 9: a scalar check for several requests
--- config
    location = /t { return 200 "x"; }
--- request eval
["GET /t", "GET /t"]
--- response_body: x

=== TEST 10: an alert line fails the block
--- config
    location = /t { return 200; }
--- init
open my $fh, '>>', "$ENV{TEST_NGINX_SERVER_ROOT}/logs/error.log" or die;
print {$fh} "2026/01/01 00:00:00 [alert] 1#1: synthetic alert\n";
close $fh;
--- request
GET /t

=== TEST 11: a crit line fails the block (connect() to a missing socket)
--- config
    location = /t { proxy_pass http://unix:/nonexistent/quota.sock:; }
--- request
GET /t
--- error_code: 502

=== TEST 12: an assertion failure fails the block
--- config
    location = /t { return 200; }
--- init
open my $fh, '>>', "$ENV{TEST_NGINX_SERVER_ROOT}/logs/error.log" or die;
print {$fh} "nginx: src/x.c:1: f: Assertion `0' failed.\n";
close $fh;
--- request
GET /t

=== TEST 13: error_log is read per request: only the first request logs it
--- config
    location = /a { return 404; }
    location = /b { return 200; }
--- request eval
["GET /a/missing", "GET /b"]
--- error_code eval
[404, 200]
--- error_log
open()

=== TEST 14: error_log seen only at shutdown is not seen
--- config
    location = /t { return 200; }
--- request
GET /t
--- error_log
exiting

=== TEST 15: init runs in Test::Nginx::Util under strict: a main:: helper
--- config
    location = /t { return 200; }
--- init
free_port();
--- request
GET /t

=== TEST 16: init under strict: an undeclared variable
--- config
    location = /t { return 200; }
--- init
$undeclared = 1;
--- request
GET /t

=== TEST 17: an eval section that dies
--- config
    location = /t { return 200; }
--- request
GET /t
--- no_error_log eval
[qr/never/, no_such_function()]

=== TEST 18: response_headers with response_headers_like
--- config
    location = /t { add_header X-A 1; return 200; }
--- request
GET /t
--- response_headers
X-A: 1
--- response_headers_like
X-A: \d

=== TEST 19: default log level is debug
--- config
    location = /t { return 200; }
--- request
GET /t
--- error_log
http finalize request
--- no_error_log
[error]

=== TEST 20: more_headers Host replaces the default one
--- config
    location = /t { return 200 "$host\n"; }
--- more_headers
Host: example.com
--- request
GET /t
--- response_body
example.com
_EOT_
    my $took = time - $t0;
    my $b = 'TEST 13: error_log is read per request: only the first request logs it';
    my %want = (
        'TEST 1: wrong status - status code ok' => 1,
        'TEST 2: wrong body and header - header X-A ok' => 1,
        'TEST 2: wrong body and header - response_body - response is expected' => 1,
        'TEST 3: error_log misses, no_error_log hits - pattern "no such line" matches a line in error.log' => 1,
        'TEST 3: error_log misses, no_error_log hits - pattern "[notice]" should not match any line in error.log' => 1,
        'ERROR: client socket timed out - TEST 4: timeout 300ms without abort' => 1,
        'TEST 5: nginx does not start - nginx started' => 1,
        'TEST 6: a real Test::Nginx section we do not implement - section "shutdown_error_log" of Test::Nginx is not implemented by the fallback runner' => 1,
        'TEST 7: response_body_unlike matches - response_body_unlike - response is expected (secret)' => 1,
        'TEST 8: pipelined_requests, second answer wrong (req 1) - status code ok' => 1,
        'TEST 9: a scalar check for several requests - response_body: several requests, so the expected results should be an eval\'d array' => 2,
        'TEST 10: an alert line fails the block - no [alert] line in error.log' => 1,
        'TEST 11: a crit line fails the block (connect() to a missing socket) - no [crit] line in error.log' => 1,
        'TEST 12: an assertion failure fails the block - nginx: src/x.c:1: f: Assertion `0\' failed.' => 1,
        "$b (req 1) - pattern \"open()\" matches a line in error.log" => 1,
        'TEST 14: error_log seen only at shutdown is not seen - pattern "exiting" matches a line in error.log' => 1,
        'TEST 18: response_headers with response_headers_like - response_headers and response_headers_like together: the real runner checks only the first, use one (a "Name: regex" line per header)' => 1,
    );
    my $failed = failed_tests($out);
    # TEST 15-17: init and eval failures carry the error message
    my @init = grep { /^TEST 1[567]: / } keys %$failed;
    delete @$failed{@init};
    is_deeply($failed, { map { $_ => 1 } keys %want },
              'parity: exactly the expected failures') or diag($out);
    like(join("\n", sort @init),
         qr/^TEST 15: .* - init failed: Undefined subroutine &Test::Nginx::Util::free_port.*^TEST 16: .* - init failed: Global symbol "\$undeclared" requires.*^TEST 17: .* - an --- eval section died: Undefined subroutine/ms,
         'parity: init runs in Test::Nginx::Util under strict, eval errors fail');
    my $passed = passed_tests($out);
    ok($passed->{"$b (req 0) - pattern \"open()\" matches a line in error.log"},
       'parity: error_log window of the first request');
    ok($passed->{'TEST 19: default log level is debug - pattern "http finalize request" matches a line in error.log'},
       'parity: default log level debug');
    ok($passed->{'TEST 20: more_headers Host replaces the default one - response_body - response is expected'},
       'parity: Host only when more_headers has none');
    ok($passed->{'TEST 8: pipelined_requests, second answer wrong (req 0) - response_body - response is expected'}
       && $passed->{'TEST 8: pipelined_requests, second answer wrong (req 1) - response_body - response is expected'},
       'parity: pipelined_requests, two answers on one connection');
    cmp_ok($took, '<', 20, 'parity: timeout 300ms is 0.3 s (the nested run is quick)');
    like($out, qr/unknown directive "no_such_directive"/,
         'negative self-test: start failure shows the error.log tail');
    like($out, qr/section "error_logg" is unknown to Test::Nginx/,
         'negative self-test: unknown sections are reported');
    like($out, qr/HTTP\/1\.1 404 Not Found/,
         'negative self-test: failure shows the response');
    my @left = grep {
        open my $c, '<', $_ or next;
        local $/; my $cmd = <$c> // ''; index($cmd, "$nested_dir/servroot") >= 0;
    } glob('/proc/[0-9]*/cmdline');
    ok(!@left, 'negative self-test: no nginx left running');

    # block order: shuffled unless no_shuffle() (or TEST_NGINX_NO_SHUFFLE)
    my $blocks = join '', map { <<"_EOB_" } 1 .. 8;
=== TEST $_: block $_
--- config
    location = /t { return 200; }
--- request
GET /t

_EOB_
    my $order = sub {
        join ',', $_[0] =~ /^ok \d+ - TEST (\d+):/mg;
    };
    my $file = "use strict; use Test::Nginx::Socket 'no_plan';\n"
               . "run_tests();\n__DATA__\n\n$blocks";
    my $o1 = $order->(run_nested('shuffled', $file,
                                 TEST_NGINX_SHUFFLE_SEED => 4242));
    my $o2 = $order->(run_nested('shuffled2', $file,
                                 TEST_NGINX_SHUFFLE_SEED => 4242));
    isnt($o1, '1,2,3,4,5,6,7,8', "parity: blocks shuffled ($o1)");
    is($o2, $o1, 'parity: TEST_NGINX_SHUFFLE_SEED repeats an order');
    (my $ns = $file) =~ s/run_tests/no_shuffle();\nrun_tests/;
    is($order->(run_nested('ordered', $ns)), '1,2,3,4,5,6,7,8',
       'parity: no_shuffle() keeps file order');

    # must_die needs a non-zero exit: an "nginx" that exits 0 is a failure
    my $md = run_nested('must_die', <<'_EOT_', TEST_NGINX_BINARY => '/bin/true');
use strict; use Test::Nginx::Socket 'no_plan';
run_tests();
__DATA__

=== TEST 1: exit 0
--- config
    location = /t { return 200; }
--- must_die
_EOT_
    is_deeply(failed_tests($md), { 'TEST 1: exit 0 - die as expected' => 1 },
              'parity: must_die fails on exit status 0') or diag($md);
}

# --- QuotaTest helpers -------------------------------------------------------
{
    # nginx_run + http_concurrent: 600 connections at once on 2 workers
    my $t0 = time;
    my @codes;
    my $log = nginx_run(
        workers => 2,
        config  => '    location = /c { return 200 "c\n"; }',
        code    => sub {
            my ($port) = @_;
            my $c0 = time;
            @codes = http_concurrent($port, 600, "GET /c");
            Test::More::note(sprintf 'http_concurrent(600): %.3fs', time - $c0);
            my $r = http_request($port, 'POST', '/c', { 'X-A' => 1 }, 'body');
            is($r->{status}, 200, 'nginx_run: http_request status');
            is($r->{body}, "c\n", 'nginx_run: http_request body');
            is(http_get($port, '/none')->{status}, 404, 'nginx_run: http_get');
        },
    );
    is(scalar(grep { $_ eq '200' } @codes), 600,
       'http_concurrent: 600 concurrent requests all got 200');
    cmp_ok(time - $t0, '<', 10, 'http_concurrent: within the time bound');
    like($log, qr/worker process \d+ exited/, 'nginx_run: returns error.log');

    # free_port never hands out the same port twice in one process (a
    # gateway and its upstream once got the same one)
    my %seen;
    my $dups = grep { $seen{$_}++ } map { free_port() } 1 .. 1000;
    is($dups, 0, 'free_port: 1000 calls, no port twice');

    # valgrind log classification (synthetic logs)
    my $vdir = File::Temp::tempdir('quota-vg-XXXXXX', TMPDIR => 1,
                                   CLEANUP => 1);
    mkdir "$vdir/logs";
    open my $v, '>', "$vdir/logs/valgrind.1.log" or die $!;
    print {$v} <<'_EOV_';
==1== 8 bytes in 1 blocks are definitely lost in loss record 1 of 9
==1==    at 0x48417B4: malloc (in /usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so)
==1==    by 0x12E404: ngx_set_environment (in /usr/sbin/nginx)
==1==
==1== 16 bytes in 1 blocks are definitely lost in loss record 2 of 9
==1==    at 0x48417B4: malloc (in /usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so)
==1==    by 0x4A0001: ngx_http_quota_redis_connect (ngx_http_quota_redis.c:42)
==1==
==1== Invalid read of size 4
==1==    at 0x15B2B5: ngx_http_core_run_phases (in /usr/sbin/nginx)
==1==
_EOV_
    close $v;
    my @p = QuotaTest::valgrind_problems($vdir);
    is(scalar(@p), 2, 'valgrind_problems: module leak and invalid read, not the core leak');

    # sanitizer report classification (synthetic reports)
    my $sdir = File::Temp::tempdir('quota-san-XXXXXX', TMPDIR => 1,
                                   CLEANUP => 1);
    mkdir "$sdir/logs";
    my %rep = (
        'asan.11' => <<'_EOR_',
=================================================================
==11==ERROR: AddressSanitizer: heap-buffer-overflow on address 0x602000000a1f
    #0 0x7f1 in ngx_http_quota_json_escape src/ngx_http_quota_json.c:40
SUMMARY: AddressSanitizer: heap-buffer-overflow src/ngx_http_quota_json.c:40
_EOR_
        'asan.12' => <<'_EOR_',
=================================================================
==12==ERROR: LeakSanitizer: detected memory leaks

Direct leak of 4096 bytes in 1 object(s) allocated from:
    #0 0x7f2 in malloc
    #1 0x55a in ngx_alloc (/usr/sbin/nginx+0x2a1b2)
    #2 0x55b in ngx_event_process_init (/usr/sbin/nginx+0x3c0d1)

SUMMARY: AddressSanitizer: 4096 byte(s) leaked in 1 allocation(s).
_EOR_
        'asan.13' => <<'_EOR_',
=================================================================
==13==ERROR: LeakSanitizer: detected memory leaks

Direct leak of 64 bytes in 1 object(s) allocated from:
    #0 0x7f2 in malloc
    #1 0x7f3 in ngx_http_quota_redis_connect src/ngx_http_quota_redis.c:99

Direct leak of 8 bytes in 1 object(s) allocated from:
    #0 0x7f2 in malloc
    #1 0x55b in ngx_set_environment (/usr/sbin/nginx+0x1c0d1)

SUMMARY: AddressSanitizer: 72 byte(s) leaked in 2 allocation(s).
_EOR_
        'ubsan.14' => "src/ngx_http_quota_numbers.c:12:5: runtime error: "
                      . "signed integer overflow\n",
    );
    for my $f (keys %rep) {
        open my $r, '>', "$sdir/logs/$f" or die $!;
        print {$r} $rep{$f};
        close $r;
    }
    my @sp = QuotaTest::sanitizer_problems($sdir);
    is(join(',', map { m{/logs/(\S+):} ? $1 : '?' } @sp),
       'asan.11,asan.13,ubsan.14',
       'sanitizer_problems: ASan and UBSan reports, module leaks, not core leaks');
    unlike(join('', @sp), qr/ngx_set_environment/,
           'sanitizer_problems: a core leak next to a module leak is left out');

    # redis: private servers (restart/outage tests) and the shared one
    SKIP: {
        skip 'no redis-server', 4
            unless grep { -x "$_/redis-server" } split /:/, $ENV{PATH};
        my $r = start_redis();
        is($r->cmd('SET', 'k', "v\r\n1"), 'OK', 'start_redis: SET');
        is_deeply($r->cmd('MGET', 'k', 'nope'), ["v\r\n1", undef],
                  'start_redis: arrays and nil');
        ok(!eval { $r->cmd('INCR', 'k'); 1 } && $@ =~ /^ERR/,
           'redis errors die with the message');
        my $pid = $r->{pid};
        stop_redis($r);
        ok(!kill(0, $pid) && !eval { $r->cmd('PING') },
           'stop_redis: stopped');
    }
    SKIP: {
        skip 'TEST_NGINX_REDIS_PORT not set', 2 unless $ENV{TEST_NGINX_REDIS_PORT};
        redis_flush();
        is(redis('INCRBY', 'quota:test', 5), 5, 'redis: integer reply');
        is(redis('DBSIZE'), 1, 'redis: flush, then one key');
        redis_flush();
    }
}

__DATA__

=== TEST 1: config, request, status, exact body
--- config
    location = /t {
        return 200 "ok\n";
    }
--- request
GET /t
--- error_code: 200
--- response_body
ok



=== TEST 2: main_config, http_config and $TEST_NGINX_ variables
--- main_config
    worker_rlimit_nofile 4096;
--- http_config
    map $uri $greeting {
        default "$TEST_NGINX_GREETING";
    }
--- config
    location = /t {
        return 200 "$greeting from $TEST_NGINX_SERVER_PORT\n";
    }
--- request
GET /t
--- response_body_like: ^hello from \d+$



=== TEST 3: more_headers, response_headers (exact, absent), headers_like
--- config
    location = /t {
        add_header X-Echo $http_x_in;
        add_header X-Num "n-42";
        return 201 "$http_x_in|$http_x_other\n";
    }
--- more_headers
X-In: abc
X-Other: def
--- request
GET /t
--- error_code: 201
--- response_headers
X-Echo: abc
!X-Missing
content-type: text/plain
--- response_body
abc|def



=== TEST 3b: response_headers_like (never together with response_headers:
the real runner would check only the first)
--- config
    location = /t {
        add_header X-Num "n-42";
        return 201;
    }
--- request
GET /t
--- error_code: 201
--- response_headers_like
X-Num: n-\d+
Content-Type: text/\w+



=== TEST 4: POST body gets a Content-Length, trimmed like Test::Nginx
--- config
    location = /t {
        client_body_buffer_size 1m;
        return 200 "len=$content_length\n";
    }
--- request
POST /t
hello world
--- response_body
len=11



=== TEST 5: request eval array with per-request status, headers and bodies
--- config
    location = /a { return 200 "A\n"; }
    location = /b { add_header X-B yes always; return 403 "B\n"; }
--- request eval
["GET /a", "GET /b", "GET /c"]
--- error_code eval
[200, 403, 404]
--- response_headers eval
["!X-B", "X-B: yes", "!X-B"]
--- response_body_like eval
["^A\$", "^B\$", "404 Not Found"]



=== TEST 6: response_body eval array
--- config
    location = /a { return 200 "one"; }
    location = /b { return 200 "two"; }
--- request eval
["GET /a", "GET /b"]
--- response_body eval
["one", "two"]



=== TEST 7: chunked response is decoded
--- config
    location = /t {
        sub_filter_types *;
        sub_filter world nginx;
        return 200 "hello world\n";
    }
--- request
GET /t
--- response_headers
Transfer-Encoding: chunked
!Content-Length
--- response_body
hello nginx



=== TEST 8: error_log (lines) and no_error_log
--- config
    location = /t {
        return 404;
    }
--- request
GET /t/nothing
--- error_code: 404
--- error_log
open()
No such file or directory
--- no_error_log
[alert]
[emerg]



=== TEST 9: error_log and no_error_log as eval arrays with regexes
--- config
    location = /t { return 404; }
--- request
GET /nothing
--- error_code: 404
--- error_log eval
[qr/\[error\] \d+#\d+: \*\d+ open\(\)/, "nothing"]
--- no_error_log eval
[qr/\[crit\]/, "segmentation"]



=== TEST 10: init runs after nginx started, before the request
--- config
    location = /t {
        root $TEST_NGINX_SERVER_ROOT/html;
        try_files /init.txt =404;
    }
--- init
open my $fh, '>', "$ENV{TEST_NGINX_SERVER_ROOT}/html/init.txt" or die $!;
print {$fh} "written by init\n";
close $fh;
--- request
GET /t
--- response_body
written by init



=== TEST 11: timeout + abort: client gives up, not a failure
--- http_config
    upstream bh {
        server 127.0.0.1:$TEST_NGINX_BLACKHOLE_PORT;
    }
--- config
    location = /t {
        proxy_read_timeout 30s;
        proxy_pass http://bh;
    }
--- request
GET /t
--- timeout: 0.3
--- abort
--- ignore_response
--- wait: 0.1
--- error_log
client prematurely closed connection
--- no_error_log
[alert]



=== TEST 12: raw_request, sent as is
--- config
    location = /t { return 200 "raw $request_method $server_protocol\n"; }
--- raw_request eval
"GET /t HTTP/1.0\r\nHost: x\r\n\r\n"
--- response_body
raw GET HTTP/1.0



=== TEST 13: raw_request in pieces with a delay
--- config
    location = /t { return 200 "pieces\n"; }
--- raw_request eval
["GET /t HTT", "P/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"]
--- raw_request_middle_delay: 0.05
--- response_body
pieces



=== TEST 14: more_headers eval
--- config
    location = /t { return 200 "$http_x_a\n"; }
--- more_headers eval
"X-A: " . (6 * 7)
--- request
GET /t
--- response_body
42



=== TEST 15: SKIP is honoured
--- SKIP
--- config
    location = /t { return 500; }
--- request
GET /t



=== TEST 16: no_check_leak is accepted and ignored
--- config
    location = /t { return 204; }
--- request
GET /t
--- no_check_leak
--- error_code: 204
--- response_body eval
""



=== TEST 17: must_die: nginx refuses the config, error_log sees why
--- config
    location = /t { return 200; }
    location = /t { return 200; }
--- must_die
--- error_log
duplicate location "/t"
