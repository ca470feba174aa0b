# Production Redis on a single server: ACL users (AUTH user password) and
# TLS with nginx's OpenSSL (quota_redis_ssl*), against a private
# redis-server with --tls-port and certificates made here with openssl: a
# CA, a server certificate for redis.test and 127.0.0.1, a client
# certificate, and a second CA that signed nothing of this.  The metrics
# put TLS round trips, a failed verification and a refused AUTH on the
# server's own label (parsed as Prometheus text).

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest;
use QuotaProm;
use QuotaTime;
use File::Temp ();
use Time::HiRes qw(time sleep);

my $start = month_start();

if (system('openssl version >/dev/null 2>&1') != 0) {
    plan skip_all => 'openssl not found';
}

my $dir = File::Temp::tempdir(CLEANUP => 1);

sub ossl {
    my ($args) = @_;
    my $out = `openssl $args 2>&1`;
    die "openssl $args: $out" if $?;
}

# a CA, and a key + certificate signed by it
sub make_ca {
    my ($name) = @_;
    ossl("req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=$name"
         . " -keyout $dir/$name.key -out $dir/$name.pem");
}

sub make_cert {
    my ($name, $ca, $san) = @_;
    ossl("req -newkey rsa:2048 -nodes -subj /CN=$name -keyout $dir/$name.key"
         . " -out $dir/$name.csr");
    open my $fh, '>', "$dir/$name.ext" or die $!;
    print $fh "subjectAltName=$san\n" if $san;
    print $fh "basicConstraints=CA:FALSE\n";
    close $fh;
    ossl("x509 -req -in $dir/$name.csr -CA $dir/$ca.pem -CAkey $dir/$ca.key"
         . " -CAcreateserial -days 2 -extfile $dir/$name.ext -out $dir/$name.pem");
}

make_ca('ca');
make_ca('otherca');
make_cert('server', 'ca', 'DNS:redis.test,IP:127.0.0.1');
make_cert('client', 'ca', undef);

sub server_config {
    return <<'_EOC_';
    quota on;
    quota_tenant $http_x_api_key;
    quota_route POST /api/** api_requests=1;

    location /api/ {
        quota_failure_mode closed;
        add_header X-Status $quota_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin;
    }

    location /origin {
        quota off;
        return 200 "ok\n";
    }

    location = /metrics {
        quota_metrics;
    }
_EOC_
}

# the per-server value of a family in an exposition, which must be valid
sub server_metric {
    my ($text, $name, %labels) = @_;
    my $m = eval { QuotaProm::parse($text) };
    if (!$m) {
        diag("invalid exposition: $@");
        return 'invalid';
    }
    return QuotaProm::value($m, $name, %labels) // 'absent';
}

sub post {
    my ($port, $tenant) = @_;
    return http_request($port, 'POST', '/api/x', { 'X-API-Key' => $tenant },
                        '', 10);
}

# one request through nginx with this Redis configuration
sub charge {
    my ($redis, $tenant, $fails) = @_;
    my ($res, $metrics);
    my $log = nginx_run(
        no_root_location => 1,
        http_config => "$redis\n    quota_metric api_requests;\n",
        config => server_config(),
        code => sub {
            my ($port) = @_;
            # the first connection may take a while (valgrind): retried
            # until admitted, unless it is expected to fail
            my $deadline = time + ($fails ? 0 : 10);
            do {
                $res = post($port, $tenant);
            } while ($res->{status} != 200 && time < $deadline && sleep 0.1);
            $metrics = http_get($port, '/metrics')->{body};
        },
    );
    return ($res, $log, $metrics);
}

sub used {
    my ($rs, $tenant) = @_;
    return $rs->cmd('HGET', "quota:{$tenant}:usage:$start", 'api_requests');
}

my $tport = free_port();
my @tls = ('--tls-port', $tport, '--tls-cert-file', "$dir/server.pem",
           '--tls-key-file', "$dir/server.key", '--tls-ca-cert-file', "$dir/ca.pem");

my $rs = start_redis(args => [@tls, '--tls-auth-clients', 'no']);
my $addr = "127.0.0.1:$tport timeout=3s connect_timeout=3s";


# 1. TLS, no verification (the default, like proxy_ssl_verify)
{
    my ($r, $log, $m) = charge("    quota_redis $addr;\n    quota_redis_ssl on;", 'tls1');
    is($r->{headers}{'x-status'}, 'ALLOWED', 'tls: charged over TLS');
    ok(server_metric($m, 'quota_redis_server_latency_seconds_count',
                     server => "127.0.0.1:$tport") >= 1,
       'tls: the round trip on server="127.0.0.1:TLSPORT"');
    is(used($rs, 'tls1'), 1, 'tls: the charge is in Redis');
    unlike($log, qr/\[(alert|crit|emerg)\]/, 'tls: no alert');
}

# 1b. a reconnect resumes the TLS session (abbreviated handshake)
{
    my $back;
    my $log = nginx_run(
        no_root_location => 1,
        log_level => 'debug',
        http_config => "    quota_redis $addr;\n    quota_redis_ssl on;\n"
                       . "    quota_metric api_requests;\n",
        config => server_config(),
        code => sub {
            my ($port) = @_;
            my $deadline = time + 10;
            do { $back = post($port, 'resume') }
                while ($back->{status} != 200 && time < $deadline && sleep 0.1);
            # the TLSv1.3 ticket comes after the handshake: a second round
            # trip on the same connection makes sure it was read and kept
            sleep 0.3;
            $back = post($port, 'resume');
            sleep 0.3;
            $rs->cmd('CLIENT', 'KILL', 'TYPE', 'normal');
            $deadline = time + 10;
            do { sleep 0.1; $back = post($port, 'resume') }
                while ($back->{status} != 200 && time < $deadline);
        },
    );
    is($back->{headers}{'x-status'}, 'ALLOWED', 'resume: charged after the reconnect');
    like($log, qr/quota: redis connection lost/, 'resume: the connection was lost');
    like($log, qr/SSL reused session/, 'resume: the reconnect resumed the TLS session');
}

# 2. verification against the right CA, by name (SNI) and by address
{
    my ($r, $log) = charge("    quota_redis $addr;\n    quota_redis_ssl on;\n"
                           . "    quota_redis_ssl_verify on;\n"
                           . "    quota_redis_ssl_trusted_certificate $dir/ca.pem;\n"
                           . "    quota_redis_ssl_name redis.test;", 'tls2');
    is($r->{headers}{'x-status'}, 'ALLOWED', 'verify: right CA and name pass');
    is(used($rs, 'tls2'), 1, 'verify: charged');

    ($r, $log) = charge("    quota_redis $addr;\n    quota_redis_ssl on;\n"
                        . "    quota_redis_ssl_verify on;\n"
                        . "    quota_redis_ssl_trusted_certificate $dir/ca.pem;", 'tls3');
    is($r->{headers}{'x-status'}, 'ALLOWED', 'verify: the address 127.0.0.1 matches its IP SAN');
}

# 3. a wrong CA or a wrong name fails the connection: quota_failure_mode,
#    logged with the reason
{
    my ($r, $log, $m) = charge("    quota_redis $addr;\n    quota_redis_ssl on;\n"
                           . "    quota_redis_ssl_verify on;\n"
                           . "    quota_redis_ssl_trusted_certificate $dir/otherca.pem;\n"
                           . "    quota_redis_ssl_name redis.test;", 'tls4', 1);
    ok(server_metric($m, 'quota_redis_server_errors_total',
                     server => "127.0.0.1:$tport", kind => 'connect') >= 1,
       'wrong CA: a connect error on server="127.0.0.1:TLSPORT"');
    is(server_metric($m, 'quota_redis_server_latency_seconds_count',
                     server => "127.0.0.1:$tport"), 0,
       'wrong CA: no round trip on it');
    is($r->{status}, 503, 'wrong CA: failure mode closed answers 503');
    is($r->{headers}{'x-status'}, 'FAIL_CLOSED', 'wrong CA: FAIL_CLOSED');
    like($log, qr/quota: redis SSL certificate verify error: \(\d+:/, 'wrong CA: logged');
    is(used($rs, 'tls4'), undef, 'wrong CA: nothing charged');

    ($r, $log) = charge("    quota_redis $addr;\n    quota_redis_ssl on;\n"
                        . "    quota_redis_ssl_verify on;\n"
                        . "    quota_redis_ssl_trusted_certificate $dir/ca.pem;\n"
                        . "    quota_redis_ssl_name other.test;", 'tls5', 1);
    is($r->{status}, 503, 'wrong name: 503');
    like($log, qr/quota: redis SSL certificate does not match "other.test"/, 'wrong name: logged');
    unlike($log, qr/\[(alert|crit|emerg)\]/, 'wrong name: no alert');
}
stop_redis($rs);

# 4. mutual TLS: Redis asks for a client certificate
{
    $rs = start_redis(args => [@tls, '--tls-auth-clients', 'yes']);
    my ($r, $log) = charge("    quota_redis $addr;\n    quota_redis_ssl on;", 'mtls1', 1);
    is($r->{status}, 503, 'mtls: without a client certificate, refused');
    like($log, qr/quota: redis (TLS handshake failed|connection lost)/, 'mtls: logged');

    ($r, $log) = charge("    quota_redis $addr;\n    quota_redis_ssl on;\n"
                        . "    quota_redis_ssl_verify on;\n"
                        . "    quota_redis_ssl_trusted_certificate $dir/ca.pem;\n"
                        . "    quota_redis_ssl_certificate $dir/client.pem;\n"
                        . "    quota_redis_ssl_certificate_key $dir/client.key;", 'mtls2');
    is($r->{headers}{'x-status'}, 'ALLOWED', 'mtls: with the client certificate, charged');
    is(used($rs, 'mtls2'), 1, 'mtls: the charge is in Redis');
    stop_redis($rs);
}

# 5. ACL users: AUTH user password; a wrong password is refused and logged
{
    $rs = start_redis();
    $rs->cmd('ACL', 'SETUSER', 'gateway', 'on', '>s3cret', '~quota:*', '&*',
             '+@all');
    $rs->cmd('ACL', 'SETUSER', 'default', 'off');
    my $a = "127.0.0.1:$rs->{port} timeout=3s connect_timeout=3s";
    my ($r, $log) = charge("    quota_redis $a user=gateway password=s3cret;", 'acl1');
    is($r->{headers}{'x-status'}, 'ALLOWED', 'acl: charged as user gateway');

    my $m;
    ($r, $log, $m) = charge("    quota_redis $a user=gateway password=wrong;", 'acl2', 1);
    is($r->{status}, 503, 'acl: wrong password follows the failure mode');
    ok(server_metric($m, 'quota_redis_server_errors_total',
                     server => "127.0.0.1:$rs->{port}", kind => 'connect') >= 1,
       'acl: the refused AUTH is a connect error on its server');
    like($log, qr/quota: redis AUTH failed: WRONGPASS/, 'acl: wrong password logged');
    $rs->cmd('AUTH', 'gateway', 's3cret');
    is($rs->cmd('HGET', "quota:{acl1}:usage:$start", 'api_requests'), 1,
       'acl: the charge is in Redis');
    stop_redis($rs);
}

# 6. configuration errors fail nginx -t with file:line
{
    my @cases = (
        [ "    quota_redis 127.0.0.1:1 user=gw;",
          qr/"user=" needs "password=" in "quota_redis" in \S+nginx\.conf:\d+/,
          'user= without password=' ],
        [ "    quota_redis 127.0.0.1:1;\n    quota_redis_ssl on;\n"
          . "    quota_redis_ssl_verify on;",
          qr/no "quota_redis_ssl_trusted_certificate" for "quota_redis_ssl_verify" in \S+nginx\.conf:\d+/,
          'verify without a trusted certificate' ],
        [ "    quota_redis 127.0.0.1:1;\n    quota_redis_ssl on;\n"
          . "    quota_redis_ssl_certificate $dir/client.pem;",
          qr/no "quota_redis_ssl_certificate_key" for "quota_redis_ssl_certificate" in \S+nginx\.conf:\d+/,
          'a certificate without its key' ],
        [ "    quota_redis 127.0.0.1:1;\n    quota_redis_ssl on;\n"
          . "    quota_redis_ssl_certificate $dir/nonexistent.pem;\n"
          . "    quota_redis_ssl_certificate_key $dir/client.key;",
          qr/"quota_redis_ssl_certificate" in \S+nginx\.conf:\d+ .*could not be loaded/,
          'an unreadable certificate' ],
        [ "    quota_redis 127.0.0.1:1;\n    quota_redis_ssl on;\n    quota_redis_ssl on;",
          qr/"quota_redis_ssl" directive is duplicate in \S+nginx\.conf:\d+/,
          'quota_redis_ssl twice' ],
    );
    for my $c (@cases) {
        my ($conf, $re, $name) = @$c;
        my $ok = eval {
            nginx_run(no_root_location => 1,
                      http_config => "$conf\n    quota_metric api_requests;\n",
                      config => server_config(), code => sub { });
            1;
        };
        ok(!$ok, "nginx -t: $name fails");
        like($@ // '', $re, "nginx -t: $name: file:line and why");
    }
}

done_testing();
