# quota_reject_cache: bad configuration fails "nginx -t"
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
    [ 'quota_reject_cache without quota_zone',
      "server { listen 127.0.0.1:1;\n location / { quota_reject_cache 1s; #HERE\n } }",
      qr/"quota_reject_cache" in \S+:(\d+) needs "quota_zone" in the http block/,
      'own-line' ],
    [ 'quota_reject_cache: bad time', $zone . "quota_reject_cache soon; #HERE",
      qr/"quota_reject_cache" directive invalid value/ ],
    [ 'quota_reject_cache: negative', $zone . "quota_reject_cache -1s; #HERE",
      qr/"quota_reject_cache" directive invalid value/ ],
    [ 'quota_reject_cache: duplicate',
      $zone . "quota_reject_cache 1s;\nquota_reject_cache 2s; #HERE",
      qr/"quota_reject_cache" directive is duplicate/ ],
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
    [ 'quota_zone written last', "quota_reject_cache 1s;\n$zone" ],
    [ '0 needs no quota_zone', "quota_reject_cache 0;" ],
    [ 'in a location', $zone . "server { listen 127.0.0.1:1;\n"
                       . " location / { quota_reject_cache 500ms; } }" ],
) {
    my ($rc, $out) = QuotaTest::nginx_t($base . $good->[1]);
    is($rc, 0, "$good->[0]: nginx -t passes") or diag($out);
}

done_testing();
