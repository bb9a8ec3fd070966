"""What the figures were measured on: the machine and the peers' versions."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from . import MiB
from .workspace import fs_type

#: Program -> the command that prints its version (first line kept).
TOOLS = {
    "curl": ["curl", "--version"],
    "nginx": ["/usr/sbin/nginx", "-v"],
    "openssl": ["openssl", "version"],
    "qemu-img": ["qemu-img", "--version"],
}


def _meminfo_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / MiB, 1)
    return 0.0


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def _tool_version(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).decode(errors="replace").strip()
    return text.splitlines()[0] if text else None


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    found = {name: _tool_version(argv) for name, argv in TOOLS.items()}
    for package in ("sluice", "ovirt-imageio", "aiohttp", "uvloop"):
        found[package] = _package_version(package)
    return found


def machine_facts(work: Path) -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_gib": _meminfo_gib(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "work_dir": str(work),
        "work_fs": fs_type(work),
        "versions": versions(),
    }
