# quota_live (SPEC 11): /ws/live over WebSocket (a real client: Debian's
# python3-websockets) and Server-Sent Events, fed by the events channel.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use IPC::Open2;
use IO::Select;
use IO::Socket::INET;
use POSIX ();
use File::Path ();
use Time::HiRes qw(time sleep);
use Digest::SHA qw(sha256_hex sha1_base64);

my $PY = '/usr/bin/python3';
my $CLIENT = "$FindBin::Bin/data/live-client.py";

plan skip_all => 'python3-websockets missing (scripts/setup installs it)'
    unless system($PY, '-c', 'import websockets') == 0;

redis_flush();

my $SECRET = 'Live-Key-Sup3rS3cret-4k2z';

sub http_config {
    my (%o) = @_;
    my $port = $o{redis_port} || '$TEST_NGINX_REDIS_PORT';
    return <<"_EOC_";
    quota_redis 127.0.0.1:$port timeout=3s;
    quota_metric a;
    quota_metric b;
    quota_plan basic { limit a 4; limit b 10; }
    quota_default_plan basic;
    quota_warning_threshold 50%;
_EOC_
}

sub server_config {
    my (%o) = @_;
    my $hash = $o{hash} ? ' hash' : '';
    my $ping = $o{ping} ? " ping=$o{ping}" : '';
    return <<"_EOC_";
    quota on;
    quota_tenant \$http_x_api_key$hash;
    quota_route POST /a a=1;
    quota_route POST /ab a=1 b=2;

    location / {
        proxy_pass http://127.0.0.1:\$TEST_NGINX_SERVER_PORT/origin;
    }
    location = /ws/live { quota_live$ping; }
    location = /usage { quota_usage; }
    location = /metrics { quota_metrics; }
    location /origin {
        quota off;
        return 200 "ok\\n";
    }
_EOC_
}

# ---------------------------------------------------------------- client --

sub client {
    my ($url, @headers) = @_;
    my ($out, $in);
    my $pid = open2($out, $in, $PY, $CLIENT, $url, @headers);
    $out->blocking(0);
    return { pid => $pid, out => $out, in => $in, buf => '' };
}

# the next line the client printed, or undef after $timeout seconds
sub line {
    my ($c, $timeout) = @_;
    my $deadline = time + ($timeout || 10);
    my $sel = IO::Select->new($c->{out});
    while (1) {
        if ($c->{buf} =~ s/\A([^\n]*)\n//) {
            return $1;
        }
        my $left = $deadline - time;
        return undef if $left <= 0;
        next unless $sel->can_read($left);
        my $n = sysread($c->{out}, $c->{buf}, 65536, length $c->{buf});
        return undef if defined $n && $n == 0 && $c->{buf} !~ /\n/;
    }
}

sub tell_client {
    my ($c, $cmd) = @_;
    local $SIG{PIPE} = 'IGNORE';
    my $fh = $c->{in};
    print {$fh} "$cmd\n";
    $fh->flush;
}

sub done_client {
    my ($c) = @_;
    local $SIG{PIPE} = 'IGNORE';
    close $c->{in};
    my $deadline = time + 20;
    while (time < $deadline) {
        return if waitpid($c->{pid}, POSIX::WNOHANG()) == $c->{pid};
        sleep 0.05;
    }
    kill 'KILL', $c->{pid};
    waitpid($c->{pid}, 0);
}

sub charge {
    my ($port, $key) = @_;
    return QuotaTest::http_request($port, 'POST', '/a',
                                   { 'X-API-Key' => $key }, '')->{status};
}

sub json_field {
    my ($msg, $name) = @_;
    return $msg =~ /"\Q$name\E":("(?:[^"\\]|\\.)*"|[^,}]*)/ ? $1 : undef;
}

# ---------------------------------------------------------------- tests ---

# quota_live with quota_redis_sentinel and quota_redis_cluster: t/069

# handshake, snapshot first, one usage_update per charge with exact
# numbers, an alert at the threshold, ping/pong, close handshake
{
    redis_flush();
    my $log = nginx_run(
        http_config => http_config(),
        config => server_config(),
        no_root_location => 1,
        log_level => 'info',
        code => sub {
            my ($port) = @_;
            my $c = client("ws://127.0.0.1:$port/ws/live",
                           'X-API-Key: alice');
            is(line($c), 'OPEN 101', 'ws: 101 with a valid accept key');
            my $snap = line($c) // '';
            like($snap, qr/^MSG \{"type":"snapshot",/, 'ws: snapshot first');
            like($snap, qr/"tenant_id":"alice"/, 'ws: snapshot is alice\'s');

            my $other = client("ws://127.0.0.1:$port/ws/live",
                               'X-API-Key: bob');
            is(line($other), 'OPEN 101', 'ws: bob connected');
            like(line($other) // '', qr/snapshot/, 'ws: bob snapshot');

            is(charge($port, 'alice'), 200, 'charge 1');
            my $m = line($c) // '';
            like($m, qr/^MSG .*"type":"usage_update"/, 'ws: usage_update');
            is(json_field($m, 'used'), '1', 'ws: used 1');
            is(json_field($m, 'limit'), '4', 'ws: limit 4');
            is(json_field($m, 'remaining'), '3', 'ws: remaining 3');

            is(charge($port, 'alice'), 200, 'charge 2');
            my @got;
            for (1 .. 2) { push @got, line($c) // '' }
            my ($upd) = grep { /usage_update/ } @got;
            my ($alert) = grep { /"type":"alert"/ } @got;
            is(json_field($upd // '', 'used'), '2', 'ws: used 2');
            like($alert // '', qr/"alert_type":"approaching_limit"/,
                 'ws: the alert at 50% arrives');

            is(line($other, 1), undef, 'ws: no frame for another tenant');

            tell_client($c, 'ping');
            is(line($c), 'PONG', 'ws: ping answered with pong');

            tell_client($c, 'close 1000');
            is(line($c), 'CLOSED 1000 ', 'ws: client close answered (1000)');
            done_client($c);

            tell_client($other, 'close 1000');
            line($other);
            done_client($other);

            my $m2 = QuotaTest::http_get($port, '/metrics');
            like($m2->{body}, qr/^quota_live_clients 0$/m,
                 'metrics: no live client left');
            like($m2->{body}, qr/^quota_live_frames_total [1-9]/m,
                 'metrics: frames counted');
        });
    unlike($log, qr/\[(alert|crit|emerg)\]/, 'no alert in the log');
}

# a rule with two metrics: one usage_update per charged metric
{
    redis_flush();
    nginx_run(
        http_config => http_config(),
        config => server_config(),
        no_root_location => 1,
        code => sub {
            my ($port) = @_;
            my $c = client("ws://127.0.0.1:$port/ws/live?api_key=gina");
            is(line($c), 'OPEN 101', 'two metrics: connected');
            like(line($c) // '', qr/snapshot/, 'two metrics: snapshot');
            is(QuotaTest::http_request($port, 'POST', '/ab',
                   { 'X-API-Key' => 'gina' }, '')->{status}, 200,
               'two metrics: charge a=1 b=2');
            my @m = grep { /usage_update/ } map { line($c) // '' } 1 .. 2;
            my %used = map { (json_field($_, 'metric') // '') =>
                             json_field($_, 'used') } @m;
            is_deeply(\%used, { '"a"' => 1, '"b"' => 2 },
                      'two metrics: a usage_update for a and one for b');
            is(line($c, 1), undef, 'two metrics: nothing more');
            tell_client($c, 'close 1000');
            line($c);
            done_client($c);
        });
}

# refusals before any upgrade
{
    redis_flush();
    nginx_run(
        http_config => http_config(),
        config => server_config(),
        no_root_location => 1,
        code => sub {
            my ($port) = @_;
            my $c = client("ws://127.0.0.1:$port/ws/live");
            is(line($c), 'REJECT 401', 'no key: 401 before the upgrade');
            done_client($c);

            my $r = QuotaTest::http_get($port, '/ws/live');
            is($r->{status}, 401, 'plain GET without key: 401');
            like($r->{body}, qr/"error":"MISSING_TENANT"/, '401 JSON');

            $r = QuotaTest::http_get($port, '/ws/live',
                                     { 'X-API-Key' => 'alice' });
            is($r->{status}, 400, 'no upgrade: 400');
            like($r->{body}, qr/"error":"BAD_UPGRADE"/, '400 JSON');

            $r = QuotaTest::http_get($port, '/ws/live',
                { 'X-API-Key' => 'alice', Upgrade => 'websocket',
                  Connection => 'Upgrade', 'Sec-WebSocket-Version' => 13,
                  'Sec-WebSocket-Key' => 'short' });
            is($r->{status}, 400, 'bad Sec-WebSocket-Key: 400');

            $r = QuotaTest::http_get($port, '/ws/live',
                { 'X-API-Key' => 'alice', Upgrade => 'websocket',
                  Connection => 'Upgrade', 'Sec-WebSocket-Version' => 8,
                  'Sec-WebSocket-Key' => 'dGhlIHNhbXBsZSBub25jZQ==' });
            is($r->{status}, 426, 'version 8: 426');
            is($r->{headers}{'sec-websocket-version'}, '13',
               '426 names version 13');

            # RFC 6455 1.3's sample key and its accept value
            my ($raw) = QuotaTest::http_exchange($port,
                "GET /ws/live HTTP/1.1\r\nHost: x\r\nX-API-Key: alice\r\n"
                . "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
                . "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                . "Sec-WebSocket-Version: 13\r\n\r\n", 2);
            like($raw, qr{^HTTP/1\.1 101 Switching Protocols\r\n},
                 'raw: 101 status line');
            like($raw, qr{\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK\+xOo=\r\n},
                 'raw: RFC 6455 sample accept key');
            like($raw, qr{\r\nUpgrade: websocket\r\n}i, 'raw: Upgrade');
            like($raw, qr{\r\nConnection: upgrade\r\n}i, 'raw: Connection');

            $r = QuotaTest::http_request($port, 'POST', '/ws/live',
                                         { 'X-API-Key' => 'alice' }, '');
            is($r->{status}, 405, 'POST: 405');
        });
}

# an unmasked client frame is a protocol error (RFC 6455 5.1: 1002)
{
    redis_flush();
    nginx_run(
        http_config => http_config(),
        config => server_config(),
        no_root_location => 1,
        code => sub {
            my ($port) = @_;
            my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                          PeerPort => $port) or die $!;
            print $s "GET /ws/live HTTP/1.1\r\nHost: x\r\nX-API-Key: alice\r\n"
                . "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                . "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                . "Sec-WebSocket-Version: 13\r\n\r\n";
            my $buf = '';
            my $sel = IO::Select->new($s);
            my $deadline = time + 5;
            while ($buf !~ /snapshot.*\}/s && time < $deadline) {
                $sel->can_read(1) or next;
                sysread($s, $buf, 65536, length $buf) or last;
            }
            like($buf, qr/"type":"snapshot"/, 'raw client: snapshot');
            # an unmasked text frame "hi"
            syswrite($s, "\x81\x02hi");
            my $rest = '';
            $deadline = time + 5;
            while (time < $deadline) {
                $sel->can_read(1) or next;
                my $n = sysread($s, $rest, 65536, length $rest);
                last unless $n;
            }
            like($rest, qr/\x88\x02\x03\xea/,
                 'unmasked frame: close 1002 (protocol error)');
            close $s;
        });
}

# SSE: the same events over text/event-stream
{
    redis_flush();
    nginx_run(
        http_config => http_config(),
        config => server_config(ping => '1s'),
        no_root_location => 1,
        code => sub {
            my ($port) = @_;
            my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                          PeerPort => $port) or die $!;
            print $s "GET /ws/live?api_key=carol HTTP/1.1\r\nHost: x\r\n"
                . "Accept: text/event-stream\r\n\r\n";
            my $buf = '';
            my $sel = IO::Select->new($s);
            my $read_until = sub {
                my ($re) = @_;
                my $deadline = time + 8;
                while ($buf !~ $re && time < $deadline) {
                    $sel->can_read(0.5) or next;
                    sysread($s, $buf, 65536, length $buf) or last;
                }
                return $buf =~ $re;
            };
            ok($read_until->(qr/event: snapshot\ndata: \{"type":"snapshot"/),
               'sse: snapshot event');
            like($buf, qr{^HTTP/1\.1 200 .*\r\nContent-Type: text/event-stream\r\n}s,
                 'sse: text/event-stream');
            like($buf, qr/retry: 3000\n\n/, 'sse: retry:');
            is(charge($port, 'carol'), 200, 'sse: charge');
            ok($read_until->(qr/event: usage_update\ndata: \{[^\n]*"used":1[,}]/),
               'sse: usage_update with used 1');
            ok($read_until->(qr/\n: ping\n\n/), 'sse: comment heartbeat');
            close $s;
        });
}

# a client that stops reading is closed (1008) before 1 MB is queued
{
    redis_flush();
    my $log = nginx_run(
        http_config => http_config(),
        config => server_config(),
        no_root_location => 1,
        code => sub {
            my ($port) = @_;
            my ($out, $in);
            my $pid = open2($out, $in, $PY, $CLIENT, '--raw-slow',
                            '127.0.0.1', $port, '/ws/live?api_key=slow');
            my $c = { pid => $pid, out => $out, in => $in, buf => '' };
            $out->blocking(0);
            is(line($c), 'OPEN 101', 'slow: connected');
            # wait for the subscription to have this client
            sleep 0.3;
            my $pad = 'x' x 100_000;
            my $t0 = time;
            for my $i (1 .. 150) {
                QuotaTest::redis('PUBLISH', 'quota:events',
                    qq({"type":"usage_update","tenant_id":"slow","n":$i,"pad":"$pad"}));
            }
            my $closed;
            my $deadline = time + 15;
            while (time < $deadline) {
                my $m = QuotaTest::http_get($port, '/metrics')->{body};
                if ($m =~ /^quota_live_clients 0$/m) { $closed = 1; last }
                sleep 0.2;
            }
            ok($closed, 'slow: the client was dropped');
            tell_client($c, 'read');
            my @l;
            while (defined(my $l = line($c, 15))) { push @l, $l; last if $l =~ /^EOF/ }
            my ($eof) = grep { /^EOF/ } @l;
            ok($eof, "slow: the connection ended ($eof)");
            my $m = QuotaTest::http_get($port, '/metrics')->{body};
            like($m, qr/^quota_live_dropped_total [1-9]/m, 'slow: counted');
            done_client($c);
        });
    unlike($log, qr/\[(alert|crit|emerg)\]/, 'slow: no alert');
    like($log, qr/live client does not read, (\d+) bytes queued/,
         'slow: logged');
    my ($q) = $log =~ /live client does not read, (\d+) bytes queued/;
    ok(defined $q && $q < 1024 * 1024, 'slow: queue stayed under 1 MB');
}

# hash mode: the raw key is in no frame, no log line
{
    redis_flush();
    my $hash = sha256_hex($SECRET);
    my $root;
    my $log = nginx_run(
        http_config => http_config(),
        config => server_config(hash => 1),
        no_root_location => 1,
        log_level => 'info',
        code => sub {
            my ($port, $r) = @_;
            $root = $r;
            my $c = client("ws://127.0.0.1:$port/ws/live?api_key=$SECRET");
            is(line($c), 'OPEN 101', 'hash: connected with ?api_key=');
            my $snap = line($c) // '';
            like($snap, qr/"tenant_id":"$hash"/, 'hash: snapshot by hash');
            is(charge($port, $SECRET), 200, 'hash: charge');
            my $m = line($c) // '';
            like($m, qr/usage_update/, 'hash: usage_update');
            unlike("$snap$m", qr/\Q$SECRET\E/, 'hash: no raw key in frames');
            tell_client($c, 'close 1000');
            line($c);
            done_client($c);
        });
    my $access = do { local (@ARGV, $/) = "$root/logs/access.log"; <> } // '';
    unlike($log, qr/\Q$SECRET\E/, 'hash: no raw key in the error log');
    unlike($log, qr/\[(alert|crit|emerg)\]/, 'hash: no alert');
    like($access, qr{GET /ws/live\?api_key=\*+ }, 'hash: masked in the access log');
    unlike($access, qr/\Q$SECRET\E/, 'hash: no raw key in the access log');
}

# a charge on another gateway node (a second nginx, same Redis) arrives
{
    redis_flush();
    my $p2 = QuotaTest::free_port();
    my $root2 = "$FindBin::Bin/servroot_live2.$$";
    (my $cfg2 = server_config()) =~ s/\$TEST_NGINX_SERVER_PORT/$p2/g;
    my $h2 = QuotaTest::nginx_start(
        servroot => $root2, port => $p2,
        http_config => http_config(redis_port => $ENV{TEST_NGINX_REDIS_PORT}),
        config => $cfg2, no_root_location => 1, log_level => 'info');
    die "second node: $h2->{error}\n" if $h2->{error};
    nginx_run(
        http_config => http_config(),
        config => server_config(),
        no_root_location => 1,
        code => sub {
            my ($port) = @_;
            my $c = client("ws://127.0.0.1:$port/ws/live?api_key=frank");
            is(line($c), 'OPEN 101', 'node 2: client on node 1');
            like(line($c) // '', qr/snapshot/, 'node 2: snapshot');
            my $st = '';
            for (1 .. 50) {
                $st = charge($p2, 'frank');
                last if $st == 200;
                sleep 0.1;
            }
            is($st, 200, 'node 2: charged on the second node');
            my $m = line($c) // '';
            like($m, qr/"type":"usage_update"/, 'node 2: its event arrives');
            is(json_field($m, 'used'), '1', 'node 2: used 1');
            tell_client($c, 'close 1000');
            line($c);
            done_client($c);
        });
    QuotaTest::nginx_stop($h2);
    File::Path::rmtree($root2);
}

# two workers both deliver; a reload closes clients with 1001
{
    redis_flush();
    my $log = nginx_run(
        http_config => http_config(),
        config => server_config(),
        no_root_location => 1,
        workers => 2,
        master => 1,
        log_level => 'info',
        code => sub {
            my ($port, $root) = @_;
            my @c;
            for (1 .. 6) {
                my $c = client("ws://127.0.0.1:$port/ws/live?api_key=dave");
                push @c, $c;
                line($c);       # OPEN
                line($c);       # snapshot
            }
            is(charge($port, 'dave'), 200, 'workers: charge');
            my $all = 1;
            for my $c (@c) {
                $all = 0 unless (line($c) // '') =~ /usage_update/;
            }
            ok($all, 'workers: every client got the usage_update');

            my $pid = do { local (@ARGV, $/) = "$root/logs/nginx.pid"; <> };
            chomp $pid;
            kill 'HUP', $pid;
            my $ok = 1;
            for my $c (@c) {
                my $l = line($c, 15) // 'none';
                $ok = 0 unless $l =~ /^CLOSED 1001 /;
            }
            ok($ok, 'reload: every client got 1001');
            done_client($_) for @c;
        });
    unlike($log, qr/\[(alert|crit|emerg)\]/,
           'reload: no alert (no open socket left in the old workers)');
    my %pids = map { $_ => 1 } $log =~ /\[info\] (\d+)#\d+: \*\d+ quota: live client/g;
    is(scalar keys %pids, 2, 'workers: clients on both workers');
    my @ready = $log =~ /quota: live subscription ready/g;
    cmp_ok(scalar @ready, '>=', 2, 'workers: one subscription per worker');
}

# Redis restarts: the subscription comes back and events flow again
{
    my $r = QuotaTest::start_redis();
    my $rport = $r->{port};
    my $log = nginx_run(
        http_config => http_config(redis_port => $rport),
        config => server_config(),
        no_root_location => 1,
        log_level => 'info',
        code => sub {
            my ($port, $root) = @_;
            my $c = client("ws://127.0.0.1:$port/ws/live?api_key=erin");
            is(line($c), 'OPEN 101', 'restart: connected');
            like(line($c) // '', qr/snapshot/, 'restart: snapshot');
            QuotaTest::stop_redis($r);
            $r = QuotaTest::start_redis(port => $rport);
            # the subscription and the pool reconnect on their own; a
            # charge before the pool is back would be a fail-open 200
            # that never reached Redis
            my $deadline = time + 10;
            my ($n, $pool) = (0, 0);
            while (time < $deadline) {
                my $l = do { local (@ARGV, $/) = "$root/logs/error.log"; <> };
                $n = () = $l =~ /live subscription ready/g;
                $pool = () = $l =~ /redis connection #0 ready/g;
                last if $n >= 2 && $pool >= 2;
                sleep 0.1;
            }
            is($n, 2, 'restart: subscribed again');
            is($pool, 2, 'restart: the pool is back');
            my $res = QuotaTest::http_request($port, 'POST', '/a',
                                              { 'X-API-Key' => 'erin' }, '');
            is($res->{status}, 200, 'restart: charge after the restart');
            is($res->{headers}{'x-quota-used'}, 1, 'restart: charged in Redis');
            like(line($c) // '', qr/usage_update/,
                 'restart: events flow again');
            tell_client($c, 'close 1000');
            line($c);
            done_client($c);
        });
    QuotaTest::stop_redis($r);
}

done_testing();
