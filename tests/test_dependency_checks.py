"""Import-time checks on what ad_fast runs with: the torch its kernels were built against, and timm's behaviour."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from ad_fast import _extension
from ad_fast._timm_compat import check_stem_activation, import_timm


def _record(torch_version: str, cuda_version: str | None = None) -> types.SimpleNamespace:
    return types.SimpleNamespace(TORCH_VERSION=torch_version, CUDA_VERSION=cuda_version)


def test_build_torch_mismatch_raises_naming_both_versions(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    with pytest.raises(ImportError, match=r"built against torch 2\.12\.1.*torch 2\.13\.0\+cpu is running.*torch==2\.12\.1"):
        _extension.check_build_torch(_record("2.12.1+cpu"))


def test_build_torch_same_release_with_other_local_label_passes(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.13.0")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    _extension.check_build_torch(_record("2.13.0+cpu"))
    _extension.check_build_torch(_record("2.13.0+cu128", "12.8"))
    _extension.check_build_torch(None)  # no record (a checkout without a build): nothing to check


def test_cuda_build_on_torch_without_cuda_raises(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(ImportError, match=r"CUDA 12\.8 kernels.*has no CUDA"):
        _extension.check_build_torch(_record("2.13.0+cu128", "12.8"))


class _OldTimmStem(nn.Module):
    """timm < 0.9's EfficientNet stem: plain BatchNorm2d, the activation in a separate act1."""

    def __init__(self):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 8, 3)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.SiLU()


class _BatchNormAct(nn.BatchNorm2d):
    def __init__(self, channels: int, act: nn.Module):
        super().__init__(channels)
        self.act = act


def test_stem_check_raises_when_bn1_has_no_activation():
    with pytest.raises(ImportError, match=r"timm >= 0\.9 is needed.*old_stem's bn1 \(BatchNorm2d\) applies no activation"):
        check_stem_activation(_OldTimmStem(), "old_stem")
    stem = _OldTimmStem()
    stem.bn1 = _BatchNormAct(8, nn.Identity())  # BatchNormAct2d without an activation is no better
    with pytest.raises(ImportError, match="applies no activation"):
        check_stem_activation(stem, "identity_stem")


def test_stem_check_passes_for_bn1_with_activation_and_installed_timm():
    stem = _OldTimmStem()
    stem.bn1 = _BatchNormAct(8, nn.SiLU())
    check_stem_activation(stem, "new_stem")
    check_stem_activation(import_timm().create_model("efficientnet_lite0", pretrained=False), "efficientnet_lite0")


def test_import_timm_refuses_a_release_below_the_floor(monkeypatch):
    timm = import_timm()
    monkeypatch.setattr(timm, "__version__", "0.4.12")
    with pytest.raises(ImportError, match=r"timm >= 0\.9 is needed.*found timm 0\.4\.12"):
        import_timm()
