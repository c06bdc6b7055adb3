"""Which .tflite to run: an explicit path, then the environment, then the cache, then a download.

Explicit choices (--model, METRIC3D_MODEL) never fall through to a download: a typo
there must be reported, not papered over with a different model.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PUBLISHED_REPO = "mlboydaisuke/Metric3D-v2-LiteRT"
PUBLISHED_FILE = "metric3d_fp16.tflite"
ENV_MODEL = "METRIC3D_MODEL"
ENV_CACHE = "METRIC3D_CACHE"


class ModelNotFound(FileNotFoundError):
    """No model could be found or fetched; the message lists every way to provide one."""


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    origin: str  # "--model", "METRIC3D_MODEL", "cache" or "download"


def cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    """$METRIC3D_CACHE, else ~/.cache/metric3d-litert."""
    if env.get(ENV_CACHE):
        return Path(env[ENV_CACHE]).expanduser()
    return Path.home() / ".cache" / "metric3d-litert"


CHECKPOINT_FILE = "metric_depth_vit_small_800k.pth"
CHECKPOINT_REPO = "JUGGHM/Metric3D"  # the official Metric3D v2 weights (Hugging Face)


def _options_text(cached: Path) -> str:
    """Every way to provide the model, each a command that works as printed from the checkout."""
    from huggingface_hub import hf_hub_url

    return (
        "Provide the model in one of these ways:\n"
        f"  1. pass a path: .venv/bin/python app.py --model /path/to/model.tflite (or set {ENV_MODEL});\n"
        f"  2. download '{PUBLISHED_FILE}' from the Hugging Face repo {PUBLISHED_REPO} by hand\n"
        f"     ({hf_hub_url(PUBLISHED_REPO, PUBLISHED_FILE)}) and save it as\n"
        f"     {cached}\n"
        f"  3. convert the official checkpoint ('{CHECKPOINT_FILE}' from the Hugging Face repo {CHECKPOINT_REPO},\n"
        f"     {hf_hub_url(CHECKPOINT_REPO, CHECKPOINT_FILE)}):\n"
        "     .venv/bin/python -m pip install -r requirements-conversion.txt   # the conversion stack (torch CPU)\n"
        f"     .venv/bin/python -m conversion convert --checkpoint {CHECKPOINT_FILE} --output {cached}"
    )


def _explicit(path_text: str, origin: str, cached: Path) -> ResolvedModel:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ModelNotFound(f"The model given by {origin} does not exist: {path}\n{_options_text(cached)}")
    return ResolvedModel(path.resolve(), origin)


def download_published(target_dir: Path) -> Path:
    """Fetch the published model into target_dir with huggingface_hub (shows its progress bar).

    Says what it downloads and where on stderr first: a first start otherwise sits silent.
    """
    from huggingface_hub import hf_hub_download

    print(f"No model found yet: downloading {PUBLISHED_FILE} from the Hugging Face repo "
          f"{PUBLISHED_REPO} into {target_dir} ...", file=sys.stderr, flush=True)
    target_dir.mkdir(parents=True, exist_ok=True)
    path = Path(hf_hub_download(PUBLISHED_REPO, PUBLISHED_FILE, local_dir=target_dir))
    print(f"Saved {path}", file=sys.stderr, flush=True)
    return path


def resolve_model(cli_path: str | None = None, env: Mapping[str, str] = os.environ,
                  download: bool = True) -> ResolvedModel:
    """--model PATH -> $METRIC3D_MODEL -> cached published model -> download -> ModelNotFound."""
    cached = cache_dir(env) / PUBLISHED_FILE
    if cli_path:
        return _explicit(cli_path, "--model", cached)
    if env.get(ENV_MODEL):
        return _explicit(env[ENV_MODEL], ENV_MODEL, cached)
    if cached.is_file():
        return ResolvedModel(cached, "cache")
    if not download:
        raise ModelNotFound(f"No model found and downloading is disabled.\n{_options_text(cached)}")
    try:
        return ResolvedModel(download_published(cached.parent), "download")
    except Exception as exc:  # noqa: BLE001 - network, offline mode, HTTP and disk errors all end here
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFound(
            f"No model found, and downloading {PUBLISHED_FILE} from {PUBLISHED_REPO} failed "
            f"({type(exc).__name__}: {reason}).\n{_options_text(cached)}"
        ) from exc


def main(argv: list[str] | None = None) -> int:
    """Resolve (and if needed download) the model, then print its path: `python -m backend.model_files`."""
    parser = argparse.ArgumentParser(description="Find or download the Metric3D LiteRT model.")
    parser.add_argument("--model", help="explicit model path (checked, not downloaded)")
    parser.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    args = parser.parse_args(argv)
    try:
        resolved = resolve_model(args.model, download=not args.no_download)
    except ModelNotFound as exc:
        print(exc)
        return 2
    print(f"{resolved.path} ({resolved.origin})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
