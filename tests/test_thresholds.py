"""Threshold rules and calibration on data whose answer is known."""

import numpy as np
import pytest
import torch

from ad_fast.calibration import calibrate, fit_and_calibrate, split_normals
from ad_fast.results import AnomalyResult
from ad_fast.thresholds import f1_threshold, learn_decision, quantile_threshold, shift_threshold


def test_quantile_of_a_known_distribution():
    # 0, 1, ..., 1000: the q-quantile with linear interpolation is exactly 1000 q.
    values = np.arange(1001, dtype=np.float64)
    assert quantile_threshold(values, 0.99) == pytest.approx(990.0, abs=1e-9)
    # Uniform(0, 1) samples: the 0.9 quantile is 0.9 within the sampling error (n = 200k: sd ~ 7e-4).
    rng = np.random.default_rng(0)
    assert quantile_threshold(rng.uniform(size=200_000), 0.9) == pytest.approx(0.9, abs=5e-3)


def test_f1_threshold_splits_separable_sets_in_the_middle_of_the_gap():
    assert f1_threshold([1.0, 2.0, 3.0], [5.0, 6.0]) == 4.0
    # Overlap: {1, 2, 4} normal, {3, 5, 6} anomalous. t = 3 gives TP 3, FP 1 (F1 6/7), t = 5 TP 2, FP 0 (F1 0.8):
    # the best is at 3, the largest value below it is 2, so the midpoint 2.5.
    assert f1_threshold([1.0, 2.0, 4.0], [3.0, 5.0, 6.0]) == 2.5


def test_sensitivity_moves_the_threshold_along_the_normal_spread():
    normal = [0.0, 1.0, 2.0, 3.0, 4.0]  # median 2
    assert shift_threshold(4.0, normal, 0.5) == 4.0
    assert shift_threshold(4.0, normal, 1.0) == 2.0
    assert shift_threshold(4.0, normal, 0.0) == 6.0
    assert shift_threshold(4.0, normal, 0.75) == 3.0
    with pytest.raises(ValueError, match="sensitivity"):
        shift_threshold(4.0, normal, 1.5)


def test_learn_decision_normals_only_quantiles_and_symmetric_range():
    scores = torch.arange(101, dtype=torch.float32)  # 0..100: 0.99-quantile 99
    maps = torch.arange(10_000, dtype=torch.float32).reshape(4, 1, 50, 50) / 10_000  # 0.999-quantile 0.9989001
    decision = learn_decision(scores, maps)
    assert decision.source == "normal-quantile"
    assert decision.image_threshold == pytest.approx(99.0)
    assert decision.pixel_threshold == pytest.approx(0.9989001, rel=1e-6)  # position 0.999 * 9999 = 9989.001
    # Range symmetric around the threshold and covering every value: [99 - 99, 99 + 99].
    assert (decision.image_low, decision.image_high) == pytest.approx((0.0, 198.0))
    normalised = decision.normalise_score(scores)
    assert normalised.min() >= 0.0 and normalised.max() <= 0.5 + 1 / 198 + 1e-6
    assert float(decision.normalise_score(torch.tensor([99.0]))) == 0.5


def test_learn_decision_with_labelled_anomalies_uses_f1():
    normal_maps = torch.zeros(2, 1, 4, 4)
    normal_maps[:, :, 0, 0] = 1.0  # normal pixels: 0 and 1
    anomalous_maps = torch.zeros(1, 1, 4, 4)
    anomalous_maps[0, 0, 2:, 2:] = 3.0
    masks = anomalous_maps > 0
    decision = learn_decision(torch.tensor([1.0, 2.0]), normal_maps, torch.tensor([5.0, 7.0]), anomalous_maps, masks)
    assert decision.source == "f1-labelled"
    assert decision.image_threshold == 3.5  # midpoint of the gap (2, 5)
    assert decision.pixel_threshold == 2.0  # midpoint of the gap (1, 3)
    result = decision.apply(AnomalyResult(anomalous_maps, torch.tensor([6.0])))
    assert result.pred_label.tolist() == [True] and torch.equal(result.pred_mask, masks)


def test_learn_decision_rejects_bad_input():
    with pytest.raises(ValueError, match="normal_scores"):
        learn_decision([], torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="anomalous_masks"):
        learn_decision([1.0], torch.zeros(1, 1, 2, 2), anomalous_maps=torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="NaN"):
        learn_decision([float("nan")], torch.zeros(1, 1, 2, 2))
    flat = learn_decision([2.0, 2.0], torch.ones(2, 1, 2, 2))  # all equal: a small non-empty range
    assert flat.image_high > flat.image_low and flat.image_threshold == 2.0


class Brightness:
    """Map = pixel brightness; score = its max. fit records how many images it saw."""

    decision = None

    def fit(self, images):
        self.fitted_on = len(images)
        return self

    def predict(self, images):
        batch = torch.stack(list(images)) if isinstance(images, list) else images
        amap = batch.mean(1, keepdim=True)
        return AnomalyResult(amap, amap.flatten(1).amax(1))


def test_split_normals_is_deterministic_and_disjoint():
    images = torch.rand(10, 3, 4, 4)
    fit_a, held_a = split_normals(images, 0.2)
    fit_b, held_b = split_normals(images, 0.2)
    assert len(fit_a) == 8 and len(held_a) == 2 and torch.equal(torch.stack(held_a), torch.stack(held_b))
    assert not any(torch.equal(h, f) for h in held_a for f in fit_a)
    fit_one, held_one = split_normals(images[:1])
    assert len(fit_one) == 1 and held_one == []  # nothing held out from a single image
    by_class = split_normals({"a": list(images[:5]), "b": list(images[5:])}, 0.2)
    assert [len(v) for v in by_class[0].values()] == [4, 4] and len(by_class[1]) == 2
    with pytest.raises(ValueError, match="holdout"):
        split_normals(images, 1.0)


def test_fit_and_calibrate_holds_out_and_decides():
    images = torch.full((10, 3, 8, 8), 0.2) + torch.linspace(0, 0.1, 10).view(10, 1, 1, 1)
    model = fit_and_calibrate(Brightness(), images, anomalous=None)
    assert model.fitted_on == 8 and model.decision.source == "normal-quantile"
    bright = torch.full((1, 3, 8, 8), 0.9)
    decided = model.decision.apply(model.predict(torch.cat([images[:1], bright])))
    assert decided.pred_label.tolist() == [False, True]


def test_calibrate_with_synthetic_anomalies():
    torch.manual_seed(0)
    normal = torch.full((4, 3, 32, 32), 0.5)
    decision = calibrate(Brightness(), normal, anomalous="synthetic")
    assert decision.source == "f1-synthetic"
    assert decision.image_threshold > 0.5  # normal maps are 0.5 everywhere; pasted textures differ


def _decision_oracle(normal_scores, normal_maps, anomalous_scores=None, anomalous_maps=None, anomalous_masks=None,
                     sensitivity=0.5, image_quantile=0.99, pixel_quantile=0.999):
    """learn_decision's rules spelled out on float64 copies with the public step functions (the former code)."""
    def values(x):
        if x is None:
            return np.empty(0)
        parts = x if isinstance(x, list) else [x]
        return np.concatenate([np.asarray(torch.as_tensor(p).double()).reshape(-1) for p in parts])

    def level(neg, pos, quantile):
        base = f1_threshold(neg, pos) if pos.size else quantile_threshold(neg, quantile)
        t = shift_threshold(base, neg, sensitivity)
        width = max((float(np.abs(v - t).max()) for v in (neg, pos) if v.size), default=0.0)
        return t, width if width > 0 else max(abs(t), 1.0) * 1e-3

    normal_p, pos, neg = values(normal_maps), np.empty(0), None
    if anomalous_maps is not None:
        maps, masks = values(anomalous_maps), values(anomalous_masks) > 0.5
        pos, neg = maps[masks], np.concatenate([normal_p, maps[~masks]])
    image = level(values(normal_scores), values(anomalous_scores), image_quantile)
    pixel = level(normal_p if neg is None else neg, pos, pixel_quantile)
    return image[0], image[0] - image[1], image[0] + image[1], pixel[0], pixel[0] - pixel[1], pixel[0] + pixel[1]


@pytest.mark.parametrize("seed", range(8))
def test_learn_decision_matches_the_float64_rules_exactly(seed):
    """The sorted-float32 path gives the very same floats as the float64 rules, ties and odd sizes included."""
    rng = np.random.default_rng(seed)
    levels = [None, 7, 300][seed % 3]  # quantised values: many ties between and within normals and anomalies

    def draw(*shape, scale=1.0):
        x = rng.random(shape) * scale
        return (np.round(x * levels) / levels if levels else x).astype(np.float32)

    n, m = int(rng.integers(1, 6)), int(rng.integers(1, 5))
    normal_scores, anomalous_scores = draw(n), draw(m, scale=1.5)
    normal_maps = [draw(int(rng.integers(1, 40)), int(rng.integers(1, 40))) for _ in range(n)]
    anomalous_maps = draw(m, 1, 17, 23, scale=1.3)
    masks = (rng.random(anomalous_maps.shape) < [0.0, 0.05, 0.3, 1.0][seed % 4]).astype(np.float32)
    sensitivity = float(rng.uniform(0, 1))
    for args in [(normal_scores, normal_maps), (normal_scores, normal_maps, anomalous_scores),
                 (normal_scores, normal_maps, anomalous_scores, anomalous_maps, masks),
                 (normal_scores, normal_maps, None, torch.from_numpy(anomalous_maps).double(), torch.from_numpy(masks)),
                 (torch.from_numpy(normal_scores), torch.from_numpy(normal_maps[0]).half())]:
        got = learn_decision(*args, sensitivity=sensitivity)
        expected = _decision_oracle(*args, sensitivity=sensitivity)
        assert (got.image_threshold, got.image_low, got.image_high, got.pixel_threshold, got.pixel_low,
                got.pixel_high) == expected
