"""The copy bench's report: rows, the issue's two ratios, JSON and a table.

Like bench/report.py, targets are reported and never asserted.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import MB, MiB
from .procs import Usage
from .report import _fmt, _headline, _short, check_word, save

DD_COPY = "limits/copy/dd"
#: dd writing the image while another dd reads it from the same disk.
DD_WRITE_READING = "limits/write-reading/dd"
UPLOAD = "upload/dense/curl"
COPY = "copy/dense/job"
COPY_DATA = "copy/dense-data/job"
COPY_SPARSE = "copy/sparse/job"
#: The same copies from a source daemon whose storage domain is on /dev/shm.
SHM_COPY = "copy-shm/dense/job"
SHM_COPY_DATA = "copy-shm/dense-data/job"
SHM_COPY_SPARSE = "copy-shm/sparse/job"


@dataclass
class CopyRow:
    name: str
    #: Which image it moves (a key of copyrows.make_images).
    image: str
    #: What the image is, for the table ("2048 MiB dense").
    what: str
    #: Data bytes moved: MB/s is data over seconds.
    data: int
    #: Where the source image lives: "disk" (the disk the destination
    #: writes to) or "shm" (/dev/shm, a source daemon's tmpfs domain).
    source: str = "disk"
    #: Per round: the measured seconds (curl's time_total, or the copy job's
    #: own start-to-done time, verification included), the bench's wall time,
    #: and a copy job's verification phase as the bench saw it.
    seconds: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    verify_s: list[float | None] = field(default_factory=list)
    cpu_src: list[float] = field(default_factory=list)
    cpu_dst: list[float] = field(default_factory=list)
    rss_src: int = 0
    rss_dst: int = 0
    verified: bool | None = None
    error: str | None = None

    @property
    def kind(self) -> str:
        return self.name.split("/", 1)[0]

    def add(self, seconds: float, wall: float, verify_s: float | None, src: Usage,
            dst: Usage) -> None:
        self.seconds.append(seconds)
        self.wall.append(wall)
        self.verify_s.append(verify_s)
        self.cpu_src.append(src.cpu_s)
        self.cpu_dst.append(dst.cpu_s)
        self.rss_src = max(self.rss_src, src.peak_rss)
        self.rss_dst = max(self.rss_dst, dst.peak_rss)


def _median(values: list[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return statistics.median(found) if found else None


def row_json(row: CopyRow) -> dict[str, Any]:
    seconds = _median(list(row.seconds))
    gb = row.data / 1e9
    cpu_src, cpu_dst = _median(list(row.cpu_src)), _median(list(row.cpu_dst))
    if row.kind == "limits":  # no daemon involved
        cpu_src = cpu_dst = None
    return {
        "name": row.name, "image": row.image, "what": row.what, "data_bytes": row.data,
        "source_on": row.source,
        "seconds": seconds, "mb_s": row.data / seconds / MB if seconds else None,
        "rounds_seconds": row.seconds, "rounds_wall_seconds": row.wall,
        "rounds_verify_seconds": row.verify_s, "verify_seconds": _median(row.verify_s),
        "src_cpu_s": cpu_src, "dst_cpu_s": cpu_dst,
        "rounds_src_cpu_s": row.cpu_src, "rounds_dst_cpu_s": row.cpu_dst,
        "src_cpu_s_per_gb": cpu_src / gb if cpu_src is not None else None,
        "dst_cpu_s_per_gb": cpu_dst / gb if cpu_dst is not None else None,
        "src_peak_rss": row.rss_src or None, "dst_peak_rss": row.rss_dst or None,
        "verified": row.verified, "error": row.error,
    }


def _ratio(value: float | None, row: str, base: str, target: float | None, compare: str,
           meaning: str) -> dict[str, Any]:
    met = None
    if value is not None and target is not None:
        met = value >= target if compare == ">=" else value <= target
    return {"row": row, "base": base, "target": target, "compare": compare if target else None,
            "value": value, "meaning": meaning, "met": met}


def ratios_json(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def get(name: str, key: str) -> float | None:
        value = rows.get(name, {}).get(key)
        return float(value) if value else None

    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    upload = get(UPLOAD, "mb_s")
    return {
        "copy_vs_upload": _ratio(
            div(get(SHM_COPY, "mb_s"), upload), SHM_COPY, UPLOAD, 0.9, ">=",
            "issue 6's target: host-to-host copy MB/s (job start to done, verification "
            "included) >= 90% of the single-stream upload; the source image is on /dev/shm, "
            "as the upload's is"),
        "copy_vs_upload_same_disk": _ratio(
            div(get(COPY, "mb_s"), upload), COPY, UPLOAD, None, ">=",
            "informational: the same with the source image on the disk the destination "
            "writes to, so the source's reads share that disk"),
        "sparse_vs_dense_data_time": _ratio(
            div(get(SHM_COPY_SPARSE, "seconds"), get(SHM_COPY_DATA, "seconds")),
            SHM_COPY_SPARSE, SHM_COPY_DATA, 1.25, "<=",
            "issue 6's target: a sparse image copies in about the time of a dense image "
            "of its data size (seconds ratio <= 1.25); sources on /dev/shm"),
        "sparse_vs_dense_data_time_same_disk": _ratio(
            div(get(COPY_SPARSE, "seconds"), get(COPY_DATA, "seconds")),
            COPY_SPARSE, COPY_DATA, 1.25, "<=",
            "the same with the sources on the shared disk"),
        "readback_ceiling_vs_upload": _ratio(
            div(get(DD_WRITE_READING, "mb_s"), upload), DD_WRITE_READING, UPLOAD, None, ">=",
            "informational: the most copy_vs_upload can be on this disk.  A verified copy "
            "reads back what it writes, so the destination disk reads while it writes; this "
            "is dd writing the image while another dd reads it, both O_DIRECT, against the "
            "upload (which only writes)"),
        "copy_vs_disk_copy": _ratio(
            div(get(COPY, "mb_s"), get(DD_COPY, "mb_s")), COPY, DD_COPY, None, ">=",
            "informational: the same-disk copy job against dd copying the same image "
            "within the one disk (O_DIRECT both ways)"),
    }


def results_json(facts: dict[str, Any], sizes: dict[str, Any], rounds: int, quick: bool,
                 rows: list[CopyRow], seconds: float, notes: list[str]) -> dict[str, Any]:
    by_name = {row.name: row_json(row) for row in rows}
    return {
        "machine": facts, "sizes": sizes, "rounds": rounds, "quick": quick,
        "bench_seconds": round(seconds, 1), "notes": notes,
        "rows": list(by_name.values()),
        "ratios": ratios_json(by_name),
        "errors": {row.name: row.error for row in rows if row.error},
    }


def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Sluice host-to-host copy bench: two daemons on 127.0.0.1, median of "
        f"{results['rounds']} round(s); {m['nproc']} CPUs, kernel {m['kernel']}, "
        f"Python {m['python']}, work dir on {m['work_fs']}",
        f"sluice {_short(m['versions'].get('sluice'))}, curl "
        f"{_short(m['versions'].get('curl'))}",
        *(f"Note: {note}" for note in results["notes"]),
        "",
        f"{'row':<23} {'image':<28} {'s':>7} {'MB/s':>7} {'verify s':>8} "
        f"{'cpu s/GB src':>12} {'dst':>5} {'RSS MiB src':>11} {'dst':>5}  check",
    ]
    for r in results["rows"]:
        check = check_word(r)
        rss = [r[k] / MiB if r[k] else None for k in ("src_peak_rss", "dst_peak_rss")]
        lines.append(
            f"{r['name']:<23} {r['what']:<28} {_fmt(r['seconds'], 7, '.2f')} "
            f"{_fmt(r['mb_s'], 7, '.1f')} {_fmt(r['verify_seconds'], 8, '.2f')} "
            f"{_fmt(r['src_cpu_s_per_gb'], 12, '.2f')} {_fmt(r['dst_cpu_s_per_gb'], 5, '.2f')} "
            f"{_fmt(rss[0], 11, '.0f')} {_fmt(rss[1], 5, '.0f')}  {check}")
    lines += ["", "Targets (reported, never asserted):"]
    for name, r in results["ratios"].items():
        met = {True: "met", False: "MISSED", None: "n/a"}[r["met"]]
        target = f"(target {r['compare']} {r['target']:.2f})  {met}" if r["target"] \
            else "(no target)"
        lines.append(f"  {name:<36} {_fmt(r['value'], 5, '.2f')} {target}  "
                     f"{r['row']} / {r['base']}")
    if results["errors"]:
        lines += ["", "Errors (full text in copy-results.json):"]
        lines += [f"  {name}: {_headline(err)}" for name, err in results["errors"].items()]
    return "\n".join(lines) + "\n"


def write(out: Path, results: dict[str, Any]) -> str:
    return save(out, results, table(results), "copy-results.json", "copy-summary.txt")
