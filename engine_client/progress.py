"""Progress of the disk commands: a bar for people, JSON lines for machines.

On a terminal, a ``tqdm`` bar on stderr (bytes, rate, time left).  With
``--json`` every event is one JSON object per line on stdout (progress at
most every ``interval`` seconds), and the command ends with its summary
object on the last line.  Otherwise (stderr not a terminal, no ``--json``)
nothing is shown until the end.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any

from tqdm import tqdm


class Progress:
    def __init__(self, label: str, json_lines: bool, *, interval: float = 0.5,
                 out: IO[str] | None = None, err: IO[str] | None = None) -> None:
        self._out = out or sys.stdout
        err = err or sys.stderr
        self._json = json_lines
        self._interval = interval
        self._last = 0.0
        self._done = 0
        self._total = 0
        self._bar: tqdm[Any] | None = None
        if not json_lines and err.isatty():
            self._bar = tqdm(desc=label, total=None, unit="B", unit_scale=True,
                             unit_divisor=1024, file=err, leave=False, dynamic_ncols=True)

    def emit(self, event: dict[str, Any]) -> None:
        """A line of ``--json`` output (nothing otherwise)."""
        if self._json:
            print(json.dumps(event, sort_keys=True), file=self._out, flush=True)

    def event(self, event: dict[str, Any]) -> None:
        """An orchestration event (``disks.Report``)."""
        if event.get("event") == "progress":
            self.position(int(event["bytes_done"]), int(event["bytes_total"]),
                          str(event.get("state", "")))
            return
        if self._bar is not None and event.get("event") == "started":
            self._bar.set_postfix_str(f"job on {event.get('host')}")
        self.emit(event)

    def position(self, done: int, total: int, state: str = "") -> None:
        self._done, self._total = done, total
        if self._bar is not None:
            if self._bar.total != total:
                self._bar.total = total
            self._bar.n = done
            if state:
                self._bar.set_postfix_str(state, refresh=False)
            self._bar.refresh()
            return
        now = time.monotonic()
        if self._json and (now - self._last >= self._interval or (total and done >= total)):
            self._last = now
            self.emit({"event": "progress", "bytes_done": done, "bytes_total": total,
                       **({"state": state} if state else {})})

    def bytes(self, total: int) -> Any:
        """A callback of ``imagetransfer`` (byte deltas, negative on a retry)."""
        self._total = total

        def moved(n: int) -> None:
            self.position(self._done + n, self._total, "transferring")

        return moved

    def set_total(self, total: int) -> None:
        """The bytes a transfer will move, once it knows them (its data: a
        sparse image's holes, a qcow2 file's unused tail never travel)."""
        self._total = total
        self.position(self._done, total, "transferring")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def result(self, summary: dict[str, Any], text: str) -> None:
        """The final summary: a JSON object (``--json``) or one line of text."""
        self.close()
        if self._json:
            print(json.dumps(summary, sort_keys=True), file=self._out, flush=True)
        else:
            print(text, file=self._out, flush=True)
