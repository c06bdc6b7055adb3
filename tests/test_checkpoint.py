"""Strict checkpoint loading: the seed-0 file in the official layout loads; bad files say why."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from _model_helpers import make_weights_module, seed0_arrays
from backend.digest import file_sha256
from conversion.checkpoint import CheckpointError, load_checkpoint, model_from_state_dict, state_dict_from_numpy

MASK_TOKEN = "depth_model.encoder.mask_token"
ALIAS = ("depth_model.decoder.context_feature_encoder.outputs04.0.0.norm3.weight",
         "depth_model.decoder.context_feature_encoder.outputs04.0.0.downsample.1.weight")


@pytest.fixture(scope="module")
def seed0_checkpoint(golden_dir, tmp_path_factory) -> Path:
    """Written by the golden make_weights CLI: 361 keys, aliases sharing storage, no mask_token."""
    path = tmp_path_factory.mktemp("ckpt") / "metric_depth_vit_small_800k.pth"
    make_weights_module(golden_dir).main(["--seed", "0", "--out", str(path)])
    return path


@pytest.fixture(scope="module")
def official_state(seed0_checkpoint) -> dict[str, torch.Tensor]:
    return torch.load(seed0_checkpoint, weights_only=True)["model_state_dict"]


def save(tmp_path: Path, obj, name: str = "bad.pth") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def error_for(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    return str(info.value)


def error_for_state(state: dict[str, torch.Tensor]) -> str:
    """Same checks without a 150 MB file round trip (the file layer is covered above)."""
    with pytest.raises(CheckpointError) as info:
        model_from_state_dict(state)
    return str(info.value)


def test_seed0_checkpoint_has_the_official_layout(official_state):
    assert len(official_state) == 361 and MASK_TOKEN not in official_state
    assert official_state[ALIAS[0]].data_ptr() == official_state[ALIAS[1]].data_ptr()


def test_seed0_checkpoint_loads_with_exact_values(seed0_checkpoint, golden_dir):
    model = load_checkpoint(seed0_checkpoint)
    assert not model.training
    loaded = model.state_dict()
    for name, array in seed0_arrays(golden_dir).items():
        assert np.array_equal(loaded[name].numpy(), array), name
    assert loaded[ALIAS[0]].data_ptr() == loaded[ALIAS[1]].data_ptr()


def test_state_dict_from_numpy_loads_all_keys(golden_dir):
    model = model_from_state_dict(state_dict_from_numpy(seed0_arrays(golden_dir)))
    assert torch.equal(model.state_dict()[MASK_TOKEN], torch.zeros(1, 384))


def test_checkpoint_sha256_matches_hashlib(seed0_checkpoint):
    expected = hashlib.sha256(seed0_checkpoint.read_bytes()).hexdigest()
    assert file_sha256(seed0_checkpoint) == expected


def test_truncated_file(seed0_checkpoint, tmp_path):
    path = tmp_path / "cut.pth"
    path.write_bytes(seed0_checkpoint.read_bytes()[: 10_000_000])
    assert "cut.pth is truncated or corrupted" in error_for(path)


def test_not_a_torch_file(tmp_path, golden_dir):
    path = tmp_path / "photo.pth"
    path.write_bytes((golden_dir / "input_rgb_448.png").read_bytes())
    assert "photo.pth is not a PyTorch checkpoint" in error_for(path)


def test_missing_file(tmp_path):
    assert "checkpoint not found" in error_for(tmp_path / "nowhere.pth")


def test_plain_state_dict_of_another_net(tmp_path):
    message = error_for(save(tmp_path, torch.nn.Conv2d(3, 8, 3).state_dict()))
    assert "no 'model_state_dict'" in message and "weight, bias" in message


def test_other_network_inside_model_state_dict(tmp_path):
    other = {f"backbone.layer{i}.weight": torch.zeros(4, 4) for i in range(3)}
    message = error_for(save(tmp_path, {"model_state_dict": other}))
    assert "3 keys are unexpected: " + ", ".join(other) in message
    assert re.search(r"361 keys are missing: depth_model\.encoder\.cls_token, .*\(and 351 more\)", message)


def test_missing_decoder_key_is_named(official_state):
    state = dict(official_state)
    del state["depth_model.decoder.update_block.mask.2.bias"]
    assert "1 key is missing: depth_model.decoder.update_block.mask.2.bias." in error_for_state(state)


def test_unexpected_key_is_named(official_state):
    state = dict(official_state, **{"depth_model.decoder.extra_head.weight": torch.zeros(1)})
    assert "1 key is unexpected: depth_model.decoder.extra_head.weight" in error_for_state(state)


def test_wrong_shape_is_named_with_both_shapes(official_state):
    state = dict(official_state)
    state["depth_model.decoder.depth_regressor.2.weight"] = torch.zeros(128, 256, 1, 1)
    message = error_for_state(state)
    assert "depth_model.decoder.depth_regressor.2.weight [128, 256, 1, 1] (expected [256, 256, 1, 1])" in message
    assert "different model size" not in message


def vit_large_shaped(shape: list[int]) -> torch.Tensor:
    """A ViT-L-shaped tensor backed by one element, so the fake checkpoint file stays small."""
    return torch.zeros(()).expand([1024 if d == 384 else 4096 if d == 1536 else 3072 if d == 1152 else d
                                   for d in shape])


def test_vit_large_checkpoint_is_called_a_different_model_size(official_state, tmp_path):
    state = {name: vit_large_shaped(list(t.shape)) if name.startswith("depth_model.encoder.") else t
             for name, t in official_state.items()}
    for i in range(12, 24):  # ViT-L has 24 blocks
        state[f"depth_model.encoder.blocks.0.{i}.norm1.weight"] = vit_large_shaped([384])
    message = error_for(save(tmp_path, {"model_state_dict": state}))
    assert "different model size: a ViT-L encoder (embed dim 1024)" in message
    assert ("175 keys have the wrong shape: depth_model.encoder.cls_token [1, 1, 1024] (expected [1, 1, 384])"
            in message)
    assert "12 keys are unexpected: depth_model.encoder.blocks.0.12.norm1.weight" in message


def test_aliased_pair_with_different_values(official_state):
    state = dict(official_state, **{ALIAS[1]: official_state[ALIAS[0]].clone() + 1})
    message = error_for_state(state)
    assert f"{ALIAS[0]} / {ALIAS[1]}" in message


def test_non_tensor_entries(tmp_path):
    message = error_for(save(tmp_path, {"model_state_dict": {"depth_model.encoder.cls_token": [1.0, 2.0]}}))
    assert "non-tensor entries: depth_model.encoder.cls_token" in message


def test_pickled_module_is_refused_by_the_safe_loader(tmp_path):
    message = error_for(save(tmp_path, torch.nn.Linear(2, 2), "whole_model.pth"))
    assert "whole_model.pth holds pickled Python objects besides tensors" in message


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.touch()
    assert "empty.pth is not a PyTorch checkpoint (the file is empty)" in error_for(path)
