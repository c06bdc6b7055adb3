"""Example photos and the intrinsics suggested for any photo the user picks.

Gradio copies a clicked example into its own cache before our handler sees it, so the
sidecar `<stem>.json` is no longer next to the file. Examples are therefore recognised by
content (sha256 of the bytes), which also works when a user re-uploads an example.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from backend.imageio import LoadedImage
from backend.intrinsics import (ASSUMED_FOV_PRESET, PRESETS, IntrinsicsChoice, IntrinsicsError, from_exif,
                                load_sidecar, validate)

EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class Example:
    path: Path
    sidecar: IntrinsicsChoice | None


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class ExampleCatalog:
    """The example images of a folder, their sidecar intrinsics, and lookup by content."""

    def __init__(self, folder: Path) -> None:
        paths = sorted(p for p in folder.glob("*") if p.suffix.lower() in EXAMPLE_SUFFIXES) if folder.is_dir() else []
        self.examples = [Example(p, load_sidecar(p)) for p in paths]
        self._by_digest = {_digest(e.path): e for e in self.examples}

    def sidecar_for(self, path: str | Path) -> IntrinsicsChoice | None:
        try:
            example = self._by_digest.get(_digest(Path(path)))
        except OSError:
            return None
        return example.sidecar if example else None


def suggest_intrinsics(image: LoadedImage, path: str | Path | None, catalog: ExampleCatalog) -> IntrinsicsChoice:
    """Example sidecar, else EXIF, else the assumed-FOV preset (whose source says it is a guess)."""
    candidates = [catalog.sidecar_for(path) if path is not None else None,
                  from_exif(image.exif, image.width, image.height)]
    for choice in candidates:
        if choice is None:
            continue
        try:
            return IntrinsicsChoice(validate(choice.intrinsics, image.width, image.height), choice.source)
        except IntrinsicsError:
            continue  # e.g. a sidecar written for another resolution
    return PRESETS[ASSUMED_FOV_PRESET](image.width, image.height)
