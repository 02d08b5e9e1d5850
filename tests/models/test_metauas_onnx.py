"""MetaUAS ONNX export: onnxruntime reproduces the PyTorch maps and scores on a dynamic batch; argument errors; CLI."""

from __future__ import annotations

import sys

import pytest
import torch

from ad_fast import MetaUAS
from ad_fast.cli import main

S = 64  # small side keeps the export and the runs fast; the architecture is size-independent
ATOL = 1e-4  # onnxruntime vs PyTorch float32 (the PyTorch side runs the compiled soft_align kernel)


def _spread_model(**options) -> MetaUAS:
    """A random MetaUAS whose decoder BatchNorm statistics come from random pairs, so that its maps spread over
    [0.1, 0.9] (default statistics give maps within 0.003 of 0.5, which would make the comparison vacuous)."""
    torch.manual_seed(0)
    m = MetaUAS(img_size=S, **options)
    for module in m.decoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    with torch.no_grad():
        m.train()(torch.rand(4, 3, S, S), torch.rand(4, 3, S, S))
    return m.eval()


@pytest.fixture(scope="module")
def model() -> MetaUAS:
    return _spread_model()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    pytest.importorskip("onnxscript")
    model.train()  # the export must still trace eval mode, and give training mode back
    path = model.export_onnx(tmp_path_factory.mktemp("onnx") / "metauas.onnx")
    assert model.training
    model.eval()
    return path


def _session(path):
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads would slow PyTorch
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _check_against_pytorch(model: MetaUAS, session, batch: int) -> float:
    g = torch.Generator().manual_seed(batch)
    query, prompt = torch.rand(batch, 3, S, S, generator=g), torch.rand(batch, 3, S, S, generator=g)
    expected = model.predict_pairs(query, prompt)
    outputs = session.run(None, {"query": query.numpy(), "prompt": prompt.numpy()})
    maps, scores = (torch.from_numpy(o) for o in outputs)
    assert maps.shape == (batch, 1, S, S) and scores.shape == (batch,)
    assert expected.anomaly_map.std() > 0.02  # the maps vary, so matching them means something
    torch.testing.assert_close(maps, expected.anomaly_map, rtol=0, atol=ATOL)
    torch.testing.assert_close(scores, expected.pred_score, rtol=0, atol=ATOL)
    return float((maps - expected.anomaly_map).abs().max())


def test_onnxruntime_matches_pytorch_on_a_dynamic_batch(model, exported):
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(exported)).graph
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*graph.input, *graph.output]}
    assert shapes == {"query": ["batch", 3, S, S], "prompt": ["batch", 3, S, S],
                      "anomaly_map": ["batch", 1, S, S], "pred_score": ["batch"]}
    assert not any(node.domain.startswith("ad_fast") for node in graph.node)  # reference math, no custom op
    session = _session(exported)
    errors = [_check_against_pytorch(model, session, batch) for batch in (1, 3)]  # traced at batch 2
    print(f"max abs error, batch 1 / 3: {errors[0]:.2e} / {errors[1]:.2e}")


@pytest.mark.slow
@pytest.mark.parametrize("alignment", ["hard", "none"])
def test_other_alignments_export_and_match_pytorch(alignment, tmp_path):
    pytest.importorskip("onnxscript")
    other = _spread_model(alignment=alignment)
    if alignment == "hard":
        # Random reductions with a bias leave the reduced features nearly parallel (best cosines 1 - 1e-7 apart at
        # the 2x2 level), so float rounding would pick the argmax; zero-mean reductions separate them by > 1e-4.
        torch.manual_seed(1)
        for level in other.alignment:
            torch.nn.init.normal_(level.reduction.weight)
            torch.nn.init.zeros_(level.reduction.bias)
    session = _session(other.export_onnx(tmp_path / f"{alignment}.onnx", batch_size=2))
    _check_against_pytorch(other, session, 2)


def test_bad_arguments_raise_errors_naming_them(model, tmp_path):
    cases = [({"path": tmp_path / "m.pt"}, ValueError, "path: expected a file name ending in .onnx"),
             ({"path": tmp_path / "dir.onnx"}, ValueError, "path: .* is a folder"),
             ({"path": 3}, TypeError, "path: expected a str or os.PathLike"),
             ({"img_size": 100}, ValueError, r"img_size: expected an int in \[32, 8192\] and a multiple of 32"),
             ({"img_size": "64"}, ValueError, "img_size"),
             ({"batch_size": 0}, ValueError, "batch_size: expected None"),
             ({"opset": 17}, ValueError, "opset: expected an int >= 18")]
    (tmp_path / "dir.onnx").mkdir()
    for overrides, error, match in cases:
        kwargs = {"path": tmp_path / "m.onnx", **overrides}
        with pytest.raises(error, match=match):
            model.export_onnx(kwargs.pop("path"), **kwargs)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("missing", ["onnx", "onnxscript"])
def test_missing_exporter_names_the_extra(model, tmp_path, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # import now raises ImportError
    with pytest.raises(ImportError, match=rf"'{missing}'.*pip install 'ad_fast\[onnx\]'"):
        model.export_onnx(tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_cli_rejects_models_without_export(tmp_path, capsys):
    import stand_in_model  # noqa: F401  (registers "mean_distance")

    assert main(["export", "--method", "mean_distance", "-o", str(tmp_path / "m.onnx")]) == 1
    assert "has no ONNX export" in capsys.readouterr().err
    assert main(["export", "--method", "metauas", "--batch-size", "0", "-o", str(tmp_path / "m.onnx")]) == 1
    assert "--batch-size: expected a positive int" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_exports_a_saved_model_with_a_fixed_batch(model, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    model.save(tmp_path / "metauas.safetensors")
    out = tmp_path / "out" / "metauas.onnx"
    assert main(["export", "--model", str(tmp_path / "metauas.safetensors"), "--batch-size", "2",
                 "-o", str(out)]) == 0
    assert f"(batch 2) -> {out}" in capsys.readouterr().out
    _check_against_pytorch(model, _session(out), 2)
