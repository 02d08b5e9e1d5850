"""ReDi end to end at 256 px: inference latency (kernels vs the reference path) and the time of one training
step per stage; plus the self-correlation loss L_S, Gram-free fast path vs the naive hw×hw formula.

The model is the paper's configuration (WideResNet-50, HIP width 64) with random weights; timing does not
depend on the weights. Under AD_FAST_BENCH_FAST=1 a tiny configuration at 32 px is used instead.
"""

from __future__ import annotations

import pytest
import torch

from ad_fast import ReDi
from ad_fast.models.redi.losses import self_correlation_loss, self_correlation_loss_naive
from ad_fast.ops import use_backend
from bench_utils import FAST, peak_extra_mib, pick, synchronized

SIZE = pick(256, 32)
OPTIONS = dict(img_size=32, backbone="resnet18", hip_width=8, student_width_factor=1) if FAST else dict(img_size=256)
BANK = pick(16, 3)
# Training batch per device: the paper's 32 on a GPU; 2 keeps the shared CPU run short.
TRAIN_BATCH = {"cpu": pick(2, 2), "cuda": pick(32, 2)}
# L_S shapes: WideResNet-50 layers 1-3 at 256 px.
LS_SHAPES = pick([(256, 64, 64), (512, 32, 32), (1024, 16, 16)], [(16, 8, 8), (32, 4, 4)])
LS_BATCH = {"cpu": pick(2, 1), "cuda": pick(8, 1)}

_models: dict[str, ReDi] = {}


def _model(device: str) -> ReDi:
    if device not in _models:
        model = ReDi(**OPTIONS).to(device)
        model.set_prompt_bank(torch.rand(BANK, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)))
        _models[device] = model.eval()
    return _models[device]


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("backend", ["kernel", "reference"])
def test_redi_inference(benchmark, device, backend, batch):
    if device == "cpu" and batch > 1:
        pytest.skip("batch 8 at 256 px is too slow for the shared CPU machine")
    model = _model(device)
    x = torch.rand(batch, 3, SIZE, SIZE, device=device)

    def run():
        with use_backend(backend), torch.inference_mode():
            return model(x)

    fn = synchronized(run, device)
    benchmark.group = f"redi inference {SIZE}px b{batch} {device}"
    benchmark.extra_info["peak_extra_MiB"] = round(peak_extra_mib(fn, device), 1)
    out = benchmark(fn)
    assert out["anomaly_map"].shape == (batch, 1, SIZE, SIZE)


@pytest.mark.parametrize("stage", [1, 2])
def test_redi_train_step(benchmark, device, stage):
    model = _model(device)
    batch = TRAIN_BATCH[device]
    x = torch.rand(batch, 3, SIZE, SIZE, device=device)
    index = torch.arange(batch) % BANK
    with torch.no_grad():
        h_map = model.generate_map(x)
    module, loss_fn = (model.recover, model.recovery_loss) if stage == 1 else (model.student, model.discrimination_loss)
    model.recover.train(stage == 1)
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-6)

    def step():
        loss = loss_fn(x, h_map, index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    fn = synchronized(step, device)
    benchmark.group = f"redi train step stage {stage} {SIZE}px b{batch} {device}"
    benchmark.extra_info["peak_extra_MiB"] = round(peak_extra_mib(fn, device), 1)
    loss = benchmark.pedantic(fn, rounds=pick(3, 1), warmup_rounds=0)
    model.eval()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("impl", ["fast", "naive"])
def test_self_correlation_loss(benchmark, device, impl):
    batch = LS_BATCH[device]
    g = torch.Generator().manual_seed(1)
    fx = [torch.randn(batch, *s, generator=g).to(device) for s in LS_SHAPES]
    fy = [(f + 0.01 * torch.randn_like(f)).requires_grad_() for f in fx]
    loss_fn = self_correlation_loss if impl == "fast" else self_correlation_loss_naive

    def run():
        loss = loss_fn(fx, fy)
        loss.backward()
        return loss

    fn = synchronized(run, device)
    benchmark.group = f"redi L_S fwd+bwd b{batch} WRN50 levels {device}"
    benchmark.extra_info["peak_extra_MiB"] = round(peak_extra_mib(fn, device), 1)
    assert torch.isfinite(benchmark(fn))
