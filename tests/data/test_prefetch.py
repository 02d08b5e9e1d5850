"""ad_fast.data.prefetch: threaded decoding gives the same batches, in order, as decoding one by one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ad_fast.data.images import read_image, resize_image, save_image
from ad_fast.data.prefetch import prefetch_batches


@pytest.fixture()
def files(tmp_path):
    gen = torch.Generator().manual_seed(0)
    paths = []
    for i in range(7):
        path = tmp_path / f"{i}.png"
        save_image(path, torch.rand(3, 20 + i, 31 - i, generator=gen))
        paths.append(path)
    return paths


@pytest.mark.parametrize("workers", [0, 1, 3])
@pytest.mark.parametrize("prefetch", [0, 2])
def test_batches_equal_sequential_decoding_in_order(files, workers, prefetch):
    batches = list(prefetch_batches(files, 3, (16, 12), workers=workers, prefetch=prefetch))
    assert [b.start for b in batches] == [0, 3, 6]
    assert [b.images.shape[0] for b in batches] == [3, 3, 1]
    expected = torch.stack([resize_image(read_image(p), (16, 12)).clamp(0, 1) for p in files])
    assert torch.equal(torch.cat([b.images for b in batches]), expected)
    assert sum((b.sizes for b in batches), []) == [(20 + i, 31 - i) for i in range(7)]


def test_in_memory_images_and_native_size():
    array = np.full((5, 4, 3), 255, dtype=np.uint8)
    tensor = torch.zeros(1, 6, 2)
    (batch,) = prefetch_batches([array, tensor], 2, workers=2)
    assert isinstance(batch.images, list) and batch.sizes == [(5, 4), (6, 2)]
    assert torch.equal(batch.images[0], torch.ones(3, 5, 4)) and torch.equal(batch.images[1], torch.zeros(3, 6, 2))


def test_error_names_the_file_and_arrives_at_its_batch(files, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    stream = prefetch_batches([*files[:2], broken, files[3]], 2, (8, 8), workers=2)
    assert next(stream).start == 0
    with pytest.raises(ValueError, match="broken.png"):
        next(stream)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        list(prefetch_batches([tmp_path / "missing.png"], 1, workers=2))
    with pytest.raises(TypeError, match=r"images\[1\]"):
        list(prefetch_batches([files[0], 3.5], 1, workers=2))


def test_leaving_early_and_bad_arguments(files):
    stream = prefetch_batches(files, 1, (8, 8), workers=2, prefetch=1)
    assert next(stream).start == 0
    stream.close()  # cancels what is pending, joins the pool
    for kwargs, match in (({"batch_size": 0}, "batch_size"), ({"batch_size": 1, "prefetch": -1}, "prefetch"),
                          ({"batch_size": 1, "workers": -2}, "workers")):
        with pytest.raises(ValueError, match=match):
            list(prefetch_batches(files, **kwargs))


def test_the_callers_tensors_are_not_modified_even_in_inference_mode():
    """A tensor already at the target size is not copied by the resize: clamping must not write into it (an
    inference tensor from the caller's inference_mode cannot be written from the worker threads at all)."""
    with torch.inference_mode():
        image = torch.full((3, 8, 8), 1.5)
    batch = next(prefetch_batches([image], batch_size=1, size=(8, 8)))
    assert float(batch.images.max()) == 1.0
    assert float(image.max()) == 1.5
