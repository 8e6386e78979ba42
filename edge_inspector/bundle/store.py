"""Read, verify and write model bundle folders. Anything that does not match is refused with a clear message."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from edge_inspector.bundle.manifest import SCHEMA_VERSION, Manifest
from edge_inspector.config import load_model
from edge_inspector.errors import BundleError, ConfigError

MANIFEST_NAME = "manifest.yaml"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest

    @property
    def onnx_path(self) -> Path:
        return self.path / self.manifest.graph.file

    @property
    def plans_dir(self) -> Path:
        return self.path / "plans"

    def calibration_images(self) -> np.ndarray:
        """Preprocessed uint8 images (N, H, W, 3) shipped for parity checks; empty if none."""
        name = self.manifest.calibration_images
        shape = (0, self.manifest.input.height, self.manifest.input.width, 3)
        if not name or not (self.path / name).is_file():
            return np.zeros(shape, np.uint8)
        try:
            with np.load(self.path / name) as data:
                images = data["images"]
        except Exception as exc:  # numpy raises several types for a damaged archive
            raise BundleError(f"{self.path / name} is unreadable: {exc}") from exc
        if images.dtype != np.uint8 or images.shape[1:] != shape[1:]:
            raise BundleError(
                f"{self.path / name} holds {images.dtype} {images.shape}, expected uint8 (N, {shape[1]}, {shape[2]}, 3)"
            )
        return images


def read_manifest(bundle_dir: Path) -> Manifest:
    path = bundle_dir / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not a model bundle: {MANIFEST_NAME} is missing")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise BundleError(f"{path} is corrupt (not valid YAML): {exc}") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path} is corrupt: expected a mapping")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{path} has schema_version {version!r}; this edge-inspector reads version {SCHEMA_VERSION}. "
            "Re-export the bundle with a matching edge-inspector."
        )
    try:
        return load_model(Manifest, data, str(path))
    except ConfigError as exc:
        raise BundleError(str(exc)) from None


def load_bundle(bundle_dir: str | Path, verify_hash: bool = True) -> Bundle:
    """Open a bundle folder and check that its graph is the one the manifest describes."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"Model bundle not found: {bundle_dir} (expected a folder holding {MANIFEST_NAME})")
    manifest = read_manifest(bundle_dir)
    onnx_path = bundle_dir / manifest.graph.file
    if not onnx_path.is_file():
        raise BundleError(f"{bundle_dir}: graph file {manifest.graph.file} named in the manifest is missing")
    if verify_hash:
        actual = sha256_file(onnx_path)
        if actual != manifest.graph.sha256:
            raise BundleError(
                f"{onnx_path} does not match its manifest (sha256 {actual[:12]}… != {manifest.graph.sha256[:12]}…): "
                "the file is corrupt or was replaced; re-export the bundle"
            )
    return Bundle(bundle_dir, manifest)


def save_manifest(bundle_dir: str | Path, manifest: Manifest) -> Bundle:
    """Replace a bundle's manifest (e.g. new thresholds); the graph must still be the one it names."""
    bundle_dir = Path(bundle_dir)
    if sha256_file(bundle_dir / manifest.graph.file) != manifest.graph.sha256:
        raise BundleError(f"{bundle_dir}: refusing to write a manifest whose graph hash does not match the graph")
    tmp = bundle_dir / (MANIFEST_NAME + ".tmp")
    tmp.write_text(yaml.safe_dump(manifest.model_dump(mode="json"), sort_keys=False))
    tmp.replace(bundle_dir / MANIFEST_NAME)  # atomic: a reader never sees half a manifest
    return Bundle(bundle_dir, manifest)


def write_bundle(
    out_dir: str | Path,
    onnx_file: str | Path,
    manifest: Manifest,
    calibration_images: np.ndarray | None = None,
) -> Bundle:
    """Write a bundle folder: copies the graph, fills in its hash, writes calibration images and the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / manifest.graph.file
    if Path(onnx_file).resolve() != target.resolve():
        shutil.copyfile(onnx_file, target)
    manifest = manifest.model_copy(deep=True)
    manifest.graph.sha256 = sha256_file(target)
    if calibration_images is not None and len(calibration_images):
        np.savez_compressed(out_dir / "calibration.npz", images=calibration_images.astype(np.uint8))
        manifest.calibration_images = "calibration.npz"
    else:
        manifest.calibration_images = None
    (out_dir / MANIFEST_NAME).write_text(
        yaml.safe_dump(manifest.model_dump(mode="json"), sort_keys=False)
    )
    return Bundle(out_dir, manifest)
