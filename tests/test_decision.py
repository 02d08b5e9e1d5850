"""Decision: the normalisation mapping and its storage."""

import pytest
import torch

from ad_fast.decision import Decision
from ad_fast.results import AnomalyResult


def make_decision(**overrides):
    values = dict(image_threshold=10.0, pixel_threshold=2.0, image_low=6.0, image_high=14.0,
                  pixel_low=0.0, pixel_high=4.0, source="normal-quantile")
    values.update(overrides)
    return Decision(**values)


def test_threshold_maps_to_half_and_range_is_clipped():
    decision = make_decision()
    raw = torch.tensor([6.0, 10.0, 14.0, -100.0, 100.0, 12.0])
    # (raw - 10) / 8 + 0.5, clipped: computed by hand.
    expected = torch.tensor([0.0, 0.5, 1.0, 0.0, 1.0, 0.75])
    torch.testing.assert_close(decision.normalise_score(raw), expected, rtol=0, atol=1e-7)


def test_apply_fills_labels_masks_and_keeps_raw_values():
    decision = make_decision()
    amap = torch.tensor([1.0, 2.0, 3.0, 1.999]).reshape(1, 1, 2, 2).repeat(2, 1, 1, 1)
    result = AnomalyResult(amap, torch.tensor([9.99, 10.0]))
    decided = decision.apply(result)
    assert decided.pred_label.tolist() == [False, True]
    assert decided.pred_mask[0, 0].tolist() == [[False, True], [True, False]]
    assert decided.raw_score is result.pred_score and decided.raw_map is result.anomaly_map
    assert result.pred_label is None  # the input is not modified
    # Applying twice normalises the raw values again, not the normalised ones.
    twice = decision.apply(decided)
    torch.testing.assert_close(twice.pred_score, decided.pred_score, rtol=0, atol=0)


def test_dict_round_trip_and_errors():
    decision = make_decision()
    assert Decision.from_dict(decision.to_dict()) == decision
    with pytest.raises(ValueError, match="unknown key"):
        Decision.from_dict({**decision.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="format_version"):
        Decision.from_dict({**decision.to_dict(), "format_version": 99})
    with pytest.raises(ValueError, match="image_high"):
        make_decision(image_high=6.0)
    with pytest.raises(ValueError, match="pixel_threshold"):
        make_decision(pixel_threshold=float("nan"))
