"""The model registry: creation, errors, finding the method of a saved model."""

import json

import pytest
import torch

from ad_fast.models import create_model, load_model, register_model, saved_method, unregister_model


class _Toy:
    def __init__(self, width=1):
        self.width = width

    @classmethod
    def load(cls, path):
        return cls(width=7)


@pytest.fixture
def toy():
    register_model("toy_model")(_Toy)
    yield _Toy
    unregister_model("toy_model")


def test_create_and_errors(toy):
    assert create_model("toy_model", width=3).width == 3
    with pytest.raises(ValueError, match="unknown model 'nope'.*toy_model"):
        create_model("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_model("toy_model")(dict)
    with pytest.raises(TypeError, match="name"):
        register_model("")


def test_saved_method_sources(tmp_path, toy):
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"method": "toy_model", "format_version": 1}))
    assert saved_method(folder) == "toy_model"
    torch.save({"config": {"method": "toy_model"}, "w": torch.zeros(2)}, tmp_path / "m.pt")
    assert saved_method(tmp_path / "m.pt") == "toy_model"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "m.safetensors", metadata={"method": "toy_model"})
    assert saved_method(tmp_path / "m.safetensors") == "toy_model"
    assert load_model(tmp_path / "m.safetensors").width == 7
    torch.save({"w": torch.zeros(2)}, tmp_path / "anon.pt")
    with pytest.raises(ValueError, match="cannot tell which method"):
        load_model(tmp_path / "anon.pt")
    assert load_model(tmp_path / "anon.pt", method="toy_model").width == 7
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")
