"""Save / load a fitted DMAD: one safetensors file with both banks, the trained modules and a JSON config."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import torch

from ..._io import atomic_path
from ...checkpoints import read_safetensors
from ...ops import MemoryBank
from ...ops.memory_bank import sq_norms_digest, verified_sq_norms

if TYPE_CHECKING:
    from .model import DMAD

FORMAT_VERSION = 1
METADATA_KEY = "ad_fast.dmad"
BANK_DTYPES = {"float32": torch.float32, "float16": torch.float16}
BANKS = ("normal_bank", "abnormal_bank")
NORMS_SUFFIX = "_sq_norms"


def save_dmad(model: "DMAD", path: str | os.PathLike, bank_dtype: str = "float32") -> None:
    """Write ``model`` to ``path`` (safetensors). ``bank_dtype="float16"`` halves the size of both banks.

    Stored: ``normal_bank`` [K_n, C], ``abnormal_bank`` [K_a, C] (``"dmad"`` mode), their float32 squared norms
    ``normal_bank_sq_norms`` [K_n] and ``abnormal_bank_sq_norms`` [K_a] (so a memory-mapped load reads no row;
    files without them still load), ``enhancer.*`` and ``mapper.*`` tensors; metadata ``method`` = ``"dmad"`` and
    the config (format version, constructor arguments, attention, setting). The backbone is not stored: it is
    rebuilt from its name and weights source. The file is written beside ``path`` and renamed onto it.
    """
    from safetensors.torch import save_file

    if bank_dtype not in BANK_DTYPES:
        raise ValueError(f"bank_dtype: expected one of {tuple(BANK_DTYPES)}, got {bank_dtype!r}")
    if model.normal_bank is None:
        raise RuntimeError("DMAD.save: the model is not fitted; call fit() first")
    dtype = BANK_DTYPES[bank_dtype]
    tensors = {}
    for name in BANKS:
        bank = getattr(model, name)
        if bank is not None:
            stored = bank if bank.dtype == dtype else MemoryBank.from_rows(bank.rows.to(dtype))
            tensors[name] = stored.rows.cpu().contiguous()
            tensors[name + NORMS_SUFFIX] = stored.sq_norms.cpu().contiguous()
    for prefix, module in (("enhancer.", model.enhancer), ("mapper.", model.mapper)):
        if module is not None:
            tensors.update({prefix + k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()})
    meta = {
        "format_version": FORMAT_VERSION,
        "config": model.config,
        "attention": None if model.enhancer is None else model.enhancer.attention,
        "semi_supervised": model.semi_supervised,
        "sq_norms_sha256": {name: sq_norms_digest(tensors[name + NORMS_SUFFIX]) for name in BANKS if name in tensors},
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"method": "dmad", METADATA_KEY: json.dumps(meta)})


def read_dmad(path: str | os.PathLike, mmap: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a file written by :func:`save_dmad`; clear errors for missing/foreign/corrupt files.

    ``mmap``: the tensors are views of a private memory map of the file (see
    :func:`ad_fast.checkpoints.read_safetensors`).
    """
    path = os.fspath(path)
    raw, tensors = read_safetensors(path, "DMAD file", mmap=mmap)
    if METADATA_KEY not in raw or "normal_bank" not in tensors:
        raise ValueError(f"path: {path!r} is not a DMAD file saved by ad_fast")
    meta = json.loads(raw[METADATA_KEY])
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"path: unsupported DMAD format version {meta.get('format_version')!r} (expected {FORMAT_VERSION})")
    return meta, tensors


def restore_state(model: "DMAD", meta: dict[str, Any], tensors: dict[str, torch.Tensor],
                  mmap: bool = False) -> None:
    """Put the banks and trained modules of a saved file into a freshly built ``model``.

    ``mmap``: wrap the banks' tensors as they are (:meth:`MemoryBank.from_rows`, in the file's dtype, moved only to
    a non-CPU device) instead of copying them into new banks of the model's ``bank_dtype``.
    """
    dim = model.config["embed_dim"]
    for name in BANKS:
        if name in tensors:
            rows = tensors[name]
            if rows.dim() != 2 or rows.shape[1] != dim:
                raise ValueError(f"path: {name} has shape {tuple(rows.shape)}, expected [K, {dim}]")
            if mmap:
                digest = (meta.get("sq_norms_sha256") or {}).get(name)
                norms = verified_sq_norms(rows, tensors.get(name + NORMS_SUFFIX), digest, f"path: the DMAD file's {name}", mmap=True)
                bank = MemoryBank.from_rows(rows, "l2", norms).to(model.device_)
            else:
                bank = model._bank(rows)
            setattr(model, name, bank)
    model.semi_supervised = bool(meta.get("semi_supervised"))
    if model.mode == "dmad":
        if "abnormal_bank" not in tensors or meta.get("attention") is None:
            raise ValueError("path: the file lacks the abnormal bank or the trained modules of a 'dmad' model")
        model._build_modules(meta["attention"])
        for prefix, module in (("enhancer.", model.enhancer), ("mapper.", model.mapper)):
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            module.load_state_dict(state, strict=True)
        model.enhancer.eval()
        model.mapper.eval()
