"""Unified OneNIP training: reconstruction + restoration streams with a same-class normal prompt, Dice refiner.

Per step and sample: a normal image I_n, a synthetic anomaly I_a made from it (CutPaste or Perlin texture paste,
50/50, from ``ad_fast.synthesis``) and a random normal prompt I_p of the same class (possibly I_n itself). The
frozen backbone encodes the 3B images; the reconstruction network rebuilds ``[F_n; F_a]`` from the prompt (feature
jitter on every token) and is trained towards ``[F_n; F_n]`` (MSE), plus ``dice_weight`` x the release's Dice loss
of the refiner against ``[0; M_a]``. AdamW, step LR, gradient clipping, as the release.

Runs on CPU or CUDA, single process or under ``torchrun`` (DDP over the reconstruction network; each process gets
``batch_size`` samples per step). Checkpoints (``checkpoint_dir/last.pt``) hold the network, optimiser, scheduler,
epoch and RNG state; with ``resume=True`` training continues from them.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ...data import ImageInput, to_image_batch
from ...data.dataset import AnomalyDataset
from ...data.images import resize_image
from ..components.inputs import normal_images

CHECKPOINT_NAME = "last.pt"


@dataclass
class TrainOptions:
    """``fit`` options; defaults are the release's (1000 epochs, 8 images per GPU, lr 1e-4 dropped x0.1 at 800)."""

    epochs: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-4
    lr_step: int = 800
    lr_gamma: float = 0.1
    clip_norm: float = 0.1
    jitter: float = 20.0
    dice_weight: float = 0.5
    cutpaste_prob: float = 0.5
    texture_dir: str | None = None
    num_workers: int = 0
    seed: int = 133
    validate_every: int = 10
    checkpoint_dir: str | None = None
    checkpoint_every: int = 1
    resume: bool = True
    max_steps: int | None = None
    pool_per_class: int = 1
    calibration_images: int = 64
    progress: bool = True
    device: str | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "lr_step", "validate_every", "checkpoint_every", "pool_per_class",
                     "calibration_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ValueError(f"max_steps: expected None or a positive int, got {self.max_steps!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"num_workers: expected a non-negative int, got {self.num_workers!r}")
        for name in ("lr", "clip_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected a positive number, got {getattr(self, name)!r}")
        for name in ("weight_decay", "jitter", "dice_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected a non-negative number, got {getattr(self, name)!r}")
        if not 0.0 <= self.cutpaste_prob <= 1.0:
            raise ValueError(f"cutpaste_prob: expected a value in [0, 1], got {self.cutpaste_prob!r}")


def _check_images(images: Any, name: str) -> dict[str, list]:
    """``{class: [images]}`` from a mapping or from the normal records of an ``ad_fast.data.AnomalyDataset``."""
    if isinstance(images, AnomalyDataset):
        grouped: dict[str, list] = {}
        for item, label in zip(*normal_images(images, name)):
            grouped.setdefault(label, []).append(item)
        images = grouped
    if not isinstance(images, Mapping) or not images:
        raise TypeError(f"{name}: expected a non-empty mapping {{class name: [normal images]}}, got "
                        f"{type(images).__name__}")
    out = {}
    for label, items in images.items():
        items = list(items) if isinstance(items, (list, tuple)) else [items]
        if not items:
            raise ValueError(f"{name}[{label!r}]: expected at least one image")
        out[str(label)] = items
    return out


class PromptedAnomalyDataset(Dataset):
    """Normal images of several classes → ``{"image", "prompt", "anomaly" [3, S, S] in [0, 1], "mask" [1, S, S]}``.

    The prompt is a random normal image of the same class; the anomaly is made from the image by CutPaste (with
    probability ``cutpaste_prob``) or a Perlin-mask texture paste (``texture_dir``, else procedural textures; the
    release's Perlin settings: scales 2^[1, 6), rotation ±5°). Randomness depends on (seed, epoch, index) only.
    """

    def __init__(self, images: Mapping[str, Sequence[ImageInput]], size: int, seed: int = 0,
                 cutpaste_prob: float = 0.5, texture_dir: str | None = None, synthesize: bool = True):
        self.items = [(item, label) for label, items in images.items() for item in items]
        self.by_class: dict[str, list[int]] = {}
        for index, (_, label) in enumerate(self.items):
            self.by_class.setdefault(label, []).append(index)
        self.size, self.seed, self.cutpaste_prob, self.synthesize = size, seed, cutpaste_prob, synthesize
        self.texture_dir = texture_dir
        self._textures = None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> torch.Tensor:
        """Image ``index`` as ``[3, S, S]`` float32 in [0, 1] (bilinear, antialiased)."""
        image = to_image_batch([self.items[index][0]], name=f"train_images[{index}]")[0][0]
        return resize_image(image, self.size).clamp(0, 1)

    def _synthesize(self, image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        from ...synthesis import TextureSource, cutpaste, draem_paste

        if rng.uniform() < self.cutpaste_prob:
            return cutpaste(image, rng)
        if self._textures is None:
            self._textures = TextureSource(self.texture_dir, self.size)
        return draem_paste(image, rng, texture=self._textures, scale_exponents=(1, 6), max_rotation=5.0)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image = self.load(index)
        prompt = self.load(int(rng.choice(self.by_class[self.items[index][1]])))
        sample = {"image": image, "prompt": prompt}
        if self.synthesize:
            anomaly, mask = self._synthesize(image, rng)
            sample.update(anomaly=anomaly.float(), mask=mask.float())
        return sample


def dice_loss(probability: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """The release's per-sample Dice loss ``1 - (Σ p·t + s) / (Σ p² + Σ t² + s)`` → ``[B]`` (no factor 2)."""
    p, t = probability.flatten(1), target.flatten(1)
    return 1.0 - ((p * t).sum(1) + smooth) / ((p * p).sum(1) + (t * t).sum(1) + smooth)


def training_loss(model: torch.nn.Module, network: torch.nn.Module, batch: Mapping[str, torch.Tensor], jitter: float,
                  dice_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """One step's loss: MSE of ``[F_hat_n; F_hat_a]`` to ``[F_n; F_n]`` + ``dice_weight`` x Dice(refiner, masks)."""
    device = model.device
    count = batch["image"].shape[0]
    features = model.extract(torch.cat([batch["image"], batch["anomaly"], batch["prompt"]]).to(device))
    normal, anomalous, prompt = features.split(count)
    targets = torch.cat([normal, anomalous])
    reconstruction, logits = network(targets, prompt, jitter)
    mse = F.mse_loss(reconstruction, torch.cat([normal, normal]))
    probability = torch.sigmoid(F.interpolate(logits, size=batch["image"].shape[-2:], mode="bilinear",
                                              align_corners=True))
    masks = batch["mask"].to(device)
    dice = dice_loss(probability, torch.cat([torch.zeros_like(masks), masks])).mean()
    loss = mse + dice_weight * dice
    return loss, {"loss": float(loss.detach()), "mse": float(mse.detach()), "dice": float(dice.detach())}


@torch.no_grad()
def validation_error(model: torch.nn.Module, images: Mapping[str, Sequence[ImageInput]], batch_size: int,
                     seed: int) -> float:
    """Mean squared reconstruction error of normal ``images`` with random same-class prompts (eval mode)."""
    dataset = PromptedAnomalyDataset(images, model.img_size, seed, synthesize=False)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in DataLoader(dataset, batch_size=batch_size):
        features = model.extract(batch["image"].to(model.device))
        reconstruction, _ = model(features, model.extract(batch["prompt"].to(model.device)))
        total += float(F.mse_loss(reconstruction, features, reduction="sum"))
        count += features.numel()
    model.train(was_training)
    return total / max(count, 1)


def _setup_distributed(device: torch.device | None) -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group under ``torchrun`` when needed."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    if device is None:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return rank, world, device


def _broadcast_state(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every rank (in place)."""
    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, 0)


def _architecture(model: torch.nn.Module) -> dict[str, Any]:
    """The configuration a training checkpoint must match to be resumed (everything but kappa)."""
    return {key: value for key, value in asdict(model.config).items() if key != "kappa"}


def _save_training_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_training_state(path: Path, model: torch.nn.Module) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (any unreadable file is reported the same way)
        raise ValueError(f"{str(path)!r} is not a readable OneNIP training checkpoint: {error}") from error
    if not isinstance(state, dict) or state.get("config") != _architecture(model):
        raise ValueError(f"{str(path)!r}: training checkpoint does not match this model's configuration")
    return state


def fit(model: torch.nn.Module, train_images: Mapping[str, Sequence[ImageInput]],
        val_images: Mapping[str, Sequence[ImageInput]] | None = None, **options: Any) -> dict[str, list]:
    """Train ``model`` (see the module docstring), then fill its prompt pool and calibrate ``kappa``.

    Args:
        train_images: ``{class name: [normal images]}`` (images as ``to_image_batch`` accepts them), or an
            ``ad_fast.data.AnomalyDataset`` (its normal images, grouped by category).
        val_images: optional normal images per class; their reconstruction error is logged every
            ``validate_every`` epochs.
        options: :class:`TrainOptions` fields.

    Returns:
        history: ``{"epoch", "loss", "mse", "dice", "lr"}`` per epoch and ``"val_mse"`` as ``(epoch, value)``.
    """
    known = {f.name for f in fields(TrainOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"fit: unexpected option(s) {unknown}; expected some of {sorted(known)}")
    opts = TrainOptions(**options)
    train_images = _check_images(train_images, "train_images")
    val_images = None if val_images is None else _check_images(val_images, "val_images")
    rank, world, device = _setup_distributed(None if opts.device is None else torch.device(opts.device))
    model.to(device)
    torch.manual_seed(opts.seed + rank)

    dataset = PromptedAnomalyDataset(train_images, model.img_size, opts.seed, opts.cutpaste_prob, opts.texture_dir)
    sampler = DistributedSampler(dataset, world, rank, shuffle=True, seed=opts.seed) if world > 1 else None
    generator = torch.Generator().manual_seed(opts.seed)
    loader = DataLoader(dataset, batch_size=opts.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=opts.num_workers, drop_last=len(dataset) >= opts.batch_size * world,
                        generator=generator)
    network: torch.nn.Module = model.reconstruction
    if world > 1:
        _broadcast_state(model.backbone)  # frozen, so DDP would never sync it: every rank uses rank 0's
        network = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=model.config.decoder_variant == "v1_paper")
    optimizer = torch.optim.AdamW(model.reconstruction.parameters(), lr=opts.lr, betas=(0.9, 0.999),
                                  weight_decay=opts.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, opts.lr_step, opts.lr_gamma)

    history: dict[str, list] = {"epoch": [], "loss": [], "mse": [], "dice": [], "lr": [], "val_mse": []}
    start_epoch, steps = 0, 0
    checkpoint = None if opts.checkpoint_dir is None else Path(opts.checkpoint_dir) / CHECKPOINT_NAME
    if checkpoint is not None and opts.resume and checkpoint.is_file():
        state = _load_training_state(checkpoint, model)
        model.reconstruction.load_state_dict(state["reconstruction"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, steps = int(state["epoch"]) + 1, int(state["steps"])
        history = {key: list(value) for key, value in state["history"].items()}

    from tqdm.auto import tqdm

    bar = tqdm(range(start_epoch, opts.epochs), desc="OneNIP", disable=not opts.progress or rank != 0,
               initial=start_epoch, total=opts.epochs)
    model.train()
    for epoch in bar:
        if opts.max_steps is not None and steps >= opts.max_steps:
            break
        dataset.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        sums = {"loss": 0.0, "mse": 0.0, "dice": 0.0}
        batches = 0
        for batch in loader:
            loss, parts = training_loss(model, network, batch, opts.jitter, opts.dice_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.reconstruction.parameters(), opts.clip_norm)
            optimizer.step()
            steps += 1
            batches += 1
            for key in sums:
                sums[key] += parts[key]
            if opts.max_steps is not None and steps >= opts.max_steps:
                break
        scheduler.step()
        history["epoch"].append(epoch)
        for key in sums:
            history[key].append(sums[key] / max(batches, 1))
        history["lr"].append(optimizer.param_groups[0]["lr"])
        postfix = {"loss": f"{history['loss'][-1]:.4f}"}
        if val_images is not None and (epoch + 1) % opts.validate_every == 0:
            history["val_mse"].append((epoch, validation_error(model, val_images, opts.batch_size, opts.seed)))
            postfix["val_mse"] = f"{history['val_mse'][-1][1]:.4f}"
        bar.set_postfix(postfix)
        last = epoch + 1 == opts.epochs or (opts.max_steps is not None and steps >= opts.max_steps)
        if checkpoint is not None and rank == 0 and ((epoch + 1) % opts.checkpoint_every == 0 or last):
            _save_training_state(checkpoint, {
                "config": _architecture(model), "epoch": epoch, "steps": steps,
                "reconstruction": model.reconstruction.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(), "history": history})
    bar.close()
    if world > 1:
        _broadcast_state(model.reconstruction)  # BatchNorm statistics of each rank's last step differ
    model.eval()
    _build_pool_and_calibrate(model, train_images, opts)
    if checkpoint is not None and rank == 0:
        model.save(checkpoint.with_name("onenip.pt"))
    return history


def _build_pool_and_calibrate(model: torch.nn.Module, images: Mapping[str, Sequence[ImageInput]],
                              opts: TrainOptions) -> None:
    """Prompt pool: ``pool_per_class`` random normal images per class; kappa: mid-range of S_rec over up to
    ``calibration_images`` random training images, each with a prompt of its own class."""
    rng = np.random.default_rng(opts.seed)
    pool, pool_labels, calib = [], [], []
    for label, items in images.items():
        order = rng.permutation(len(items))
        pool += [items[i] for i in order[:opts.pool_per_class]]
        pool_labels += [label] * min(opts.pool_per_class, len(items))
        calib += [(items[i], label) for i in range(len(items))]
    model.set_prompts(pool, pool_labels, batch_size=opts.batch_size)
    chosen = rng.permutation(len(calib))[:opts.calibration_images]
    model.calibrate([calib[i][0] for i in chosen], [calib[i][1] for i in chosen], batch_size=opts.batch_size)
