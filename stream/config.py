"""The daemon's typed configuration.

One dataclass per section; every default says why it is what it is.  The
embedded default (no config file at all) is a usable single-host daemon: a
local data directory with one file-backed storage domain, the data API on
loopback and the control API on a unix socket inside the data directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from volume import ovfstore
from volume.errors import InvalidRequest
from volume.validate import check_uuid

MiB = 1 << 20
#: What ``daemon.log_level`` may name (any case).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class InvalidConfig(InvalidRequest):
    code = "invalid-config"


@dataclass
class DomainConfig:
    uuid: str
    #: "file": a directory on local disk or NFS; "block": raw block devices.
    type: str = "file"
    #: Directory of a file domain (for a block domain: where its small
    #: metadata lives).
    path: str = ""
    #: Block devices registered with the domain (tickets may name them).
    devices: list[str] = field(default_factory=list)


@dataclass
class DaemonConfig:
    #: Relative to the working directory, so `make run` in a clone keeps its
    #: state next to the checkout, not in a system path that needs root.
    data_dir: str = "sluice-data"
    #: Loopback by default: the embedded default has no TLS, so it must not be
    #: reachable from the network until an operator configures cert and key.
    #: 54322 is ovirt-imageio's port, so engine-side tooling finds us.
    listen: str = "127.0.0.1:54322"
    #: Empty means "<data_dir>/control.sock".  Mode 0660, as imageio's.
    control_socket: str = ""
    #: TLS on the data API when both are set (TLS 1.2 minimum).
    cert: str = ""
    key: str = ""
    log_level: str = "INFO"
    #: Seconds a new data connection has to send its first request head.
    #: imageio's idle timeout before the first request is 60 s, and its
    #: PR #15 lowering it to 15 s broke backups: clients open their worker
    #: connections, then wait for a slow /extents before using them.
    request_head_timeout: int = 60
    #: Concurrent data connections (TLS ones from their accept, through
    #: their handshake) past which the oldest idle one is closed to make room (or, with none idle, the new
    #: one is refused), so that descriptors never run out
    #: (lowered at start to stay 256 below the open files limit).  imageio
    #: sizes for 10 transfers x 4 connections; 1000 is 25 times that, and
    #: an idle connection costs a few KiB.
    max_connections: int = 1000


@dataclass
class TransferConfig:
    #: Size of one aligned staging buffer.  Measured on the target VM kind:
    #: O_DIRECT writes with two 4 MiB buffers reach 0.76 GB/s, with two
    #: 16 MiB buffers 0.92-0.95 GB/s (shared/reference/measurements.md);
    #: imageio saw a drop at 32 MiB on SAN storage, so stay below that.
    buffer_size: int = 16 * MiB
    #: Idle staging buffers kept for reuse.  Fresh anonymous memory is
    #: expensive on this VM kind (pages are faulted in again), so reuse;
    #: 8 x 16 MiB = 128 MiB is the most we keep when idle.
    pool_buffers: int = 8
    #: Bound on the staging buffers lent out at once (uploads, downloads,
    #: checksums, copies); past it a new request gets 503.  Without one,
    #: 100 downloads whose client never read took the daemon to 3.2 GiB
    #: RSS.  2 GiB covers imageio's sizing of 10 transfers x 4 connections
    #: with 3 default buffers each (an upload: write_depth + the one
    #: filling; a download: 2) = 1.9 GiB.  0: no bound.
    max_buffer_memory: int = 2048 * MiB
    #: Full buffers of one upload being written at once.  O_DIRECT writes
    #: reach 1.1 GB/s one at a time and 1.65 at queue depth 4 on this VM
    #: kind (shared/reference/measurements.md); 2 keeps the disk busy while
    #: the third buffer fills, for 16 MiB more per upload.
    write_depth: int = 2
    #: Threads doing volume I/O.  A transfer has at most write_depth jobs
    #: in flight per connection, so this bounds concurrent disk work; 8
    #: matches imageio's advertised max_readers.
    io_workers: int = 8
    #: imageio's default.  Its PR #15 lowered it and broke backups of huge
    #: disks (clients idle while /extents runs): 1 s is allowed, but going
    #: below 60 s is asking for that.  A download whose client reads
    #: nothing for this long is cut off (imageio's socket timeout), so that
    #: a stalled reader cannot pin its buffers.
    inactivity_timeout: int = 60
    #: How long DELETE /tickets waits for ongoing operations before 409.
    remove_timeout: int = 60
    #: Cap of one zero step, so cancellation and progress stay responsive
    #: on huge ranges (imageio's Zero.MAX_STEP).
    max_zero_step: int = 128 * MiB
    #: Bytes a checksum hashes per executor call (rounded down to whole
    #: blocks, at least one).  The executor is shared with control requests
    #: and transfers, which wait at most about one piece per running
    #: checksum: 32 MiB is 65 ms of blake2b here (measured, 4 MiB blocks)
    #: plus its read, while the per-call cost (~50 us) stays negligible.
    checksum_step: int = 32 * MiB


@dataclass
class EngineConfig:
    #: The engine's bearer token.  Empty: generated at first start into
    #: ``<data_dir>/engine.token`` (mode 0600) and kept across restarts, so
    #: the embedded default is protected without any setup.
    token: str = ""
    #: CA that signs the engine's TLS client certificate (PEM).  When set,
    #: the data port asks for a client certificate and a verified one
    #: authenticates the engine, as vdsm trusts the engine's certificate.
    ca: str = ""


@dataclass
class OvfConfig:
    #: oVirt creates two stores per domain (OvfStoreCountPerDomain... is 2).
    stores: int = 2
    #: oVirt's OVF_STORE disks are 128 MiB; 10,000 OVFs of 20 KiB fit.
    store_size: int = 128 * MiB
    #: Staging buffers of OVF uploads.  Small on purpose: the daemon must
    #: take a 200 MiB stream of 10,000 OVFs in under 32 MiB of extra RSS.
    buffer_size: int = 4 * MiB


@dataclass
class MonitorConfig:
    #: vdsm's domain monitor period; the engine polls host stats about as often.
    interval: int = 10
    #: A check slower than this marks the domain unreachable (a hung NFS
    #: server never answers; a healthy one answers in milliseconds).
    timeout: int = 30


@dataclass
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    ovf: OvfConfig = field(default_factory=OvfConfig)
    #: Storage domains besides the embedded default one.
    domains: list[DomainConfig] = field(default_factory=list)

    @property
    def data_path(self) -> Path:
        return Path(self.daemon.data_dir).absolute()

    @property
    def control_socket_path(self) -> Path:
        if self.daemon.control_socket:
            return Path(self.daemon.control_socket).absolute()
        return self.data_path / "control.sock"

    def to_json(self) -> str:
        """The effective config, the engine token masked: this output gets
        pasted into bug reports."""
        shown = dataclasses.asdict(self)
        if self.engine.token:
            shown["engine"]["token"] = "(set)"
        return json.dumps(shown, indent=2, sort_keys=True)


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _section(cls: type[Any], data: Any, name: str) -> Any:
    if not isinstance(data, dict):
        raise InvalidConfig(f"{name} must be a table, not {data!r}")
    fields = dataclasses.fields(cls)
    for f in fields:
        if _required(f) and f.name not in data:
            raise InvalidConfig(f"option {name}.{f.name} is required")
    # The option types, from the defaults; the required options (a domain's
    # uuid) are strings.
    sample = cls(**{f.name: "" for f in fields if _required(f)})
    for key, value in data.items():
        if key not in {f.name for f in fields}:
            raise InvalidConfig(f"unknown option {name}.{key}")
        expected = type(getattr(sample, key))
        if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
            raise InvalidConfig(
                f"option {name}.{key} must be {expected.__name__}, not {value!r}"
            )
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise InvalidConfig(f"option {name}.{key} must be a list of strings, not {value!r}")
    return cls(**data)


def parse(data: dict[str, Any]) -> Config:
    """Build a Config from a TOML-shaped dict, refusing unknown keys."""
    cfg = Config()
    for key, value in data.items():
        if key == "daemon":
            cfg.daemon = _section(DaemonConfig, value, "daemon")
        elif key == "transfer":
            cfg.transfer = _section(TransferConfig, value, "transfer")
        elif key == "engine":
            cfg.engine = _section(EngineConfig, value, "engine")
        elif key == "ovf":
            cfg.ovf = _section(OvfConfig, value, "ovf")
        elif key == "monitor":
            cfg.monitor = _section(MonitorConfig, value, "monitor")
        elif key == "domains":
            if not isinstance(value, list):
                raise InvalidConfig("domains must be an array of tables")
            cfg.domains = [_section(DomainConfig, d, "domains") for d in value]
        else:
            raise InvalidConfig(f"unknown section {key!r}")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    t = cfg.transfer
    if t.buffer_size < 1 * MiB or t.buffer_size % (1 * MiB):
        raise InvalidConfig("transfer.buffer_size must be a whole number of MiB, at least 1")
    if not 1 <= t.write_depth <= 8:
        raise InvalidConfig("transfer.write_depth must be 1 to 8")
    if t.io_workers < 1:
        raise InvalidConfig("transfer.io_workers must be at least 1")
    if t.pool_buffers < 0:
        raise InvalidConfig("transfer.pool_buffers must be at least 0")
    if t.max_zero_step < 1 * MiB or t.max_zero_step % (1 * MiB):
        raise InvalidConfig("transfer.max_zero_step must be a whole number of MiB, at least 1")
    if t.max_buffer_memory and t.max_buffer_memory < 4 * t.buffer_size:
        raise InvalidConfig("transfer.max_buffer_memory must be 0 (no bound) or at least "
                            "4 buffers of transfer.buffer_size")
    if t.checksum_step < 1 * MiB or t.checksum_step % (1 * MiB):
        raise InvalidConfig("transfer.checksum_step must be a whole number of MiB, at least 1")
    for name, value, least in [
        ("transfer.inactivity_timeout", t.inactivity_timeout, 1),
        ("daemon.request_head_timeout", cfg.daemon.request_head_timeout, 1),
        ("transfer.remove_timeout", t.remove_timeout, 0),
        ("monitor.interval", cfg.monitor.interval, 1),
        ("monitor.timeout", cfg.monitor.timeout, 1),
    ]:
        if value < least:
            raise InvalidConfig(f"{name} must be at least {least} seconds, not {value}")
    if cfg.daemon.max_connections < 1:
        raise InvalidConfig("daemon.max_connections must be at least 1")
    if cfg.daemon.log_level.upper() not in LOG_LEVELS:
        raise InvalidConfig(f"daemon.log_level must be one of {', '.join(LOG_LEVELS)}, "
                            f"not {cfg.daemon.log_level!r}")
    if bool(cfg.daemon.cert) != bool(cfg.daemon.key):
        raise InvalidConfig("daemon.cert and daemon.key must be given together")
    if cfg.engine.ca and not cfg.daemon.cert:
        raise InvalidConfig("engine.ca needs TLS on the data port: set daemon.cert and daemon.key")
    if cfg.engine.token != cfg.engine.token.strip():
        raise InvalidConfig("engine.token must not begin or end with white space")
    if not cfg.daemon.data_dir.strip():
        raise InvalidConfig("daemon.data_dir must name a directory (it is empty)")
    _host, sep, port = cfg.daemon.listen.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit():
        raise InvalidConfig(f"daemon.listen must be HOST:PORT, not {cfg.daemon.listen!r}")
    # Port 0 would be one the daemon picks and tells nobody.  The length
    # first: int() refuses strings of more than 4300 digits.
    if len(port) > 5 or not 1 <= int(port) <= 65535:
        raise InvalidConfig(f"the port of daemon.listen must be 1 to 65535, not {port} "
                            f"(in {cfg.daemon.listen!r})")
    if not 1 <= cfg.ovf.stores <= 16:
        raise InvalidConfig("ovf.stores must be between 1 and 16")
    if cfg.ovf.store_size < ovfstore.MIN_SIZE or cfg.ovf.store_size % ovfstore.RECORD_SIZE:
        raise InvalidConfig(f"ovf.store_size must be a multiple of {ovfstore.RECORD_SIZE} "
                            f"bytes, at least {ovfstore.MIN_SIZE}")
    if cfg.ovf.buffer_size < 1 * MiB or cfg.ovf.buffer_size % (1 * MiB):
        raise InvalidConfig("ovf.buffer_size must be a whole number of MiB, at least 1")
    for d in cfg.domains:
        try:
            d.uuid = check_uuid(d.uuid, "domains.uuid")
        except InvalidRequest as e:
            raise InvalidConfig(e.detail) from None
        if d.type not in ("file", "block"):
            raise InvalidConfig(f"domain {d.uuid}: type must be 'file' or 'block'")
        where = [d.path] if d.type == "file" else d.devices
        if not where or not all(os.path.isabs(p) for p in where):
            raise InvalidConfig(f"domain {d.uuid}: a {d.type} domain needs "
                                + ("an absolute path" if d.type == "file"
                                   else "absolute device paths"))
    if len({d.uuid for d in cfg.domains}) != len(cfg.domains):
        raise InvalidConfig("domains: a uuid is listed twice")


def load(path: str | None, overrides: dict[str, Any] | None = None) -> Config:
    """Load a TOML file (if any), then apply command-line overrides."""
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise InvalidConfig(f"cannot read config {path}: {os.strerror(e.errno or 0)}") from e
        except tomllib.TOMLDecodeError as e:
            raise InvalidConfig(f"config {path} is not valid TOML: {e}") from e
        except UnicodeDecodeError:
            raise InvalidConfig(f"config {path} is not UTF-8 text") from None
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise InvalidConfig(f"{section} must be a table, not {table!r}")
        table[key] = value
    return parse(data)
