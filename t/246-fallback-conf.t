# quota_fallback: bad configuration fails "nginx -t"
# with the file, the line and a clear message; a good one passes.

use strict;
use warnings;
use FindBin;
BEGIN { push @INC, "$FindBin::Bin/lib" }
use Test::More;
use QuotaTest ();

my $base = "quota_redis 127.0.0.1:1;\nquota_metric a;\n";
my $zone = "quota_zone q:1m;\n";

my @cases = (
    [ 'quota_fallback without quota_zone', "quota_fallback local nodes=2; #HERE",
      qr/"quota_fallback" in \S+:(\d+) needs "quota_zone" in the http block/,
      'own-line' ],
    [ 'quota_fallback: duplicate',
      $zone . "quota_fallback local;\nquota_fallback off; #HERE",
      qr/"quota_fallback" directive is duplicate/ ],
    [ 'quota_fallback: nodes=0', $zone . "quota_fallback local nodes=0; #HERE",
      qr/invalid value "nodes=0": nodes= is the number of gateways/ ],
    [ 'quota_fallback: nodes=abc', $zone . "quota_fallback local nodes=abc; #HERE",
      qr/invalid value "nodes=abc"/ ],
    [ 'quota_fallback: nodes=-2', $zone . "quota_fallback local nodes=-2; #HERE",
      qr/invalid value "nodes=-2"/ ],
    [ 'quota_fallback: unknown mode', $zone . "quota_fallback on; #HERE",
      qr/invalid value "on", expected "off" or "local"/ ],
    [ 'quota_fallback: unknown parameter',
      $zone . "quota_fallback local n=2; #HERE",
      qr/invalid parameter "n=2"/ ],
    [ 'quota_fallback off with a parameter',
      $zone . "quota_fallback off nodes=2; #HERE",
      qr/"quota_fallback off" takes no parameter, "nodes=2" given/ ],
    [ 'quota_fallback: too many arguments',
      $zone . "quota_fallback local nodes=2 x; #HERE",
      qr/invalid number of arguments in "quota_fallback" directive/ ],
    [ 'quota_fallback in a server',
      $zone . "server { listen 127.0.0.1:1;\n quota_fallback local; #HERE\n }",
      qr/"quota_fallback" directive is not allowed here/ ],
);

for my $c (@cases) {
    my ($name, $http, $re, $own) = @$c;
    my ($rc, $out, $file, $line) = QuotaTest::nginx_t($base . $http);
    isnt($rc, 0, "$name: nginx -t fails");
    like($out, $re, "$name: message");
    if ($own) {
        # reported at the end of the http block, naming the directive's line
        my ($l) = $out =~ $re;
        is($l, $line, "$name: names line $line");
    } else {
        like($out, qr/\Q$file\E:$line\b/, "$name: points at $file:$line");
    }
}

for my $good (
    [ 'quota_zone written last',
      "quota_fallback local nodes=4;\nquota_reject_cache 1s;\n$zone" ],
    [ 'off needs no quota_zone', "quota_fallback off;" ],
    [ 'local without nodes=', $zone . "quota_fallback local;" ],
) {
    my ($rc, $out) = QuotaTest::nginx_t($base . $good->[1]);
    is($rc, 0, "$good->[0]: nginx -t passes") or diag($out);
}

done_testing();
