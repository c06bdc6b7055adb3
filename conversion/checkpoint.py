"""Load Metric3D v2 ViT-S weights strictly, with errors a person can act on.

Upstream loads with strict=False and silently ignores any mismatch; a wrong file then gives a
plausible-looking but meaningless depth map. Here only `mask_token` (training-only, absent from
the released file) may be missing; everything else must match by name and shape.
"""
from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from conversion.model import Metric3D

STATE_KEY = "model_state_dict"
OPTIONAL_KEYS = frozenset({"depth_model.encoder.mask_token"})
EMBED_DIM_KEY = "depth_model.encoder.cls_token"
VIT_SIZES = {384: "ViT-S", 768: "ViT-B", 1024: "ViT-L", 1536: "ViT-giant2"}
EXPECTED_FILE = "metric_depth_vit_small_800k.pth"
SHOWN_KEYS = 10


class CheckpointError(ValueError):
    """The file is not a usable Metric3D v2 ViT-S checkpoint; the message says why."""


def _key_list(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    more = len(keys) - SHOWN_KEYS
    return f"{shown} (and {more} more)" if more > 0 else shown


def _keys_phrase(keys: list[str], singular: str, plural: str) -> str:
    """E.g. '1 key is missing: a' or '3 keys are missing: a, b, c'."""
    head = f"1 key {singular}" if len(keys) == 1 else f"{len(keys)} keys {plural}"
    return f"{head}: {_key_list(keys)}"


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the flat state dict from an upstream-layout file `{"model_state_dict": {...}}`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any parser failure on an arbitrary file means "unusable"
        raise CheckpointError(f"{path.name} {_unreadable_reason(path, exc)}. "
                              f"Expected the Metric3D v2 ViT-S file {EXPECTED_FILE}.") from exc
    if not isinstance(blob, Mapping):
        raise CheckpointError(f"{path.name} holds a {type(blob).__name__}, not a checkpoint dict "
                              f"with '{STATE_KEY}'.")
    if STATE_KEY not in blob:
        found = _key_list([str(k) for k in blob])
        raise CheckpointError(f"{path.name} is not a Metric3D checkpoint: it has no '{STATE_KEY}' entry "
                              f"(top-level keys: {found or 'none'}).")
    state = blob[STATE_KEY]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"'{STATE_KEY}' in {path.name} is a {type(state).__name__}, not a state dict.")
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"'{STATE_KEY}' in {path.name} has non-tensor entries: {_key_list(not_tensors)}.")
    return dict(state)


def _unreadable_reason(path: Path, exc: Exception) -> str:
    """Why torch.load failed, in words: judged from the file's first bytes and the error type."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":  # torch's zip format
        if not zipfile.is_zipfile(path):
            return "is truncated or corrupted (its zip archive has no intact end)"
        if isinstance(exc, pickle.UnpicklingError):
            return "holds pickled Python objects besides tensors, which the safe loader refuses"
        return f"is a damaged PyTorch checkpoint ({type(exc).__name__})"
    if head[:1] == b"\x80":  # legacy (pre-zip) torch pickle
        return f"is a truncated or damaged legacy PyTorch checkpoint ({type(exc).__name__})"
    return "is not a PyTorch checkpoint" + (" (the file is empty)" if not head else "")


def state_dict_from_numpy(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Wrap numpy arrays (e.g. golden `make_weights` output) as tensors without writing a file."""
    return {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}


def _size_hint(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> str:
    if EMBED_DIM_KEY not in state or EMBED_DIM_KEY not in expected:
        return ""
    got, want = state[EMBED_DIM_KEY].shape[-1], expected[EMBED_DIM_KEY].shape[-1]
    if got == want:
        return ""
    name = VIT_SIZES.get(int(got), f"embed dim {got}")
    return (f"It looks like a different model size: a {name} encoder (embed dim {got}), but this "
            f"project converts Metric3D v2 {VIT_SIZES[int(want)]} (embed dim {want}). ")


def check_state_dict(state: Mapping[str, torch.Tensor], model: torch.nn.Module,
                     source: str = "The weights") -> None:
    """Raise CheckpointError naming every missing, unexpected, wrongly-shaped or split-alias key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and k not in OPTIONAL_KEYS]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {list(state[k].shape)} (expected {list(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    if wrong:
        problems.append(_keys_phrase(wrong, "has the wrong shape", "have the wrong shape"))
    if missing:
        problems.append(_keys_phrase(missing, "is missing", "are missing"))
    if unexpected:
        problems.append(_keys_phrase(unexpected, "is unexpected", "are unexpected"))
    if problems:
        raise CheckpointError(f"{source} do not fit Metric3D v2 ViT-S. " + _size_hint(state, expected)
                              + "; ".join(problems) + ".")
    split = [f"{a} / {b}" for a, b in _aliased_pairs(expected)
             if a in state and b in state and not torch.equal(state[a], state[b])]
    if split:
        raise CheckpointError(f"{source}: these keys name one shared tensor but hold different values: "
                              f"{_key_list(split)}.")


def _aliased_pairs(expected: Mapping[str, torch.Tensor]) -> list[tuple[str, str]]:
    """Key pairs that the model stores as one tensor (norm3 / downsample.1)."""
    first: dict[int, str] = {}
    pairs = []
    for name, tensor in expected.items():
        ptr = tensor.data_ptr()
        if ptr in first:
            pairs.append((first[ptr], name))
        else:
            first[ptr] = name
    return pairs


def model_from_state_dict(state: Mapping[str, torch.Tensor], iters: int = 4,
                          source: str = "The weights") -> Metric3D:
    """A Metric3D in eval mode holding `state`, after the strict checks above."""
    model = Metric3D(iters=iters)
    check_state_dict(state, model, source)
    result = model.load_state_dict(dict(state), strict=False)
    assert set(result.missing_keys) <= OPTIONAL_KEYS and not result.unexpected_keys, result
    return model.eval()


def load_checkpoint(path: str | Path, iters: int = 4) -> Metric3D:
    """Read an upstream-layout checkpoint file and return the loaded model in eval mode."""
    return model_from_state_dict(read_checkpoint(path), iters, source=f"The weights in {Path(path).name}")
