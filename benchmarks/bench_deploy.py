"""Per-image CPU latency of every method exported to ONNX: ONNX Runtime and OpenVINO (ad_fast.deploy) vs PyTorch.

Workload, one 256 x 256 RGB image per call, decoding excluded (an array in memory), preprocessing included on
every path, each path on the same ``torch.get_num_threads()`` threads:

- DMAD memory_bank on efficientnet_lite0's real ImageNet weights (C = 1536), banks fitted on 16 procedural
  textures;
- MetaUAS (EfficientNet-B4 encoder), the prompt image passed with every call;
- OneNIP (EfficientNet-B4 + transformer, release defaults) with one stored prompt;
- ReDi (WideResNet-50, HOG input map) with a prompt bank of 4 images.

MetaUAS, OneNIP and ReDi use random weights: the latency does not depend on them (no hub is reachable here).
``AD_FAST_BENCH_FAST=1``: tiny configurations at 32-64 px. Every case first checks parity with PyTorch (maps
within 1e-4 after normalisation), so a fast but wrong export cannot report a time. OpenVINO is skipped where it is
not installed (``pip install 'ad_fast[openvino]'``).

Run: ``OMP_NUM_THREADS=2 python -m pytest benchmarks/bench_deploy.py --benchmark-only --benchmark-group-by=group``
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from ad_fast import DMAD, Decision, MetaUAS, OneNIP, ReDi
from ad_fast.synthesis import procedural_texture

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

FAST = os.environ.get("AD_FAST_BENCH_FAST") == "1"
SIZE = 64 if FAST else 256
ATOL = 1e-4


def _textures(count: int, size: int, seed: int) -> list[torch.Tensor]:
    return [procedural_texture(size, seed + i) for i in range(count)]


def _dmad():
    options = dict(backbone="test_resnet", weights="random", embed_dim=64) if FAST else \
        dict(backbone="efficientnet_lite0", embed_dim=1536)
    model = DMAD(mode="memory_bank", image_size=SIZE, progress=False, **options)
    return model.fit(torch.stack(_textures(4 if FAST else 16, SIZE, 0))), {}


def _metauas():
    return MetaUAS(img_size=SIZE), {"prompt": _array(procedural_texture(SIZE, 99))}


def _onenip():
    size = 32 if FAST else SIZE
    small = dict(hidden_dim=32, heads=2, ffn_dim=32, encoder_depth=1, decoder_depth=1) if FAST else {}
    model = OneNIP(img_size=size, **small)
    model.set_prompts(_textures(1, size, 50), ["texture"])
    model.calibrate_kappa(_textures(2, size, 60))
    return model, {}


def _redi():
    size = 32 if FAST else SIZE
    small = dict(backbone="resnet18", hip_width=8, student_width_factor=1) if FAST else {}
    model = ReDi(img_size=size, **small)
    model.set_prompt_bank(torch.stack(_textures(4, size, 70)))
    model.trained_stages = [1, 2]
    return model, {}


BUILDERS = {"dmad": _dmad, "metauas": _metauas, "onenip": _onenip, "redi": _redi}


def _array(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] float in [0, 1] -> [H, W, 3] uint8, as a decoded file."""
    return (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _decision_from(result) -> Decision:
    """Thresholds at the observed medians, so the exported graph's labels and masks are exercised."""
    scores = (result.pred_score if result.raw_score is None else result.raw_score).flatten()
    values = (result.anomaly_map if result.raw_map is None else result.raw_map).flatten()
    return Decision(image_threshold=float(scores.median()), pixel_threshold=float(values.median()),
                    image_low=float(scores.min()), image_high=float(scores.max()) + 1e-6,
                    pixel_low=float(values.min()), pixel_high=float(values.max()) + 1e-6, source="benchmark")


@pytest.fixture(scope="module", params=list(BUILDERS))
def exported(request, tmp_path_factory):
    torch.manual_seed(0)
    model, kwargs = BUILDERS[request.param]()
    model.eval()
    images = [_array(t) for t in _textures(3, SIZE, 200)]
    model.decision = _decision_from(model.predict(images, **kwargs))
    path = model.export(tmp_path_factory.mktemp("bench") / f"{request.param}.onnx")
    return request.param, model, kwargs, path, images[0]


@pytest.mark.parametrize("engine", ["pytorch", "onnxruntime", "openvino"])
def test_per_image_latency(benchmark, exported, engine):
    method, model, kwargs, path, image = exported
    benchmark.group = f"deploy: {method}, one {SIZE}px image, CPU"
    if engine == "pytorch":
        run = lambda: model.predict(image, **kwargs)  # noqa: E731
    else:
        if engine == "openvino":
            pytest.importorskip("openvino")
        from ad_fast.deploy import Inferencer

        inferencer = Inferencer(path, backend=engine, threads=torch.get_num_threads())
        run = lambda: inferencer.predict(image, **kwargs)  # noqa: E731
        expected = model.decision.apply(model.predict(image, **kwargs)).anomaly_map.numpy()
        np.testing.assert_allclose(run().anomaly_map, expected, rtol=0, atol=ATOL)
    with torch.inference_mode():
        benchmark(run)
