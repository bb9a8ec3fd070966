"""The ``disk`` commands and ``vm create`` of ``sluice-engine``.

Exit status as the rest of the command line: 0 done, 1 the work failed on
the way (the message says what state it left), 2 bad input.  Ctrl-C
stops a running copy job on its host (``DELETE /jobs/{id}``) and exits 1;
SIGTERM does what Ctrl-C does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from .cache import Cache
from .config import Config
from .errors import EngineError
from .ovf import canonical_uuid
from .report import count

if TYPE_CHECKING:  # aiohttp and tqdm: imported only by the commands that need them
    from .disks import Ctx
    from .progress import Progress

T = TypeVar("T")
CANCELED = ("canceled: the copy job was stopped on its host; the source is untouched and "
            "the destination is marked incomplete, so running the command again copies anew")
OPEN_CANCELED = "canceled before any byte moved; nothing was left on the host"


def add_disk_parsers(sub: Any) -> None:
    disk = sub.add_parser("disk", help="list, copy, move, upload, download and delete disks")
    acts = disk.add_subparsers(dest="action", required=True)
    for name, text in (("copy", "copy a disk to another domain (the source stays)"),
                       ("move", "move a disk to another domain (verified copy, then the "
                        "source is removed)")):
        s = acts.add_parser(name, help=text)
        s.add_argument("disk")
        s.add_argument("--to", required=True, help="the destination storage domain")
        s.add_argument("--format", choices=("raw", "qcow2"),
                       help="the destination's format (default: the source's)")
        s.add_argument("--allocation", choices=("sparse", "preallocated"))
        s.add_argument("--json", action="store_true", help="JSON lines on stdout")
    s = acts.add_parser("list", help="the disks on the domains, as their hosts list them, "
                        "and which VMs and templates have them")
    s.add_argument("--domain", help="this domain's only (default: every domain)")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s = acts.add_parser("delete", help="delete a disk that no VM or template has from a "
                        "domain (an upload, what a failed copy left)")
    s.add_argument("disk")
    s.add_argument("--domain", required=True)
    s.add_argument("--json", action="store_true", help="JSON lines on stdout")
    s = acts.add_parser("upload", help="upload a raw or qcow2 file as a new disk")
    s.add_argument("file")
    s.add_argument("--domain", required=True)
    s.add_argument("--disk", help="resume into this disk (made by an interrupted upload)")
    s.add_argument("--json", action="store_true", help="JSON lines on stdout")
    s = acts.add_parser("download", help="download a disk into a local file")
    s.add_argument("disk")
    s.add_argument("file")
    s.add_argument("--domain", help="the disk's domain, for a disk no VM has")
    s.add_argument("--json", action="store_true", help="JSON lines on stdout")


def add_vm_create(vm: Any) -> None:
    s = vm.add_parser("create", help="create a VM (or template) with disks on chosen domains")
    s.add_argument("name")
    s.add_argument("--disk", action="append", default=[], metavar="SIZE@DOMAIN[:FORMAT]",
                   help="a new empty disk (repeatable), e.g. 10G@SD or 1G@SD:qcow2")
    s.add_argument("--attach", action="append", default=[], metavar="DISK@DOMAIN",
                   help="an existing disk, say an uploaded one (repeatable)")
    s.add_argument("--from-template", metavar="TEMPLATE",
                   help="clone the disks of this template")
    s.add_argument("--to", action="append", default=[], metavar="DOMAIN",
                   help="where the template's disks go: once for all, or once per disk")
    s.add_argument("--template", action="store_true", help="create a template, not a VM")
    s.add_argument("--json", action="store_true", help="JSON lines on stdout")


async def _cancellable(work: Awaitable[T]) -> T:
    """Run ``work``; SIGINT and SIGTERM cancel it (its cleanup runs first)."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def with_ctx(cache: Cache, cfg: Config, progress: Progress | None,
             body: Callable[[Ctx], Awaitable[T]]) -> T:
    """Run ``body`` with host clients (and ``progress`` for its events);
    SIGINT and SIGTERM cancel it."""
    from .disks import Ctx
    from .hostapi import Clients

    async def main() -> T:
        clients = Clients(cfg.http)
        try:
            ctx = Ctx(cache, clients) if progress is None else Ctx(cache, clients,
                                                                    progress.event)
            return await _cancellable(body(ctx))
        finally:
            await clients.close()

    return asyncio.run(main())


def run_disk(cache: Cache, cfg: Config, args: argparse.Namespace) -> int:
    from .diskmove import copy_disk
    from .progress import Progress

    a = args.action
    if a == "list":
        from .disklist import run

        return run(cache, cfg, args)
    if a == "delete":
        from .diskdelete import run as delete

        return delete(cache, cfg, args)
    progress = Progress(f"{a} {getattr(args, 'disk', None) or args.file}", args.json)
    try:
        if a in ("copy", "move"):
            summary = with_ctx(cache, cfg, progress, lambda ctx: copy_disk(
                ctx, args.disk, args.to, move=a == "move", fmt=args.format,
                allocation=args.allocation))
            text = (f"disk {summary['disk']} is already on {summary['to']}"
                    if summary.get("already_there") else
                    f"disk {summary['disk']} {'moved' if a == 'move' else 'copied'} from "
                    f"{summary['from']} to {summary['to']}, verified")
        else:
            summary = _transfer(cache, cfg, args, progress)
            text = (f"{'uploaded' if a == 'upload' else 'downloaded'} disk {summary['disk']} "
                    f"({summary['data_bytes']} bytes of data), {summary['algorithm']} checksum "
                    f"{summary['checksum']}")
    except asyncio.CancelledError:
        progress.close()
        print(f"sluice-engine: {CANCELED if a in ('copy', 'move') else OPEN_CANCELED}",
              file=sys.stderr)
        return 1
    finally:
        progress.close()
    progress.result(summary, text)
    return 0


@contextlib.contextmanager
def _term_interrupts() -> Iterator[None]:
    """SIGTERM as Ctrl-C while the bytes move (outside the event loop, whose
    handlers cover the rest): killed at once, a download left its partial
    file beside the target and the ticket open on the host.  Only in the
    main thread, where Python runs signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _transfer(cache: Cache, cfg: Config, args: argparse.Namespace,
              progress: Progress) -> dict[str, Any]:
    from . import transfers

    upload = args.action == "upload"
    disk = canonical_uuid(args.disk, "disk") if args.disk else None
    domain = canonical_uuid(args.domain, "domain") if args.domain else None
    if upload:
        assert domain is not None  # a required option of upload
        target = domain
    else:
        transfers.check_target(args.file)
    opened = with_ctx(cache, cfg, progress, lambda ctx: (
        transfers.open_upload(ctx, args.file, target, disk) if upload
        else transfers.open_download(ctx, disk or "", domain)))
    again = f" with --disk {opened.ref.img_uuid}" if upload else ""
    try:
        progress.emit({"event": "ticket", "host": opened.host, **opened.ref.to_json()})
        with _term_interrupts():
            summary = transfers.run(opened, args.file, upload, progress.bytes(opened.size),
                                    cfg.http.ca_file or None, total=progress.set_total)
    except KeyboardInterrupt:
        raise EngineError(f"interrupted; run the command again{again} to finish it") from None
    except BrokenPipeError:  # stdout's reader left (``| head``): exit as SIGPIPE would
        print(f"sluice-engine: output closed; run the command again{again} to finish it",
              file=sys.stderr)
        raise
    finally:
        try:
            with_ctx(cache, cfg, progress, lambda ctx: transfers.close(ctx, opened))
        except (asyncio.CancelledError, KeyboardInterrupt):
            # A second Ctrl-C: not "canceled before any byte moved" (run_disk's
            # word for a cancel while opening); the transfer was under way.
            raise EngineError(f"interrupted while ending the transfer, whose ticket on "
                              f"host {opened.host} now expires by itself; run the command "
                              f"again{again} to finish it") from None
    if upload:
        try:
            with_ctx(cache, cfg, progress, lambda ctx: transfers.complete(ctx, opened))
        except EngineError as e:
            raise EngineError(f"the upload was verified, but marking disk "
                              f"{opened.ref.img_uuid} complete failed ({e}); run the "
                              f"command again{again}") from None
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise EngineError(f"interrupted while marking disk {opened.ref.img_uuid} "
                              f"complete; run the command again{again} to finish it") from None
    return summary


def run_vm_create(cache: Cache, cfg: Config, args: argparse.Namespace) -> int:
    from . import vms
    from .progress import Progress

    disks = [vms.parse_new_disk(d) for d in args.disk]
    attach = [vms.parse_attach(d) for d in args.attach]
    if args.to and not args.from_template:
        print("sluice-engine: --to places a template's disks; give --from-template too",
              file=sys.stderr)
        return 2
    progress = Progress(f"create {args.name}", args.json)
    try:
        summary = with_ctx(cache, cfg, progress, lambda ctx: vms.create_vm(
            ctx, args.name, disks, attach,
            cache.resolve(args.from_template) if args.from_template else None, args.to,
            args.template))
    except asyncio.CancelledError:
        print("sluice-engine: canceled; the volumes this command created were removed",
              file=sys.stderr)
        return 1
    finally:
        progress.close()
    progress.result(summary, f"created {summary['kind']} {summary['name']} "
                             f"({summary['uuid']}) with {count(len(summary['disks']), 'disk')}")
    return 0
