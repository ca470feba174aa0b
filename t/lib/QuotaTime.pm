package QuotaTime;

# Period boundaries as the module computes them (calendar month, UTC), for
# expected header and body values.  Pure Perl, core modules only.

use strict;
use warnings;
use POSIX qw(strftime);
use Exporter 'import';

our @EXPORT = qw(month_start next_month_reset today month_last_second prev_month_start);

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

# "2026-11-30T23:59:59Z": period_end of the calendar month
sub month_last_second {
    my ($y, $m) = _ym(@_);
    my @days = (31, ($y % 4 == 0 && ($y % 100 != 0 || $y % 400 == 0)) ? 29 : 28,
                31, 30, 31, 30, 31, 31, 30, 31, 30, 31);
    return sprintf "%04d-%02d-%02dT23:59:59Z", $y, $m, $days[$m - 1];
}

# "2026-10-01": the START of the previous calendar month
sub prev_month_start {
    my ($y, $m) = _ym(@_);
    ($y, $m) = $m == 1 ? ($y - 1, 12) : ($y, $m - 1);
    return sprintf "%04d-%02d-01", $y, $m;
}

sub today { return strftime("%Y-%m-%d", gmtime(shift // time)) }

1;
