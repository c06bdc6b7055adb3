"""pipeline.run / estimate + rerender on the stand-in model: scaling, framing, geometry and files agree."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from backend.engine import EngineError, EngineInfo, Inference
from backend.framing import CENTRE_SQUARE, FULL_PHOTO, framing_for
from backend.geometry import CloudFilter, GeometryError
from backend.host_engine import HostEngine
from backend.imageio import load_image
from backend.intrinsics import Intrinsics, IntrinsicsError
from backend.outputs import OutputStore
from backend.pipeline import PipelineOptions, estimate, measure, measure_photo, rerender, run
from backend.ply import read_ply
from backend.preprocess import frame_photo
from tests._app_helpers import REPO

MOTORCYCLE = REPO / "examples" / "motorcycle.png"


@pytest.fixture
def engine(stand_in_engine: HostEngine) -> HostEngine:
    return stand_in_engine


@pytest.fixture(scope="module")
def motorcycle():
    doc = json.loads(MOTORCYCLE.with_suffix(".json").read_text())
    return load_image(MOTORCYCLE), Intrinsics(doc["fx"], doc["fy"], doc["cx"], doc["cy"])


@pytest.fixture
def store(tmp_path):
    s = OutputStore(root=tmp_path)
    yield s
    s.cleanup()


def test_metric_scale_centre_square(engine, motorcycle, store):
    image, intr = motorcycle
    result = run(image, intr, engine, PipelineOptions(field_of_view=CENTRE_SQUARE), store=store, source="Middlebury")
    side = min(image.width, image.height)  # 500: centre crop of the 741 x 500 photo
    expected_rgb = frame_photo(image.rgb, framing_for(image.width, image.height, 448, CENTRE_SQUARE))
    np.testing.assert_array_equal(result.network_rgb, expected_rgb)
    canonical = engine.infer(expected_rgb).depth
    np.testing.assert_allclose(result.depth, canonical * (intr.fx * 448 / side / 1000.0), rtol=1e-6)
    assert result.network_intrinsics.fx == pytest.approx(intr.fx * 448 / side)
    assert result.intrinsics_source == "Middlebury" and result.engine.engine == "Host LiteRT"
    assert {"crop_resize", "normalize", "compute", "upsample", "metric_scale", "colormap", "point_cloud",
            "write_ply", "write_depth"} <= set(result.timings_ms)
    info = json.loads(json.dumps(result.info()))  # JSON-ready
    assert info["intrinsics"]["network"]["fx"] == pytest.approx(intr.fx * 448 / side, abs=1e-3)
    assert info["depth_m"]["median"] == pytest.approx(float(np.median(result.depth)), rel=1e-3)
    assert info["image"]["field_of_view"] == "Centre square" and not info["rerendered"]
    # Downloads at the photo's resolution; the sides the square leaves out have no depth.
    grid = np.load(result.files.depth_npy)
    assert grid.shape == (500, 741)
    assert np.isnan(grid[:, :120]).all() and np.isnan(grid[:, 620:]).all() and np.isfinite(grid[:, 120:620]).all()
    png = np.asarray(Image.open(result.files.depth_png))
    assert (png[:, :120] == 0).all()
    with pytest.raises(GeometryError, match="outside the centre square"):
        measure_photo(result, (50, 200), (300, 200))


def test_full_photo_letterbox_and_downloads(engine, motorcycle, store):
    image, intr = motorcycle
    result = run(image, intr, engine, store=store)  # the default field of view: the whole photo
    framing = framing_for(741, 500, 448, FULL_PHOTO)
    assert result.framing == framing and framing.top == 73 and framing.content_height == 302
    expected_rgb = frame_photo(image.rgb, framing, (124, 116, 104))
    np.testing.assert_array_equal(result.network_rgb, expected_rgb)
    # Metric depth = canonical x fx448 / 1000 with fx448 = fx x 448 / 741; padding has none.
    canonical = engine.infer(expected_rgb).depth
    fx448 = intr.fx * 448 / 741
    rows = slice(73, 73 + 302)
    np.testing.assert_allclose(result.depth[rows], canonical[rows] * (fx448 / 1000.0), rtol=1e-6)
    assert np.isnan(result.depth[:73]).all() and np.isnan(result.depth[375:]).all()
    assert not result.valid[:73].any() and result.valid[rows].all()
    # Colormap: the content box only (302 rows) with its colorbar; padding black in `colored`.
    assert result.colormap.shape[0] == 302 and result.colormap.shape[1] > 448
    assert (result.colored[:73] == 0).all()
    # Statistics cover the photo's pixels only.
    assert result.stats["valid_fraction"] == 1.0
    assert result.stats["median"] == pytest.approx(float(np.median(result.depth[rows])), rel=1e-6)

    # Downloads: the photo's own 741 x 500 grid, every pixel with depth, and K for that grid.
    grid = np.load(result.files.depth_npy)
    assert grid.shape == (500, 741) and grid.dtype == np.float32 and np.isfinite(grid).all()
    np.testing.assert_array_equal(grid, result.grid_depth)
    doc = json.loads(result.files.intrinsics_json.read_text())
    assert (doc["width"], doc["height"]) == (741, 500)
    assert [doc[k] for k in ("fx", "fy", "cx", "cy")] == pytest.approx([intr.fx, intr.fy, intr.cx, intr.cy])
    assert doc["field_of_view"] == "Full photo" and doc["long_side_cap"] == 2048
    assert doc["downscaled_from_photo"] is False and "m (.npy), mm (.png)" in doc["units"].values()
    # The grid's depth at a photo pixel is the network's depth at the mapped network position:
    # photo (370, 250) -> network ((370.5) * 448 / 741 - 0.5, (250.5) * 302 / 500 - 0.5 + 73).
    x, y = framing.photo_to_network(370, 250)
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    wx, wy = x - x0, y - y0
    d = result.depth
    bilinear = ((1 - wy) * ((1 - wx) * d[y0, x0] + wx * d[y0, x0 + 1])
                + wy * ((1 - wx) * d[y0 + 1, x0] + wx * d[y0 + 1, x0 + 1]))
    assert grid[250, 370] == pytest.approx(bilinear, rel=1e-5)


def test_point_cloud_lies_on_the_depth_map(engine, motorcycle, store):
    """Every PLY point projects back onto a network pixel inside the photo whose metric depth is the point's z."""
    image, intr = motorcycle
    result = run(image, intr, engine, store=store)
    xyz, rgb = read_ply(result.files.ply)
    assert len(xyz) == result.points > 0.5 * 448 * 302
    k = result.network_intrinsics
    u = np.rint(xyz[:, 0] / xyz[:, 2] * k.fx + k.cx).astype(int)
    v = np.rint(xyz[:, 1] / xyz[:, 2] * k.fy + k.cy).astype(int)
    assert u.min() >= 0 and v.min() >= 73 and u.max() < 448 and v.max() < 73 + 302  # never the padding
    np.testing.assert_allclose(xyz[:, 2], result.depth[v, u], rtol=1e-6)
    np.testing.assert_array_equal(rgb, result.network_rgb[v, u])

    view_xyz, _ = read_ply(result.files.view_ply)
    np.testing.assert_array_equal(view_xyz, xyz * np.array([-1, -1, 1], np.float32))
    mm = np.asarray(Image.open(result.files.depth_png))
    assert mm.dtype == np.uint16 and mm.shape == (500, 741)
    np.testing.assert_array_equal(mm, np.rint(result.grid_depth.astype(np.float64) * 1000).astype(np.uint16))


def test_depths_beyond_the_png_range_are_written_as_no_depth(engine, motorcycle, store):
    image, intr = motorcycle
    est = estimate(image, engine)
    near = rerender(est, intr, store=store)
    # A longer focal scales every depth up: this one puts the median depth at 65.535 m.
    factor = 65.535 / float(np.median(near.grid_depth))
    far_intr = Intrinsics(intr.fx * factor, intr.fy * factor, intr.cx, intr.cy)
    far = rerender(est, far_intr, store=store)
    meters = np.load(far.files.depth_npy)
    beyond = np.rint(meters.astype(np.float64) * 1000) > 65535
    assert 0 < beyond.sum() < beyond.size and near.beyond_png_range == 0
    assert far.beyond_png_range == far.files.beyond_png_range == int(beyond.sum())
    mm = np.asarray(Image.open(far.files.depth_png))
    assert (mm[beyond] == 0).all() and (mm[~beyond] > 0).all() and mm.max() <= 65535
    assert far.info()["downloads"]["beyond_png_range_pixels"] == int(beyond.sum())
    assert json.loads(far.files.intrinsics_json.read_text())["beyond_png_range_pixels"] == int(beyond.sum())


def test_rerender_is_run_without_the_network(engine, motorcycle, store):
    """Same photo, new intrinsics / colormap / filters: rerender matches a fresh run exactly."""
    image, intr = motorcycle
    est = estimate(image, engine)
    new_intr = Intrinsics(intr.fx * 1.3, intr.fy * 1.3, intr.cx + 7.0, intr.cy - 5.0)
    options = PipelineOptions(colormap="magma", color_range=(2.0, 6.0),
                              cloud=CloudFilter(min_depth=1.0, max_depth=8.0, edge_threshold=0.03))
    again = rerender(est, new_intr, options, store=store)
    fresh = run(image, new_intr, engine, options, store=store)
    assert again.rerendered and not fresh.rerendered
    assert set(again.timings_ms) == {"metric_scale", "colormap", "point_cloud", "write_ply", "write_depth"}
    assert again.info()["rerender_ms"] == pytest.approx(again.render_ms, abs=0.01)
    np.testing.assert_array_equal(again.depth, fresh.depth)
    np.testing.assert_array_equal(again.colormap, fresh.colormap)
    np.testing.assert_array_equal(np.load(again.files.depth_npy), np.load(fresh.files.depth_npy))
    np.testing.assert_array_equal(read_ply(again.files.ply)[0], read_ply(fresh.files.ply)[0])
    assert again.network_intrinsics == fresh.network_intrinsics
    # Metric depth is linear in fx: x 1.3 everywhere.
    base = rerender(est, intr)
    np.testing.assert_allclose(again.depth[base.valid], base.depth[base.valid] * 1.3, rtol=1e-6)
    # The kept canonical depth cannot be changed by accident.
    with pytest.raises(ValueError):
        est.canonical[100, 100] = 1.0
    # Another field of view needs the network again.
    with pytest.raises(ValueError, match="Centre square.*network again"):
        rerender(est, intr, PipelineOptions(field_of_view=CENTRE_SQUARE))
    with pytest.raises(IntrinsicsError, match="cx"):
        rerender(est, Intrinsics(995.0, 995.0, 5000.0, 250.0))


def test_rerender_reuses_what_did_not_change(engine, motorcycle, store):
    image, intr = motorcycle
    est = estimate(image, engine)
    first = rerender(est, intr, store=store)
    # A colormap / colour-range change: no point cloud, no files, the same downloads.
    recoloured = rerender(est, intr, PipelineOptions(colormap="viridis", color_range=(1.0, 9.0)),
                          store=store, previous=first)
    assert set(recoloured.timings_ms) == {"metric_scale", "colormap"}
    assert recoloured.files == first.files and recoloured.points == first.points
    assert not np.array_equal(recoloured.colormap, first.colormap)
    # A filter change: a new cloud and PLY, the depth files stay.
    filtered = rerender(est, intr, PipelineOptions(cloud=CloudFilter(max_depth=8.0)), store=store, previous=first)
    assert "write_ply" in filtered.timings_ms and "write_depth" not in filtered.timings_ms
    assert filtered.files.ply != first.files.ply and filtered.files.depth_npy == first.files.depth_npy
    assert filtered.points < first.points
    assert read_ply(filtered.files.ply)[0][:, 2].max() <= 8.0
    # New intrinsics: everything again.
    moved = rerender(est, Intrinsics(intr.fx * 1.1, intr.fy * 1.1, intr.cx, intr.cy), store=store, previous=first)
    assert {"write_ply", "write_depth"} <= set(moved.timings_ms) and moved.files.depth_npy != first.files.depth_npy
    np.testing.assert_allclose(np.load(moved.files.depth_npy), np.load(first.files.depth_npy) * 1.1, rtol=1e-6)
    # A result of another Estimate, or files the store has dropped, are never reused.
    other = rerender(estimate(image, engine), intr, store=store, previous=first)
    assert other.files.depth_npy != first.files.depth_npy
    small = OutputStore(root=store.root, keep=1)
    kept = rerender(est, intr, store=small)
    rerender(est, intr, store=small)  # pushes `kept`'s folder out
    again = rerender(est, intr, PipelineOptions(colormap="gray"), store=small, previous=kept)
    assert again.files.depth_npy.exists() and again.files.ply.exists() and again.files.folder != kept.files.folder


def test_filters_and_colormap_options(engine, motorcycle):
    image, intr = motorcycle
    full = run(image, intr, engine)
    lo, hi = np.nanpercentile(full.depth, [25, 75])
    narrow = run(image, intr, engine, PipelineOptions(colormap="gray", color_range=(float(lo), float(hi)),
                                                      cloud=CloudFilter(min_depth=lo, max_depth=hi, edge_threshold=0)))
    inside = int(((full.depth >= lo) & (full.depth <= hi)).sum())
    assert narrow.points == inside < full.points
    assert narrow.color_range == (pytest.approx(lo), pytest.approx(hi))
    assert (narrow.colored[..., 0] == narrow.colored[..., 2]).all()  # gray map
    assert narrow.files is None  # no store, no files


def test_measure_matches_hand_back_projection(engine, motorcycle):
    image, intr = motorcycle
    result = run(image, intr, engine)
    k, d = result.network_intrinsics, result.depth
    (u1, v1), (u2, v2) = (40, 100), (400, 300)
    p1 = np.array([(u1 - k.cx) / k.fx * d[v1, u1], (v1 - k.cy) / k.fy * d[v1, u1], d[v1, u1]])
    p2 = np.array([(u2 - k.cx) / k.fx * d[v2, u2], (v2 - k.cy) / k.fy * d[v2, u2], d[v2, u2]])
    assert measure(d, k, (u1, v1), (u2, v2)) == pytest.approx(float(np.linalg.norm(p1 - p2)), rel=1e-5)


def test_measure_in_photo_pixels_uses_the_photo_intrinsics(engine, motorcycle):
    image, intr = motorcycle
    result = run(image, intr, engine)
    grid = result.grid_depth  # the photo's own grid here (741 x 500 is under the cap)
    (u1, v1), (u2, v2) = (10, 20), (700, 480)  # corners the centre square would never see
    p1 = np.array([(u1 - intr.cx) / intr.fx, (v1 - intr.cy) / intr.fy, 1.0]) * grid[v1, u1]
    p2 = np.array([(u2 - intr.cx) / intr.fx, (v2 - intr.cy) / intr.fy, 1.0]) * grid[v2, u2]
    a, b, meters = measure_photo(result, (u1 + 0.3, v1 - 0.2), (u2, v2))  # sub-pixel clicks round
    np.testing.assert_allclose(a, p1, rtol=1e-5)
    np.testing.assert_allclose(b, p2, rtol=1e-5)
    assert meters == pytest.approx(float(np.linalg.norm(p1 - p2)), rel=1e-5)
    with pytest.raises(GeometryError, match="outside the 741 x 500 photo"):
        measure_photo(result, (741, 10), (5, 5))


def test_bad_intrinsics_are_refused_before_inference(engine, motorcycle):
    image, _ = motorcycle
    with pytest.raises(IntrinsicsError, match="cx"):
        run(image, Intrinsics(995.0, 995.0, 5000.0, 250.0), engine)


class _NaNEngine:
    """Stands in for a phone GPU whose fp16 reduction overflowed (cannot happen on this CPU)."""

    def __init__(self, real: HostEngine) -> None:
        self._real = real
        self.input_size = real.input_size

    def info(self) -> EngineInfo:
        return self._real.info()

    def infer(self, rgb: np.ndarray) -> Inference:
        depth = self._real.infer(rgb).depth.copy()
        depth[:10] = np.nan  # 10 rows: padding in the letterbox, but the check covers all the output
        return Inference(depth, {"compute": 1.0})

    def close(self) -> None:
        pass


def test_non_finite_depth_is_reported(engine, motorcycle):
    image, intr = motorcycle
    with pytest.raises(EngineError, match="4480 non-finite depth values.*precision fp32"):
        run(image, intr, _NaNEngine(engine))
