# quota_lease: a grant sent before midnight and answered after it (review
# L2).  The script charged it to the day of the second the charge was
# built (ARG_TODAY), so it must not become a lease of the new day: its
# unspent units go back at once, and the requests of the new day are
# counted on the new day.  nginx runs under libfaketime from 23:59:50
# (the clock runs, "env FAKETIME" keeps it in the workers); at 23:59:59
# Redis stalls 2.5 s (SIGSTOP) while one request is sent.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use Time::HiRes qw(sleep time);
use POSIX ();

my ($faketime) = grep { -e } map { "$_/faketime/libfaketime.so.1" }
                 '/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu',
                 '/usr/lib';
ok($faketime, 'libfaketime is installed (apt-get install faketime)')
    or do { done_testing(); exit 1 };

my $rs = start_redis();
my $rport = $rs->{port};

my $http = <<"_EOC_";
    quota_redis 127.0.0.1:$rport timeout=20s;
    quota_zone q:1m;
    quota_metric a;
    quota_plan p { limit a 100000; }
    quota_default_plan p;
_EOC_

my $server = <<'_EOC_';
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /a a=1;
    quota_lease 50 ttl=60s;

    location / {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_

my (%st, $crossed, $sent14);
{
    local $ENV{LD_PRELOAD} = $faketime;
    local $ENV{FAKETIME} = '@2026-11-14 23:59:50';    # and the clock runs
    local $ENV{FAKETIME_DONT_FAKE_MONOTONIC} = 1;
    nginx_run(workers => 1, master => 1, http_config => $http,
              main_config => "env FAKETIME;\nenv FAKETIME_DONT_FAKE_MONOTONIC;",
              config => $server, no_root_location => 1, code => sub {
        my ($port) = @_;
        my $date = sub { http_get($port, '/origin/')->{headers}{date} // '' };
        my $deadline = time + 30;
        sleep 0.05 while $date->() !~ / 23:59:59 / && time < $deadline;
        $sent14 = $date->() =~ / 14 Nov /;
        # the grant sent at 23:59:59 (TODAY = the 14th) is answered on
        # the 15th
        kill 'STOP', $rs->{pid};
        my $pid = fork;
        die "fork: $!" unless defined $pid;
        if ($pid == 0) {
            sleep 2.5;
            kill 'CONT', $rs->{pid};
            POSIX::_exit(0);
        }
        my $r = http_request($port, 'POST', '/a', { 'X-T' => 'd' }, '', 20);
        waitpid $pid, 0;
        $crossed = $date->() =~ / 15 Nov /;
        $st{first} = $r->{status};
        for (1 .. 5) {
            $r = http_request($port, 'POST', '/a', { 'X-T' => 'd' }, '', 20);
            $st{15}++ if $r->{status} eq '200';
        }
    });
}

SKIP: {
    skip 'the fake clock did not cross midnight as planned (slow start)', 6
        unless $sent14 && $crossed;

    my %d = @{ $rs->cmd('HGETALL', 'quota:{d}:daily:2026-11-01') };
    is($st{first}, 200, 'the request sent on the 14th is admitted');
    is($st{15}, 5, 'five requests admitted on the 15th');
    is($rs->cmd('HGET', 'quota:{d}:usage:2026-11-01', 'a'), 6,
       'usage exact at rest');
    is($d{'a:2026-11-14'}, 1, 'the 14th counts the one request sent on the 14th');
    is($d{'a:2026-11-15'}, 5, 'the 15th counts the five requests of the 15th');
    ok(1, 'crossed midnight');
}

stop_redis($rs);

done_testing();
