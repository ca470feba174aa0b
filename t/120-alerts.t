# Alerts (SPEC 4a): at most one per tenant, metric and period, written by
# the charge script itself; the quota_alerts endpoint pages and filters
# them; quota_events publishes them (and usage updates) on Pevents.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaTime;
use IO::Socket::INET;
use IO::Select;
use Time::HiRes qw(sleep time);
use POSIX ();
use File::Temp qw(tempdir);

redis_flush();
my $start = month_start();

sub http_config {
    my ($events) = @_;
    return <<"_EOC_";
    quota_redis 127.0.0.1:\$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_events $events;
    quota_metric a;
    quota_metric b;
    quota_plan basic { limit a 10; limit b 4; overage b 1; }
    quota_default_plan basic;
_EOC_
}

my $server = <<'_EOC_';
    quota on;
    quota_tenant $http_x_t;
    quota_route POST /a a=1;
    quota_route POST /b b=1;

    location / {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location = /alerts {
        quota_alerts;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_

# a Redis subscriber on the events channel, read without blocking
sub subscribe {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $ENV{TEST_NGINX_REDIS_PORT}) or die $!;
    print $s "*2\r\n\$9\r\nSUBSCRIBE\r\n\$12\r\nquota:events\r\n";
    my $buf = '';
    my $sel = IO::Select->new($s);
    while ($buf !~ /subscribe.*:1\r\n/s && $sel->can_read(2)) {
        sysread($s, $buf, 65536, length $buf) or last;
    }
    return $s;
}

# every message published before now: the requests have been answered, so
# their scripts (which publish) have run; a PING on the subscriber is
# answered after every message published before it, so late duplicates
# are seen too (no waiting for "enough" messages)
sub messages {
    my ($s) = @_;
    print $s "*2\r\n\$4\r\nPING\r\n\$6\r\nsynced\r\n";
    my $buf = '';
    my $sel = IO::Select->new($s);
    my $deadline = time + 5;
    while (index($buf, 'synced') < 0 && time < $deadline) {
        last unless $sel->can_read($deadline - time);
        sysread($s, $buf, 65536, length $buf) or last;
    }
    return $buf =~ /\$\d+\r\n(\{[^\r]*\})\r\n/g;
}

sub post { my ($port, $t, $path) = @_; http_request($port, 'POST', $path // '/a', { 'X-T' => $t }, '') }
sub alerts { my ($port, $t, $q) = @_; http_request($port, 'GET', '/alerts' . ($q // ''), { 'X-T' => $t }) }

# the shipped example consumer, scripts/events, run in the background
sub numsub { redis('PUBSUB', 'NUMSUB', 'quota:events')->[1] }

sub start_consumer {
    my ($out) = @_;
    my $before = numsub();
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        POSIX::setpgid(0, 0);
        open STDOUT, '>', $out or POSIX::_exit(1);
        { exec "$FindBin::Bin/../scripts/events", '-p', $ENV{TEST_NGINX_REDIS_PORT}, '--alerts' }
        POSIX::_exit(127);
    }
    # subscribed when Redis counts one more subscriber on the channel
    my $deadline = time + 10;
    sleep 0.02 while numsub() <= $before && time < $deadline;
    return $pid;
}

# 1. crossing 80 % then 100 %: exactly one approaching_limit and one
#    quota_exceeded, however many requests are refused; events carry them
{
    my (@codes, @events, $r, $page2, $typed, $capped, $consumer);
    my $consumer_out = tempdir(CLEANUP => 1) . '/events.out';
    nginx_run(no_root_location => 1, http_config => http_config('alerts'),
              config => $server, code => sub {
        my ($port) = @_;
        my $sub = subscribe();
        $consumer = start_consumer($consumer_out);
        @codes = map { post($port, 'acme')->{status} } 1 .. 15;
        @events = messages($sub);
        # the consumer prints what it received: wait for its two lines
        my $deadline = time + 5;
        while (time < $deadline) {
            open my $fh, '<', $consumer_out or last;
            my @l = <$fh>;
            last if @l >= 2;
            sleep 0.02;
        }
        kill 'TERM', -$consumer;
        waitpid $consumer, 0;
        $r = alerts($port, 'acme');
        $page2 = alerts($port, 'acme', '?page=2&per_page=1');
        $typed = alerts($port, 'acme', '?type=approaching_limit');
        $capped = alerts($port, 'acme', '?per_page=500');
    });

    is_deeply(\@codes, [(200) x 10, (402) x 5], '10 admitted, 5 refused');
    like($r->{body}, qr/^\{"alerts":\[\{"alert_id":"\d+-\d+","type":"quota_exceeded","metric":"a","message":"a quota exhausted \(10 of 10\)\.","used":10,"limit":10,"triggered_at":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"\},\{"alert_id":"\d+-\d+","type":"approaching_limit","metric":"a","message":"a usage reached 80% of the limit \(8 of 10\)\.","used":8,"limit":10,"triggered_at":"[^"]+"\}\],"total":2,"page":1,"per_page":20\}$/,
         'exactly one approaching_limit (at 8) and one quota_exceeded (at 10), newest first')
        or diag $r->{body};
    like($page2->{body}, qr/^\{"alerts":\[\{[^{}]*"type":"approaching_limit"[^{}]*\}\],"total":2,"page":2,"per_page":1\}$/,
         'paging: page 2 of 1 per page is the older alert');
    like($typed->{body}, qr/^\{"alerts":\[\{[^{}]*"type":"approaching_limit"[^{}]*\}\],"total":1,"page":1,"per_page":20\}$/,
         'type filter');
    like($capped->{body}, qr/"per_page":100\}$/, 'per_page 500 is capped at 100');
    is(scalar @events, 2, 'two alert events published') or diag explain \@events;
    like($events[0] // '', qr/"type":"alert"/, 'event type alert');
    like($events[0] // '', qr/"alert_type":"approaching_limit"/, 'first event: approaching_limit');
    like($events[1] // '', qr/"alert_type":"quota_exceeded"/, 'second event: quota_exceeded');
    like($events[0] // '', qr/"tenant_id":"acme"/, 'event tenant_id');
    like($events[0] // '', qr/"quota_reset_date":"\Q${\ next_month_reset()}\E"/, 'event quota_reset_date');
    like($events[0] // '', qr/"used":8/, 'event used is the value when it fired');
    like($events[0] // '', qr/"percent":80/, 'event percent');
    like($events[0] // '', qr/"remaining":2/, 'event remaining');
    like($events[0] // '', qr/"timestamp":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"/, 'event timestamp');
    is(redis('XLEN', 'quota:{acme}:alerts'), 2, 'two entries in the stream');
    my @lines = do { open my $f, '<', $consumer_out or die $!; <$f> };
    is(scalar @lines, 2, 'scripts/events printed the two alerts, one JSON per line');
    like($lines[0] // '', qr/^\{.*"alert_type":"approaching_limit".*\}$/, 'scripts/events output');
}

# 2. overage_started, spending_cap_reached, quota_reset; another tenant's
#    alerts stay its own; quota_events on: one usage_update per charge
{
    redis('HSET', 'quota:{over}:account', 'overage', 1, 'cap', 2);
    redis('HSET', 'quota:{back}:usage:' . prev_month_start(), 'a', 3);
    my (@events, $over, $back, $none);
    nginx_run(no_root_location => 1, http_config => http_config('on'),
              config => $server, code => sub {
        my ($port) = @_;
        my $sub = subscribe();
        post($port, 'over', '/b') for 1 .. 8;    # 4 in, 2 overage, then the cap
        post($port, 'back', '/a');
        @events = messages($sub);
        $over = alerts($port, 'over');
        $back = alerts($port, 'back');
        $none = alerts($port, 'nobody');
    });

    my @types = $over->{body} =~ /"type":"(\w+)"/g;
    is_deeply(\@types, [qw(spending_cap_reached overage_started quota_exceeded approaching_limit)],
              'overage: approaching, exceeded, overage_started, then spending_cap_reached once')
        or diag $over->{body};
    like($over->{body}, qr/\{[^{}]*"type":"spending_cap_reached","metric":null,[^{}]*\}/,
         'spending_cap_reached: metric null (the cap is the account\'s)');
    like($back->{body}, qr/^\{"alerts":\[\{[^{}]*"type":"quota_reset","metric":"a"[^{}]*\}\],"total":1,/,
         'quota_reset at the first charge of a period after usage in the previous one');
    is($none->{body}, '{"alerts":[],"total":0,"page":1,"per_page":20}', 'a tenant without alerts');

    my @updates = grep { /"type":"usage_update"/ } @events;
    is(scalar @updates, 7, 'quota_events on: one usage_update per charge (6 + 1)')
        or diag explain \@events;
    like($updates[0] // '', qr/"metric":"b"/, 'usage_update metric');
    like($updates[0] // '', qr/"used":1,/, 'usage_update used');
    my @cap = grep { /"alert_type":"spending_cap_reached"/ } @events;
    is(scalar @cap, 1, 'one spending_cap_reached event');
    like($cap[0] // '', qr/"metric":null[,}]/, 'spending_cap_reached event: metric null, like the alert (SPEC 4a)');
    my @alerts = grep { /"type":"alert"/ } @events;
    is(scalar @alerts, 5, 'quota_events on publishes the alerts too');
}

done_testing();
