"""Corrupt-file cases of every loader: a valid file of each format is truncated, has bytes flipped, its safetensors
header length or JSON mangled, or is replaced by garbage; the loader must then load it (the damage missed what it
reads) or raise a clear error naming the file. Run by test_fuzz.py in a child process (a crash fails that test).
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ad_fast import checkpoints
from ad_fast.data.images import load_image, read_mask
from ad_fast.ops import MemoryBank
from harness import announce, assert_clear, outcome

WORK = Path(tempfile.mkdtemp(prefix="ad_fast_fuzz_loaders_"))
LOADER_ERRORS = (ValueError, FileNotFoundError, TypeError)  # a loader must not answer with a RuntimeError or worse


@functools.lru_cache(maxsize=None)
def seed_file(kind: str) -> bytes:
    """Bytes of one valid file of ``kind``."""
    path = WORK / f"seed_{kind}"
    generator = torch.Generator().manual_seed(0)
    if kind == "bank":
        MemoryBank(6).add(torch.randn(40, 6, generator=generator)).save(path)
    elif kind == "checkpoint.safetensors":
        path = path.with_suffix(".safetensors")
        checkpoints.write_safetensors(path, {"w": torch.randn(3, 4, generator=generator)}, {"method": "x"})
    elif kind == "checkpoint.pt":  # a research release's torch.save state dict
        path = path.with_suffix(".pt")
        torch.save({"state_dict": {"w": torch.randn(3, 4, generator=generator)}}, path)
    elif kind == "redi_stage":
        from ad_fast.models.redi.config import ReDiConfig
        from ad_fast.models.redi.training import CHECKPOINT_VERSION

        torch.save({"version": CHECKPOINT_VERSION, "stage": 1, "config": ReDiConfig().to_dict(),
                    "module": {"w": torch.zeros(2)}, "optimizer": {"state": {}, "param_groups": []}, "epoch": 1,
                    "history": [0.5]}, path)
    elif kind == "dmad":
        dmad_model().save(path)
    elif kind in ("png", "jpg"):
        from PIL import Image

        path = path.with_suffix("." + kind)
        Image.fromarray(np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)).save(path)
    return path.read_bytes()


@functools.lru_cache(maxsize=None)
def dmad_model():
    from ad_fast.models.dmad import DMAD

    model = DMAD(backbone="efficientnet_lite0", mode="memory_bank", image_size=32, embed_dim=8, progress=False)
    model.normal_bank = MemoryBank(8).add(torch.randn(30, 8, generator=torch.Generator().manual_seed(1)))
    return model


@st.composite
def damaged(draw, kind: str) -> bytes:
    data = bytearray(seed_file(kind))
    how = draw(st.sampled_from(["truncate", "flip", "garbage", "empty", "header_size", "header_json", "append"]))
    if how == "truncate":
        del data[draw(st.integers(0, len(data) - 1)):]
    elif how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    elif how == "garbage":
        data = bytearray(draw(st.binary(min_size=1, max_size=300)))
    elif how == "empty":
        data = bytearray()
    elif how == "header_size":
        data[:8] = draw(st.sampled_from([0, 7, 2**31, 2**63 - 1, len(data) + 1])).to_bytes(8, "little")
    elif how == "header_json" and len(data) > 16:
        size = int.from_bytes(data[:8], "little")
        if 8 + size <= len(data):
            try:
                header = json.loads(bytes(data[8:8 + size]))
                key = draw(st.sampled_from(sorted(header)))
                header[key] = draw(st.sampled_from([None, 1, "x", {"dtype": "F32", "shape": [10**12],
                                                                    "data_offsets": [0, 4]}, [0, -1]]))
                text = json.dumps(header).encode()
                data[8:8 + size] = text.ljust(size)[:size] if len(text) <= size else text
                data[:8] = (size if len(text) <= size else len(text)).to_bytes(8, "little")
            except ValueError:
                pass
    else:
        data += draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


def check_loader(name: str, kind: str, suffix: str, blob: bytes, load) -> None:
    path = WORK / f"{name}{suffix}"
    path.write_bytes(blob)
    announce(name, (len(blob), blob[:32]))
    _, error = outcome(lambda: load(path))
    if error is not None:
        assert isinstance(error, LOADER_ERRORS), f"{type(error).__name__} is not a clear loader error: {error}"
        assert_clear(error, [path.name])


@given(damaged("bank"), st.booleans())
def case_memory_bank_load(blob, mmap):
    def load(path):
        bank = MemoryBank.load(path, mmap=mmap)
        if len(bank):  # a loaded bank must be searchable: its norms were verified or recomputed
            dist, _ = bank.search(bank.rows[:2].float(), k=1)
            assert torch.isfinite(dist).all()
    check_loader("memory_bank", "bank", ".safetensors", blob, load)


@given(damaged("checkpoint.safetensors"), st.booleans())
def case_read_safetensors(blob, mmap):
    check_loader("read_safetensors", "checkpoint.safetensors", ".safetensors", blob,
                 lambda path: checkpoints.read_safetensors(path, mmap=mmap))


@given(st.sampled_from(["checkpoint.safetensors", "checkpoint.pt"]).flatmap(lambda k: st.tuples(st.just(k), damaged(k))))
def case_read_checkpoint(kind_blob):
    kind, blob = kind_blob
    check_loader("read_checkpoint", kind, "." + kind.split(".")[1], blob,
                 lambda path: checkpoints.read_checkpoint(path, "ad_fast.Fuzz", 1))


@given(st.sampled_from(["checkpoint.safetensors", "checkpoint.pt"]).flatmap(lambda k: st.tuples(st.just(k), damaged(k))))
def case_saved_method(kind_blob):
    from ad_fast.models import saved_method

    kind, blob = kind_blob
    check_loader("saved_method", kind, "." + kind.split(".")[1], blob, saved_method)


@settings(max_examples=max(4, settings().max_examples // 5))  # each load rebuilds the backbone
@given(damaged("dmad"))
def case_load_model(blob):
    from ad_fast import load_model

    check_loader("model_file", "dmad", ".safetensors", blob, load_model)


@given(damaged("redi_stage"))
def case_redi_stage_checkpoint(blob):
    from ad_fast.models.redi.config import ReDiConfig
    from ad_fast.models.redi.training import _load_checkpoint

    check_loader("redi_stage1", "redi_stage", ".pt", blob, lambda path: _load_checkpoint(path, 1, ReDiConfig()))


@given(st.sampled_from(["bank", "checkpoint.safetensors"]).flatmap(lambda k: st.tuples(st.just(k), damaged(k))))
def case_prompt_pool(kind_blob):
    from ad_fast.models.metauas.pool import PromptPool

    kind, blob = kind_blob
    check_loader("prompt_pool", kind, ".safetensors", blob, PromptPool.load)


@settings(max_examples=max(4, settings().max_examples // 5))  # each load rebuilds the backbone
@given(damaged("dmad"), st.booleans())
def case_dmad_load(blob, mmap):
    from ad_fast.models.dmad import DMAD

    check_loader("dmad", "dmad", ".safetensors", blob, lambda path: DMAD.load(path, mmap=mmap))


@given(st.sampled_from(["png", "jpg"]).flatmap(lambda k: st.tuples(st.just(k), damaged(k))), st.booleans())
def case_images(kind_blob, as_mask):
    kind, blob = kind_blob
    check_loader("image", kind, "." + kind, blob, read_mask if as_mask else load_image)
