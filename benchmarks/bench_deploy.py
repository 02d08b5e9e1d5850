"""Per-image CPU latency of an exported model: ONNX Runtime and OpenVINO (ad_fast.deploy) vs PyTorch predict.

Workload: DMAD memory_bank on efficientnet_lite0's real ImageNet weights at 256 px (C = 1536), banks fitted on 16
procedural texture images, one 256 x 256 image per call, decoding excluded (an RGB array in memory), preprocessing
included on every path. ``AD_FAST_BENCH_FAST=1``: a random test_resnet at 64 px, C = 64. OpenVINO is skipped where
it is not installed (``pip install 'ad_fast[openvino]'``).

Run: ``OMP_NUM_THREADS=2 python -m pytest benchmarks/bench_deploy.py --benchmark-only --benchmark-group-by=group``
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from ad_fast import DMAD
from ad_fast.synthesis import procedural_texture

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

FAST = os.environ.get("AD_FAST_BENCH_FAST") == "1"
SIZE, DIM, TRAIN = (64, 64, 4) if FAST else (256, 1536, 16)
OPTIONS = (dict(backbone="test_resnet", weights="random") if FAST else dict(backbone="efficientnet_lite0"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = DMAD(mode="memory_bank", image_size=SIZE, embed_dim=DIM, progress=False, **OPTIONS)
    model.fit(torch.stack([procedural_texture(SIZE, i) for i in range(TRAIN)]))
    path = model.export(tmp_path_factory.mktemp("bench") / "dmad.onnx")
    image = (np.random.default_rng(0).random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
    return model, path, image


@pytest.mark.benchmark(group="deploy: DMAD memory_bank, one image, CPU")
@pytest.mark.parametrize("engine", ["pytorch", "onnxruntime", "openvino"])
def test_per_image_latency(benchmark, exported, engine):
    model, path, image = exported
    threads = torch.get_num_threads()
    if engine == "pytorch":
        run = lambda: model.predict(image)  # noqa: E731
    else:
        if engine == "openvino":
            pytest.importorskip("openvino")
        from ad_fast.deploy import Inferencer

        inferencer = Inferencer(path, backend=engine, threads=threads)
        run = lambda: inferencer.predict(image)  # noqa: E731
        np.testing.assert_allclose(run().anomaly_map, model.predict(image).anomaly_map.numpy(), rtol=0, atol=1e-4)
    with torch.inference_mode():
        benchmark(run)
