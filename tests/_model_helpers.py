"""Shared by the model-parity and checkpoint tests: the golden folder's own weight generator."""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np

SEED0_FINGERPRINT = "073be5be6a5632538e92d305f7c891d87cda9354f188845f1a450ffa15ee409f"


@functools.cache
def make_weights_module(golden_dir: Path) -> ModuleType:
    """Import golden/make_weights.py by path (it is data that ships with the vectors, not a package)."""
    spec = importlib.util.spec_from_file_location("golden_make_weights", golden_dir / "make_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def seed0_arrays(golden_dir: Path) -> dict[str, np.ndarray]:
    """The seed-0 synthetic weights (all 362 keys, aliases sharing one array); built once per run."""
    mw = make_weights_module(golden_dir)
    arrays = mw.make_state_dict(mw.load_manifest(), 0)
    if mw.fingerprint(arrays) != SEED0_FINGERPRINT:
        raise RuntimeError("golden make_weights.py no longer reproduces the seed-0 weights")
    return arrays
