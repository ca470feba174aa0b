# A worker's first Redis connection is timed from when it starts, not from
# when nginx began reading its configuration.  nginx updates its cached
# clock (ngx_current_msec) at the start of ngx_init_cycle() and not again
# before init_process: a worker (or the single process) that arms its
# connect_timeout= and its hold window there arms them against a clock
# that is as old as the configuration took to read (a big configuration,
# or a loaded machine: under ASan the suite saw 1.8 s).  The first event
# loop iteration then finds the connect timer expired before the
# handshake's reply could come: "redis connect timed out", and the first
# requests got the failure mode (t/020, t/030, t/110 under load).
#
# Here the configuration takes ~connect_timeout + 2 s to read, for sure:
# it includes a FIFO that nobody writes to until then (open() waits for a
# writer; the FIFO then reads as empty).  The first request, sent as soon
# as nginx listens, must be charged, and no connect may time out.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest qw(:DEFAULT nginx_start nginx_stop);
use QuotaTime;
use File::Temp qw(tempdir);
use POSIX ();
use Time::HiRes qw(time sleep);

redis_flush();
my $start = month_start();

# valgrind and ASan start workers and handshakes slowly
my $slow = $ENV{TEST_NGINX_USE_VALGRIND} ? 5 : $ENV{TEST_NGINX_USE_SANITIZER} ? 2 : 1;
my $connect_ms = 1000 * $slow;
my $hold = $connect_ms / 1000 + 2;     # the configuration reads this long

for my $master (0, 1) {
    my $name = $master ? 'master + worker' : 'single process';
    my $tenant = "clock-$master";
    my $dir = tempdir(CLEANUP => 1);
    my $fifo = "$dir/slow.conf";
    POSIX::mkfifo($fifo, 0600) or die "mkfifo: $!\n";

    # the writer: opens the FIFO (nginx's open() returns), closes it (nginx
    # reads an empty file) $hold seconds after nginx was started
    my $pid = fork // die "fork: $!\n";
    if ($pid == 0) {
        sleep $hold;
        open my $w, '>', $fifo or POSIX::_exit(1);
        close $w;
        POSIX::_exit(0);
    }

    my $t0 = time;
    my $port = free_port();
    my $h = nginx_start(
        servroot      => QuotaTest::_servroot_base() . "_137",
        port          => $port,
        master        => $master,
        workers       => 1,
        start_timeout => 30 * $slow + $hold,
        log_level     => 'info',
        no_root_location => 1,
        main_config   => "include $fifo;",
        http_config   => <<"_EOC_",
    quota_redis 127.0.0.1:$ENV{TEST_NGINX_REDIS_PORT} timeout=3s connect_timeout=${connect_ms}ms;
    quota_metric a;
    quota_plan p { limit a 100; }
    quota_default_plan p;
_EOC_
        config        => <<"_EOC_",
    location / {
        quota on;
        quota_tenant \$http_x_api_key;
        quota_route * /** a=1;
        add_header X-Status \$quota_status always;
        proxy_pass http://127.0.0.1:$port/origin;
    }

    location /origin {
        return 200 "ok\\n";
    }
_EOC_
    );
    waitpid $pid, 0;
    if ($h->{error}) {
        fail("$name: nginx started");
        diag($h->{error});
        next;
    }
    my $took = time - $t0;
    ok($took >= $hold - 0.1, sprintf("%s: the configuration took %.1fs to read",
                                     $name, $took));

    # at once: the first connection is still in its handshake, the request
    # is held for it
    my $r = http_get($port, '/x', { 'X-API-Key' => $tenant });
    nginx_stop($h, master => $master, check => $name);
    my $log = QuotaTest::_slurp("$h->{servroot}/logs/error.log");

    is($r->{status}, 200, "$name: the first request answers 200");
    is($r->{headers}{'x-status'}, 'ALLOWED', "$name: ... charged (not the failure mode)");
    is(redis('HGET', "quota:{$tenant}:usage:$start", 'a'), 1, "$name: ... once");
    unlike($log, qr/redis connect timed out/,
           "$name: the first connection did not time out")
        or diag(join "\n", grep { /connect timed out/ } split /\n/, $log);
    unlike($log, qr/\[(alert|crit|emerg)\]/, "$name: no alert");
}

done_testing();
