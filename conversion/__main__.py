"""python -m conversion {convert,quantize,audit,predict}: build, check and run the LiteRT model."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m conversion", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    conv = sub.add_parser("convert", help="checkpoint (or random weights) -> GPU-safe .tflite")
    src = conv.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="Metric3D v2 ViT-S .pth (metric_depth_vit_small_800k.pth)")
    src.add_argument("--random-weights", type=int, metavar="SEED",
                     help="full architecture with deterministic random weights (tests, benchmarks)")
    conv.add_argument("--output", type=Path, required=True, help="output .tflite")
    conv.add_argument("--precision", choices=("fp16", "fp32"), default="fp16",
                      help="weight storage: fp16 (half the file) or fp32 (default fp16)")
    conv.add_argument("--size", type=int, default=448,
                      help="input size S (multiple of 28); smaller sizes make fast test models (default 448)")

    quant = sub.add_parser("quantize", help="fp32 .tflite -> fp16-weight .tflite (metadata kept)")
    quant.add_argument("--input", type=Path, required=True)
    quant.add_argument("--output", type=Path, required=True)

    aud = sub.add_parser("audit", help="op histogram; exit 1 if any op or tensor is not GPU-safe")
    aud.add_argument("model", type=Path)

    pred = sub.add_parser("predict", help="canonical depth for a float32 NCHW .npy input")
    pred.add_argument("--input", type=Path, required=True, help="[1,3,H,W] float32 normalized RGB .npy")
    pred.add_argument("--output", type=Path, required=True, help="where to save depth [1,1,H,W] .npy")
    backend = pred.add_mutually_exclusive_group(required=True)
    backend.add_argument("--checkpoint", type=Path, help="run the faithful PyTorch model")
    backend.add_argument("--model", type=Path, help="run a .tflite with LiteRT")
    pred.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu",
                      help="LiteRT accelerator for --model: cpu (XNNPACK) or gpu (LiteRT's GPU delegate; default cpu)")
    pred.add_argument("--gpu-precision", choices=("fp16", "fp32"), default="fp16",
                      help="GPU arithmetic: fp16 (the GPU default, as on the phone) or fp32 (default fp16)")
    return parser


def _convert(args: argparse.Namespace) -> int:
    from conversion.convert import convert

    if args.checkpoint is not None and not args.checkpoint.is_file():
        print(f"error: checkpoint not found: {args.checkpoint}", file=sys.stderr)
        return 2
    if args.size < 28 or args.size % 28:
        print(f"error: --size must be a positive multiple of 28, got {args.size}", file=sys.stderr)
        return 2
    stats = convert(args.output, checkpoint=args.checkpoint, random_seed=args.random_weights,
                    precision=args.precision, size=args.size)
    print(f"wrote {stats.output} ({stats.output_bytes / 1e6:.1f} MB, {stats.precision}, source {stats.source})")
    print(f"conversion time {stats.seconds:.1f} s, peak RSS {stats.peak_rss_mb:.0f} MiB "
          f"(stats in {stats.output}.json)")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from conversion.quantize import to_fp16

    if not args.input.is_file():
        print(f"error: input model not found: {args.input}", file=sys.stderr)
        return 2
    print(f"wrote {to_fp16(args.input, args.output)}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from conversion.predict import PredictError, run_predict

    try:
        depth = run_predict(args.input, args.output, checkpoint=args.checkpoint, model=args.model,
                            accelerator=args.accelerator, gpu_precision=args.gpu_precision)
    except PredictError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} {list(depth.shape)} min {depth.min():.3f} max {depth.max():.3f} m")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "audit":
        from conversion.audit import run_audit

        return run_audit(args.model)
    return {"convert": _convert, "quantize": _quantize, "predict": _predict}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
