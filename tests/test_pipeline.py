"""pipeline.run on the stand-in model: scaling, geometry and files agree with each other."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from backend.engine import EngineError, EngineInfo, Inference
from backend.host_engine import HostEngine
from backend.imageio import load_image
from backend.intrinsics import Intrinsics, IntrinsicsError, crop_resize_for
from backend.outputs import OutputStore
from backend.pipeline import PipelineOptions, measure, run
from backend.preprocess import crop_and_resize
from testing import REPO
from testing.clouds import read_cloud

MOTORCYCLE = REPO / "examples" / "motorcycle.png"


@pytest.fixture(scope="module")
def motorcycle():
    doc = json.loads(MOTORCYCLE.with_suffix(".json").read_text())
    return load_image(MOTORCYCLE), Intrinsics(doc["fx"], doc["fy"], doc["cx"], doc["cy"])


@pytest.fixture
def store(tmp_path):
    s = OutputStore(root=tmp_path)
    yield s
    s.cleanup()


def test_metric_scale_and_crop(stand_in_engine, motorcycle, store):
    image, intr = motorcycle
    result = run(image, intr, stand_in_engine, store=store, source="Middlebury")
    side = min(image.width, image.height)  # 500: centre crop of the 741 x 500 photo
    expected_rgb = crop_and_resize(image.rgb, crop_resize_for(image.width, image.height, 448))
    np.testing.assert_array_equal(result.network_rgb, expected_rgb)
    canonical = stand_in_engine.infer(expected_rgb).depth
    np.testing.assert_allclose(result.depth, canonical * (intr.fx * 448 / side / 1000.0), rtol=1e-6)
    assert result.network_intrinsics.fx == pytest.approx(intr.fx * 448 / side)
    assert result.intrinsics_source == "Middlebury" and result.engine.engine == "Host LiteRT"
    assert {"crop_resize", "normalize", "compute", "metric_scale", "colormap", "point_cloud",
            "write_ply", "write_depth"} <= set(result.timings_ms)
    info = json.loads(json.dumps(result.info()))  # JSON-ready
    assert info["intrinsics"]["network"]["fx"] == pytest.approx(intr.fx * 448 / side, abs=1e-3)
    assert info["depth_m"]["median"] == pytest.approx(float(np.median(result.depth)), rel=1e-3)


def test_point_cloud_lies_on_the_depth_map(stand_in_engine, motorcycle, store):
    """Every PLY point projects back onto a pixel whose metric depth is the point's z."""
    image, intr = motorcycle
    result = run(image, intr, stand_in_engine, store=store)
    xyz, rgb = read_cloud(result.files.ply)
    assert len(xyz) == result.points > 0.5 * 448 * 448
    k = result.network_intrinsics
    u = np.rint(xyz[:, 0] / xyz[:, 2] * k.fx + k.cx).astype(int)
    v = np.rint(xyz[:, 1] / xyz[:, 2] * k.fy + k.cy).astype(int)
    assert u.min() >= 0 and v.min() >= 0 and u.max() < 448 and v.max() < 448
    np.testing.assert_allclose(xyz[:, 2], result.depth[v, u], rtol=1e-6)
    np.testing.assert_array_equal(rgb, result.network_rgb[v, u])

    view_xyz, _ = read_cloud(result.files.view_ply)
    np.testing.assert_array_equal(view_xyz, xyz * np.array([-1, -1, 1], np.float32))
    np.testing.assert_array_equal(np.load(result.files.depth_npy), result.depth)
    mm = np.asarray(Image.open(result.files.depth_png))
    assert mm.dtype == np.uint16
    np.testing.assert_array_equal(mm, np.clip(np.rint(result.depth * 1000), 0, 65535).astype(np.uint16))


def test_filters_and_colormap_options(stand_in_engine, motorcycle):
    image, intr = motorcycle
    full = run(image, intr, stand_in_engine)
    lo, hi = np.percentile(full.depth, [25, 75])
    from backend.geometry import CloudFilter
    narrow = run(image, intr, stand_in_engine, PipelineOptions(colormap="gray", color_range=(float(lo), float(hi)),
                                                      cloud=CloudFilter(min_depth=lo, max_depth=hi, edge_threshold=0)))
    inside = int(((full.depth >= lo) & (full.depth <= hi)).sum())
    assert narrow.points == inside < full.points
    assert narrow.color_range == (pytest.approx(lo), pytest.approx(hi))
    assert (narrow.colored[..., 0] == narrow.colored[..., 2]).all()  # gray map
    assert narrow.files is None  # no store, no files


def test_measure_matches_hand_back_projection(stand_in_engine, motorcycle):
    image, intr = motorcycle
    result = run(image, intr, stand_in_engine)
    k, d = result.network_intrinsics, result.depth
    (u1, v1), (u2, v2) = (40, 60), (400, 300)
    p1 = np.array([(u1 - k.cx) / k.fx * d[v1, u1], (v1 - k.cy) / k.fy * d[v1, u1], d[v1, u1]])
    p2 = np.array([(u2 - k.cx) / k.fx * d[v2, u2], (v2 - k.cy) / k.fy * d[v2, u2], d[v2, u2]])
    assert measure(d, k, (u1, v1), (u2, v2)) == pytest.approx(float(np.linalg.norm(p1 - p2)), rel=1e-5)


def test_bad_intrinsics_are_refused_before_inference(stand_in_engine, motorcycle):
    image, _ = motorcycle
    with pytest.raises(IntrinsicsError, match="cx"):
        run(image, Intrinsics(995.0, 995.0, 5000.0, 250.0), stand_in_engine)


class _NaNEngine:
    """Stands in for a phone GPU whose fp16 reduction overflowed (cannot happen on this CPU)."""

    def __init__(self, real: HostEngine) -> None:
        self._real = real
        self.input_size = real.input_size

    def info(self) -> EngineInfo:
        return self._real.info()

    def infer(self, rgb: np.ndarray) -> Inference:
        depth = self._real.infer(rgb).depth.copy()
        depth[:10] = np.nan
        return Inference(depth, {"compute": 1.0})

    def close(self) -> None:
        pass


def test_non_finite_depth_is_reported(stand_in_engine, motorcycle):
    image, intr = motorcycle
    with pytest.raises(EngineError, match="4480 non-finite depth values.*precision fp32"):
        run(image, intr, _NaNEngine(stand_in_engine))
