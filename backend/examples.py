"""Example photos and the intrinsics suggested for any photo the user picks.

Gradio copies a clicked example into its own cache before our handler sees it, so the
sidecar `<stem>.json` is no longer next to the file. Examples are therefore recognised by
content (sha256 of the bytes), which also works when a user re-uploads an example.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

from backend.camera import from_exif
from backend.imageio import LoadedImage
from backend.probe import ImageFacts
from backend.intrinsics import ASSUMED_FOV_PRESET, PRESETS, IntrinsicsChoice, IntrinsicsError, load_sidecar, validate

EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class Example:
    path: Path
    sidecar: IntrinsicsChoice | None


def _digest(source: Path | bytes) -> str:
    return hashlib.sha256(source if isinstance(source, bytes) else source.read_bytes()).hexdigest()


class ExampleCatalog:
    """The example images of a folder, their sidecar intrinsics, and lookup by content."""

    def __init__(self, folder: Path) -> None:
        paths = sorted(p for p in folder.glob("*") if p.suffix.lower() in EXAMPLE_SUFFIXES) if folder.is_dir() else []
        self.examples = [Example(p, load_sidecar(p)) for p in paths]
        self._by_digest = {_digest(e.path): e for e in self.examples}

    def sidecar_for(self, source: str | Path | bytes) -> IntrinsicsChoice | None:
        """The sidecar of the example whose content `source` (a path or the file's bytes) has."""
        try:
            example = self._by_digest.get(_digest(source if isinstance(source, bytes) else Path(source)))
        except OSError:
            return None
        return example.sidecar if example else None


def suggest_intrinsics(image: LoadedImage | ImageFacts, path: str | Path | bytes | None,
                       catalog: ExampleCatalog | None) -> IntrinsicsChoice:
    """Example sidecar (calibrated), else consistent EXIF, else the assumed-FOV preset whose
    reason says why EXIF was not used. `path`: the photo's file or bytes (examples are found by
    content); `catalog` None: the sidecar `<stem>.json` next to the file `path`."""
    problems: list[str] = []
    try:
        sidecar = _sidecar(path, catalog)
        if sidecar is not None:
            return replace(sidecar, intrinsics=validate(sidecar.intrinsics, image.width, image.height))
    except IntrinsicsError as exc:  # e.g. a sidecar written for another resolution
        problems.append(f"calibration file ignored ({exc})")
    reading = from_exif(image.exif, image.width, image.height)
    if reading.choice is not None:
        return reading.choice
    problems.append(reading.fallback_reason())
    return replace(PRESETS[ASSUMED_FOV_PRESET](image.width, image.height), reason="; ".join(problems))


def _sidecar(path: str | Path | bytes | None, catalog: ExampleCatalog | None) -> IntrinsicsChoice | None:
    if path is None:
        return None
    if catalog is not None:
        return catalog.sidecar_for(path)
    return None if isinstance(path, bytes) else load_sidecar(path)
