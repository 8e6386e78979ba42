"""Frame sources: camera index, video file, rtsp:// URL, image folder and the demo line, behind one interface.

``open_source("0")`` is a camera, ``open_source("rtsp://...")`` a stream, a folder an image folder, ``"demo"`` the
synthetic demo line, anything else a video file. Every source yields ``capture.frame.Frame`` objects (BGR uint8, as
OpenCV reads).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2

from edge_inspector.capture.decoding import read_image
from edge_inspector.capture.frame import Frame, Source
from edge_inspector.capture.pacing import Pacer
from edge_inspector.config import CaptureSettings
from edge_inspector.errors import SourceError
from edge_inspector.log import kv

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


class VideoSource:
    """Camera index, video file or network stream through ``cv2.VideoCapture``."""

    def __init__(self, spec: str, settings: CaptureSettings | None = None):
        self.settings = settings or CaptureSettings()
        self.spec = spec
        self.camera_index = int(spec) if spec.isdigit() else None
        self.live = self.camera_index is not None or "://" in spec
        self.name = f"camera:{spec}" if self.camera_index is not None else spec
        self._capture: cv2.VideoCapture | None = None
        self._index = 0
        self._pacer = Pacer(None if self.live else self.settings.fps)  # a camera is asked for its fps instead

    def open(self) -> None:
        if self.camera_index is None and not self.live and not Path(self.spec).is_file():
            raise SourceError(f"Video file not found: {self.spec}")
        log_level = cv2.utils.logging.getLogLevel()
        # OpenCV prints each backend's failure on stderr; the SourceError below says what went wrong once.
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        try:
            capture = self._open_capture()
        finally:
            cv2.utils.logging.setLogLevel(log_level)
        if not capture.isOpened():
            capture.release()
            hint = " (is a camera connected at that index?)" if self.camera_index is not None else ""
            raise SourceError(f"Cannot open {self.name}: OpenCV could not open it{hint}")
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, self.settings.width),
                            (cv2.CAP_PROP_FRAME_HEIGHT, self.settings.height), (cv2.CAP_PROP_FPS, self.settings.fps)):
            if value and self.live:
                capture.set(prop, value)
        self._capture = capture

    def _open_capture(self) -> cv2.VideoCapture:
        if self.camera_index is not None:
            return cv2.VideoCapture(self.camera_index)
        if self.live:
            # A stream that goes silent must not block a read for FFmpeg's default 30 s: bound open and read.
            timeout_ms = int(self.settings.read_timeout_s * 1000)
            return cv2.VideoCapture(self.spec, cv2.CAP_ANY, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms,
                                                             cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms])
        return cv2.VideoCapture(self.spec)

    def read(self) -> Frame | None:
        if self._capture is None:
            raise SourceError(f"{self.name} is not open")
        self._pacer.wait()
        start = time.perf_counter()
        ok, image = self._capture.read()
        decode_ms = (time.perf_counter() - start) * 1e3
        if not ok or image is None:
            if self.live:
                raise SourceError(f"{self.name} stopped delivering frames")
            if self.settings.loop and self._index > 0:
                self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, image = self._capture.read()
            if not ok or image is None:
                return None
        frame = Frame(image, self._index, time.time(), self.name, decode_ms, name=f"{self._index:06d}")
        self._index += 1
        return frame

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def folder_label(relative: Path) -> bool | None:
    """MVTec-style label from a path inside a dataset folder: 'good' -> False, another folder under test/ -> True."""
    parts = relative.parts[:-1]
    if parts and parts[-1] == "good":
        return False
    if "test" in parts[:-1]:
        return True
    return None


class FolderSource:
    """Every image under a folder (recursively, sorted by path), with labels from MVTec-style folder names.

    Masks under ``ground_truth/`` are left out. Every other image file becomes a part: one that is empty, not an
    image, too large or truncated comes as a frame with an ``error`` (judged fail-safe), never skipped.
    """

    live = False

    def __init__(self, folder: str | Path, settings: CaptureSettings | None = None):
        self.folder = Path(folder)
        self.settings = settings or CaptureSettings()
        self.name = str(self.folder)
        self.files: list[Path] = []
        self._position = 0
        self._index = 0
        self._pacer = Pacer(self.settings.fps)

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"Image folder not found: {self.folder}")
        self.files = sorted(
            p for p in self.folder.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and "ground_truth" not in p.relative_to(self.folder).parts
        )
        if not self.files:
            raise SourceError(f"No images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {self.folder}")
        log.info("image folder opened", extra=kv(folder=self.folder, images=len(self.files)))

    def read(self) -> Frame | None:
        if self._position >= len(self.files):
            if not self.settings.loop:
                return None
            self._position = 0
        path = self.files[self._position]
        self._position += 1
        self._pacer.wait()
        start = time.perf_counter()
        decoded = read_image(path, self.settings.max_image_pixels)
        decode_ms = (time.perf_counter() - start) * 1e3
        if decoded.error:
            log.warning("image cannot be judged from its file; fail-safe verdict", extra=kv(error=decoded.error))
        relative = path.relative_to(self.folder)
        frame = Frame(decoded.image, self._index, time.time(), self.name, decode_ms, folder_label(relative),
                      str(relative), error=decoded.error)
        self._index += 1
        return frame

    def close(self) -> None:
        self._position = 0


def open_source(spec: str | int, settings: CaptureSettings | None = None, seed: int = 0) -> Source:
    """A source for ``spec``: camera index, 'demo', a folder, a stream URL or a video file (not opened yet)."""
    settings = settings or CaptureSettings()
    spec = str(spec)
    if spec == "demo":
        from edge_inspector.capture.demo_line import DemoLine

        return DemoLine(settings=settings, seed=seed)
    if Path(spec).is_dir():
        return FolderSource(spec, settings)
    return VideoSource(spec, settings)
