"""Convert model files of ad_fast 0.1's per-method formats into the one model file (:class:`ad_fast.Detector`).

Formats read: DMAD (safetensors, metadata key ``"ad_fast.dmad"``), ReDi (safetensors, ``format`` =
``"ad_fast.ReDi"``), MetaUAS and OneNIP (``format`` = ``"ad_fast.MetaUAS"`` / ``"ad_fast.OneNIP"``, safetensors or
``torch.save`` of plain tensors, read with ``weights_only=True``). Usage::

    python -m ad_fast.models.legacy OLD_FILE NEW_FILE
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Sequence

from ..checkpoints import read_safetensors, write_safetensors
from .base import is_legacy, model_file_metadata
from .registry import get_model_class, saved_method

_REWRITTEN = {"ad_fast.ReDi": "redi"}
_REBUILT = {"ad_fast.MetaUAS": "metauas", "ad_fast.OneNIP": "onenip"}


def _legacy_format(path: Path) -> tuple[str, dict[str, str] | None]:
    """(format name, safetensors metadata or None for a torch.save file)."""
    try:
        metadata, _ = read_safetensors(path, "model file", mmap=True)
    except ValueError:
        import torch

        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # any unreadable file
            raise ValueError(f"path: {str(path)!r} is neither safetensors nor a readable checkpoint: {error}") from None
        name = payload.get("format") if isinstance(payload, dict) else None
        if name not in _REBUILT:
            raise ValueError(f"path: {str(path)!r} is not a model file of ad_fast 0.1") from None
        return name, None
    if not is_legacy(metadata):
        raise ValueError(f"path: {str(path)!r} is not a model file of ad_fast 0.1"
                         + (" (it is already in the current format)" if saved_method(path) else ""))
    return ("ad_fast.dmad" if "ad_fast.dmad" in metadata else metadata["format"]), metadata


def convert(path: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Write the model of the ad_fast 0.1 file ``path`` as a current model file ``output``; returns ``output``.

    DMAD and ReDi files keep their tensors (only the metadata is rewritten); MetaUAS and OneNIP files are loaded
    (``from_pretrained`` still reads them) and saved again.

    Raises:
        FileNotFoundError: no such file. ValueError: not an ad_fast 0.1 model file.
    """
    path, output = Path(path), Path(output)
    if not path.is_file():
        raise FileNotFoundError(f"path: model file not found: {str(path)!r}")
    name, metadata = _legacy_format(path)
    if name in _REBUILT:
        get_model_class(_REBUILT[name]).from_pretrained(path).save(output)
        return output
    if metadata is None or (name != "ad_fast.dmad" and name not in _REWRITTEN):
        raise ValueError(f"path: {str(path)!r}: unknown ad_fast 0.1 format {name!r}")
    if metadata.get("format_version", "1") != "1" or (name == "ad_fast.dmad"
                                                      and json.loads(metadata[name]).get("format_version") != 1):
        raise ValueError(f"path: {str(path)!r}: unsupported {name} format version")
    if name == "ad_fast.dmad":
        method, saved = "dmad", json.loads(metadata[name])
        state = {"attention": saved.get("attention"), "semi_supervised": bool(saved.get("semi_supervised"))}
    else:
        method, saved = _REWRITTEN[name], json.loads(metadata["info"])
        state = {"trained_stages": list(saved.get("trained_stages", []))}
    cls = get_model_class(method)
    config = vars(cls.config_from_dict(saved["config"]))  # checks the keys
    _, tensors = read_safetensors(path, "model file")
    write_safetensors(output, tensors, model_file_metadata(method, config, state))
    return output


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m ad_fast.models.legacy OLD_FILE NEW_FILE", file=sys.stderr)
        return 2
    try:
        print(f"converted -> {convert(args[0], args[1])}")
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
