# Review D6: reconcile and header settings belong to the location that
# charged, not to the one that answers after try_files / error_page /
# X-Accel-Redirect.  The quota handler runs before try_files (both are
# precontent), so the charge is made with the first location's rules; the
# log phase and the header filter must use that location's configuration.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaTime;
use Time::HiRes qw(time sleep);

QuotaTest::redis_flush();

my $start = month_start();

my $http_config = <<'_EOC_';
    quota_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    quota_metric a;
    quota_plan p { limit a 1000; }
    quota_default_plan p;
_EOC_

my $server = <<'_EOC_';
    quota on;
    quota_tenant $http_x_t;
    quota_route * /other/** a=1;

    # charges a=1 and reconciles to the upstream's X-Used (7); the answer
    # comes from @be, which neither reconciles nor sends headers
    location /tf/ {
        quota_route * /tf/** a=1;
        quota_reconcile a $upstream_http_x_used;
        quota_header_prefix X-Tf-;
        try_files $uri @be;
    }

    location @be {
        quota_headers off;
        rewrite ^ /origin break;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT;
    }

    # the reverse: no reconcile where it charged, a foreign one in @be2
    location /rev/ {
        quota_route * /rev/** a=1;
        try_files $uri @be2;
    }

    location @be2 {
        quota_reconcile a $upstream_http_x_used;
        quota_header_prefix X-Be-;
        rewrite ^ /origin break;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT;
    }

    # error_page: the upstream's 404 is intercepted and served by @be
    location /ep/ {
        quota_route * /ep/** a=1;
        quota_reconcile a $upstream_http_x_used;
        proxy_intercept_errors on;
        error_page 404 = @be;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/nf/;
    }

    location /nf/ {
        quota off;
        return 404;
    }

    location /origin {
        quota off;
        add_header X-Used 7;
        return 200 "ok\n";
    }
_EOC_

sub used {
    my ($t) = @_;
    return QuotaTest::redis('HGET', "quota:{$t}:usage:$start", 'a');
}

# reconcile is sent from the log phase: wait for it to land
sub settle {
    my ($t, $want) = @_;
    my $deadline = time + 3;
    my $v;
    while (time < $deadline) {
        $v = used($t);
        last if defined $v && $v == $want;
        sleep 0.02;
    }
    return $v;
}

my (%res);
my $log = QuotaTest::nginx_run(
    http_config => $http_config,
    config      => $server,
    no_root_location => 1,
    code        => sub {
        my ($port) = @_;
        $res{tf} = QuotaTest::http_get($port, '/tf/x', { 'X-T' => 'd6a' });
        $res{rev} = QuotaTest::http_get($port, '/rev/x', { 'X-T' => 'd6b' });
        $res{ep} = QuotaTest::http_get($port, '/ep/x', { 'X-T' => 'd6c' });
        # the log phase has run once the response is read; give Redis time
        settle('d6a', 7);
        settle('d6c', 7);
        sleep 0.3;
    });

is($res{tf}{status}, 200, 'try_files: answered by @be');
is(used('d6a'), 7, 'try_files: the charging location reconciles (7, not 1)');
is($res{tf}{headers}{'x-tf-used'}, 1,
   'try_files: headers of the charging location (prefix X-Tf-)');

is($res{rev}{status}, 200, 'reverse: answered by @be2');
is(used('d6b'), 1, 'reverse: the reconcile of @be2 is not applied to the charge of /rev/');
is($res{rev}{headers}{'x-quota-used'}, 1,
   'reverse: the charging location\'s header prefix');
ok(!exists $res{rev}{headers}{'x-be-used'}, 'reverse: not the prefix of @be2');

is($res{ep}{status}, 200, 'error_page: answered by @be');
is(used('d6c'), 7, 'error_page: the charging location reconciles');

unlike($log, qr/\[(?:alert|crit|emerg)\]/, 'no [alert]');

done_testing();
