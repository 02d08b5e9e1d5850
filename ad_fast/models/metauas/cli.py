"""Command line: ``python -m ad_fast.models.metauas {train,predict} ...`` (``torchrun ... -m ad_fast.models.metauas
train ...`` for DDP).

Examples::

    python -m ad_fast.models.metauas train --images coco/train2017 --coco-json instances_train2017.json \\
        --img-size 256 --epochs 30 --out metauas-256.safetensors
    python -m ad_fast.models.metauas predict --checkpoint metauas-256.ckpt --prompt good.png --query a.png b.png \\
        --out-dir maps/
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .model import MetaUAS
from .pairs import ChangePairDataset
from .train import TrainConfig, train
from .weights import load_encoder_weights


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ad_fast.models.metauas", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train on synthetic change pairs made from a folder of images")
    t.add_argument("--images", required=True, help="folder of training images")
    t.add_argument("--mask-dir", help="instance label images named like the images (object-level changes)")
    t.add_argument("--coco-json", help="COCO annotations for the image folder (object-level changes)")
    t.add_argument("--out", required=True, help="checkpoint to write (.safetensors or .pt)")
    t.add_argument("--img-size", type=int, default=256)
    t.add_argument("--encoder-weights", help="ImageNet EfficientNet-B4 weights (lukemelas .pth or timm tf_efficientnet_b4)")
    t.add_argument("--init", help="start from this MetaUAS checkpoint (official or ad_fast)")
    t.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    t.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    t.add_argument("--lr", type=float, default=TrainConfig.lr)
    t.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    t.add_argument("--max-steps", type=int)
    t.add_argument("--workers", type=int, default=0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p = sub.add_parser("predict", help="anomaly maps of query images against normal prompt image(s)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--img-size", type=int, help="input side (512 for metauas-512.ckpt; default 256 / saved config)")
    p.add_argument("--prompt", nargs="+", required=True, help="normal image(s); several = k-shot (maps averaged)")
    p.add_argument("--query", nargs="+", required=True)
    p.add_argument("--out-dir", required=True, help="writes <query stem>.npy maps (input size) and scores.csv")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def _train(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    model = MetaUAS.from_pretrained(args.init, img_size=args.img_size) if args.init else MetaUAS(img_size=args.img_size)
    if args.encoder_weights:
        load_encoder_weights(model, args.encoder_weights)
    dataset = ChangePairDataset(args.images, img_size=args.img_size, mask_dir=args.mask_dir, coco_json=args.coco_json,
                                seed=args.seed)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                         max_steps=args.max_steps, num_workers=args.workers, seed=args.seed)

    def log(step: int, loss: float) -> None:
        if step % config.log_every == 0 or step == 1:
            print(f"step {step} loss {loss:.4f}", flush=True)

    losses = train(model, dataset, config, device, on_step=log)
    if int(os.environ.get("RANK", "0")) == 0:
        model.cpu().save(args.out)
        print(f"trained {len(losses)} steps, final loss {losses[-1]:.4f}; wrote {args.out}")


def _predict(args: argparse.Namespace) -> None:
    model = MetaUAS.from_pretrained(args.checkpoint, img_size=args.img_size).to(args.device)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = ["query,score"]
    for query in args.query:
        result = model.predict(query, args.prompt, resize_to_input=True)
        np.save(out_dir / f"{Path(query).stem}.npy", result.anomaly_map[0, 0].cpu().numpy())
        rows.append(f"{query},{float(result.pred_score[0]):.6f}")
    (out_dir / "scores.csv").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    _train(args) if args.command == "train" else _predict(args)
