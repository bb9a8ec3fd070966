"""Reading the daemon's configuration: :func:`load` takes a TOML file and
command-line overrides, :func:`parse` turns the TOML-shaped tables into a
:class:`~stream.config.Config` (refusing unknown sections and options, and
options of the wrong type), and :func:`validate` checks the values.  The
options themselves, and why each default is what it is, are in
:mod:`stream.config`.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from typing import Any

from volume import ovfstore
from volume.errors import InvalidRequest
from volume.validate import check_uuid

from .config import (
    LOG_LEVELS,
    Config,
    DaemonConfig,
    DomainConfig,
    EngineConfig,
    InvalidConfig,
    MiB,
    MonitorConfig,
    OvfConfig,
    TransferConfig,
)


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
        ("daemon.drain_timeout", cfg.daemon.drain_timeout, 0),
        ("ovf.update_timeout", cfg.ovf.update_timeout, 0),
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
