"""
Percentiles and summaries of latencies, as every benchmark reports them.

Nearest-rank percentiles (no interpolation): a p99 is a latency some call
really had.
"""

import statistics


def pct(values, p):
    """Nearest-rank percentile of C{values} (any order); None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def summarize(values):
    """Count, p50, p90, p99, max and mean of C{values} (milliseconds)."""
    return {"n": len(values), "p50": pct(values, 50), "p90": pct(values, 90),
            "p99": pct(values, 99), "max": max(values) if values else None,
            "mean": round(statistics.fmean(values), 3) if values else None}


def split(total, parts):
    """C{total} clients shared among C{parts} load processes, as evenly as can be."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def ms(seconds):
    """C{seconds} in milliseconds, to 0.1 ms; None stays None."""
    return None if seconds is None else round(seconds * 1000, 1)
