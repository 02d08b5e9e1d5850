"""MetaUAS end to end: latency/throughput at 256 and 512, batch 1 and 16, soft-align kernel vs reference path,
with the prompt encoded per call (the release's forward) or cached (one fixed prompt, ``PromptEncoding``).

Paper (Tab. 2): 3.1 ms/image at 256 and 12.0 ms/image at 512 on a V100, batch 32. ``extra_info`` records
ms/image and images/s.
"""

from __future__ import annotations

import pytest
import torch

from ad_fast import MetaUAS, ops
from bench_utils import pick, synchronized

CASES = pick([(256, 1), (256, 16), (256, 32), (512, 1), (512, 16), (512, 32)], [(64, 1)])
GPU_ONLY_BATCH = 32  # the paper's V100 setting; too slow to be useful on a 2-core CPU
_MODELS: dict[tuple[int, str], MetaUAS] = {}


def _model(size: int, device: str) -> MetaUAS:
    if (size, device) not in _MODELS:
        torch.manual_seed(0)
        _MODELS[(size, device)] = MetaUAS(img_size=size).to(device).eval()
    return _MODELS[(size, device)]


@pytest.mark.parametrize("size,batch", CASES, ids=[f"S{s}_b{b}" for s, b in CASES])
@pytest.mark.parametrize("prompt_mode", ["pair", "cached"])
@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_metauas_end_to_end(benchmark, device, size, batch, prompt_mode, impl):
    if device == "cpu" and batch >= GPU_ONLY_BATCH:
        pytest.skip("batch 32 is benchmarked on CUDA only")
    model = _model(size, device)
    query = torch.rand(batch, 3, size, size, device=device)
    prompt = torch.rand(1, 3, size, size, device=device)
    with torch.inference_mode():
        prompt_input = model.encode_prompt(prompt) if prompt_mode == "cached" else prompt

    def run() -> torch.Tensor:
        with ops.use_backend("reference" if impl == "reference" else "auto"), torch.inference_mode():
            return model(query, prompt_input)

    fn = synchronized(run, device)
    benchmark.group = f"metauas S={size} batch={batch} {device}"
    result = benchmark.pedantic(fn, rounds=pick(5, 1), iterations=1, warmup_rounds=pick(1, 0))
    assert result.shape == (batch, 1, size, size)
    if benchmark.stats is not None:
        median = benchmark.stats.stats.median
        benchmark.extra_info["ms_per_image"] = round(1000 * median / batch, 2)
        benchmark.extra_info["images_per_s"] = round(batch / median, 1)
