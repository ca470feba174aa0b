# quota_live_body (SPEC 13): /ws/live frames in the API's own JSON.  The
# shipped conf.example/nat-usage-api.conf answers NAT's documented event
# ({"type","tenant_id","scan_count","monthly_scan_quota",
# "security_scan_count","monthly_security_scan_quota","approaching_limit",
# "quota_reset_date","timestamp"}) compared field by field after known
# charges, over WebSocket (a real client: python3-websockets) and SSE.
# Then: the default frame of a location without a template, escaping of
# hostile strings, an invalid template (logged with file:line, no frame),
# nginx -t refusing an undeclared metric, and, behind a proxy that holds
# the gateway's commands (not its subscription): one report in flight per
# tenant with later events waiting for the next, a report that times out,
# and a client that leaves while its report is in flight.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaTime;
use QuotaLoad;
use JSON::PP;
use IPC::Open2;
use IO::Select;
use IO::Socket::INET;
use POSIX ();
use File::Path ();
use Time::HiRes qw(time sleep);

my $PY = '/usr/bin/python3';
my $CLIENT = "$FindBin::Bin/data/live-client.py";

plan skip_all => 'python3-websockets missing (scripts/setup installs it)'
    unless system($PY, '-c', 'import websockets') == 0;

my $reset = next_month_reset();
my $json = JSON::PP->new->canonical;
my $ISO = qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/;

# the waits for nginx to have read what Redis published (valgrind is slow);
# a held report must stay well within the timeout= of section 6 (4s)
my $SLOW = QuotaTest::_use_valgrind() ? 2.5 : 1;

redis_flush();

# ---------------------------------------------------------------- client --

sub client {
    my ($url, @headers) = @_;
    my ($out, $in);
    my $pid = open2($out, $in, $PY, $CLIENT, $url, @headers);
    $out->blocking(0);
    return { pid => $pid, out => $out, in => $in, buf => '' };
}

sub line {
    my ($c, $timeout) = @_;
    my $deadline = time + ($timeout || 15);
    my $sel = IO::Select->new($c->{out});
    while (1) {
        return $1 if $c->{buf} =~ s/\A([^\n]*)\n//;
        my $left = $deadline - time;
        return undef if $left <= 0;
        next unless $sel->can_read($left);
        my $n = sysread($c->{out}, $c->{buf}, 65536, length $c->{buf});
        return undef if defined $n && $n == 0 && $c->{buf} !~ /\n/;
    }
}

# the next text frame, decoded (undef: none, or not JSON: a failed test)
sub frame {
    my ($c, $timeout) = @_;
    my $l = line($c, $timeout);
    return undef unless defined $l;
    unless ($l =~ s/^MSG //) {
        fail("a frame, got: $l");
        return undef;
    }
    my $d = eval { decode_json($l) };
    ok(defined $d, 'the frame parses as JSON') or diag $l;
    return $d ? { doc => $d, text => $l } : undef;
}

sub tell_client {
    my ($c, $cmd) = @_;
    local $SIG{PIPE} = 'IGNORE';
    my $fh = $c->{in};
    print {$fh} "$cmd\n";
    $fh->flush;
}

sub done_client {
    my ($c, $kill) = @_;
    local $SIG{PIPE} = 'IGNORE';
    kill 'KILL', $c->{pid} if $kill;
    close $c->{in};
    my $deadline = time + 20;
    while (time < $deadline) {
        return if waitpid($c->{pid}, POSIX::WNOHANG()) == $c->{pid};
        sleep 0.05;
    }
    kill 'KILL', $c->{pid};
    waitpid($c->{pid}, 0);
}

sub close_client {
    my ($c) = @_;
    tell_client($c, 'close 1000');
    line($c);
    done_client($c);
}

# a live client past its snapshot
sub live {
    my ($url, @headers) = @_;
    my $c = client($url, @headers);
    is(line($c), 'OPEN 101', "$url: 101");
    like(line($c) // '', qr/^MSG \{"type":"snapshot",/, "$url: snapshot first");
    return $c;
}

# the top-level keys of a JSON object, in the order written
sub keys_in_order {
    my ($text) = @_;
    my ($depth, @keys) = (0);
    while ($text =~ /\G\s*(?:("(?:[^"\\]|\\.)*")(\s*:)?|([{\[])|([}\]])|[^"{}\[\]]+)/gc) {
        if (defined $1) { push @keys, decode_json("[$1]")->[0] if $depth == 1 && $2 }
        elsif (defined $3) { $depth++ }
        elsif (defined $4) { $depth-- }
    }
    return \@keys;
}

# exactly $want: values and JSON types (canonical encodings compared)
sub doc_is {
    my ($f, $want, $name) = @_;
    is($json->encode($f ? $f->{doc} : {}), $json->encode($want), $name)
        or diag($f ? $f->{text} : 'no frame');
}

sub uri_escape {
    my ($s) = @_;
    $s =~ s/([^A-Za-z0-9_.~-])/sprintf('%%%02X', ord $1)/ge;
    return $s;
}

sub account { my ($t, @kv) = @_; redis('HSET', "quota:{$t}:account", @kv) }

sub post {
    my ($port, $path, %h) = @_;
    return QuotaTest::http_request($port, 'POST', $path, \%h, '')->{status};
}

# conf.example/FILE's http block, runnable here: Redis, ports, the seed's
# upstream stood in by a server block
sub example_http {
    my ($file, %port) = @_;
    open my $fh, '<', "$FindBin::Bin/../conf.example/$file" or die "$file: $!";
    my $conf = do { local $/; <$fh> };
    $conf =~ /^http \{\n(.*)\}\s*\z/ms or die "no http block in $file";
    my $http = $1;
    $http =~ s{127\.0\.0\.1:6379}{127.0.0.1:$ENV{TEST_NGINX_REDIS_PORT}}g;
    $http =~ s{(quota_redis\s[^;]*\btimeout=)\d+ms}{${1}5s}g;
    for my $p (sort keys %port) {
        $http =~ s{listen\s+(?:127\.0\.0\.1:)?$p;}{listen 127.0.0.1:$port{$p};}g;
        $http =~ s{server\s+127\.0\.0\.1:$p;}{server 127.0.0.1:$port{$p};}g;
    }
    $http .= "    server { listen 127.0.0.1:$port{9000}; quota off;\n"
           . "        location / { return 200 \"api\\n\"; } }\n";
    return $http;
}

my @NAT_KEYS = qw(type tenant_id scan_count monthly_scan_quota
                  security_scan_count monthly_security_scan_quota
                  approaching_limit quota_reset_date timestamp);

# NAT's documented event after known charges
sub nat_event {
    my ($f, %v) = @_;
    my $ts = $f ? $f->{doc}{timestamp} : undef;
    like($ts // '', $ISO, "$v{name}: timestamp is ISO 8601 UTC");
    doc_is($f, { type => $v{type} // 'usage_update', tenant_id => $v{tenant},
                 scan_count => $v{scans}, monthly_scan_quota => $v{scans_limit},
                 security_scan_count => $v{sec},
                 monthly_security_scan_quota => $v{sec_limit},
                 approaching_limit => $v{approaching} ? JSON::PP::true
                                                      : JSON::PP::false,
                 quota_reset_date => $reset, timestamp => $ts },
           "$v{name}: NAT's event, field by field");
    is_deeply(keys_in_order($f ? $f->{text} : '{}'), \@NAT_KEYS,
              "$v{name}: NAT's keys, in order");
}

# ------------------------------------------------------------ 1. NAT ------

{
    redis_flush();
    my ($nat, $api) = (free_port(), free_port());
    my $t = 'nat"li\\ve';        # raw tenant: a quote and a backslash
    account('nat-pro', plan => 'pro');
    my $log = nginx_run(
        http_config => example_http('nat-usage-api.conf', 8080 => $nat,
                                    9000 => $api),
        config => "location / { return 404; }\n",
        no_root_location => 1,
        code => sub {
            my $key = uri_escape($t);
            my $ws = live("ws://127.0.0.1:$nat/ws/live?api_key=$key");

            is(post($nat, '/api/v1/scans', 'X-Tenant-ID' => $t), 200, 'nat: scan 1');
            nat_event(frame($ws), name => 'nat scan 1', tenant => $t, scans => 1,
                      scans_limit => 10, sec => 0, sec_limit => 2);

            # a security scan charges both metrics: two events, each with
            # every metric after the charge
            is(post($nat, '/api/v1/scans/security', 'X-Tenant-ID' => $t), 200,
               'nat: security scan');
            for my $i (1, 2) {
                nat_event(frame($ws), name => "nat security scan, event $i",
                          tenant => $t, scans => 2, scans_limit => 10, sec => 1,
                          sec_limit => 2);
            }

            # SSE, tenant in the header: the same frames
            my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                          PeerPort => $nat) or die $!;
            print $s "GET /ws/live HTTP/1.1\r\nHost: x\r\n"
                   . "Accept: text/event-stream\r\nX-Tenant-ID: $t\r\n\r\n";
            my $buf = '';
            my $read_until = sub {
                my ($re) = @_;
                my $deadline = time + 15;
                my $sel = IO::Select->new($s);
                while (time < $deadline) {
                    return 1 if $buf =~ $re;
                    next unless $sel->can_read(0.2);
                    sysread($s, $buf, 65536, length $buf) or last;
                }
                return $buf =~ $re;
            };
            ok($read_until->(qr/event: snapshot\n/), 'nat sse: snapshot');

            # to 8 of 10: the 80 % alert comes as a frame of the same shape
            for my $n (3 .. 8) {
                is(post($nat, '/api/v1/scans', 'X-Tenant-ID' => $t), 200, "nat: scan $n");
                my @f = (frame($ws));
                push @f, frame($ws) if $n == 8;
                my ($upd) = grep { $_ && $_->{doc}{type} eq 'usage_update' } @f;
                nat_event($upd, name => "nat scan $n", tenant => $t, scans => $n,
                          scans_limit => 10, sec => 1, sec_limit => 2,
                          approaching => $n >= 8);
                next unless $n == 8;
                my ($alert) = grep { $_ && $_->{doc}{type} eq 'alert' } @f;
                nat_event($alert, name => 'nat alert at 80 %', type => 'alert',
                          tenant => $t, scans => 8, scans_limit => 10, sec => 1,
                          sec_limit => 2, approaching => 1);
            }

            ok($read_until->(qr/event: usage_update\ndata: ([^\n]*)\n\n(?s:.*)event: alert\n/),
               'nat sse: usage_update and alert events');
            my @data = $buf =~ /^event: (?:usage_update|alert)\ndata: ([^\n]*)\n\n/mg;
            ok(@data >= 7, 'nat sse: one event per message') or diag $buf;
            my @docs = map { eval { decode_json($_) } } @data;
            is(scalar(grep { defined } @docs), scalar @data, 'nat sse: every data line is JSON');
            my ($last) = grep { $_->{type} eq 'alert' } @docs;
            is($last && $last->{scan_count}, 8, 'nat sse: the alert with scan_count 8');
            close $s;

            # a plan without a security-scan limit: null, not 0
            my $pro = live("ws://127.0.0.1:$nat/ws/live", 'X-Tenant-ID: nat-pro');
            is(post($nat, '/api/v1/scans', 'X-Tenant-ID' => 'nat-pro'), 200, 'nat: pro scan');
            nat_event(frame($pro), name => 'nat pro', tenant => 'nat-pro', scans => 1,
                      scans_limit => 1000, sec => 0, sec_limit => undef);

            is(line($ws, 1), undef, 'nat: no frame for another tenant');
            close_client($ws);
            close_client($pro);
        });
    unlike($log, qr/\[(alert|crit|emerg)\]/, 'nat: no alert in the log');
    unlike($log, qr/\Q$t\E/, 'nat: the raw key is in no log line');
}

# ------------------------------------ 2. default frames, 3. escaping --------

sub http_config {
    my (%o) = @_;
    my $port = $o{redis_port} || '$TEST_NGINX_REDIS_PORT';
    my $timeout = $o{timeout} || '5s';
    return <<"_EOC_";
    quota_redis 127.0.0.1:$port timeout=$timeout;
    quota_metric a;
    quota_metric b;
    quota_plan basic { limit a 8; }
    quota_default_plan basic;
    quota_warning_threshold 50%;
_EOC_
}

my $TPL = q{'{"type":$quota_json_event_type,"metric":$quota_json_event_metric,
    "alert_type":$quota_json_event_alert_type,"ev_used":$quota_event_used,
    "ev_limit":$quota_event_limit,"ts":$quota_json_event_timestamp,
    "t":$quota_json_tenant,"plan":$quota_json_plan,
    "status":$quota_json_account_status,
    "a":$quota_used_a,"lim_a":$quota_limit_a,"rem_a":$quota_remaining_a,
    "pct_a":$quota_percent_a,"b":$quota_used_b,"lim_b":$quota_limit_b,
    "seats":$quota_seats}'};

sub server_config {
    my (%o) = @_;
    return <<"_EOC_";
    quota on;
    quota_tenant \$http_x_api_key;
    quota_route POST /a a=1;
    quota_route POST /ab a=1 b=2;

    location / {
        proxy_pass http://127.0.0.1:\$TEST_NGINX_SERVER_PORT/origin;
    }
    location = /ws/plain { quota_live; }
    location = /ws/tpl { quota_live; quota_live_body $TPL; }
    location = /ws/daily { quota_live; quota_live_body '{"d":\$quota_daily_a}'; }
    location = /ws/bad {
        quota_live;
        quota_live_body '{"t":"\$quota_tenant","a":\$quota_used_a}';
    }
    location = /metrics { quota_metrics; }
    location /origin {
        quota off;
        return 200 "ok\\n";
    }
_EOC_
}

{
    redis_flush();
    my $ctl = "ctl\x01\t\nü✓\"\\";       # control characters, non-ASCII
    my $t = 'esc"q\\b';
    account($t, status => $ctl, seats => 2);
    my $log = nginx_run(
        http_config => http_config(),
        config => server_config(),
        no_root_location => 1,
        code => sub {
            my ($port) = @_;
            my $key = uri_escape($t);
            my $plain = live("ws://127.0.0.1:$port/ws/plain?api_key=$key");
            # before /ws/tpl: it is not the last templated client joined
            my $daily = live("ws://127.0.0.1:$port/ws/daily?api_key=$key");
            my $tpl = live("ws://127.0.0.1:$port/ws/tpl?api_key=$key");

            is(post($port, '/ab', 'X-API-Key' => $t), 200, 'charge a=1 b=2');

            # without a template: the default frames, at once, unchanged
            for my $m (qw(a b)) {
                my $f = frame($plain);
                my $d = $f ? $f->{doc} : {};
                is_deeply([sort keys %$d],
                          [sort qw(type tenant_id metric used limit remaining
                                   percent timestamp quota_reset_date)],
                          "default frame ($m): its keys");
                is($d->{type}, 'usage_update', "default frame ($m): type");
                is($d->{metric}, $m, "default frame ($m): metric");
                is($d->{tenant_id}, $t, "default frame ($m): tenant");
            }

            my %common = (t => $t, plan => 'basic', status => "ctl\x01\t\n\x{fc}\x{2713}\"\\",
                          a => 1, lim_a => 8, rem_a => 7, pct_a => 12, b => 2,
                          lim_b => undef, seats => 2, alert_type => undef,
                          type => 'usage_update');
            for my $m (qw(a b)) {
                my $f = frame($tpl);
                my $ts = $f ? $f->{doc}{ts} : undef;
                like($ts // '', $ISO, "template ($m): the event's timestamp");
                doc_is($f, { %common, metric => $m, ts => $ts,
                             ev_used => $m eq 'a' ? 1 : 2,
                             ev_limit => $m eq 'a' ? 8 : undef },
                       "template ($m): every variable, escaped, nulls");
                unlike($f ? $f->{text} : '', qr/[\x00-\x1f]/, "template ($m): one line, no raw control byte");
            }

            # $quota_daily_*: the report reads the daily counters for one
            # client's template, whichever client the event found last
            for my $m (qw(a b)) {
                doc_is(frame($daily), { d => [{ date => today(), a => 1 }] },
                       "daily template ($m): the day's usage");
            }

            # invalid UTF-8 in Redis: null, still JSON
            account($t, status => "bad\xff\xfe");
            is(post($port, '/a', 'X-API-Key' => $t), 200, 'charge a=1');
            line($plain);
            my $f = frame($tpl);
            ok($f && exists $f->{doc}{status} && !defined $f->{doc}{status},
               'not UTF-8: status null');
            is($f && $f->{doc}{a}, 2, 'not UTF-8: a 2');
            doc_is(frame($daily), { d => [{ date => today(), a => 2 }] },
                   'daily template: 2 after the next charge');

            close_client($daily);
            close_client($plain);
            close_client($tpl);
        });
    unlike($log, qr/\[(alert|crit|emerg)\]/, 'escaping: no alert in the log');
}

# ------------------------------------------------- 4. invalid template -----

{
    redis_flush();
    my $root = QuotaTest::_servroot_base() . '_run';
    my $log = nginx_run(
        http_config => http_config(),
        config => server_config(),
        no_root_location => 1,
        code => sub {
            my ($port) = @_;
            my $bad = live("ws://127.0.0.1:$port/ws/bad", 'X-API-Key: x"y');
            my $good = live("ws://127.0.0.1:$port/ws/bad", 'X-API-Key: xy');
            my $tpl = live("ws://127.0.0.1:$port/ws/tpl", 'X-API-Key: x"y');

            is(post($port, '/a', 'X-API-Key' => 'x"y'), 200, 'charge x"y');
            is(post($port, '/a', 'X-API-Key' => 'xy'), 200, 'charge xy');

            my $f = frame($tpl);
            is($f && $f->{doc}{a}, 1, 'invalid: the event was rendered for the valid template');
            $f = frame($good);
            doc_is($f, { t => 'xy', a => 1 }, 'invalid: a tenant that renders valid JSON gets it');
            is(line($bad, 2), undef, 'invalid: no frame, never a broken one');

            tell_client($bad, 'ping');
            is(line($bad), 'PONG', 'invalid: the client stays connected');
            close_client($_) for $bad, $good, $tpl;
        });
    my $conf = do { local (@ARGV, $/) = "$root/conf/nginx.conf"; <> } // '';
    my ($line) = grep { (split /\n/, $conf)[$_ - 1] =~ /quota_live_body '\{"t":"\$quota_tenant"/ }
                 1 .. scalar(split /\n/, $conf);
    like($log, qr/\[error\].*the body template in \S+nginx\.conf:$line rendered invalid JSON for this request \([^\n]*\): frame not sent while sending live usage, client: /,
         "invalid: logged with the template's file:line ($line)")
        or diag(join "\n", grep { /rendered invalid|quota_live_body/ } split /\n/, $log . $conf);
    unlike($log, qr/\[(alert|crit|emerg)\]/, 'invalid: no alert in the log');
}

# ---------------------------------------------- 5. nginx -t, undeclared ----

{
    my $root = "$FindBin::Bin/servroot_live_body_t.$$";
    my $h = QuotaTest::nginx_start(
        servroot => $root, port => free_port(), expect_failure => 1,
        no_root_location => 1,
        http_config => "quota_redis 127.0.0.1:1;\nquota_metric a;\n",
        config => "quota_tenant \$http_x_api_key;\n"
                  . "location = /ws/live {\n    quota_live;\n"
                  . "    quota_live_body '{\"n\":\$quota_used_nosuch}';\n}\n");
    ok($h->{exited} && $h->{status} != 0, 'undeclared metric: nginx refuses to start');
    my $err = do { local (@ARGV, $/) = "$root/logs/error.log"; <> } // '';
    my $conf = do { local (@ARGV, $/) = "$root/conf/nginx.conf"; <> } // '';
    my @l = split /\n/, $conf;
    my ($line) = grep { $l[$_ - 1] =~ /quota_live_body/ } 1 .. @l;
    like($err, qr/\[emerg\].*"\$quota_used_nosuch" in a body template: "nosuch" is not a declared quota_metric, in \S+nginx\.conf:$line\b/,
         "undeclared metric: the emerg names the template's file:line ($line)");
    File::Path::rmtree($root);

    # a template nothing would read
    $h = QuotaTest::nginx_start(
        servroot => $root, port => free_port(), expect_failure => 1,
        no_root_location => 1,
        http_config => "quota_redis 127.0.0.1:1;\nquota_metric a;\n",
        config => "quota_tenant \$http_x_api_key;\n"
                  . "location = /ws/live {\n    quota_usage;\n"
                  . "    quota_live_body '{\"n\":\$quota_used_a}';\n}\n");
    ok($h->{exited} && $h->{status} != 0, 'without quota_live: nginx refuses to start');
    $err = do { local (@ARGV, $/) = "$root/logs/error.log"; <> } // '';
    $conf = do { local (@ARGV, $/) = "$root/conf/nginx.conf"; <> } // '';
    @l = split /\n/, $conf;
    ($line) = grep { $l[$_ - 1] =~ /quota_live_body/ } 1 .. @l;
    like($err, qr/\[emerg\].*"quota_live_body" in \S+nginx\.conf:$line needs "quota_live" in the same location/,
         "without quota_live: the emerg names the template's file:line ($line)");
    File::Path::rmtree($root);
}

# ------------------------- 6. behind a proxy that holds the gateway's commands

# QuotaLoad::Proxy whose partition holds only the command connections: the
# subscription (its first bytes are SUBSCRIBE) keeps delivering events
package HoldProxy;
our @ISA = ('QuotaLoad::Proxy');

sub tick {
    my ($self) = @_;
    my %held;
    for my $p (@{ $self->{pairs} }) {
        $p->{sub} //= $p->{c2u} =~ /SUBSCRIBE/i ? 1 : 0 if length $p->{c2u};
        next unless $self->{cut} && defined $p->{sub} && !$p->{sub};
        $held{$p} = $p->{c2u};
        $p->{c2u} = '';
    }
    my $cut = $self->{cut};
    $self->{cut} = 0;
    $self->SUPER::tick();
    $self->{cut} = $cut;
    for my $p (@{ $self->{pairs} }) {
        $p->{c2u} = $held{$p} . $p->{c2u} if exists $held{$p};
    }
}

package main;

sub evalsha_calls {
    my $info = redis('INFO', 'commandstats') // '';
    return $info =~ /cmdstat_evalsha:calls=(\d+)/ ? $1 : 0;
}

sub event_json {
    my ($t, $used) = @_;
    return $json->encode({ type => 'usage_update', tenant_id => $t, metric => 'a',
                           used => $used, limit => 8, remaining => 8 - $used,
                           percent => 0, timestamp => '2026-11-30T01:02:03Z',
                           quota_reset_date => $reset });
}

{
    redis_flush();
    my $proxy = HoldProxy->spawn(to => $ENV{TEST_NGINX_REDIS_PORT});
    my $log = nginx_run(
        http_config => http_config(redis_port => $proxy->port, timeout => '4s'),
        config => server_config(),
        no_root_location => 1,
        code => sub {
            my ($port) = @_;
            my $c = live("ws://127.0.0.1:$port/ws/tpl", 'X-API-Key: hold');
            sleep 0.3;

            # one report in flight; four events wait for the next one
            my $before = evalsha_calls();
            $proxy->partition(1);
            redis('PUBLISH', 'quota:events', event_json('hold', $_)) for 1 .. 5;
            sleep 0.8 * $SLOW;
            is(line($c, 0.2), undef, 'held: no frame while the report waits');
            $proxy->partition(0);
            my @f = map { frame($c) } 1 .. 5;
            is_deeply([map { $_ ? $_->{doc}{ev_used} : undef } @f], [1 .. 5],
                      'held: five frames, in order');
            is(scalar(grep { $_ && $_->{doc}{a} == 0 && $_->{doc}{t} eq 'hold' } @f), 5,
               'held: each with the report\'s numbers');
            sleep 0.3;
            is(evalsha_calls() - $before, 2,
               'held: two reports for five events (one in flight, the rest waited)');

            # a burst past the bound: the waiting events are capped (64 in
            # all) and the newest of a metric merged into its waiting twin,
            # so nothing is lost: 64 frames from 3 reports, the last one
            # with the newest numbers
            $before = evalsha_calls();
            $proxy->partition(1);
            redis('PUBLISH', 'quota:events', event_json('hold', $_)) for 101 .. 200;
            sleep 0.8 * $SLOW;
            $proxy->partition(0);
            my @burst;
            while (my $b = frame($c, 3)) { push @burst, $b->{doc}{ev_used} }
            is(scalar @burst, 64, 'burst: 64 frames for 100 events');
            is_deeply([@burst[0 .. 62]], [101 .. 163], 'burst: the first 63 in order');
            is($burst[63], 200, 'burst: the last frame has the newest event');
            is(evalsha_calls() - $before, 3, 'burst: three reports (1, 32, 31 events)');

            # a report that times out: its events are lost (logged), the
            # client stays, the next event works
            $proxy->partition(1);
            redis('PUBLISH', 'quota:events', event_json('hold', 6));
            sleep 5;
            $proxy->partition(0);
            is(line($c, 0.5), undef, 'timeout: no frame for a lost report');
            redis('PUBLISH', 'quota:events', event_json('hold', 7));
            my $f = frame($c);
            is($f && $f->{doc}{ev_used}, 7, 'timeout: the next event is served');

            # the client leaves while its report is in flight
            $proxy->partition(1);
            redis('PUBLISH', 'quota:events', event_json('hold', 8));
            sleep 0.5 * $SLOW;
            done_client($c, 1);
            sleep 0.5 * $SLOW;
            $proxy->partition(0);
            sleep 0.5 * $SLOW;
            my $m = QuotaTest::http_get($port, '/metrics');
            like($m->{body}, qr/^quota_live_clients 0$/m, 'gone: no live client left');

            # the same tenant again: a fresh state
            my $c2 = live("ws://127.0.0.1:$port/ws/tpl", 'X-API-Key: hold');
            redis('PUBLISH', 'quota:events', event_json('hold', 9));
            $f = frame($c2);
            is($f && $f->{doc}{ev_used}, 9, 'gone: a new client of the tenant is served');
            close_client($c2);
        });
    $proxy->stop;
    like($log, qr/\[error\].*redis did not answer within 4000ms/, 'timeout: logged');
    like($log, qr/\[warn\].*1 live events not sent to quota_live_body clients: the report timed out/,
         'timeout: the lost event logged');
    unlike($log, qr/\[(alert|crit|emerg)\]/, 'held: no alert in the log');
}

done_testing();
