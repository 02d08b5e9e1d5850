"""The model registry: creation, errors, finding the method of a saved model from its one metadata key."""

from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import save_file

from ad_fast.models import Detector, create_model, load_model, register_model, saved_method, unregister_model


@dataclass(frozen=True)
class _ToyConfig:
    width: int = 1


class _Toy(Detector):
    Config = _ToyConfig

    def __init__(self, width=1):
        super().__init__()
        self.config = _ToyConfig(width)

    def _state(self):
        return {"w": torch.full((2,), float(self.config.width))}, {}

    def _restore(self, tensors, state, mmap):
        self.w = tensors["w"]


@pytest.fixture
def toy():
    register_model("toy_model")(_Toy)
    yield _Toy
    unregister_model("toy_model")


def test_create_and_errors(toy):
    assert create_model("toy_model", width=3).config.width == 3
    assert toy.method == "toy_model"
    with pytest.raises(ValueError, match="unknown model 'nope'.*toy_model"):
        create_model("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_model("toy_model")(dict)
    with pytest.raises(TypeError, match="name"):
        register_model("")


def test_saved_method_reads_one_metadata_key(tmp_path, toy):
    create_model("toy_model", width=7).save(tmp_path / "m.safetensors")
    assert saved_method(tmp_path / "m.safetensors") == "toy_model"
    loaded = load_model(tmp_path / "m.safetensors")
    assert isinstance(loaded, _Toy) and loaded.config.width == 7 and torch.equal(loaded.w, torch.full((2,), 7.0))
    save_file({"w": torch.zeros(2)}, str(tmp_path / "anon.safetensors"), metadata={"method": "toy_model"})
    assert saved_method(tmp_path / "anon.safetensors") is None  # no format_version: not an ad_fast model file
    torch.save({"method": "toy_model", "w": torch.zeros(2)}, tmp_path / "m.pt")
    assert saved_method(tmp_path / "m.pt") is None  # pickles are never probed
    with pytest.raises(ValueError, match="not an ad_fast model file.*method=<name>"):
        load_model(tmp_path / "m.pt")
    with pytest.raises(ValueError, match="holds a 'toy_model' model, not 'dmad'"):
        load_model(tmp_path / "m.safetensors", method="dmad")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")
