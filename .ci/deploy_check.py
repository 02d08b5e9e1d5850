"""Export the four methods (small random models with a decision) with the main venv, and record what PyTorch
predicts for a few images, for `.ci/deploy` to check in a venv without torch.

Usage: python .ci/deploy_check.py export OUT_DIR     (main venv: writes OUT_DIR/<method>.onnx, images, expected.npz)
       python .ci/deploy_check.py run OUT_DIR        (runtime venv: runs each file with ad_fast.deploy, compares)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ATOL = 1e-4


def export(out: Path) -> None:
    import torch
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_deploy import _decided, _decision_between, _images

    from ad_fast import DMAD, MetaUAS, OneNIP, ReDi

    out.mkdir(parents=True, exist_ok=True)
    images = _images(4, seed=1)
    paths = []
    for i, image in enumerate(images):
        paths.append(out / f"image_{i}.png")
        Image.fromarray(image).save(paths[-1])
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    dmad = DMAD(backbone="test_resnet", weights="random", mode="memory_bank", image_size=64, embed_dim=64,
                coreset_ratio=0.5, progress=False).fit(torch.rand(4, 3, 64, 64, generator=g))
    onenip = OneNIP(img_size=32, hidden_dim=32, heads=2, ffn_dim=32, encoder_depth=1, decoder_depth=1).eval()
    onenip.set_prompts(list(torch.rand(3, 3, 32, 32, generator=g)), ["a", "b", "c"])
    onenip.calibrate_kappa(list(torch.rand(2, 3, 32, 32, generator=g)))
    redi = ReDi(img_size=32, backbone="resnet18", hip_width=8, student_width_factor=1)
    redi.set_prompt_bank(torch.rand(3, 3, 32, 32, generator=g))
    redi.trained_stages = [1, 2]
    metauas = MetaUAS(img_size=64).eval()
    expected = {}
    for name, model in (("dmad", dmad), ("onenip", onenip), ("redi", redi), ("metauas", metauas)):
        model.eval()
        kwargs = {"prompt": [str(paths[0])]} if name == "metauas" else {}
        predict = (lambda: model.predict([str(p) for p in paths], **kwargs))
        model.decision = _decision_between(predict())
        result = _decided(model, predict())
        model.export(out / f"{name}.onnx")
        for field in ("anomaly_map", "pred_score", "pred_label", "pred_mask"):
            expected[f"{name}.{field}"] = getattr(result, field).numpy()
        print(f"exported {name}")
    np.savez(out / "expected.npz", **expected)


def run(out: Path) -> None:
    import importlib.util

    assert "torch" not in sys.modules
    from ad_fast.deploy import Inferencer

    expected = np.load(out / "expected.npz")
    paths = sorted(str(p) for p in out.glob("image_*.png"))
    backends = [b for b in ("onnxruntime", "openvino") if importlib.util.find_spec(b) is not None]
    for name in ("dmad", "onenip", "redi", "metauas"):
        for backend in backends:
            model = Inferencer(out / f"{name}.onnx", backend=backend)
            got = model.predict(paths, prompt=[paths[0]] if name == "metauas" else None)
            for field in ("anomaly_map", "pred_score"):
                np.testing.assert_allclose(getattr(got, field), expected[f"{name}.{field}"], rtol=0, atol=ATOL)
            np.testing.assert_array_equal(got.pred_label, expected[f"{name}.pred_label"])
            assert (got.pred_mask != expected[f"{name}.pred_mask"]).mean() < 1e-3
            print(f"{name}: {backend} matches PyTorch (max map error "
                  f"{np.abs(got.anomaly_map - expected[name + '.anomaly_map']).max():.1e})")
    assert "torch" not in sys.modules, "the runtime imported torch"


if __name__ == "__main__":
    {"export": export, "run": run}[sys.argv[1]](Path(sys.argv[2]))
