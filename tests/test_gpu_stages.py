"""The per-stage cut used by `python -m conversion.gpu_stages` is the export form's forward, and
its error metrics are right on hand-made cases."""
from __future__ import annotations

import numpy as np
import torch

from conversion import gpu_stages


def test_stage_chain_is_the_export_forward_and_matches_golden(golden_dir):
    from conversion.export import ExportMetric3D

    model = ExportMetric3D(gpu_stages.load_golden_model(golden_dir))
    image = torch.from_numpy(np.load(golden_dir / "input_nchw_f32.npy"))
    stages = gpu_stages.build_stages(model)
    assert [s.name for s in stages][:2] == ["embed", "block_0"] and stages[-1].name == "convex_upsample"
    produced = {o for s in stages for o in s.outputs}
    assert all(i in produced or i == "image" for s in stages for i in s.inputs)
    values = gpu_stages.run_chain(stages, {"image": image})
    with torch.no_grad():
        torch.testing.assert_close(values["depth"], model(image)["depth"], rtol=0, atol=0)
    golden = np.load(golden_dir / "depth_canonical_f32.npy")
    assert gpu_stages.depth_errors(values["depth"].numpy(), golden)["mean_rel"] <= 5e-6


def test_depth_errors_on_a_hand_made_case():
    ref = np.array([1.0, 2.0, 4.0, 8.0])
    got = np.array([1.1, 2.0, 4.0, 8.0])  # one pixel 10% off
    err = gpu_stages.depth_errors(got, ref)
    assert abs(err["max_rel"] - 0.1) < 1e-12
    assert abs(err["mean_rel"] - 0.025) < 1e-12


def test_state_errors_read_the_depth_channel_as_d_over_100():
    ref = np.zeros((1, 6, 2, 2), np.float32)
    ref[:, 0] = 0.5  # 50 m
    ref[:, 1:] = 1.0
    got = ref.copy()
    got[0, 0, 0, 0] = 0.55  # 55 m: 10% off at one of 4 pixels
    err = gpu_stages.tensor_errors("state_1", got, ref)
    assert abs(err["depth_max_rel"] - 0.1) < 1e-6 and abs(err["depth_mean_rel"] - 0.025) < 1e-6
    assert err["max_err_rms"] == 0.0
