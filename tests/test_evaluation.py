"""The evaluation runner and the report tables, with a stand-in model."""

import csv
import io
import json

import numpy as np
import pytest
import torch

from ad_fast import metrics
from ad_fast.data import MVTecAD, make_demo_dataset
from ad_fast.evaluation import METRICS, evaluate
from ad_fast.results import AnomalyResult
from stand_in_model import MeanDistanceModel


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = make_demo_dataset(tmp_path_factory.mktemp("eval") / "demo", categories=("brick", "gravel"), n_train=3,
                             n_test_good=2, n_per_defect=1, size=32)
    return MVTecAD(root, "train", size=32), MVTecAD(root, "test", size=32)


def test_per_category_fit_and_metrics_match_direct_computation(demo):
    train, test = demo
    seen = {}
    report = evaluate(MeanDistanceModel(size=16), test, train, batch_size=3,
                      on_category=lambda name, p: seen.setdefault(name, p))
    assert [row["category"] for row in report.rows] == ["brick", "gravel"]
    for row in report.rows:
        predictions = seen[row["category"]]
        assert predictions.maps.shape == (5, 32, 32)  # 16-px maps resized to the dataset's 32 px
        assert row["I-AUROC"] == pytest.approx(metrics.auroc(predictions.raw_scores, predictions.labels))
        assert row["AUPRO"] == pytest.approx(metrics.aupro(predictions.maps, predictions.masks))
        assert row["images"] == 5 and row["anomalous"] == 3 and row["ms_per_image"] > 0
    mean = report.mean
    assert mean["P-AUROC"] == pytest.approx(np.mean([r["P-AUROC"] for r in report.rows]))


def test_unified_fits_once(demo):
    train, test = demo
    model = MeanDistanceModel(size=16)
    evaluate(model, test, train, unified=True)
    assert model.fit_calls == 1


def test_tables(demo):
    train, test = demo
    report = evaluate(MeanDistanceModel(size=16), test, train, normalize=True, pro_thresholds=50)
    lines = report.to_markdown().splitlines()
    assert lines[0] == "Threshold-free metrics (%):" and lines[2].startswith("| category | I-AUROC")
    assert lines[6].startswith("| mean |")
    assert "At the learned thresholds" in lines[8] and "held-out normal training images" in lines[8]
    assert lines[10].startswith("| category | threshold (raw image / pixel) | source | I-precision")
    assert lines[-1].startswith("| mean |") and len(lines) == 15
    rows = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert [r["category"] for r in rows] == ["brick", "gravel", "mean"]
    assert rows[0]["threshold_source"] == "f1-synthetic" and rows[0]["I-recall"] != ""
    data = json.loads(report.to_json())
    assert set(data) == {"config", "categories", "mean"} and set(METRICS) <= set(data["mean"])
    assert data["config"]["pro_thresholds"] == 50 and data["config"]["holdout"] == 0.2


def test_decision_metrics_at_the_learned_threshold(demo, tmp_path):
    train, test = demo
    seen = {}
    report = evaluate(MeanDistanceModel(size=16), test, train, pro=False,
                      on_category=lambda name, p: seen.setdefault(name, p))
    for row in report.rows:
        p = seen[row["category"]]
        # Independent of the normalisation: the raw score against the raw threshold.
        ng = p.raw_scores >= row["image_threshold"]
        assert np.array_equal(ng, p.pred_labels)
        tp, fp = int((ng & p.labels).sum()), int((ng & ~p.labels).sum())
        assert (row["I-TP"], row["I-FP"]) == (tp, fp) and row["I-TP"] + row["I-FN"] == 3
        assert row["I-FPR"] == fp / 2 and row["I-recall"] == tp / 3
        assert row["P-TP"] + row["P-FN"] == int(p.masks.sum())
        assert 0.0 <= p.scores.min() and p.scores.max() <= 1.0
    assert report.mean["I-TP"] == sum(row["I-TP"] for row in report.rows)
    paths = report.save(tmp_path)
    images = list(csv.DictReader(io.StringIO(paths["per_image"].read_text())))
    assert len(images) == 10 and set(images[0]) == {"category", "path", "defect", "label", "raw_score", "score",
                                                    "decision"}
    assert {r["decision"] for r in images} <= {"OK", "NG"}
    assert sum(r["decision"] == "NG" for r in images) == sum(row["I-TP"] + row["I-FP"] for row in report.rows)


def test_confusion_metrics_by_hand():
    m = metrics.confusion_metrics(np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1]))
    assert (m["TP"], m["FP"], m["TN"], m["FN"]) == (2, 1, 1, 1)
    assert m["precision"] == 2 / 3 and m["recall"] == 2 / 3 and m["FPR"] == 0.5 and m["accuracy"] == 0.6
    assert m["F1"] == 2 / 3
    assert metrics.confusion_metrics(np.zeros(3), np.zeros(3))["recall"] is None


class _Constant:
    def predict(self, images):
        return AnomalyResult(torch.zeros(len(images), 1, 8, 8), torch.zeros(len(images)))


class _Inverted(MeanDistanceModel):
    def _predict_batch(self, items):
        result = super()._predict_batch(items)
        return AnomalyResult(-result.anomaly_map, -result.pred_score)


def test_flip_rule(demo):
    train, test = demo
    plain = evaluate(_Inverted(size=16), test, train, pro=False)
    flipped = evaluate(_Inverted(size=16), test, train, pro=False, flip_auroc=True)
    for a, b in zip(plain.rows, flipped.rows):
        assert a["P-AUROC"] < 0.5 and b["P-AUROC"] == pytest.approx(1 - a["P-AUROC"])


def test_undefined_metrics_are_none(demo):
    _, test = demo
    report = evaluate(_Constant(), test.subset(label=0))
    assert all(row[k] is None for row in report.rows for k in METRICS)
    assert "-" in report.to_markdown() and "No learned threshold" in report.to_markdown()


def test_bad_model_output(demo):
    class Wrong:
        def predict(self, images):
            return torch.zeros(len(images))

    with pytest.raises(TypeError, match="AnomalyResult"):
        evaluate(Wrong(), demo[1])
    with pytest.raises(ValueError, match="categories"):
        evaluate(_Constant(), demo[1], categories=["carpet"])
