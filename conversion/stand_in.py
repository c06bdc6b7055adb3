"""A small stand-in network with the exact Metric3D I/O contract, for fast tests.

The full Metric3D conversion takes about a minute and a run takes seconds on the CPU; app,
engine and device tests need a model that loads and runs in milliseconds but still behaves
like the real one at the boundary: input `image` [1,3,S,S] float32 (ImageNet-normalized
0-255 RGB), output `depth` [1,1,S,S] float32 canonical depth in (0.1, 20) m that depends on
the image content (so distinct images give distinct depth maps). It uses only GPU-safe ops.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

STAND_IN_NAME = "Metric3D I/O stand-in (not a depth model)"


class StandInDepth(nn.Module):
    """Strided convs down to 1/8, a bilinear way back up, and a bounded positive head."""

    def __init__(self, size: int = 448, width: int = 16) -> None:
        super().__init__()
        self.size = size
        self.down = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.head = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.head(self.down(image))
        logits = F.interpolate(logits, size=(self.size, self.size), mode="bilinear", align_corners=False)
        depth = 0.1 + 19.9 * torch.sigmoid(8.0 * logits)
        return {"depth": depth}


def build_stand_in(output: Path, size: int = 448, seed: int = 0) -> Path:
    """Convert a seeded StandInDepth to `output` and embed our metadata in it."""
    import litert_torch

    from conversion.convert import metadata_doc
    from conversion.metadata import embed_metadata

    torch.manual_seed(seed)
    model = StandInDepth(size).eval()
    sample = torch.zeros(1, 3, size, size)
    edge = litert_torch.signature("serving_default", model, sample_kwargs={"image": sample}).convert()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    edge.export(str(output))
    doc = metadata_doc("fp32", {"stand_in": f"seed {seed}"}, size)
    doc["model"] = STAND_IN_NAME
    embed_metadata(output, doc)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_stand_in(args.output, args.size, args.seed))


if __name__ == "__main__":
    main()
