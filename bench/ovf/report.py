"""Results of the OVF benches: rows, the issues' targets, JSON and a table.

Rows are the image bench's (``bench.report.Row``, its JSON by
``row_json``) plus memory figures.  Targets are reported, never asserted.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import MiB
from ..report import _fmt, _headline, check_word, row_json, save
from .measure import MemRow

RESULTS, SUMMARY = "ovf-results.json", "ovf-summary.txt"


@dataclass(frozen=True)
class Target:
    name: str
    #: "<=" or ">=".
    op: str
    target: float
    unit: str
    meaning: str


TARGETS = (
    Target("store_throughput_vs_image", ">=", 0.8, "x",
           "OVF store PUT MB/s >= 80% of an image PUT of the same bytes (median)"),
    Target("store_rss_growth_mib", "<=", 32.0, "MiB",
           "daemon peak RSS minus RSS before the store PUT (worst round, the cold "
           "warm-up included)"),
    Target("engine_pass_time_vs_image", "<=", 2.0, "x",
           "the large engine pass's own seconds (as it logs them: entity phase to last "
           "push) over an image PUT of the same bytes (medians of the rounds)"),
    Target("engine_process_time_vs_image", "<=", 2.0, "x",
           "the same with the whole sluice-engine process: interpreter start, imports, "
           "opening and closing the cache included"),
    Target("engine_rss_large_minus_small_mib", "<=", 16.0, "MiB",
           "the engine's peak RSS at the large VM count minus at the small one "
           "(medians of the rounds)"),
)


def mem_row_json(row: MemRow) -> dict[str, Any]:
    out = row_json(row, row.size)
    growth = max(row.rss_growth) if row.rss_growth else None
    out.update({
        "bytes": row.size,
        "daemon_rss_before": row.base_rss, "rounds_daemon_rss_growth": row.rss_growth,
        "daemon_rss_growth": growth,
        "client_peak_rss": max(row.client_rss) if row.client_rss else None,
        "rounds_client_peak_rss": row.client_rss,
        **row.extra,
    })
    return out


def _median_s(row: dict[str, Any] | None) -> float | None:
    return statistics.median(row["rounds_seconds"]) if row and row["rounds_seconds"] else None


def _values(rows: dict[str, dict[str, Any]], store: list[str], engine: list[str]
            ) -> dict[str, float | None]:
    found: dict[str, float | None] = dict.fromkeys(t.name for t in TARGETS)
    if len(store) == 2:
        ovf_s, img_s = _median_s(rows.get(store[0])), _median_s(rows.get(store[1]))
        found["store_throughput_vs_image"] = img_s / ovf_s if ovf_s and img_s else None
        growth = rows[store[0]]["daemon_rss_growth"]
        found["store_rss_growth_mib"] = growth / MiB if growth is not None else None
    if len(engine) == 4:  # small pass, its image, large pass, its image
        small, large = rows[engine[0]], rows[engine[2]]
        pass_s, img_s = _median_s(large), _median_s(rows[engine[3]])
        found["engine_process_time_vs_image"] = pass_s / img_s if pass_s and img_s else None
        own = large.get("pass_seconds")
        found["engine_pass_time_vs_image"] = own / img_s if own and img_s else None
        if small["rounds_client_peak_rss"] and large["rounds_client_peak_rss"]:
            found["engine_rss_large_minus_small_mib"] = (
                statistics.median(large["rounds_client_peak_rss"])
                - statistics.median(small["rounds_client_peak_rss"])) / MiB
    return found


def results_json(facts: dict[str, Any], parts: dict[str, tuple[list[MemRow], dict[str, Any]]],
                 quick: bool, seconds: float) -> dict[str, Any]:
    by_name = {row.name: mem_row_json(row) for rows, _ in parts.values() for row in rows}
    names = {part: [row.name for row in rows] for part, (rows, _) in parts.items()}
    values = _values(by_name, names.get("store", []), names.get("engine", []))
    targets = {}
    for t in TARGETS:
        v = values[t.name]
        met = None if v is None else (v <= t.target if t.op == "<=" else v >= t.target)
        targets[t.name] = {"value": v, "op": t.op, "target": t.target, "unit": t.unit,
                           "meaning": t.meaning, "met": met}
    return {
        "machine": facts, "quick": quick, "bench_seconds": round(seconds, 1),
        "parts": {part: {**info, "rows": names[part]} for part, (_, info) in parts.items()},
        "rows": list(by_name.values()),
        "targets": targets,
        "errors": {r.name: r.error for rows, _ in parts.values() for r in rows if r.error},
    }


def _mib(value: int | None) -> float | None:
    return value / MiB if value is not None else None


def table(results: dict[str, Any]) -> str:
    m, parts = results["machine"], results["parts"]
    lines = [f"Sluice OVF bench: 127.0.0.1; {m['nproc']} CPUs, kernel {m['kernel']}, "
             f"Python {m['python']}, work dir on {m['work_fs']}"]
    if "store" in parts:
        p = parts["store"]
        lines.append(f"store: one PUT of {p['ovfs']} OVFs of {p['ovf_size'] // 1024} KiB "
                     f"({p['tar_bytes'] / 1e6:.1f} MB tar), median of {p['rounds']} round(s)")
    if "engine" in parts:
        p = parts["engine"]
        vms = " and ".join(map(str, p["vms"]))
        lines.append(f"engine: `sluice-engine ovf update --once` over {vms} "
                     f"VMs with {p['ovf_size'] // 1024} KiB OVFs on {p['domains']} domains")
    lines += ["", f"{'row':<40} {'MB':>7} {'MB/s':>7} {'s':>6} {'cpu s/GB':>8} "
                  f"{'RSS MiB':>7} {'+RSS':>5} {'eng RSS':>7}  check"]
    for r in results["rows"]:
        check = check_word(r)
        secs = statistics.median(r["rounds_seconds"]) if r["rounds_seconds"] else None
        lines.append(
            f"{r['name']:<40} {_fmt(r['bytes'] / 1e6 if r['bytes'] else None, 7, '.1f')} "
            f"{_fmt(r['mb_s'], 7, '.1f')} {_fmt(secs, 6, '.2f')} "
            f"{_fmt(r['cpu_s_per_gb'], 8, '.2f')} {_fmt(_mib(r['peak_rss']), 7, '.0f')} "
            f"{_fmt(_mib(r['daemon_rss_growth']), 5, '.1f')} "
            f"{_fmt(_mib(r['client_peak_rss']), 7, '.1f')}  {check}")
    lines += ["", "RSS MiB and +RSS: the daemon's peak, and its peak minus its RSS before the "
                  "transfer; eng RSS: the engine's peak.", "",
              "Targets (reported, never asserted):"]
    for name, t in results["targets"].items():
        met = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        lines.append(f"  {name:<34} {_fmt(t['value'], 7, '.2f')} {t['unit']:<3} "
                     f"(target {t['op']} {t['target']:g})  {met}")
    if results["errors"]:
        lines += ["", "Errors (full text in ovf-results.json):"]
        lines += [f"  {name}: {_headline(err)}" for name, err in results["errors"].items()]
    return "\n".join(lines) + "\n"


def write(out: Path, results: dict[str, Any]) -> str:
    return save(out, results, table(results), RESULTS, SUMMARY)
