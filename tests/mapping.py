"""Test helper: the file a CPU tensor's memory is mapped from, read from Linux's /proc/self/maps."""

from __future__ import annotations

import os

import pytest
import torch

needs_proc_maps = pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc/self/maps")


def mapped_file(tensor: torch.Tensor) -> str | None:
    """Path of the file whose mapping holds ``tensor``'s first byte, or None for anonymous (heap) memory."""
    address = tensor.data_ptr()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                path = fields[5].strip() if len(fields) == 6 else ""
                return path if path.startswith("/") else None
    return None
