"""``sluice``: the host daemon's command line."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from volume.errors import Error

from . import __version__, config, configload, logctx, malloctune

log = logging.getLogger("stream")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sluice", description="Sluice host daemon")
    p.add_argument("--version", action="version", version=f"sluice {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the daemon")
    s.add_argument("--config", help="TOML config file")
    s.add_argument("--data-dir", help="state directory (default ./sluice-data)")
    s.add_argument("--listen", help="data API HOST:PORT (default 127.0.0.1:54322)")
    s.add_argument("--control-socket", help="control API unix socket path")
    s.add_argument("--cert", help="TLS certificate (PEM) for the data API")
    s.add_argument("--key", help="TLS private key (PEM)")
    s.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    s.add_argument("--show-config", action="store_true",
                   help="print the effective config as JSON and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    for name in ("data_dir", "listen", "control_socket", "cert", "key", "log_level"):
        value = getattr(args, name)
        if value is not None:
            overrides[f"daemon.{name}"] = value
    try:
        cfg = configload.load(args.config, overrides)
    except Error as e:
        print(f"sluice: {e}", file=sys.stderr)
        return 2
    if args.show_config:
        print(cfg.to_json())
        return 0
    logctx.setup(cfg.daemon.log_level)
    malloctune.tune()
    from .server import run

    try:
        run(cfg)
    except Error as e:
        print(f"sluice: cannot start: {e}", file=sys.stderr)
        return 2 if isinstance(e, config.InvalidConfig) else 1
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"sluice: cannot start: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
