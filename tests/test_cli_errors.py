"""``ad-fast`` reports expected errors (bad files, permissions, decompression bombs, bad option values) on one line
of stderr and exits non-zero, never with a traceback (issue 20)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import stand_in_model  # noqa: F401  (registers "mean_distance")
from ad_fast import cli
from ad_fast.cli import main

QUIET = ["--no-progress", "--device", "cpu"]


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(path)
    return path


@pytest.fixture
def fitted(tmp_path):
    model = stand_in_model.MeanDistanceModel(size=16)
    model.mean = torch.zeros(3, 16, 16)
    path = tmp_path / "m.pt"
    model.save(path)
    return path


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_corrupt_safetensors_model_is_one_line_naming_the_file(tmp_path, image, capsys):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    code = main(["predict", str(image), "--model", str(corrupt), "-o", str(tmp_path / "out"), *QUIET])
    assert code == 1
    _one_line_error(capsys, "corrupt.safetensors")


def test_decompression_bomb_is_one_line_naming_the_image(tmp_path, image, fitted, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the 32x32 image is then a "bomb" (> 2 x 100 pixels)
    code = main(["predict", str(image), "--model", str(fitted), "-o", str(tmp_path / "out"), *QUIET])
    assert code == 1
    _one_line_error(capsys, "img.png")


def test_unwritable_output_is_one_line(tmp_path, image, fitted, capsys):
    target = "/sys/ad_fast_test_output"  # sysfs refuses new entries, even to root
    code = main(["predict", str(image), "--model", str(fitted), "-o", target, *QUIET])
    assert code == 1
    _one_line_error(capsys, "ad_fast_test_output")


@pytest.mark.parametrize("error", [
    PermissionError(13, "Permission denied", "/x"),
    Image.DecompressionBombError("Image size (400000000 pixels) exceeds limit"),
    MemoryError("cannot allocate"),
    RuntimeError("first line\n  second line"),
])
def test_every_expected_error_is_one_line(monkeypatch, capsys, error):
    def handler(args):
        raise error

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["predict"].set_defaults(handler=handler)
    assert main(["predict", "x.png", "--method", "mean_distance", "-o", "out", *QUIET]) == 1
    _one_line_error(capsys, "ad-fast predict: error:")


def test_safetensors_error_is_one_line(monkeypatch, capsys):
    from safetensors import SafetensorError

    def handler(args):
        raise SafetensorError("Error while deserializing header: HeaderTooLarge")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["predict"].set_defaults(handler=handler)
    assert main(["predict", "x.png", "--method", "mean_distance", "-o", "out", *QUIET]) == 1
    _one_line_error(capsys, "HeaderTooLarge")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_threshold_must_be_finite(tmp_path, image, value, capsys):
    with pytest.raises(SystemExit) as info:
        main(["predict", str(image), "--method", "mean_distance", "--threshold", value, "-o", str(tmp_path / "o")])
    assert info.value.code == 2
    assert "--threshold" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["meta", "xla"])
def test_device_must_be_a_compute_device(tmp_path, image, fitted, device, capsys):
    code = main(["predict", str(image), "--model", str(fitted), "-o", str(tmp_path / "o"), "--no-progress",
                 "--device", device])
    assert code == 1
    _one_line_error(capsys, "--device")


def test_folder_with_hidden_and_mask_files(tmp_path, fitted, capsys):
    import json

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a_mask.png")
    (folder / "._a.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--model", str(fitted), "-o", str(out), *QUIET]) == 0
    results = json.loads((out / "scores.json").read_text())["results"]
    assert [entry["path"] for entry in results] == [str(folder / "a.png")]
