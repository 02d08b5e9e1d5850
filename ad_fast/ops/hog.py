"""Batched HOG descriptors and HOG images, faithful to ``skimage.feature.hog`` (scikit-image 0.26).

Semantics (shared by the kernels and :func:`hog_reference`):

1. Optional ``sqrt`` of the image, then per channel central differences ``I[y+1] - I[y-1]`` (not halved), zero on
   the border rows/cols. Arithmetic runs in scikit-image's float type: float64 for uint8/float64 input,
   float32 for float32/float16/bfloat16 input.
2. Colour: per pixel the channel with the largest gradient magnitude wins (first channel on ties).
3. ``ori = rad2deg(atan2(g_row, g_col)) % 180`` in float64; bin ``i`` takes ``b_i <= ori < b_(i+1)`` with
   ``b_i = (180 / orientations) * i``; a value that rounds to 180.0 lands in no bin (scikit-image quirk).
4. Cell histogram = (sum of magnitudes of the cell's pixels per bin) / cell area; remainder rows/cols ignored.
5. Blocks of ``cells_per_block`` cells, stride one cell, normalised by ``block_norm`` with eps = 1e-5.
6. HOG image: for every cell and bin a Bresenham line through the cell centre, perpendicular to the bin's mid
   angle, radius ``min(pixels_per_cell) // 2 - 1``, weighted by the un-normalised cell histogram. The endpoints are
   truncated in absolute image coordinates, so a bin's line can differ by a pixel between cells (see
   :func:`line_endpoints`).

Known differences from scikit-image (bounded by the tests at 1e-4):

- cell sums: scikit-image and the kernels add float64 magnitudes into a float32 total in row-major order (the CPU
  kernel reproduces scikit-image's sums bit for bit on uint8 images); the reference sums in float64 (~1e-7).
- the kernels pick the dominant channel by the float64 squared magnitude, scikit-image by ``np.hypot`` rounded to
  its float type: they can disagree only for float32 images whose channel magnitudes tie after float32 rounding.
- the kernels bin with a fast float32 angle and fall back to scikit-image's float64 rule within 1e-3 degrees of a
  bin edge; the CUDA kernel's float64 ``atan2`` may differ from NumPy's by an ulp exactly at an edge.
- ``visualize=True`` needs ``pixels_per_cell >= 2`` (scikit-image draws lines outside the cell, or wraps them
  around the image, for 1-pixel cells).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .._extension import has_ops
from ._backend import use_kernel
from ._validate import FLOAT_DTYPES, check_choice, check_positive_pair, check_tensor

BLOCK_NORMS = ("L1", "L1-sqrt", "L2", "L2-Hys")
INPUT_DTYPES = (torch.uint8, *FLOAT_DTYPES)
MAX_ORIENTATIONS = 180
_EPS = 1e-5


def _check_args(
    images: torch.Tensor,
    orientations: int,
    pixels_per_cell: int | Sequence[int],
    cells_per_block: int | Sequence[int],
    block_norm: str,
    visualize: bool,
    transform_sqrt: bool,
) -> tuple[tuple[int, int], tuple[int, int]]:
    check_tensor(images, "images", ndim=4, dtypes=INPUT_DTYPES, finite=True)
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images: expected 1 or 3 channels [B, C, H, W], got shape {tuple(images.shape)}")
    if isinstance(orientations, bool) or not isinstance(orientations, int):
        raise TypeError(f"orientations: expected an int, got {orientations!r}")
    if not 1 <= orientations <= MAX_ORIENTATIONS:
        raise ValueError(f"orientations: expected 1..{MAX_ORIENTATIONS}, got {orientations}")
    cell = check_positive_pair(pixels_per_cell, "pixels_per_cell")
    block = check_positive_pair(cells_per_block, "cells_per_block")
    check_choice(block_norm, "block_norm", BLOCK_NORMS)
    if visualize and min(cell) < 2:
        raise ValueError(f"pixels_per_cell: visualize=True needs cells of at least 2x2 pixels, got {cell}")
    if transform_sqrt and images.is_floating_point() and bool((images < 0).any()):
        raise ValueError("images: transform_sqrt=True needs non-negative values (the square root would be NaN)")
    height, width = images.shape[-2:]
    min_h, min_w = cell[0] * block[0], cell[1] * block[1]
    if height < min_h or width < min_w:
        raise ValueError(
            f"images: {height}x{width} is smaller than one block of {block} cells of {cell} pixels; "
            f"need at least {min_h}x{min_w}"
        )
    return cell, block


def bin_boundaries(orientations: int) -> list[float]:
    """Orientation bin edges in degrees, computed in float64 exactly as scikit-image does."""
    per_bin = 180.0 / orientations
    return [per_bin * i for i in range(orientations + 1)]


def line_pixels(r0: int, c0: int, r1: int, c1: int) -> list[tuple[int, int]]:
    """Pixels of the integer Bresenham line from (r0, c0) to (r1, c1), both ends included (skimage.draw.line)."""
    dr, dc = abs(r1 - r0), abs(c1 - c0)
    step_r = 1 if r1 - r0 > 0 else -1
    step_c = 1 if c1 - c0 > 0 else -1
    steep = dr > dc
    # Walk along the major axis "a" and step the minor axis "b" when the error term allows.
    a, b, step_a, step_b, da, db = (r0, c0, step_r, step_c, dr, dc) if steep else (c0, r0, step_c, step_r, dc, dr)
    error = 2 * db - da
    pixels = []
    for _ in range(da):
        pixels.append((a, b) if steep else (b, a))
        while error >= 0:
            b += step_b
            error -= 2 * da
        a += step_a
        error += 2 * db
    pixels.append((r1, c1))
    return pixels


def line_endpoints(
    orientations: int, pixels_per_cell: int | Sequence[int], n_cells: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Endpoints of every bin's line in every cell, relative to the cell origin, as scikit-image computes them.

    skimage draws ``line(int(cy - d_c), int(cx + d_r), int(cy + d_c), int(cx - d_r))`` around the absolute cell
    centre ``(cy, cx)``; truncating after adding the offset to the absolute centre makes a line differ by a pixel
    between cells when an offset is within rounding of an integer (``2 * sin(pi / 6) = 0.9999999999999999``).

    Returns:
        r0, r1 ``[orientations, n_cells_row]`` and c0, c1 ``[orientations, n_cells_col]`` int64 arrays.
    """
    cell_h, cell_w = check_positive_pair(pixels_per_cell, "pixels_per_cell")
    radius = min(cell_h, cell_w) // 2 - 1
    mids = np.pi * (np.arange(orientations) + 0.5) / orientations
    d_r, d_c = (radius * np.sin(mids))[:, None], (radius * np.cos(mids))[:, None]
    top = np.arange(n_cells[0]) * cell_h
    left = np.arange(n_cells[1]) * cell_w
    centre_r, centre_c = top + cell_h // 2, left + cell_w // 2
    r0 = (centre_r - d_c).astype(np.int64) - top
    r1 = (centre_r + d_c).astype(np.int64) - top
    c0 = (centre_c + d_r).astype(np.int64) - left
    c1 = (centre_c - d_r).astype(np.int64) - left
    return r0, r1, c0, c1


def hog_stencils(orientations: int, pixels_per_cell: int | Sequence[int]) -> torch.Tensor:
    """0/1 masks of each bin's line in the top-left cell, float64 ``[orientations, cell_h, cell_w]``."""
    cell_h, cell_w = check_positive_pair(pixels_per_cell, "pixels_per_cell")
    r0, r1, c0, c1 = line_endpoints(orientations, (cell_h, cell_w), (1, 1))
    stencils = torch.zeros(orientations, cell_h, cell_w, dtype=torch.float64)
    for o in range(orientations):
        for r, c in line_pixels(int(r0[o, 0]), int(c0[o, 0]), int(r1[o, 0]), int(c1[o, 0])):
            stencils[o, r, c] = 1.0
    return stencils


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype in (torch.uint8, torch.float64) else torch.float32


def _gradients(images: torch.Tensor, transform_sqrt: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Dominant-channel row/col gradients in float64, each ``[B, H, W]``."""
    x = images.to(_compute_dtype(images.dtype))
    if transform_sqrt:
        x = x.sqrt()
    g_row = torch.zeros_like(x)
    g_col = torch.zeros_like(x)
    g_row[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    g_col[:, :, :, 1:-1] = x[:, :, :, 2:] - x[:, :, :, :-2]
    winner = torch.hypot(g_row, g_col).argmax(dim=1, keepdim=True)
    return g_row.gather(1, winner)[:, 0].double(), g_col.gather(1, winner)[:, 0].double()


def _cell_histograms(
    images: torch.Tensor, orientations: int, cell: tuple[int, int], transform_sqrt: bool
) -> torch.Tensor:
    """Un-normalised cell histograms, float64 ``[B, n_cells_row, n_cells_col, orientations]``."""
    g_row, g_col = _gradients(images, transform_sqrt)
    batch, height, width = g_row.shape
    n_rows, n_cols = height // cell[0], width // cell[1]
    g_row = g_row[:, : n_rows * cell[0], : n_cols * cell[1]]
    g_col = g_col[:, : n_rows * cell[0], : n_cols * cell[1]]
    magnitude = torch.hypot(g_row, g_col)
    angle = torch.remainder(torch.rad2deg(torch.atan2(g_row, g_col)), 180.0)
    edges = torch.tensor(bin_boundaries(orientations), dtype=torch.float64)
    bins = torch.bucketize(angle, edges, right=True) - 1  # b_i <= angle < b_(i+1); i == orientations: no bin
    valid = (bins >= 0) & (bins < orientations)
    rows = torch.arange(g_row.shape[1]).div(cell[0], rounding_mode="floor")
    cols = torch.arange(g_row.shape[2]).div(cell[1], rounding_mode="floor")
    cell_index = (torch.arange(batch)[:, None, None] * n_rows + rows[None, :, None]) * n_cols + cols[None, None, :]
    flat = cell_index * orientations + bins.clamp(0, orientations - 1)
    hist = torch.zeros(batch * n_rows * n_cols * orientations, dtype=torch.float64)
    hist.index_add_(0, flat[valid], magnitude[valid])
    return hist.view(batch, n_rows, n_cols, orientations) / (cell[0] * cell[1])


def _normalise_blocks(hist: torch.Tensor, block: tuple[int, int], block_norm: str) -> torch.Tensor:
    """``[B, NR, NC, O]`` histograms → ``[B, n_blocks_row, n_blocks_col, block_h, block_w, O]`` normalised blocks."""
    blocks = hist.unfold(1, block[0], 1).unfold(2, block[1], 1)  # [B, NBR, NBC, O, bh, bw]
    blocks = blocks.permute(0, 1, 2, 4, 5, 3)
    dims = (3, 4, 5)
    if block_norm in ("L1", "L1-sqrt"):
        out = blocks / (blocks.abs().sum(dims, keepdim=True) + _EPS)
        return out.sqrt() if block_norm == "L1-sqrt" else out
    out = blocks / torch.sqrt(blocks.square().sum(dims, keepdim=True) + _EPS**2)
    if block_norm == "L2-Hys":
        out = out.clamp(max=0.2)
        out = out / torch.sqrt(out.square().sum(dims, keepdim=True) + _EPS**2)
    return out


def _groups(first: np.ndarray, second: np.ndarray) -> list[tuple[int, int, torch.Tensor]]:
    """Cells grouped by their (first, second) endpoint pair: [(first, second, cell indices)]."""
    pairs = np.stack([first, second], 1)
    return [
        (int(a), int(b), torch.from_numpy(np.flatnonzero((pairs == (a, b)).all(1))))
        for a, b in np.unique(pairs, axis=0)
    ]


def _render(hist: torch.Tensor, cell: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """HOG image ``[B, 1, H, W]`` from cell histograms ``[B, NR, NC, O]``: each bin's line added in bin order."""
    batch, n_rows, n_cols, orientations = hist.shape
    r0, r1, c0, c1 = line_endpoints(orientations, cell, (n_rows, n_cols))
    canvas = hist.new_zeros(n_rows, n_cols, cell[0], cell[1], batch)
    values = hist.permute(1, 2, 3, 0)  # [NR, NC, O, B]
    for o in range(orientations):
        for top, bottom, rows in _groups(r0[o], r1[o]):
            for left, right, cols in _groups(c0[o], c1[o]):
                index = (rows[:, None], cols[None, :])
                weight = values[rows[:, None], cols[None, :], o]  # [R, C, B]
                for u, v in line_pixels(top, left, bottom, right):
                    canvas[index + (u, v)] += weight
    drawn = canvas.permute(4, 0, 2, 1, 3).reshape(batch, 1, n_rows * cell[0], n_cols * cell[1])
    return F.pad(drawn, (0, size[1] - drawn.shape[-1], 0, size[0] - drawn.shape[-2]))


def _output_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def hog_reference(
    images: torch.Tensor,
    orientations: int = 9,
    pixels_per_cell: int | Sequence[int] = (8, 8),
    cells_per_block: int | Sequence[int] = (3, 3),
    block_norm: str = "L2-Hys",
    transform_sqrt: bool = False,
    visualize: bool = True,
    feature_vector: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Pure-PyTorch :func:`hog` (float64 internally); same arguments, shapes and errors."""
    cell, block = _check_args(
        images, orientations, pixels_per_cell, cells_per_block, block_norm, visualize, transform_sqrt
    )
    out_dtype = _output_dtype(images.dtype)
    device = images.device
    images = images.detach().cpu()
    hist = _cell_histograms(images, orientations, cell, transform_sqrt)
    descriptors = _normalise_blocks(hist, block, block_norm).to(device=device, dtype=out_dtype)
    if feature_vector:
        descriptors = descriptors.reshape(descriptors.shape[0], -1)
    if not visualize:
        return descriptors
    hog_image = _render(hist, cell, tuple(images.shape[-2:])).to(device=device, dtype=out_dtype)
    return descriptors, hog_image


def hog(
    images: torch.Tensor,
    orientations: int = 9,
    pixels_per_cell: int | Sequence[int] = (8, 8),
    cells_per_block: int | Sequence[int] = (3, 3),
    block_norm: str = "L2-Hys",
    transform_sqrt: bool = False,
    visualize: bool = True,
    feature_vector: bool = True,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Histogram of Oriented Gradients of a batch, matching ``skimage.feature.hog`` (see the module docstring).

    Args:
        images: ``[B, C, H, W]`` with C in (1, 3); uint8 or floating, any strides. Colour images use the
            per-pixel dominant channel (``channel_axis=-1`` in scikit-image).
        orientations: number of unsigned orientation bins over [0, 180), 1..180.
        pixels_per_cell: cell size (rows, cols) or one int.
        cells_per_block: block size in cells (rows, cols) or one int.
        block_norm: "L1", "L1-sqrt", "L2" or "L2-Hys".
        transform_sqrt: take the square root of the image first (non-negative images only).
        visualize: also return the HOG image.
        feature_vector: flatten each image's descriptor to ``[F]``.
        backend: None | "auto" | "kernel" | "reference", overriding the global choice (see ``ad_fast.ops``).

    Returns:
        descriptors ``[B, F]`` (``feature_vector``) or ``[B, n_blocks_row, n_blocks_col, block_h, block_w, O]``;
        with ``visualize`` also the HOG image ``[B, 1, H, W]``. float64 for float64 input, float32 otherwise.

    Raises:
        TypeError / ValueError: wrong type, rank, dtype, channel count, zero size or arguments; an image smaller
        than one block; NaN or Inf in ``images`` (ValueError, from the kernels and the reference alike).
    """
    cell, block = _check_args(
        images, orientations, pixels_per_cell, cells_per_block, block_norm, visualize, transform_sqrt
    )
    if not use_kernel("hog", images.device, backend):
        return hog_reference(
            images, orientations, cell, block, block_norm, transform_sqrt, visualize, feature_vector
        )
    descriptors, hog_image = torch.ops.ad_fast.hog(
        images.detach(), orientations, list(cell), list(block), block_norm, transform_sqrt, visualize
    )
    if feature_vector:
        descriptors = descriptors.reshape(descriptors.shape[0], -1)
    return (descriptors, hog_image) if visualize else descriptors


if has_ops():

    @torch.library.register_fake("ad_fast::hog")
    def _hog_fake(images, orientations, pixels_per_cell, cells_per_block, block_norm, transform_sqrt, visualize):
        torch._check(images.dim() == 4, lambda: "images must be 4-d [B, C, H, W]")
        torch._check(
            len(pixels_per_cell) == 2 and len(cells_per_block) == 2 and min(*pixels_per_cell, *cells_per_block) >= 1,
            lambda: "pixels_per_cell and cells_per_block must be two positive ints",
        )
        batch, _, height, width = images.shape
        blocks_r = height // pixels_per_cell[0] - cells_per_block[0] + 1
        blocks_c = width // pixels_per_cell[1] - cells_per_block[1] + 1
        torch._check(blocks_r >= 1 and blocks_c >= 1, lambda: "images are smaller than one block")
        dtype = _output_dtype(images.dtype)
        descriptors = images.new_empty(
            (batch, blocks_r, blocks_c, cells_per_block[0], cells_per_block[1], orientations), dtype=dtype
        )
        hog_image = images.new_empty((batch, 1, height, width) if visualize else (0,), dtype=dtype)
        return descriptors, hog_image
