"""One ovirt-imageio client transfer, timed, in its own process.

    python -m bench.imageio_client upload|download LOCAL URL CAFILE

CAFILE "" means plain HTTP.  Prints {"seconds": ...} on the last line: the
wall time of the client's upload() or download() call, which includes
starting its qemu-nbd, as a user of the client pays for it.
"""

from __future__ import annotations

import json
import sys
import time

from ovirt_imageio import client


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] not in ("upload", "download"):
        print(__doc__, file=sys.stderr)
        return 2
    op, local, url, cafile = argv
    start = time.monotonic()
    if op == "upload":
        client.upload(local, url, cafile or None)
    else:
        # raw: the bench compares the bytes with the source image.
        client.download(url, local, cafile or None, fmt="raw")
    print(json.dumps({"seconds": time.monotonic() - start}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
