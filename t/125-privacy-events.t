# Hash mode (SPEC 4a): "the raw value is never sent to Redis and appears in
# no log and no event"; quota_events off publishes nothing.
#
# What the module controls, and what is checked here: every command it
# sends to Redis (MONITOR sees the exact argv), the events it publishes,
# the alerts stream, every key, the bodies it writes, and its own log
# lines at debug level.  nginx core itself, at debug level, dumps request
# headers ("http header: ...") and the headers proxy_pass forwards ("http
# proxy header: ..."): those lines are nginx's, not the module's, exist
# only in a --with-debug build at error_log debug, and are left out.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use IO::Socket::INET;
use IO::Select;
use Time::HiRes qw(time);
use Digest::SHA qw(sha256_hex);

redis_flush();

my $SECRET = 'Raw-Key-Sup3rS3cret-7x9q';
my $HASH = sha256_hex($SECRET);

sub http_config {
    my ($events) = @_;
    return <<"_EOC_";
    quota_redis 127.0.0.1:\$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_events $events;
    quota_metric a;
    quota_metric t;
    quota_plan basic { limit a 3; limit t 100; overage t 1; }
    quota_default_plan basic;
_EOC_
}

my $server = <<'_EOC_';
    quota on;
    quota_tenant $http_x_api_key hash;
    quota_route POST /a a=1;
    quota_route POST /t t=10;
    quota_reconcile t $arg_used;

    location / {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location = /usage { quota_usage; }
    location = /alerts { quota_alerts; }

    location /origin {
        quota off;
        return 200 "ok\n";
    }
_EOC_

# a raw connection to the test Redis that sent $cmd and read its first reply
sub raw_redis {
    my (@cmd) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $ENV{TEST_NGINX_REDIS_PORT})
        or die "redis: $!";
    my $req = '*' . @cmd . "\r\n";
    $req .= '$' . length($_) . "\r\n$_\r\n" for @cmd;
    print $s $req;
    return $s;
}

# everything the connection received until $marker shows up in it
sub read_until {
    my ($s, $marker) = @_;
    my $buf = '';
    my $sel = IO::Select->new($s);
    my $deadline = time + 10;
    while (index($buf, $marker) < 0 && time < $deadline) {
        last unless $sel->can_read($deadline - time);
        sysread($s, $buf, 65536, length $buf) or last;
    }
    return $buf;
}

# the published messages, up to a PING sent after the requests: Redis
# answers in order, so anything published before is in front of the PONG
sub published {
    my ($sub) = @_;
    print $sub "*2\r\n\$4\r\nPING\r\n\$6\r\nsynced\r\n";
    my $buf = read_until($sub, 'synced');
    return $buf =~ /\$\d+\r\n(\{[^\r]*\})\r\n/g;
}

sub subscriber {
    my $s = raw_redis('SUBSCRIBE', 'quota:events');
    read_until($s, ":1\r\n");
    return $s;
}

my ($monitor, @events, @bodies);
my $log = nginx_run(http_config => http_config('on'), config => $server,
                    no_root_location => 1, log_level => 'debug',
                    code => sub {
    my ($port) = @_;
    $monitor = raw_redis('MONITOR');
    read_until($monitor, "+OK\r\n");
    my $sub = subscriber();
    my %h = ('X-API-Key' => $SECRET);

    # charges, the 80 % and 100 % alerts, refusals, overage, reconcile,
    # usage and alerts endpoints
    push @bodies, http_request($port, 'POST', '/a', \%h, '') for 1 .. 5;
    push @bodies, http_request($port, 'POST', "/t?used=$_", \%h, '') for 30, 150;
    push @bodies, http_request($port, 'GET', '/usage?daily=1', \%h);
    push @bodies, http_request($port, 'GET', '/alerts', \%h);
    # a value with bytes only hash mode accepts (spaces, braces)
    push @bodies, http_request($port, 'POST', '/a', { 'X-API-Key' => "$SECRET {x}" }, '');
    @events = published($sub);
});

# the marker goes through the same Redis after nginx stopped: MONITOR has
# shown every command nginx sent before it
redis('ECHO', 'monitor-marker');
my $mon = read_until($monitor, 'monitor-marker');
close $monitor;

is(scalar(grep { $_->{status} eq '402' } @bodies[0 .. 4]), 2,
   'the tenant went past its limit (alerts and refusals happened)');
like($mon, qr/EVALSHA.*\Q{$HASH}\E/, 'MONITOR saw the charges, under the hash');
ok(index($mon, $SECRET) < 0, 'the raw value is in no command sent to Redis')
    or diag((grep { index($_, $SECRET) >= 0 } split /\n/, $mon)[0]);

cmp_ok(scalar @events, '>=', 5, 'events were published (usage updates and alerts)');
my $HASH2 = sha256_hex("$SECRET {x}");
ok((grep { /"tenant_id":"(?:$HASH|$HASH2)"/ } @events) == @events, 'every event names a hash');
ok(!(grep { index($_, $SECRET) >= 0 } @events), 'no event holds the raw value');

my $stream = redis('XRANGE', "quota:{$HASH}:alerts", '-', '+');
cmp_ok(scalar @$stream, '>=', 2, 'alerts were written to the stream');
ok(index(join("\n", map { join ' ', @{ $_->[1] } } @$stream), $SECRET) < 0,
   'no alert record holds the raw value');

my @keys = @{ redis('KEYS', '*') };
ok(scalar(grep { /\Q{$HASH}\E/ } @keys), 'keys are named by the hash');
ok(!(grep { index($_, $SECRET) >= 0 } @keys), 'no key holds the raw value');
ok(!(grep { index($_->{raw}, $SECRET) >= 0 } @bodies),
   'no response (headers, JSON, alerts) holds the raw value');
like($bodies[7]{body}, qr/^\{"tenant_id":"$HASH",/, 'usage: tenant_id is the hash');

# log entries: a line with a timestamp and the lines that continue it (the
# proxy module dumps the whole upstream request as one entry)
my @entries;
for my $l (split /\n/, $log) {
    if ($l =~ m{^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d } || !@entries) {
        push @entries, $l;
    } else {
        $entries[-1] .= "\n$l";
    }
}
my $core = qr/^\S+ \S+ \[debug\] \d+#\d+: \*\d+ (?:http header: "|http proxy header:|http script var: ")/;
my @ours = grep { /^\S+ \S+ \[\w+\] \d+#\d+: (?:\*\d+ )?quota[: ]/ } @entries;
cmp_ok(scalar @ours, '>', 5, 'the module logged at debug level');
like($log, qr/QUOTA_EXCEEDED for tenant "$HASH"/, 'the refusal is logged with the hash');
ok(!(grep { index($_, $SECRET) >= 0 } @ours), 'no line of the module holds the raw value');
my @leaks = grep { index($_, $SECRET) >= 0 && !/$core/ } @entries;
is_deeply(\@leaks, [], 'the raw value is in no log entry but nginx core\'s'
          . ' dumps of request headers and variables')
    or diag(join "\n", @leaks[0 .. ($#leaks < 5 ? $#leaks : 5)]);


# quota_events off: alerts go to the stream, nothing is published
redis_flush();
my @off;
nginx_run(http_config => http_config('off'), config => $server,
          no_root_location => 1, code => sub {
    my ($port) = @_;
    my $sub = subscriber();
    http_request($port, 'POST', '/a', { 'X-API-Key' => 'quiet' }, '') for 1 .. 4;
    @off = published($sub);
});
my $quiet = sha256_hex('quiet');
cmp_ok(scalar @{ redis('XRANGE', "quota:{$quiet}:alerts", '-', '+') }, '>=', 2,
       'quota_events off: alerts still go to the stream');
is_deeply(\@off, [], 'quota_events off: nothing published');

# the default, alerts: the same requests publish the alerts only
redis_flush();
my @def;
nginx_run(http_config => http_config('alerts'), config => $server,
          no_root_location => 1, code => sub {
    my ($port) = @_;
    my $sub = subscriber();
    http_request($port, 'POST', '/a', { 'X-API-Key' => 'quiet' }, '') for 1 .. 4;
    @def = published($sub);
});
is(scalar @def, 2, 'quota_events alerts: the two alerts are published');
ok(!(grep { !/"type":"alert"/ } @def), 'quota_events alerts: no usage_update');

done_testing();
