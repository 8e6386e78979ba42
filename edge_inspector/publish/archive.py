"""Archive of judged frames on local disk: every FAIL (and UNKNOWN), a sampled fraction of PASS, under a size cap.

Layout, one folder per UTC day, one group of files per result sharing a stem::

    <dir>/2026-11-25/182441610291_00000017_FAIL_part-00017.json         the result message (mask included)
    <dir>/2026-11-25/182441610291_00000017_FAIL_part-00017_frame.png    the original frame (lossless)
    <dir>/2026-11-25/182441610291_00000017_FAIL_part-00017_overlay.jpg  heat map + outlines + verdict

The JSON is written last (atomically), so a group without one is an interrupted write and is cleaned up on the
next start. Past ``max_mb``, or when the file system has less than ``min_free_mb`` free, the oldest PASS groups are
deleted first; a FAIL/UNKNOWN group goes only when no PASS is left, and only to make room for another reject (a
PASS never displaces a FAIL: it is not archived instead). A write that still finds the disk full makes room the same
way and is tried once more. Image encoding happens on a writer thread, so ``add`` costs the caller little;
``close()`` writes what is queued.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import queue
import re
import shutil
import threading
from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from edge_inspector.config import ArchiveSettings
from edge_inspector.errors import ConfigError
from edge_inspector.log import kv
from edge_inspector.publish.schema import build_message
from edge_inspector.results import InspectionResult, Verdict

log = logging.getLogger(__name__)

_STEM = re.compile(r"^\d{12}_\d+_(PASS|FAIL|UNKNOWN)_")
_SUFFIXES = (".json", "_frame.png", "_overlay.jpg")
JPEG_QUALITY = 90


QUEUE_SIZE = 16
"""Groups waiting for the writer thread (each holds a copy of its frame and overlay)."""


@dataclass
class _Group:
    folder: Path
    stem: str
    size: int

    def paths(self) -> list[Path]:
        return [self.folder / f"{self.stem}{suffix}" for suffix in _SUFFIXES]


@dataclass
class _Job:
    group: _Group
    is_pass: bool
    result: InspectionResult


def _safe(text: str) -> str:
    """A part id made safe for a file name (PLC ids can hold anything)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:64] or "part"


class Archive:
    """Stores frames of judged parts under a disk cap.

    A result sink (``results.Sink``): the loop calls ``handle`` (``add``) for every result and ``close`` at its end.

    Args:
        settings: The ``archive`` section of the configuration.
        station: Station name written into each JSON (default: the configuration's default station name).

    Raises:
        ConfigError: The archive folder cannot be created or written (read-only file system, not a folder).
    """

    def __init__(self, settings: ArchiveSettings, station: str = "station-1"):
        self.settings = settings
        self.root = Path(settings.dir)
        self.max_bytes = int(settings.max_mb * 1024 * 1024)
        self.min_free_bytes = int(settings.min_free_mb * 1024 * 1024)
        self._last_size = 0  # bytes of the last group written: what the next one will probably need
        self.station = station
        self._pass: deque[_Group] = deque()
        self._fail: deque[_Group] = deque()
        self._bytes = 0
        self._pass_credit = 0.0
        self.deleted = 0
        """Groups deleted to honour the cap or the free-space floor since start."""
        self.deleted_fail = 0
        """Of those, FAIL/UNKNOWN groups (only ever when no PASS group was left)."""
        self.errors = 0
        """Writes that failed (logged; the line goes on)."""
        self.skipped_busy = 0
        """Sampled PASS frames skipped because the writer was behind."""
        self.skipped_full = 0
        """PASS frames not archived because the disk had no room left but for FAIL frames."""
        self._jobs: queue.Queue[_Job | None] = queue.Queue(QUEUE_SIZE)
        self._worker: threading.Thread | None = None
        if settings.enabled:
            self._check_writable()
            self._scan()
            self._worker = threading.Thread(target=self._work, name="archive-writer", daemon=True)
            self._worker.start()
            atexit.register(self.close)  # runs before daemon threads stop: queued groups still get written

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._pass) + len(self._fail)

    def counts(self) -> dict[str, int]:
        return {"pass": len(self._pass), "fail": len(self._fail)}

    def add(self, result: InspectionResult) -> Path | None:
        """Archive ``result`` if its verdict (or the PASS sample) says so; the files are written by a worker thread.

        Encoding a full-resolution frame takes tens to hundreds of milliseconds, so the caller only pays for a
        copy of the images. When the worker is behind, a sampled PASS is skipped (``skipped_busy``) and a
        FAIL/UNKNOWN waits for room: a reject is never left out of the archive to save time.

        Returns:
            The JSON path the group will have, or None when the result is not kept (sampled out, archive off, busy).
        """
        if not self.settings.enabled or not self._keep(Verdict(result.verdict)):
            return None
        if self._worker is None:
            raise RuntimeError("Archive.add() after close()")
        verdict = Verdict(result.verdict).value
        decided = datetime.fromtimestamp(result.decided_at, tz=timezone.utc)
        folder = self.root / decided.strftime("%Y-%m-%d")
        stem = f"{decided.strftime('%H%M%S%f')}_{result.sequence:08d}_{verdict}_{_safe(result.part_id)}"
        # A snapshot with copied arrays: a capture source may reuse its buffers once the loop has moved on.
        snapshot = replace(result, latency_ms=dict(result.latency_ms), regions=list(result.regions),
                           **{name: None if getattr(result, name) is None else getattr(result, name).copy()
                              for name in ("frame", "overlay", "mask")})
        job = _Job(_Group(folder, stem, 0), verdict == Verdict.PASS.value, snapshot)
        if job.is_pass:
            try:
                self._jobs.put_nowait(job)
            except queue.Full:
                self.skipped_busy += 1
                return None
        else:
            self._jobs.put(job)
        return folder / f"{stem}.json"

    def handle(self, result: InspectionResult) -> None:
        """Sink interface: ``add``."""
        self.add(result)

    def flush(self) -> None:
        """Wait until every group handed to ``add`` is written (or has failed)."""
        self._jobs.join()

    def close(self) -> None:
        """Write what is queued and stop the worker. Called at interpreter exit too."""
        if self._worker is not None and self._worker.is_alive():
            self._jobs.put(None)
            self._worker.join()
        self._worker = None

    # ------------------------------------------------------------------ internals
    def _check_writable(self) -> None:
        probe = self.root / ".write-test"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"archive.dir: cannot write to {self.root}: {exc.strerror or exc} (give a writable "
                              "folder, or archive.enabled=false)") from None

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                self._write(job)
            except Exception:  # a bad frame must not stop the writer: later rejects would wait on it forever
                self.errors += 1
                log.exception("archive write failed; the result is still published")
                self._delete(job.group)
            finally:
                self._jobs.task_done()

    def _write(self, job: _Job) -> None:
        group = job.group
        if not self._make_room(job):
            self.skipped_full += 1
            return
        try:
            self._write_files(job)
        except OSError as exc:
            self._delete(group)
            if exc.errno != errno.ENOSPC or not self._make_room(job, disk_full=True):
                self._write_failed(group, exc, skipped=job.is_pass and exc.errno == errno.ENOSPC)
                return
            try:  # room was made: once more
                self._write_files(job)
            except OSError as again:
                self._delete(group)
                self._write_failed(group, again)
                return
        group.size = self._last_size = sum(p.stat().st_size for p in group.paths() if p.exists())
        (self._pass if job.is_pass else self._fail).append(group)
        self._bytes += group.size
        self._enforce_cap()

    def _write_files(self, job: _Job) -> None:
        folder, stem, result = job.group.folder, job.group.stem, job.result
        folder.mkdir(parents=True, exist_ok=True)
        if result.frame is not None:
            self._write_image(folder / f"{stem}_frame.png", result.frame)
        if result.overlay is not None:
            self._write_image(folder / f"{stem}_overlay.jpg", result.overlay)
        message = build_message(result, self.station, include_mask=True).to_json()
        tmp = folder / f".{stem}.json.tmp"
        tmp.write_bytes(message)
        os.replace(tmp, folder / f"{stem}.json")  # last and atomic: a group with its JSON is complete

    def _write_failed(self, group: _Group, exc: OSError, skipped: bool = False) -> None:
        if skipped:  # a PASS that found the disk full of FAIL frames: not an error, the rule says skip it
            self.skipped_full += 1
            return
        self.errors += 1
        log.error("archive write failed; the result is still published",
                  extra=kv(path=str(group.folder / group.stem), error=str(exc)))

    def _make_room(self, job: _Job, disk_full: bool = False) -> bool:
        """Delete old groups until ``job`` fits above the free-space floor; False when it should not be written.

        PASS groups go first; a FAIL group only for another FAIL, never for a PASS. ``disk_full``: a write has just
        failed for lack of space, so at least one group goes.
        """
        needed = self._last_size or self._raw_size(job)
        while disk_full or self._free_bytes() - needed < self.min_free_bytes:
            victims = self._pass or (self._fail if not job.is_pass else None)
            if not victims:  # nothing that may go: skip a PASS; try a FAIL all the same unless the disk is full
                return not (job.is_pass or disk_full)
            self._evict(victims, "low disk space")
            disk_full = False
        return True

    @staticmethod
    def _raw_size(job: _Job) -> int:
        """Bytes of the raw images: a bound on the group's files (PNG and JPEG are smaller)."""
        return sum(image.nbytes for image in (job.result.frame, job.result.overlay) if image is not None)

    def _free_bytes(self) -> int:
        try:
            return shutil.disk_usage(self.root).free
        except OSError:
            return 0

    def _keep(self, verdict: Verdict) -> bool:
        if verdict != Verdict.PASS:
            return True
        # Deterministic sampling: keep one PASS each time the accumulated rate reaches a whole frame.
        self._pass_credit += self.settings.pass_sample_rate
        if self._pass_credit >= 1.0:
            self._pass_credit -= 1.0
            return True
        return False

    @staticmethod
    def _write_image(path: Path, image) -> None:
        import cv2  # the archive is optional; only a station that archives pays for the import

        params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if path.suffix == ".jpg" else []
        if not cv2.imwrite(str(path), image, params):
            raise OSError(f"cv2.imwrite could not write {path}")

    def _enforce_cap(self) -> None:
        while self._bytes > self.max_bytes and (self._pass or self._fail):
            self._evict(self._pass if self._pass else self._fail, "cap")

    def _evict(self, groups: deque[_Group], why: str) -> None:
        group = groups.popleft()
        if groups is self._fail:
            self.deleted_fail += 1
            if self.deleted_fail == 1:  # once: at steady state every new FAIL replaces an old one
                log.warning(f"archive {why}: no PASS frames left, deleting the oldest FAIL frames from now on "
                            "(counted in deleted_fail)", extra=kv(stem=group.stem, max_mb=self.settings.max_mb,
                                                                   min_free_mb=self.settings.min_free_mb))
        self._bytes -= group.size
        self._delete(group)
        self.deleted += 1

    def _delete(self, group: _Group) -> None:
        for path in group.paths():
            path.unlink(missing_ok=True)
        try:
            group.folder.rmdir()  # only succeeds once the day folder is empty
        except OSError:
            pass

    def _scan(self) -> None:
        """Index what earlier runs left (oldest first) and remove groups whose write was interrupted."""
        groups: list[tuple[str, str, _Group]] = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            stems: dict[str, int] = {}
            for path in folder.iterdir():
                name = path.name
                if name.startswith(".") and name.endswith(".tmp"):
                    path.unlink(missing_ok=True)
                    continue
                stem = next((name[: -len(s)] for s in _SUFFIXES if name.endswith(s)), None)
                if stem is None or not _STEM.match(stem):
                    continue  # not ours: leave it alone
                stems[stem] = stems.get(stem, 0) + path.stat().st_size
            for stem, size in stems.items():
                group = _Group(folder, stem, size)
                if not (folder / f"{stem}.json").exists():
                    self._delete(group)
                    continue
                groups.append((folder.name, stem, group))
        for _, stem, group in sorted(groups, key=lambda g: (g[0], g[1])):
            verdict = _STEM.match(stem).group(1)
            (self._pass if verdict == Verdict.PASS.value else self._fail).append(group)
            self._bytes += group.size
        self._enforce_cap()
