# quota_lease: a settle that cannot reach Redis is sent again until Redis
# answers.  Leases are outstanding when Redis dies (its data saved); their
# ttl passes while it is down, so their settles fail; once the same Redis
# is back (the RDB loaded), the settles get through and usage and the
# daily counter are exactly what was admitted.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest qw(:DEFAULT nginx_start nginx_stop valgrind_problems);
use QuotaTime;
use File::Temp qw(tempdir);
use Time::HiRes qw(sleep time);

# a redis-server of our own, restarted on the same port and directory
my $rs = QuotaTest::restartable_redis();
my $rport = $rs->{port};

sub r { $rs->cmd(@_) }

my $start = month_start();
my $today = today();

my $port = free_port();
my $root = tempdir('t213-XXXX', TMPDIR => 1, CLEANUP => 1);
my $http = <<"_EOC_";
    quota_redis 127.0.0.1:$rport timeout=3s connect_timeout=1s;
    quota_failure_mode closed;
    quota_zone q:1m;
    quota_metric a;
    quota_plan p { limit a 1000000; }
    quota_default_plan p;
_EOC_
my $h = nginx_start(servroot => $root, port => $port, workers => 2, master => 1,
                    no_root_location => 1, http_config => $http, config => <<"_EOC_");
    quota on;
    quota_tenant \$http_x_t;
    quota_route POST /a a=1;
    quota_lease 50 ttl=1s;

    location / { proxy_pass http://127.0.0.1:$port/origin; }
    location /origin { quota off; return 200 "ok\\n"; }
_EOC_
die "nginx: $h->{error}\n" if $h->{error};
QuotaTest::wait_module_ready($root, $http, 2);

my %st;
for my $t (qw(r1 r2 r3)) {
    for (1 .. 30) {
        my $r = http_request($port, 'POST', '/a', { 'X-T' => $t }, '', 10);
        $st{ $r->{status} }++;
    }
}
is_deeply(\%st, { 200 => 90 }, 'admitted before the outage');
my $held = 0;
$held += r('HGET', "quota:{$_}:usage:$start", 'a') // 0 for qw(r1 r2 r3);
cmp_ok($held, '>', 90, "leases outstanding ($held reserved for 90 admitted)");

# Redis dies with its data saved; the leases' ttl passes meanwhile
r('SAVE');
$rs->down('KILL');
sleep 2.5;

$rs->up;

my $deadline = time + 20;
my @u;
while (time < $deadline) {
    @u = map { r('HGET', "quota:{$_}:usage:$start", 'a') // 0 } qw(r1 r2 r3);
    last if "@u" eq '30 30 30';
    sleep 0.1;
}
is("@u", '30 30 30', 'the settles reached Redis once it was back: usage exact');
is(join(' ', map { r('HGET', "quota:{$_}:daily:$start", "a:$today") // 0 } qw(r1 r2 r3)),
   '30 30 30', 'daily counters exact');

nginx_stop($h, master => 1);
is(join(' ', map { r('HGET', "quota:{$_}:usage:$start", 'a') // 0 } qw(r1 r2 r3)),
   '30 30 30', 'still exact after the quit (no settle applied twice)');

my $log = QuotaTest::_slurp("$root/logs/error.log");
unlike($log, qr/\[(alert|crit|emerg)\]|not returned|exited on signal/,
       'no alert, nothing given up');
if ($h->{valgrind}) {
    my @p = valgrind_problems($root);
    is(scalar @p, 0, 'valgrind clean') or diag(join "\n", @p);
}
if ($ENV{TEST_NGINX_USE_SANITIZER}) {
    my @p = QuotaTest::sanitizer_problems($root);
    is(scalar @p, 0, 'no sanitizer report') or diag(join "\n", @p);
}

stop_redis($rs);

done_testing();
