"""The on-disk spool of the buffered ingest: events survive the server being down and the
gateway restarting.

A spool directory holds append-only JSONL *segments* (``00000001.jsonl``), one event a line,
each append flushed and fsynced before :meth:`Spool.append` returns — so ``ingest()``
returning means the events are on disk. Next to a segment, ``00000001.acks`` lists the ids
the server acknowledged (or refused for good); those need no fsync: an ack lost in a crash
only means the event is sent again, and the server counts an event id once. A segment is
removed once it is closed (a newer one is being written) and every event in it is
acknowledged.

A new client on the same directory first reads every segment, less what its ``.acks``
lists, and sends that before anything new; it writes a new segment of its own. A line cut
short by a crash mid-write is skipped (its ``ingest()`` had not returned). One process at a
time: the directory is locked (``flock``) while a client uses it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

__all__ = ["Spool", "SpoolLocked"]

log = logging.getLogger("tallyray_client")


class SpoolLocked(RuntimeError):
    """Another live client uses this spool directory."""


class Spool:
    def __init__(self, directory: str | os.PathLike[str], segment_events: int = 10_000) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_events = segment_events
        self._lock = (self.directory / "lock").open("a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise SpoolLocked(f"another client is using the spool {self.directory}") from None
        self._outstanding: dict[int, int] = {}  # segment → events not yet acknowledged
        numbers = self._numbers()
        self._current = (numbers[-1] if numbers else 0) + 1
        self._written = 0
        self._file: TextIO | None = None
        self._acks: dict[int, TextIO] = {}
        self._mutex = threading.Lock()  # the caller's threads append, the sender acks

    # -- recovery --------------------------------------------------------------------------

    def _numbers(self) -> list[int]:
        return sorted(int(p.stem) for p in self.directory.glob("*.jsonl") if p.stem.isdigit())

    def _path(self, number: int, suffix: str) -> Path:
        return self.directory / f"{number:08d}{suffix}"

    def recover(self) -> list[tuple[dict[str, Any], int]]:
        """Every event of an earlier client not acknowledged yet, oldest first, each with its
        segment (to :meth:`ack` it by)."""
        pending: list[tuple[dict[str, Any], int]] = []
        for number in self._numbers():
            if number >= self._current:
                continue
            acked = set()
            acks = self._path(number, ".acks")
            if acks.exists():
                acked = {line.strip() for line in acks.read_text().splitlines() if line.strip()}
            count = 0
            for raw in self._path(number, ".jsonl").read_text().splitlines():
                try:
                    event = json.loads(raw)
                except json.JSONDecodeError:
                    log.warning("spool %s: skipping a line cut short", self._path(number, ""))
                    continue
                if isinstance(event, dict) and str(event.get("id")) not in acked:
                    pending.append((event, number))
                    count += 1
            if count:
                self._outstanding[number] = count
            else:
                self._remove(number)
        return pending

    # -- writing ---------------------------------------------------------------------------

    def append(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Write ``events`` to the current segment and fsync it; answer the segment."""
        with self._mutex:
            return self._append(list(events))

    def _append(self, events: list[Mapping[str, Any]]) -> int:
        if self._file is not None and self._written >= self.segment_events:
            self._rotate()
        if self._file is None:
            self._file = self._path(self._current, ".jsonl").open("a", encoding="utf-8")
            _fsync_dir(self.directory)
        self._file.write("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._written += len(events)
        self._outstanding[self._current] = self._outstanding.get(self._current, 0) + len(events)
        return self._current

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        finished = self._current
        self._current += 1
        self._written = 0
        if not self._outstanding.get(finished):
            self._remove(finished)

    def ack(self, number: int, ids: Iterable[str]) -> None:
        """These events of segment ``number`` are done with (acknowledged, or refused for
        good); a closed segment with nothing left is removed."""
        ids = list(ids)
        if ids:
            with self._mutex:
                self._ack(number, ids)

    def _ack(self, number: int, ids: list[str]) -> None:
        out = self._acks.get(number)
        if out is None:
            out = self._acks[number] = self._path(number, ".acks").open("a", encoding="utf-8")
        out.write("".join(f"{i}\n" for i in ids))
        out.flush()
        left = self._outstanding.get(number, 0) - len(ids)
        self._outstanding[number] = max(left, 0)
        if left <= 0 and number != self._current:
            self._remove(number)

    def pending(self) -> int:
        """Events on disk not acknowledged yet."""
        with self._mutex:
            return sum(self._outstanding.values())

    def _remove(self, number: int) -> None:
        out = self._acks.pop(number, None)
        if out is not None:
            out.close()
        self._outstanding.pop(number, None)
        for suffix in (".jsonl", ".acks"):
            self._path(number, suffix).unlink(missing_ok=True)

    def close(self) -> None:
        """Close the files; the current segment goes too when everything in it is done."""
        if self._file is not None:
            self._file.close()
            self._file = None
        for out in self._acks.values():
            out.close()
        self._acks.clear()
        if not self._outstanding.get(self._current):
            self._remove(self._current)
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()


def _fsync_dir(directory: Path) -> None:
    """Make a new segment's name durable, not only its contents."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
