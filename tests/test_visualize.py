"""Overlays and plots."""

import numpy as np
import pytest
import torch
from PIL import Image

from ad_fast import visualize


def test_overlay_blend_and_contours():
    image = torch.full((3, 12, 14), 0.5)
    amap = torch.zeros(1, 12, 14)
    amap[0, 3:8, 4:9] = 1.0
    plain = visualize.overlay(image, amap, alpha=0.0)
    assert plain.shape == (12, 14, 3) and plain.dtype == np.uint8 and np.all(plain == 128)
    mask = (amap[0] > 0.5).numpy()
    gt = np.zeros_like(mask)
    gt[9:11, 1:3] = True  # 2x2: every pixel is on the boundary
    out = visualize.overlay(image, amap, pred_mask=mask, gt_mask=gt, alpha=0.0)
    assert np.all(out[gt] == visualize.GT_CONTOUR)
    ring = mask & ~np.pad(mask, 1)[2:, 1:-1] | mask & ~np.pad(mask, 1)[:-2, 1:-1] | \
        mask & ~np.pad(mask, 1)[1:-1, 2:] | mask & ~np.pad(mask, 1)[1:-1, :-2]
    assert np.all(out[ring] == visualize.PRED_CONTOUR)
    assert np.all(out[mask & ~ring] == 128)  # the interior is not drawn on
    hot = visualize.overlay(image, amap, alpha=1.0)
    assert not np.array_equal(hot[4, 5], hot[0, 0])
    with pytest.raises(ValueError, match="size"):
        visualize.overlay(image, torch.zeros(5, 5))


def test_files(tmp_path):
    rng = np.random.default_rng(0)
    images = [torch.rand(3, 16, 16) for _ in range(3)]
    maps = [rng.random((16, 16)) for _ in range(3)]
    grid = visualize.category_grid(tmp_path / "g" / "grid.png", images, maps, [m > 0.9 for m in maps],
                                   ["a", "b", "c"], threshold=0.8)
    plot = visualize.plot_roc_pr(tmp_path / "roc.png", rng.random(50), rng.random(50) < 0.4, "t")
    path = visualize.save_overlay(tmp_path / "o.png", images[0], maps[0])
    for p in (grid, plot, path):
        assert Image.open(p).size[0] > 0
    assert Image.open(path).size == (16, 16)
    assert sorted(q.name for q in tmp_path.rglob("*") if q.is_file()) == ["grid.png", "o.png", "roc.png"]


def test_annotated_overlay_has_caption_band_colour_bar_and_shared_scale(tmp_path):
    from matplotlib import colormaps

    image = torch.full((3, 40, 40), 0.5)
    low, high = torch.full((1, 40, 40), 0.2), torch.full((1, 40, 40), 0.4)
    paths = [visualize.save_overlay(tmp_path / f"{n}.png", image, m, vmin=0.0, vmax=1.0, alpha=1.0,
                                    text=visualize.caption(n, float(m.max()), n == "b"), footer="thr 0.5")
             for n, m in (("a", low), ("b", high))]
    a, b = (np.asarray(Image.open(p)) for p in paths)
    assert a.shape[0] == 40 + 3 * 12 and a.shape[1] > 40  # caption + footer bands, colour bar on the right
    # One shared scale: each map's colour is the colormap at its own value, not stretched to its own range.
    expected = (np.array(colormaps["jet"](0.2)[:3]) * 255).round()
    assert np.abs(a[12 + 20, 20].astype(float) - expected).max() <= 1
    assert not np.array_equal(a[12 + 20, 20], b[12 + 20, 20])
    top = (np.array(colormaps["jet"](1.0)[:3]) * 255).round()
    assert np.abs(a[12, 42].astype(float) - top).max() <= 1  # colour bar: the top is the scale's maximum
    assert visualize.caption("scratch_003", 0.834, True) == "scratch_003  0.83 NG"
    assert visualize.caption("good_000", 0.1, None) == "good_000  0.10"
