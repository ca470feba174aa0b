package QuotaTime;

# Period boundaries as the module computes them (calendar month, UTC), for
# expected header and body values.  Pure Perl, core modules only.

use strict;
use warnings;
use POSIX qw(strftime);
use Exporter 'import';

our @EXPORT = qw(month_start next_month_reset today);

sub _ym { my @t = gmtime(shift // time); return ($t[5] + 1900, $t[4] + 1) }

# "2026-11-01": the START of the current monthly usage key
sub month_start {
    my ($y, $m) = _ym(@_);
    return sprintf "%04d-%02d-01", $y, $m;
}

# "2026-12-01T00:00:00Z": X-Quota-Reset / quota_reset_date
sub next_month_reset {
    my ($y, $m) = _ym(@_);
    ($y, $m) = $m == 12 ? ($y + 1, 1) : ($y, $m + 1);
    return sprintf "%04d-%02d-01T00:00:00Z", $y, $m;
}

sub today { return strftime("%Y-%m-%d", gmtime(shift // time)) }

1;
