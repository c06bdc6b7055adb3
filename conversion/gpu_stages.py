"""Where does fp16 GPU arithmetic lose depth accuracy? Per-stage measurement of the export form.

    python -m conversion.gpu_stages [--golden DIR] [--stages embed,block_0,...] [--full] [--json OUT]

The export form (conversion/export) is cut into stages (patch embed, each ViT block, final
norm, readouts, DPT fusion, depth+normal heads, context encoder, each GRU iteration, convex
upsampling). Each stage is converted alone with litert-torch and run on LiteRT's GPU
accelerator with fp16 arithmetic (the GPU default) and, for contrast, fp32 arithmetic, fed the
true fp32 input of that stage (the export form run in torch fp32, which matches the faithful
model to ~1e-6; the reference depth is checked against the golden output). Per stage it reports

* local error: the stage's own output error vs torch fp32, as max / mean |err| over the rms of
  the output (the depth channel of the GRU state in meters of depth, relative);
* injected error: the final depth's error vs golden when only this stage's output is replaced
  by the GPU's and every other stage runs in torch fp32 (mean / p99 / max relative).

`--storage-model` runs the whole export form in torch with every weight and every op output
rounded to fp16 but fp32 arithmetic inside each op: a model of a GPU with fp16 tensors and fp32
accumulation (ML Drift's F32_F16, the runner's `fp16acc32`), which Python's GpuOptions cannot ask for.

`--full` also converts the whole model and runs it on the GPU in both precisions (~2-4 min each
on a software Vulkan GPU). Needs the golden vectors (seed-0 synthetic weights, make_weights.py).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from conversion.export import ExportMetric3D
from conversion.model.heads import REGRESS_SCALE
from conversion.predict import run_litert_inputs

Tensors = dict[str, torch.Tensor]
DEFAULT_GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"  # /work/shared/golden


@dataclass
class Stage:
    """One cut of the export form: named inputs -> named outputs, computed by `fn`."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    fn: Callable[..., tuple[torch.Tensor, ...]]


class _StageModule(nn.Module):
    """Wraps a stage so litert-torch sees positional inputs and a dict of named outputs."""

    def __init__(self, stage: Stage, owner: nn.Module) -> None:
        super().__init__()
        self.owner = owner  # registers the export model's weights with this module
        self.stage = stage

    def forward(self, *xs: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.stage.outputs, self.stage.fn(*xs)))


def state_depth(state: torch.Tensor) -> torch.Tensor:
    """The depth in meters held by the export form's GRU state [B,6,H,W] (channel 0 is d/100)."""
    return state[:, :1] * REGRESS_SCALE


def build_stages(model: ExportMetric3D) -> list[Stage]:
    """The export form's forward, cut at the points the fidelity question needs."""
    net3d = model.model
    enc, dec = net3d.encoder, net3d.decoder
    grid = model.size // enc.patch_size
    ub = dec.update_block

    stages = [Stage("embed", ("image",), ("tokens_0",), lambda image: (enc.prepare_tokens(image),))]
    blocks = [b for chunk in enc.blocks for b in chunk]
    for i, block in enumerate(blocks):
        stages.append(Stage(f"block_{i}", (f"tokens_{i}",), (f"tokens_{i + 1}",), lambda x, b=block: (b(x),)))
    n = len(blocks)
    stages.append(Stage("final_norm", (f"tokens_{n}",), ("enc",), lambda x: (enc.norm(x),)))
    stages.append(Stage("readout", ("enc",), ("x", "x2", "x1", "x0"),
                        lambda t: dec.token2feature(*dec.split_tokens(t, grid, grid))))
    stages.append(Stage("dpt_fusion", ("x", "x2", "x1"), ("ref",), lambda x, x2, x1: (dec.decoder_mono(x, x2, x1),)))
    stages.append(Stage("heads", ("ref",), ("state_0",), lambda ref: (dec.initial_state(ref),)))

    def context(x0, x1, x2):
        net, inp = dec.context(x0, x1, x2)
        return (*net, *(t for scale in inp for t in scale))

    inp_names = tuple(f"{g}{s}" for s in (0, 1, 2) for g in ("cz", "cr", "cq"))
    stages.append(Stage("context", ("x0", "x1", "x2"), ("net0_0", "net1_0", "net2_0", *inp_names), context))

    def gru_iteration(net0, net1, net2, state, x0, x1, x2):
        # The context terms are recomputed from the features here: fed in as graph inputs (added
        # to conv outputs) litert-torch converted the GRU into a wrong graph, on the CPU too.
        _, inp = dec.context(x0, x1, x2)
        net, _, delta = ub([net0, net1, net2], inp, dec.state_feature(state))
        return (*net, state + delta)

    for it in range(dec.iters):
        ins = (f"net0_{it}", f"net1_{it}", f"net2_{it}", f"state_{it}", "x0", "x1", "x2")
        outs = (f"net0_{it + 1}", f"net1_{it + 1}", f"net2_{it + 1}", f"state_{it + 1}")
        stages.append(Stage(f"gru_iter_{it + 1}", ins, outs, gru_iteration))

    def upsample(h, state):
        return (dec.upsample_depth(state, ub.mask_scale(ub.mask(h))),)

    stages.append(Stage("convex_upsample", (f"net0_{dec.iters}", f"state_{dec.iters}"), ("depth",), upsample))
    return stages


def run_chain(stages: list[Stage], values: Tensors, start: int = 0) -> Tensors:
    """Run stages[start:] in torch fp32 on `values` (updated in place and returned)."""
    with torch.no_grad():
        for stage in stages[start:]:
            values.update(zip(stage.outputs, stage.fn(*(values[k] for k in stage.inputs))))
    return values


# ---------------------------------------------------------------- LiteRT on the GPU

def convert_stage(stage: Stage, owner: nn.Module, values: Tensors, path: Path) -> Path:
    import litert_torch

    # Fresh copies: samples that are views of one tensor (cz, cr, cq split from one conv) would
    # be traced as aliases of each other and converted into a wrong graph.
    sample = tuple(values[k].clone() for k in stage.inputs)
    edge = litert_torch.signature("serving_default", _StageModule(stage, owner).eval(), sample_args=sample).convert()
    edge.export(str(path))
    return path


def run_gpu(path: Path, inputs: list[np.ndarray], fp32: bool) -> tuple[dict[str, np.ndarray], bool, float]:
    """One run on LiteRT's GPU accelerator (conversion.predict's shared runner, which waits out a
    software GPU); returns (outputs by name, fully accelerated, seconds)."""
    run = run_litert_inputs(path, inputs, "gpu", "fp32" if fp32 else "fp16")
    return run.outputs, run.fully_accelerated, run.first_run_s


# ---------------------------------------------------------------- metrics

def depth_errors(depth: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    rel = np.abs(depth.astype(np.float64) - ref) / ref
    return {"mean_rel": float(rel.mean()), "p99_rel": float(np.quantile(rel, 0.99)), "max_rel": float(rel.max()),
            "corr": float(np.corrcoef(depth.ravel(), ref.ravel())[0, 1])}


def tensor_errors(name: str, got: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Error of one stage output: depth-like outputs in relative depth, others over the output's rms."""
    if name.startswith("state_"):
        d_got, d_ref = (state_depth(torch.from_numpy(t)).numpy() for t in (got, ref))
        out = {f"depth_{k}": v for k, v in depth_errors(d_got, d_ref).items()}
        rest_rms = float(np.sqrt(np.mean(ref[:, 1:].astype(np.float64) ** 2)))
        err = np.abs(got[:, 1:] - ref[:, 1:])
        return {**out, "max_err_rms": float(err.max() / rest_rms), "mean_err_rms": float(err.mean() / rest_rms)}
    if name == "depth":
        return {f"depth_{k}": v for k, v in depth_errors(got, ref).items()}
    rms = float(np.sqrt(np.mean(ref.astype(np.float64) ** 2)))
    err = np.abs(got.astype(np.float64) - ref)
    return {"max_err_rms": float(err.max() / rms), "mean_err_rms": float(err.mean() / rms)}


# ---------------------------------------------------------------- model and golden data

def load_golden_model(golden: Path) -> torch.nn.Module:
    """The faithful Metric3D with the golden folder's seed-0 synthetic weights (strict load)."""
    from conversion.checkpoint import state_dict_from_numpy
    from conversion.model import Metric3D

    spec = importlib.util.spec_from_file_location("golden_make_weights", golden / "make_weights.py")
    mw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mw)
    model = Metric3D().eval()
    model.load_state_dict(state_dict_from_numpy(mw.make_state_dict(mw.load_manifest(), 0)), strict=True)
    return model


def measure_stages(model: ExportMetric3D, image: torch.Tensor, golden_depth: np.ndarray, names: list[str] | None,
                   workdir: Path, precisions: tuple[bool, ...] = (False, True)) -> list[dict]:
    stages = build_stages(model)
    ref = run_chain(stages, {"image": image})
    rows = [{"stage": "torch fp32 chain vs golden", **depth_errors(ref["depth"].numpy(), golden_depth)}]
    print(json.dumps(rows[0]), flush=True)
    for index, stage in enumerate(stages):
        if names and stage.name not in names:
            continue
        path = convert_stage(stage, model, ref, workdir / f"{stage.name}.tflite")
        for fp32 in precisions:
            outs, full, secs = run_gpu(path, [ref[k].numpy() for k in stage.inputs], fp32)
            row = {"stage": stage.name, "gpu": "fp32" if fp32 else "fp16", "fully_accelerated": full,
                   "seconds": round(secs, 2)}
            for out_name in stage.outputs:
                key = next(k for k in outs if k == out_name or k.endswith(out_name))
                row[out_name] = tensor_errors(out_name, outs[key], ref[out_name].numpy())
            injected = {k: v for k, v in ref.items()}
            injected.update({name: torch.from_numpy(outs[name].copy()) for name in stage.outputs})
            if index + 1 < len(stages):
                run_chain(stages, injected, index + 1)
            row["final"] = depth_errors(injected["depth"].numpy(), golden_depth)
            rows.append(row)
            print(json.dumps(row), flush=True)
        path.unlink(missing_ok=True)
    return rows


def measure_full(model: ExportMetric3D, image: torch.Tensor, golden_depth: np.ndarray, workdir: Path) -> list[dict]:
    from conversion.convert import export_to_tflite

    path = workdir / "full.tflite"
    with torch.no_grad():
        export_to_tflite(model, path, image.shape[-1])
    rows = []
    for fp32 in (False, True):
        outs, full, secs = run_gpu(path, [image.numpy()], fp32)
        row = {"stage": "full model", "gpu": "fp32" if fp32 else "fp16", "fully_accelerated": full,
               "seconds": round(secs, 1), "final": depth_errors(next(iter(outs.values())), golden_depth)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


class _RoundOutputsToHalf(TorchFunctionMode):
    """Rounds every floating-point result of a torch function to fp16 (stored back as fp32)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            return out.half().float()
        if isinstance(out, (tuple, list)):
            return type(out)(o.half().float() if isinstance(o, torch.Tensor) and o.is_floating_point() else o
                             for o in out)
        return out


def storage_model_errors(model: ExportMetric3D, image: torch.Tensor, golden_depth: np.ndarray) -> dict:
    """Final depth error with fp16 weights and fp16 tensors between ops, fp32 inside ops (torch)."""
    import copy

    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for t in [*rounded.parameters(), *rounded.buffers()]:
            t.copy_(t.half().float())
        with _RoundOutputsToHalf():
            depth = rounded(image.half().float())["depth"].numpy()
    row = {"stage": "full model, torch fp16-storage model", "final": depth_errors(depth, golden_depth)}
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conversion.gpu_stages", description=__doc__.splitlines()[0])
    parser.add_argument("--golden", type=Path, default=Path(os.environ.get("METRIC3D_GOLDEN_DIR", DEFAULT_GOLDEN)))
    parser.add_argument("--stages", default="", help="comma-separated stage names (default: all)")
    parser.add_argument("--fp16-only", action="store_true", help="skip the fp32-arithmetic runs")
    parser.add_argument("--full", action="store_true", help="also run the whole model on the GPU (slow)")
    parser.add_argument("--storage-model", action="store_true",
                        help="also the torch model of fp16 storage with fp32 accumulation (seconds)")
    parser.add_argument("--json", type=Path, help="write all rows here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    image = torch.from_numpy(np.load(args.golden / "input_nchw_f32.npy"))
    golden_depth = np.load(args.golden / "depth_canonical_f32.npy").astype(np.float64)
    model = ExportMetric3D(load_golden_model(args.golden), image.shape[-1])
    names = [s for s in args.stages.split(",") if s]
    with tempfile.TemporaryDirectory() as tmp:
        precisions = (False,) if args.fp16_only else (False, True)
        rows = measure_stages(model, image, golden_depth, names, Path(tmp), precisions) if args.stages != "none" else []
        if args.storage_model:
            rows.append(storage_model_errors(model, image, golden_depth))
        if args.full:
            rows += measure_full(model, image, golden_depth, Path(tmp))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
