"""Throughput benchmark: Sluice against its peers and the disk, on 127.0.0.1.

Run it as ``python -m bench`` (``--quick`` for CI); bench/README.md says what
is measured and how to read the report.  Nothing here is imported by the
daemon or collected by pytest.
"""

import sys

MiB = 1 << 20
#: Throughput is reported in decimal megabytes per second, like dd and curl.
MB = 1_000_000


class BenchError(Exception):
    """A run failed: a peer did not start, a transfer failed, bytes differ."""


def log(msg: str) -> None:
    """Progress goes to stderr; stdout gets only the table."""
    print(f"bench: {msg}", file=sys.stderr, flush=True)
