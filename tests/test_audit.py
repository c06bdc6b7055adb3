"""`python -m conversion audit`: GPU-safe graphs pass; each banned construct makes it exit non-zero."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conversion.audit import GPU_SAFE_OPS, KNOWN_BANNED_OPS, audit_model
from _conversion_helpers import convert_small

REPO = Path(__file__).resolve().parents[1]


def _audit_cli(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conversion", "audit", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


class _Fn(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


BANNED_CASES = {
    "gelu": (_Fn(F.gelu), "GELU"),
    "where": (_Fn(lambda x: torch.where(x > 0, x, 0.5 * x)), "SELECT"),
    "unfold": (_Fn(lambda x: F.unfold(x[:, :1], [3, 3], padding=1).view(1, 9, 8, 8)), "GATHER"),
    "conv_transpose": (nn.ConvTranspose2d(4, 2, 2, stride=2), "TRANSPOSE_CONV"),
    "pow": (_Fn(lambda x: torch.pow(x.abs() + 1.0, 2.5)), "POW"),
    "five_d": (_Fn(lambda x: (x.view(1, 2, 2, 8, 8) * 2.0).sum(1)), "rank 5"),
}


@pytest.fixture(scope="module")
def small_models(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("audit")
    x = torch.randn(1, 4, 8, 8)
    models = {name: convert_small(mod.eval(), x, out / f"{name}.tflite") for name, (mod, _) in BANNED_CASES.items()}
    models["clean"] = convert_small(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()).eval(), x,
                                    out / "clean.tflite")
    return models


def test_clean_model_passes_and_prints_histogram(small_models):
    proc = _audit_cli(small_models["clean"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CONV_2D" in proc.stdout and "GPU-safe: yes" in proc.stdout
    assert "tensor ranks:" in proc.stdout


@pytest.mark.parametrize("name", sorted(BANNED_CASES))
def test_banned_construct_fails_the_audit(small_models, name):
    proc = _audit_cli(small_models[name])
    assert proc.returncode == 1, proc.stdout
    assert "GPU-safe: NO" in proc.stdout
    assert BANNED_CASES[name][1] in proc.stdout


def test_report_counts_ops_and_ranks(small_models):
    report = audit_model(small_models["five_d"])
    assert report.ranks[5] >= 1
    assert sum(report.ops.values()) >= 2


def test_unreadable_file_gives_a_clear_error(tmp_path):
    bad = tmp_path / "not_a_model.tflite"
    bad.write_bytes(b"this is not a flatbuffer")
    proc = _audit_cli(bad)
    assert proc.returncode == 2
    assert "not a readable .tflite" in proc.stderr and "Traceback" not in proc.stderr
    missing = _audit_cli(tmp_path / "missing.tflite")
    assert missing.returncode == 2 and "no such model file" in missing.stderr


def test_allow_list_and_ban_list_do_not_overlap():
    assert GPU_SAFE_OPS.isdisjoint(KNOWN_BANNED_OPS)
    assert {"GELU", "POW", "WHERE", "SELECT", "SELECT_V2", "GATHER", "GATHER_ND", "TRANSPOSE_CONV",
            "RESIZE_NEAREST_NEIGHBOR"} <= set(KNOWN_BANNED_OPS)
