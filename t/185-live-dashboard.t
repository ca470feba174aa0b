# conf.example/live-dashboard/ in a real browser: Debian's chromium driven by
# puppeteer-core (npm; it downloads no browser). The test charges through
# the gateway with an HTTP client and reads the page: the bar and its
# numbers follow within a second, an alert appears at the threshold, the
# bar turns amber then red. A screenshot is kept in the servroot's logs/.
#
# Skipped (with the reason) only when chromium, node or puppeteer-core is
# missing; scripts/setup installs them (puppeteer-core into build/npm).

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use IPC::Open2;
use IO::Select;
use POSIX ();
use File::Copy ();
use Time::HiRes qw(time sleep);

my $top = "$FindBin::Bin/..";
my ($chrome) = grep { -x } ($ENV{QUOTA_CHROMIUM} || (),
                            '/usr/bin/chromium', '/usr/bin/chromium-browser');
my $node = (grep { -x } '/usr/bin/node', '/usr/local/bin/node')[0];
my @paths = grep { -d "$_/puppeteer-core" }
    ($ENV{QUOTA_NODE_PATH} || (), "$top/build/npm/node_modules",
     (`npm root -g 2>/dev/null` =~ /(\S+)/ ? $1 : ()));

plan skip_all => 'no chromium (apt-get install chromium; scripts/setup)'
    unless $chrome;
plan skip_all => 'no node (apt-get install nodejs; scripts/setup)'
    unless $node;
plan skip_all => 'no puppeteer-core (scripts/setup installs it into '
               . 'build/npm)' unless @paths;

redis_flush();

my $http = <<'_EOC_';
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric api_requests;
    quota_plan basic { limit api_requests 4; }
    quota_default_plan basic;
    quota_warning_threshold 50%;
_EOC_

my $server = <<"_EOC_";
    quota on;
    quota_tenant \$http_x_api_key hash;
    quota_route POST /** api_requests=1;

    location / {
        proxy_pass http://127.0.0.1:\$TEST_NGINX_SERVER_PORT/origin;
    }
    location = /ws/live { quota_live; }
    location /dashboard/ {
        quota off;
        alias $top/conf.example/live-dashboard/;
    }
    location /origin {
        quota off;
        return 200 "ok\\n";
    }
_EOC_

sub line {
    my ($c, $timeout) = @_;
    my $deadline = time + ($timeout || 10);
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

sub ask {
    my ($c, $cmd) = @_;
    my $fh = $c->{in};
    print {$fh} "$cmd\n";
    $fh->flush;
    return line($c, 10);
}

# polls the page until the bar shows $want (at most 1 s)
sub bar_within {
    my ($c, $want) = @_;
    my $t0 = time;
    my $got = '';
    while (time - $t0 < 1) {
        $got = ask($c, 'bar api_requests') // '';
        return ($got, time - $t0) if $got =~ $want;
        sleep 0.05;
    }
    return ($got, undef);
}

my $shot;
nginx_run(
    http_config => $http,
    config => $server,
    no_root_location => 1,
    code => sub {
        my ($port, $root) = @_;
        local $ENV{NODE_PATH} = $paths[0];
        my ($out, $in);
        my $pid = open2($out, $in, $node, "$FindBin::Bin/data/live-dashboard.js",
                        "http://127.0.0.1:$port/dashboard/?warning=50",
                        'browser-key', $chrome);
        $out->blocking(0);
        my $c = { out => $out, in => $in, buf => '' };
        my $ready = line($c, 60) // 'nothing';
        is($ready, 'READY', 'browser: the page connected and got a snapshot');

        like(ask($c, 'bar api_requests') // '', qr/^BAR api_requests 0 4 fill 0%/,
             'browser: bar at 0 of 4 from the snapshot');

        my $st = QuotaTest::http_request($port, 'POST', '/x',
                    { 'X-API-Key' => 'browser-key' }, '')->{status};
        is($st, 200, 'charge 1');
        my ($bar, $dt) = bar_within($c, qr/^BAR api_requests 1 4 fill 25%/);
        ok(defined $dt, "browser: bar at 1/4 within a second ($bar)");

        QuotaTest::http_request($port, 'POST', '/x',
                                { 'X-API-Key' => 'browser-key' }, '');
        ($bar, $dt) = bar_within($c, qr/^BAR api_requests 2 4 fill-amber 50%/);
        ok(defined $dt, "browser: amber at the threshold ($bar)");
        my $alerts = '';
        my $t0 = time;
        while (time - $t0 < 1) {
            $alerts = ask($c, 'alerts') // '';
            last if $alerts =~ /approaching_limit/;
            sleep 0.05;
        }
        like($alerts, qr/^ALERTS 1 alert approaching_limit/,
             'browser: the alert appears');

        QuotaTest::http_request($port, 'POST', '/x',
                                { 'X-API-Key' => 'browser-key' }, '')
            for 1 .. 2;
        ($bar, $dt) = bar_within($c, qr/^BAR api_requests 4 4 fill-red 100%/);
        ok(defined $dt, "browser: red at the limit ($bar)");

        sleep 0.5;    # the bar's CSS transition
        $shot = "$root/logs/live-dashboard.png";
        is(ask($c, "shot $shot"), 'SHOT', 'browser: screenshot');
        ok(-s $shot, "screenshot kept: $shot");

        ask($c, 'quit');
        close $in;
        my $deadline = time + 20;
        until (waitpid($pid, POSIX::WNOHANG()) == $pid || time > $deadline) {
            sleep 0.1;
        }
        kill 'KILL', $pid if time > $deadline;
        # keep the screenshot past the servroot's cleanup
        mkdir "$top/build";
        File::Copy::copy($shot, "$top/build/live-dashboard.png");
    });

done_testing();
