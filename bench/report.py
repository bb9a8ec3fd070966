"""Results: one Row per measured thing, the target ratios, JSON and a table.

Targets come from the issue and are reported, never asserted: the bench
fails only when a run errors.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import MB, MiB

DD_WRITE = "limits/write/odirect/dd"
DD_READ = "limits/read/odirect/dd"
DD_BUFFERED = "limits/write/buffered/dd"


@dataclass
class Row:
    peer: str
    direction: str
    transport: str
    client: str
    #: Per round, in order.
    seconds: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    #: Highest VmHWM of the server's processes over the rounds, in bytes.
    peak_rss: int = 0
    #: Size and xxh3-128 of the result matched the source (checked on round 1).
    verified: bool | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return f"{self.peer}/{self.direction}/{self.transport}/{self.client}"


@dataclass(frozen=True)
class Ratio:
    name: str
    row: str
    base: str
    target: float
    meaning: str


def _ratios() -> list[Ratio]:
    found = [Ratio("upload_http_curl_vs_disk_write", "sluice/upload/http/curl", DD_WRITE, 0.95,
                   "plain-HTTP upload >= 95% of the O_DIRECT write limit")]
    # Sluice against imageio, same transport, same client.
    targets = [("upload", client, {"http": 1.0, "tls": 2.0})
               for client in ("curl", "imageio-client")]
    targets += [("download", client, {"http": 1.2, "tls": 1.2})
                for client in ("curl-null", "curl", "imageio-client")]
    for direction, client, by_transport in targets:
        for transport, target in by_transport.items():
            found.append(Ratio(
                f"{direction}_{transport}_{client}_vs_imageio".replace("-", "_"),
                f"sluice/{direction}/{transport}/{client}",
                f"imageio/{direction}/{transport}/{client}", target,
                f"{direction} over {transport} with {client} >= {target}x ovirt-imageio"))
    return found


RATIOS = _ratios()


def median_mbps(row: Row, size: int) -> float | None:
    if not row.seconds:
        return None
    return size / statistics.median(row.seconds) / MB


def row_json(row: Row, size: int) -> dict[str, Any]:
    cpu = statistics.median(row.cpu_s) if row.cpu_s else None
    return {
        "name": row.name, "peer": row.peer, "transport": row.transport,
        "direction": row.direction, "client": row.client,
        "mb_s": median_mbps(row, size),
        "rounds_mb_s": [size / s / MB for s in row.seconds],
        "rounds_seconds": row.seconds,
        "cpu_s": cpu, "rounds_cpu_s": row.cpu_s,
        "cpu_s_per_gb": cpu / (size / 1e9) if cpu is not None and size and row.peer != "limits"
        else None,
        "peak_rss": row.peak_rss or None,
        "verified": row.verified, "error": row.error,
    }


def ratios_json(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in RATIOS:
        a, b = rows.get(r.row, {}).get("mb_s"), rows.get(r.base, {}).get("mb_s")
        value = a / b if a and b else None
        out[r.name] = {"row": r.row, "base": r.base, "target": r.target, "meaning": r.meaning,
                       "value": value, "met": value >= r.target if value is not None else None,
                       "ceiling": _ceiling(r, b, rows)}
    return out


def _ceiling(r: Ratio, base: float | None, rows: dict[str, dict[str, Any]]) -> float | None:
    """The most a ratio can be on this machine, from a limit measured in
    the same run: an upload ends with its data written, so at most at the
    O_DIRECT write limit (write depth may pass dd's one write at a time a
    little); ``curl -o`` writes its download through the page cache, so at
    most at the buffered write limit.  None where no such bound applies
    (curl-null, imageio's client) or without both figures."""
    if "/upload/" in r.row:
        limit = rows.get(DD_WRITE, {}).get("mb_s")
    elif r.row.endswith("/download/http/curl") or r.row.endswith("/download/tls/curl"):
        limit = rows.get(DD_BUFFERED, {}).get("mb_s")
    else:
        return None
    return float(limit / base) if limit and base else None


def results_json(facts: dict[str, Any], size: int, rounds: int, quick: bool,
                 rows: list[Row], seconds: float) -> dict[str, Any]:
    by_name = {row.name: row_json(row, size) for row in rows}
    return {
        "machine": facts,
        "image_bytes": size, "image_mib": size // MiB, "rounds": rounds, "quick": quick,
        "bench_seconds": round(seconds, 1),
        "rows": list(by_name.values()),
        "ratios": ratios_json(by_name),
        "errors": {row.name: row.error for row in rows if row.error},
    }


def _fmt(value: float | None, width: int, spec: str) -> str:
    return f"{'-' if value is None else format(value, spec):>{width}}"


def _short(version: str | None) -> str:
    """'nginx version: nginx/1.22.1' -> '1.22.1'; 'curl 7.88.1 (...)' -> '7.88.1'."""
    if not version:
        return "?"
    words = version.replace("/", " ").split()
    return next((w for w in words if w[:1].isdigit()), version)


def check_word(row: dict[str, Any]) -> str:
    """A row's check column: ERROR, or whether its result was verified."""
    return "ERROR" if row["error"] else {True: "ok", False: "BAD", None: "-"}[row["verified"]]


def _headline(err: str) -> str:
    """First line of an error, plus its last (a log tail's exception)."""
    lines = [line.strip() for line in err.strip().splitlines() if line.strip()] or ["?"]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return text[:300]


def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Sluice bench: {results['image_mib']} MiB random image, median of "
        f"{results['rounds']} round(s), 127.0.0.1; {m['nproc']} CPUs, kernel {m['kernel']}, "
        f"Python {m['python']}, work dir on {m['work_fs']}",
        "Peers: " + ", ".join(f"{name} {_short(m['versions'].get(name))}"
                              for name in ("sluice", "ovirt-imageio", "nginx", "curl")),
        "",
        f"{'row':<42} {'MB/s':>8} {'/dd-write':>9} {'cpu s/GB':>8} {'RSS MiB':>8}  check",
    ]
    rows = results["rows"]
    dd = next((r["mb_s"] for r in rows if r["name"] == DD_WRITE), None)
    for r in rows:
        rel = r["mb_s"] / dd if r["mb_s"] and dd else None
        rss = r["peak_rss"] / MiB if r["peak_rss"] else None
        check = check_word(r)
        lines.append(f"{r['name']:<42} {_fmt(r['mb_s'], 8, '.1f')} {_fmt(rel, 9, '.2f')} "
                     f"{_fmt(r['cpu_s_per_gb'], 8, '.2f')} {_fmt(rss, 8, '.0f')}  {check}")
    lines += ["", "Targets (reported, never asserted):"]
    for name, r in results["ratios"].items():
        met = {True: "met", False: "MISSED", None: "n/a"}[r["met"]]
        ceiling = r.get("ceiling")
        beyond = ""
        if r["met"] is False and ceiling is not None and ceiling < r["target"]:
            beyond = (f"  (this machine's limit for the row is {ceiling:.2f}x the base: "
                      "the target lies beyond it)")
        lines.append(f"  {name:<40} {_fmt(r['value'], 5, '.2f')} (target >= {r['target']:.2f})"
                     f"  {met}{beyond}")
    if results["errors"]:
        lines += ["", "Errors (full text in results.json):"]
        grouped: dict[str, list[str]] = {}
        for name, err in results["errors"].items():
            grouped.setdefault(_headline(err), []).append(name)
        for err, names in grouped.items():
            lines.append(f"  {names[0]}" + (f" and {len(names) - 1} more" if names[1:] else "")
                         + f": {err}")
    return "\n".join(lines) + "\n"


def save(out: Path, results: dict[str, Any], text: str, json_name: str = "results.json",
         summary_name: str = "summary.txt") -> str:
    """Write a bench's results.json and its human summary into ``out``; the summary."""
    out.mkdir(parents=True, exist_ok=True)
    (out / json_name).write_text(json.dumps(results, indent=2) + "\n")
    (out / summary_name).write_text(text)
    return text


def write(out: Path, results: dict[str, Any]) -> str:
    return save(out, results, table(results))
