# Bad configuration fails "nginx -t" with the file, the line and a clear
# message.  Each case is an http{} body; the marker line "#HERE" is where the
# error must point.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest ();

my $base = <<'_EOC_';
    quota_redis 127.0.0.1:6379;
    quota_metric api_requests;
_EOC_

my @cases = (
    [ 'undeclared metric in quota_route',
      $base . "server { listen 127.0.0.1:1; quota on; quota_tenant x;\n quota_route POST /a nope=1; #HERE\n }",
      qr/unknown metric "nope" in quota_route/ ],
    [ 'undeclared metric in a plan',
      $base . "quota_plan p {\n limit nope 5; #HERE\n }",
      qr/unknown metric "nope" in plan "p"/ ],
    [ 'undefined plan',
      $base . "quota_default_plan gold; #HERE",
      qr/unknown plan "gold"/ ],
    [ 'bad template: ** not last',
      $base . "server { listen 127.0.0.1:1;\n quota_route POST /a/**/b api_requests=1; #HERE\n }",
      qr/invalid route template "\/a\/\*\*\/b": / ],
    [ 'bad template: no leading slash',
      $base . "server { listen 127.0.0.1:1;\n quota_route POST a/b api_requests=1; #HERE\n }",
      qr/invalid route template "a\/b"/ ],
    [ 'bad template: empty parameter name',
      $base . "server { listen 127.0.0.1:1;\n quota_route POST \"/a/{}\" api_requests=1; #HERE\n }",
      qr/invalid route template/ ],
    [ 'duplicate quota_metric',
      $base . "quota_metric api_requests; #HERE",
      qr/duplicate metric "api_requests"/ ],
    [ 'missing quota_redis when quota is on',
      "quota_metric a;\n server { listen 127.0.0.1:1;\n quota on; #HERE\n }",
      qr/"quota on" in \S+nginx\.conf:(\d+) needs "quota_redis"/, 'own-line' ],
    [ 'invalid literal cost',
      $base . "server { listen 127.0.0.1:1;\n quota_route POST /a api_requests=-1; #HERE\n }",
      qr/invalid cost "-1" for metric "api_requests"/ ],
    [ 'non-numeric cost',
      $base . "server { listen 127.0.0.1:1;\n quota_route POST /a api_requests=abc; #HERE\n }",
      qr/invalid cost "abc"/ ],
    [ 'cost above 2^53-1',
      $base . "server { listen 127.0.0.1:1;\n quota_route POST /a api_requests=9007199254740992; #HERE\n }",
      qr/invalid cost "9007199254740992"/ ],
    [ 'rule without a metric',
      $base . "server { listen 127.0.0.1:1;\n quota_route POST /a auth=header; #HERE\n }",
      qr/charges no metric/ ],
    [ 'bad auth type',
      $base . "server { listen 127.0.0.1:1;\n quota_route POST /a api_requests=1 auth=magic; #HERE\n }",
      qr/invalid "auth=magic"/ ],
    [ 'bad method list',
      $base . "server { listen 127.0.0.1:1;\n quota_route post,GET /a api_requests=1; #HERE\n }",
      qr/invalid method list "post,GET"/ ],
    [ 'duplicate quota_redis',
      $base . "quota_redis 127.0.0.1:6380; #HERE",
      qr/"quota_redis" directive is duplicate/ ],
    [ 'bad quota_redis parameter',
      "quota_redis 127.0.0.1:6379 timeout=abc; #HERE",
      qr/invalid parameter "timeout=abc"/ ],
    [ 'bad failure mode',
      $base . "quota_failure_mode sometimes; #HERE",
      qr/invalid value "sometimes"/ ],
    [ 'unknown plan statement',
      $base . "quota_plan p {\n ratelimit 5r/m; #HERE\n }",
      qr/unknown directive "ratelimit" in quota_plan/ ],
    [ 'bad rate',
      $base . "quota_plan p {\n rate 5r/h; #HERE\n }",
      qr/invalid rate, expected "rate Nr\/s\|Nr\/m \[burst=N\]"/ ],
    [ 'bad burst',
      $base . "quota_plan p {\n rate 5r/m burst=0; #HERE\n }",
      qr/invalid rate/ ],
    [ 'bad grace',
      $base . "quota_plan p {\n grace 10; #HERE\n }",
      qr/invalid grace, expected "grace P%"/ ],
    [ 'bad concurrency',
      $base . "quota_plan p {\n concurrency 0; #HERE\n }",
      qr/invalid concurrency/ ],
    [ 'bad overage price',
      $base . "quota_plan p {\n overage api_requests 0.0000001; #HERE\n }",
      qr/invalid price "0.0000001"/ ],
    [ 'overage price too large',
      $base . "quota_plan p {\n overage api_requests 99999999999999999999; #HERE\n }",
      qr/invalid price "99999999999999999999"/ ],
    [ 'overage of an undeclared metric',
      $base . "quota_plan p {\n overage nope 1; #HERE\n }",
      qr/unknown metric "nope" in plan "p"/ ],
    [ 'bad per_seat',
      $base . "quota_plan p {\n limit api_requests 5 per_user; #HERE\n }",
      qr/invalid parameter "per_user", expected "per_seat"/ ],
    [ 'duplicate limit in a plan',
      $base . "quota_plan p {\n limit api_requests 5;\n limit api_requests 6; #HERE\n }",
      qr/duplicate limit for metric "api_requests"/ ],
    [ 'bad warning threshold',
      $base . "quota_warning_threshold 120%; #HERE",
      qr/expects a percentage from 0% to 100%/ ],
    [ 'undeclared metric in quota_reconcile',
      $base . "quota_reconcile nope \$upstream_http_x_used; #HERE",
      qr/unknown metric "nope" in quota_reconcile/ ],
    # review D16: what passed nginx -t but could only misbehave
    [ 'quota_usage without quota_redis',
      "quota_metric a;\n server { listen 127.0.0.1:1; quota_tenant x;\n location /u { quota_usage; } #HERE\n }",
      qr/"quota_usage" in \S+nginx\.conf:(\d+) needs "quota_redis"/, 'own-line' ],
    [ 'quota_alerts without quota_redis',
      "quota_metric a;\n server { listen 127.0.0.1:1; quota_tenant x;\n location /u { quota_alerts; } #HERE\n }",
      qr/"quota_alerts" in \S+nginx\.conf:(\d+) needs "quota_redis"/, 'own-line' ],
    [ 'duplicate grace in a plan',
      $base . "quota_plan p {\n grace 5%;\n grace 10%; #HERE\n }",
      qr/"grace" is duplicate in plan "p"/ ],
    [ 'duplicate rate in a plan',
      $base . "quota_plan p {\n rate 5r/s;\n rate 10r/m; #HERE\n }",
      qr/"rate" is duplicate in plan "p"/ ],
    [ 'duplicate concurrency in a plan',
      $base . "quota_plan p {\n concurrency 2;\n concurrency 3; #HERE\n }",
      qr/"concurrency" is duplicate in plan "p"/ ],
    [ 'price "." is not a price',
      $base . "quota_plan p {\n overage api_requests .; #HERE\n }",
      qr/invalid price "\."/ ],
    [ 'header prefix that is not a token',
      $base . "quota_header_prefix \"X Quota-\"; #HERE",
      qr/invalid header name prefix "X Quota-"/ ],
    [ 'empty header prefix',
      $base . "quota_header_prefix \"\"; #HERE",
      qr/invalid header name prefix ""/ ],
    [ 'warning header name that is not a token',
      $base . "quota_warning_header \"X-W:\" on; #HERE",
      qr/invalid header name "X-W:"/ ],
    [ 'reconcile of a metric no rule of the location charges',
      $base . "quota_metric b;\n server { listen 127.0.0.1:1; quota_tenant x;\n quota_route POST /a api_requests=1;\n quota_reconcile b \$upstream_http_x_used; #HERE\n }",
      qr/quota_reconcile "b": no quota_route of this level charges it/ ],
    [ 'quota_status out of range',
      $base . "quota_status 200; #HERE",
      qr/value must be between 400 and 599|must be equal or more than 400/ ],
);

for my $c (@cases) {
    my ($name, $http, $re, $own) = @$c;
    my ($rc, $out, $file, $line) = QuotaTest::nginx_t($http);
    isnt($rc, 0, "$name: nginx -t fails");
    like($out, $re, "$name: clear message");
    if ($own) {
        my ($l) = $out =~ $re;
        is($l, $line, "$name: points at the \"quota on\" line");
    } else {
        like($out, qr/\Q$file\E:$line\b/, "$name: file:line") or diag $out;
    }
}

# and a good configuration passes
my ($rc, $out) = QuotaTest::nginx_t($base . <<'_EOC_');
    quota_plan free { limit api_requests 5; rate 30r/m; concurrency 1; }
    quota_plan pro {
        limit api_requests 5000 per_seat;
        rate 120r/m burst=20;
        concurrency 3 lease=30s;
        grace 10%;
        overage api_requests 0.00001;
    }
    quota_default_plan free;
    quota_warning_threshold 75%;
    quota_warning_header X-Quota-Warning "Approaching quota limit ($quota_percent% used)";
    quota_ratelimit_headers on;
    quota_require_account off;
    quota_dry_run off;
    map $arg_mode $shadow { shadow 1; default 0; }
    quota_bypass $shadow;
    quota_reconcile api_requests $upstream_http_x_used;
    server {
        listen 127.0.0.1:1;
        quota on;
        quota_tenant $http_x_api_key hash;
        quota_route POST,PATCH /api/v2/:project/tests api_requests=1;
        quota_route * "/api/{project}/tests/{id}" api_requests=$http_x_cost auth=header version=1;
        quota_route POST /api/reporter/** api_requests=1;
        location / { return 200; }
    }
_EOC_
is($rc, 0, 'a good configuration passes nginx -t') or diag $out;

done_testing();
