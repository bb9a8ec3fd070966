"""The daemon's typed configuration.

One dataclass per section; every default says why it is what it is.  The
embedded default (no config file at all) is a usable single-host daemon: a
local data directory with one file-backed storage domain, the data API on
loopback and the control API on a unix socket inside the data directory.
Reading a config file into these, and checking its values, is
:mod:`stream.configload`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from volume.errors import InvalidRequest

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
    #: their handshake) past which the oldest idle one is closed to make
    #: room (or, with none idle, the new one is refused), so that
    #: descriptors never run out (lowered at start to stay 256 below the
    #: open files limit).  imageio
    #: sizes for 10 transfers x 4 connections; 1000 is 25 times that, and
    #: an idle connection costs a few KiB.
    max_connections: int = 1000
    #: Seconds a SIGTERM waits for requests in flight before they are
    #: cut: systemd's default stop timeout is 90 s, and the cut requests
    #: get a few more seconds (server.SHUTDOWN_GRACE, twice) to clean up.
    drain_timeout: int = 60


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
    #: oVirt's OVF_STORE disks are 128 MiB: about 6,400 OVFs of 20 KiB fit
    #: (10,000 of them, 212 MB, need 256 MiB, as the OVF bench configures).
    store_size: int = 128 * MiB
    #: Staging buffers of OVF uploads.  Small on purpose: the daemon must
    #: take a 200 MiB stream of 10,000 OVFs in under 32 MiB of extra RSS.
    buffer_size: int = 4 * MiB
    #: Seconds a store's tar has to arrive in whole, however it trickles.
    #: A full 128 MiB store over a 1 MB/s link takes about 2 minutes: 15
    #: leave room for slower ones, while a client sending a byte now and
    #: then (each resets the idle timeout) holds the domain's updates
    #: no longer than that.  0: no bound.
    update_timeout: int = 900


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
