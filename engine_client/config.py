"""The engine side's typed configuration.

Every default says why it is what it is.  With no config file at all the
engine side works in ``./sluice-engine-data`` (the cache database lives
there), pushes OVF stores every hour like oVirt and keeps each host's pool
map in sync every ten seconds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import ssl
import tomllib
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidInput


@dataclass
class UpdaterConfig:
    #: oVirt's OvfUpdateIntervalInMinutes is 60: OVF stores are a disaster-
    #: recovery copy, not a live view.  ``ovf update --once`` or a trigger
    #: pushes sooner.
    interval: float = 3600.0
    #: oVirt's OvfItemsCountPerUpdate: entities handled per transaction, so a
    #: pass over 10,000 VMs never holds the database for long.
    chunk_size: int = 100
    #: Domains pushed at the same time.  Each push streams from the cache with
    #: bounded memory; four keep a few hosts busy without flooding one.
    concurrency: int = 4
    #: First retry of a failed domain after about this many seconds, doubling
    #: with each failure, with jitter, so a host coming back is not hit by
    #: every engine at once.  The loop wakes up for a retry before ``interval``.
    backoff_base: float = 30.0
    #: Retries never wait longer than this (half of ``interval``), so a domain
    #: that failed many times is still tried at least twice an hour.
    backoff_max: float = 1800.0
    #: A retry waits between (1 - jitter) and 1 times its backoff delay.
    jitter: float = 0.5
    #: OVFs read from the cache per database call while streaming (oVirt's
    #: OVF_MAX_ITEMS_PER_SQL_STATEMENT is 100): about 2 MiB of 20 KiB OVFs.
    fetch_batch: int = 100


@dataclass
class HttpConfig:
    #: A host that does not accept a TCP connection in this time is down.
    connect_timeout: float = 10.0
    #: Small requests (info, stats, pool map) answer in milliseconds.
    request_timeout: float = 30.0
    #: oVirt's UploadFileMaxTimeInMinutes is 5: a whole OVF store upload,
    #: including the host's fsync, must end within it.
    upload_timeout: float = 300.0
    #: No byte from the host for this long during an upload means it is
    #: stuck; the push fails and the domain is retried later.
    read_timeout: float = 120.0
    #: Bytes handed to the connection at a time; tar headers and small OVFs
    #: are gathered into chunks of this size (and compressed per chunk).
    chunk_size: int = 1 << 20
    #: Compress OVF store uploads with zstd when the host lists the feature:
    #: OVF XML shrinks about 8 times, and the host checks the tar as decoded.
    zstd: bool = True
    #: CA bundle (PEM) that signs the hosts' TLS certificates, for https://
    #: host URLs.  Empty: the system's CAs.
    ca_file: str = ""


@dataclass
class PoolConfig:
    #: oVirt's StoragePoolRefreshTimeInSeconds: how often host stats are read.
    sync_interval: float = 10.0
    #: A host reporting a storage error on an Active domain gets the map
    #: again (with a new version, which makes it re-check its storage) at most
    #: this often, so a dead NFS server does not bump the version every sync.
    error_resend_interval: float = 60.0


@dataclass
class Config:
    #: Relative to the working directory, like the daemon's ``./sluice-data``.
    state_dir: str = "sluice-engine-data"
    #: Refuse OVF files larger than this: oVirt OVFs are 10-50 KiB; a 10,000
    #: VM store must stay far below the 128 MiB store volume.
    max_ovf_size: int = 4 << 20
    updater: UpdaterConfig = field(default_factory=UpdaterConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


_SECTIONS: dict[str, type[Any]] = {
    "updater": UpdaterConfig, "http": HttpConfig, "pool": PoolConfig,
}


def _fill(obj: Any, data: dict[str, Any], where: str) -> None:
    for key, value in data.items():
        name = f"{where}{key}"
        if key in _SECTIONS and not where:
            if not isinstance(value, dict):
                raise InvalidInput(f"config section [{key}] must be a table")
            _fill(getattr(obj, key), value, f"{key}.")
            continue
        if not hasattr(obj, key) or key in _SECTIONS:
            raise InvalidInput(f"unknown config option {name}")
        kind = type(getattr(obj, key))
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = isinstance(value, bool) if kind is bool else (
            number if kind is float else isinstance(value, kind) and not isinstance(value, bool))
        if not ok:
            raise InvalidInput(f"config option {name} must be {kind.__name__}, not {value!r}")
        setattr(obj, key, kind(value))


def validate(cfg: Config) -> None:
    u = cfg.updater
    positive = {
        "updater.interval": u.interval, "updater.chunk_size": u.chunk_size,
        "updater.concurrency": u.concurrency, "updater.backoff_base": u.backoff_base,
        "updater.fetch_batch": u.fetch_batch, "http.connect_timeout": cfg.http.connect_timeout,
        "http.request_timeout": cfg.http.request_timeout,
        "http.upload_timeout": cfg.http.upload_timeout,
        "http.read_timeout": cfg.http.read_timeout, "http.chunk_size": cfg.http.chunk_size,
        "pool.sync_interval": cfg.pool.sync_interval, "max_ovf_size": cfg.max_ovf_size,
    }
    for name, value in positive.items():
        if not math.isfinite(value) or value <= 0:  # TOML has nan and inf
            raise InvalidInput(f"config option {name} must be positive, not {value}")
    if not math.isfinite(u.backoff_max) or u.backoff_max < u.backoff_base:
        raise InvalidInput("updater.backoff_max must not be below updater.backoff_base")
    if not 0 <= u.jitter < 1:  # nan fails this too
        raise InvalidInput("updater.jitter must be in [0, 1)")
    if cfg.http.ca_file:  # now, not as a traceback in the first command that loads it
        try:
            ssl.create_default_context(cafile=cfg.http.ca_file)
        except OSError as e:
            why = "it is not a PEM CA bundle" if isinstance(e, ssl.SSLError) else e.strerror
            raise InvalidInput(f"config option http.ca_file: cannot load {cfg.http.ca_file}: "
                               f"{why}") from None


def load(path: str | None = None, state_dir: str | None = None) -> Config:
    """The config from a TOML file (if any), ``state_dir`` overriding it."""
    cfg = Config()
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise InvalidInput(f"cannot read config file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise InvalidInput(f"config file {path} is not valid TOML: {e}") from None
        except UnicodeDecodeError:
            raise InvalidInput(f"config file {path} is not UTF-8 text") from None
        _fill(cfg, data, "")
    if state_dir is not None:
        cfg.state_dir = state_dir
    validate(cfg)
    return cfg
