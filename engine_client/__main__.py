"""``sluice-engine``: the engine side's command line."""

from __future__ import annotations

import argparse
import json
import sys

from stream.wire.errors import WireError

from . import __version__, localhash


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sluice-engine", description="Sluice engine-side tools")
    p.add_argument("--version", action="version", version=f"sluice-engine {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser(
        "checksum", help="block-hash checksum of a local image, as the daemon computes it"
    )
    c.add_argument("file")
    c.add_argument("--algorithm", default="blake2b", help="blake2b (default) or xxh3_128")
    c.add_argument("--block-size", type=int, default=4 << 20)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "checksum":
            result = localhash.checksum(args.file, args.algorithm, args.block_size)
            print(json.dumps(result))
    except WireError as e:
        print(f"sluice-engine: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"sluice-engine: cannot read {args.file}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
