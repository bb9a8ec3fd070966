"""``sluice-engine``: feed the engine cache, push OVF stores and pool maps.

Exit status: 0 done; 1 something failed on the way (a host down, a push
refused: the summary says which); 2 bad input (one sentence on stderr);
130 stopped by Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sqlite3
import sys
from dataclasses import asdict

from stream.wire.blkhash import validate_block_size
from stream.wire.errors import WireError

from . import __version__, config, diskcli, flowcli, importer, localhash, loopcli, passlock, report
from .cache import Cache
from .errors import EngineError, InvalidInput, NotFound
from .model import VmStatus, parse_domain_status
from .schema import DB_NAME

YES_NO = {"yes": True, "no": False}
#: What names a VM or template on the command line.
VM_HELP = "its UUID, or its name if no other VM or template has it"


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sluice-engine", description="Sluice engine-side tools")
    p.add_argument("--version", action="version", version=f"sluice-engine {__version__}")
    p.add_argument("--state-dir", help="the engine cache directory (default ./sluice-engine-data)")
    p.add_argument("--config", help="TOML config file (see engine_client/config.py)")
    p.add_argument("--log-level", type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   help="WARNING by default; INFO for the loops")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("checksum", help="block-hash checksum of a local image, as the daemon "
                       "computes it")
    c.add_argument("file")
    c.add_argument("--algorithm", default="blake2b", help="blake2b (default) or xxh3_128")
    c.add_argument("--block-size", type=_positive, default=4 << 20,
                   help="1 MiB to 16 MiB, a multiple of 4096 (default 4 MiB)")

    vm = sub.add_parser("vm", help="VMs and templates").add_subparsers(dest="action",
                                                                         required=True)
    s = vm.add_parser("import", help="import a directory of .ovf files")
    s.add_argument("directory")
    s.add_argument("--domain", help="put every disk on this storage domain")
    s.add_argument("--disk-domain", action="append", default=[], metavar="DISK=DOMAIN",
                   help="put one disk on a storage domain (repeatable)")
    _json_flag(s)
    s = vm.add_parser("list", help="list VMs and templates")
    _json_flag(s)
    s = vm.add_parser("ovf", help="print a VM's OVF")
    s.add_argument("vm", help=VM_HELP)
    s.add_argument("--cached", action="store_true", help="the cached OVF stores get")
    s = vm.add_parser("set-disk", help="move a disk or change its flags")
    s.add_argument("vm", help=VM_HELP)
    s.add_argument("disk")
    s.add_argument("--domain")
    s.add_argument("--shareable", choices=YES_NO)
    s.add_argument("--active", choices=YES_NO)
    for name, text in (("lock", "lock a VM (ImageLocked), a disk or a snapshot"),
                       ("unlock", "unlock a VM, a disk or a snapshot")):
        s = vm.add_parser(name, help=text)
        s.add_argument("vm", help=VM_HELP)
        which = s.add_mutually_exclusive_group()
        which.add_argument("--disk")
        which.add_argument("--snapshot")
    s = vm.add_parser("set-status", help="set a VM's status (Up, Down, Paused, ...)")
    s.add_argument("vm", help=VM_HELP)
    s.add_argument("status")
    s = vm.add_parser("delete", help="delete a VM or template")
    s.add_argument("vm", help=VM_HELP)
    diskcli.add_vm_create(vm)
    diskcli.add_disk_parsers(sub)

    dom = sub.add_parser("domain", help="storage domains").add_subparsers(dest="action",
                                                                          required=True)
    s = dom.add_parser("add", help="add a storage domain")
    s.add_argument("uuid")
    s.add_argument("--type", required=True, choices=("file", "block"))
    s.add_argument("--location", action="append", required=True,
                   help="the directory (file) or a device (block, repeatable)")
    s.add_argument("--status", default="Active")
    s.add_argument("--host", action="append", default=[], help="a host serving it (repeatable)")
    s = dom.add_parser("set-status", help="change a domain's status")
    s.add_argument("uuid")
    s.add_argument("status")
    s = dom.add_parser("list", help="list storage domains")
    _json_flag(s)
    s = dom.add_parser("import", help="recover a domain's VMs and templates from its OVF "
                                      "store, read from a host that serves it")
    s.add_argument("uuid")
    s.add_argument("--host", help="read the store from this host only")
    _json_flag(s)
    flowcli.add_parsers(dom)

    host = sub.add_parser("host", help="hosts").add_subparsers(dest="action", required=True)
    s = host.add_parser("add", help="add a host (or change one)")
    s.add_argument("name")
    s.add_argument("url", help="its data URL, e.g. http://127.0.0.1:54322")
    tok = s.add_mutually_exclusive_group(required=True)
    tok.add_argument("--token", help="the host's engine token")
    tok.add_argument("--token-file", help="a file holding it (the host's engine.token)")
    served = s.add_mutually_exclusive_group()
    served.add_argument("--domain", action="append",
                        help="a domain it serves (repeatable; replaces those it served; "
                             "without it, a host changed keeps its domains)")
    served.add_argument("--no-domains", action="store_true",
                        help="it serves no domain any more")
    s = host.add_parser("list", help="list hosts")
    _json_flag(s)

    ovf = sub.add_parser("ovf", help="OVF stores").add_subparsers(dest="action", required=True)
    s = ovf.add_parser("update", help="run the OVF updater (one pass with --once)")
    s.add_argument("--once", action="store_true",
                   help="one pass, then a per-domain summary (exit 1 if a push failed)")
    s.add_argument("--retry-now", action="store_true",
                   help="retry failed domains now, without waiting for their backoff")
    _json_flag(s)
    s = ovf.add_parser("status", help="each domain's OVF store state")
    _json_flag(s)

    pool = sub.add_parser("pool", help="the pool map").add_subparsers(dest="action",
                                                                      required=True)
    for name, text in (("push", "push the map to every host now"),
                       ("status", "compare each host's map with the engine's"),
                       ("sync", "keep the hosts' maps in sync (runs until stopped)")):
        s = pool.add_parser(name, help=text)
        s.add_argument("--host", help="only this host")
        _json_flag(s)

    sub.add_parser("run", help="run the OVF updater and the pool sync until stopped "
                   "(SIGUSR1: update OVF stores now)")
    return p


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _vm(cache: Cache, cfg: config.Config, args: argparse.Namespace) -> int:
    a = args.action
    if getattr(args, "vm", None) is not None:
        args.vm = cache.resolve(args.vm)  # a UUID, or the name of one VM or template
    if a == "import":
        done = importer.import_dir(cache, args.directory, cfg.max_ovf_size, args.domain,
                                   importer.parse_disk_domains(args.disk_domain))
        report.out(args, [asdict(i) for i in done], lambda: report.imported(done))
    elif a == "list":
        report.out(args, [asdict(e) for e in cache.entities()], lambda: report.entities(cache))
    elif a == "ovf":
        data = cache.ovf(args.vm, cached=args.cached)
        if data is None:
            raise NotFound(f"VM {args.vm} has no cached OVF yet; run 'sluice-engine ovf update'")
        sys.stdout.buffer.write(data)
    elif a == "set-disk":
        cache.set_disk(args.vm, args.disk, args.domain, YES_NO.get(args.shareable or ""),
                       YES_NO.get(args.active or ""))
    elif a in ("lock", "unlock"):
        cache.set_locked(args.vm, a == "lock", args.disk, args.snapshot)
    elif a == "set-status":
        cache.set_status(args.vm, VmStatus.parse(args.status))
    elif a == "delete":
        cache.delete_entity(args.vm)
    elif a == "create":
        return diskcli.run_vm_create(cache, cfg, args)
    return 0


def _domain(cache: Cache, args: argparse.Namespace) -> int:
    if args.action == "add":
        cache.add_domain(args.uuid, args.type, args.location, parse_domain_status(args.status),
                         args.host)
    elif args.action == "set-status":
        status = parse_domain_status(args.status)
        held = passlock.hold_flow(cache.state_dir, cache.domain(args.uuid).uuid)
        try:
            cache.set_domain_status(args.uuid, status)
        finally:
            passlock.release(held)
    else:
        found, stores = cache.domains(), cache.stores()
        report.out(args, [asdict(d) for d in found], lambda: report.domains(found, stores))
    return 0


def _host(cache: Cache, args: argparse.Namespace) -> int:
    if args.action == "add":
        token = args.token
        if args.token_file:
            try:
                with open(args.token_file) as f:
                    token = f.read()
            except OSError as e:
                raise InvalidInput(f"cannot read the token file {args.token_file}: "
                                   f"{e.strerror}") from None
            except UnicodeDecodeError:
                raise InvalidInput(f"the token file {args.token_file} is not text; give "
                                   "the host's engine.token") from None
        cache.add_host(args.name, args.url, token, [] if args.no_domains else args.domain)
    else:
        hosts = cache.hosts()
        data = [{"name": h.name, "url": h.url, "domains": list(h.domains)} for h in hosts]
        report.out(args, data, lambda: report.table(
            ["name", "url", "domains"], [(h.name, h.url, ",".join(h.domains)) for h in hosts]))
    return 0


def _dispatch(cfg: config.Config, args: argparse.Namespace) -> int:
    new = not os.path.exists(os.path.join(cfg.state_dir, DB_NAME))
    with Cache.open(cfg.state_dir) as cache:
        rc = _command(cache, cfg, args)
    if new and rc == 0:  # a mistyped --state-dir would otherwise just look empty
        print(f"sluice-engine: started a new engine cache in {cfg.state_dir}", file=sys.stderr)
    return rc


def _command(cache: Cache, cfg: config.Config, args: argparse.Namespace) -> int:
    if args.command == "vm":
        return _vm(cache, cfg, args)
    if args.command == "domain":
        if args.action in flowcli.FLOWS:
            return flowcli.run(cache, cfg, args)
        if args.action == "import":
            from . import domainimport  # aiohttp: only for commands that talk to hosts

            return domainimport.run(cache, cfg, args)
        return _domain(cache, args)
    if args.command == "disk":
        return diskcli.run_disk(cache, cfg, args)
    if args.command == "host":
        return _host(cache, args)
    if args.command == "ovf":
        return asyncio.run(loopcli.ovf(cache, cfg, args))
    if args.command == "pool":
        return asyncio.run(loopcli.pool(cache, cfg, args))
    return asyncio.run(loopcli.run(cache, cfg))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = args.log_level or ("INFO" if args.command == "run" or (
        args.command in ("ovf", "pool") and args.action in ("update", "sync")
        and not getattr(args, "once", False)) else "WARNING")
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s [%(name)s] %(message)s")
    try:
        rc = _guarded(args)
        # Stdout to a pipe is buffered: a reader that stopped early (``|
        # head``) fails this flush, caught here rather than at exit.
        sys.stdout.flush()
    except BrokenPipeError:
        # Quiet, as a command killed by SIGPIPE, and no second error when
        # Python flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    return rc


def _guarded(args: argparse.Namespace) -> int:
    """The command; its errors as one sentence on stderr and an exit status."""
    try:
        if args.command == "checksum":
            validate_block_size(args.block_size)  # the daemon's range; no huge buffer
            try:
                result = localhash.checksum(args.file, args.algorithm, args.block_size)
            except OSError as e:
                # Bad input, as for ``disk upload`` of a file it cannot read.
                print(f"sluice-engine: cannot read {args.file}: {e.strerror}", file=sys.stderr)
                return 2
            print(json.dumps(result))
            return 0
        return _dispatch(config.load(args.config, args.state_dir), args)
    except (InvalidInput, NotFound, WireError) as e:
        print(f"sluice-engine: {e}", file=sys.stderr)
        return 2
    except EngineError as e:
        print(f"sluice-engine: {e}", file=sys.stderr)
        return 1
    except sqlite3.Error as e:
        print(f"sluice-engine: the engine cache failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sluice-engine: interrupted", file=sys.stderr)
        return 130
