"""The contract every ad_fast detector stands on, and the one model file.

A method subclasses :class:`Detector`, names itself (``method``, the registry name) and its config dataclass
(``Config``), and supplies five hooks: ``_fit``, ``_predict_batch``, ``_state``, ``_restore`` and, when its
constructor does not take the config's fields as keywords, ``_from_config``. Everything a user or the command line
sees is here, the same for all methods::

    model = ad_fast.create_model("dmad", backbone="efficientnet_lite0").fit("train/good")
    result = model.predict("test/", batch_size=16)           # AnomalyResult on the CPU
    for part in model.predict_iter("huge_folder/"):          # one batch at a time, bounded memory
        ...
    model.to("cuda").save("model.safetensors")
    model = ad_fast.load_model("model.safetensors", device="cuda", mmap=True)

The model file is safetensors: the method's state tensors, and string metadata ``method``, ``format_version``
(:data:`FORMAT_VERSION`), ``config`` (JSON of the config dataclass), ``ad_fast_version``, ``state`` (JSON of the
method's non-tensor state) and, when set, ``decision`` (JSON of :meth:`ad_fast.decision.Decision.to_dict`). It is
written atomically and can be memory-mapped on load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from dataclasses import asdict, fields
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import torch
from torch import nn

from .._version import __version__
from ..checkpoints import read_safetensors, write_safetensors
from ..data.images import ImageInput
from ..data.prefetch import prefetch_batches
from ..calibration import HOLDOUT, SYNTHETIC
from ..decision import Decision
from ..thresholds import DEFAULT_SENSITIVITY
from ..results import AnomalyResult
from .components.inputs import as_item_list
from .registry import get_model_class

FORMAT_VERSION = 1
LEGACY_HINT = ("convert it once with ad_fast.models.convert(path, new_path) "
               "(or: python -m ad_fast.models.legacy PATH NEW_PATH)")


class Detector(nn.Module):
    """Base class of MetaUAS, OneNIP, DMAD and ReDi.

    Attributes:
        config: the method's config dataclass (``type(model).Config``); what the model file records.
        decision (Decision | None): learned thresholds; when set, :meth:`predict` returns decided (normalised,
            labelled) results and the model file keeps it.
    """

    method: ClassVar[str]
    Config: ClassVar[type]
    default_batch_size: ClassVar[int] = 16
    input_name: ClassVar[str] = "images"  # what input errors call the predicted images

    def __init__(self) -> None:
        super().__init__()
        self.decision: Decision | None = None

    # ------------------------------------------------------------------------------------------ method hooks
    @property
    def input_size(self) -> tuple[int, int] | None:
        """``(H, W)`` every image is resized to before the network; ``None`` for a method that takes images at
        their own size (calibration then makes its synthetic defects at each image's size)."""
        return None

    def _fit(self, data: Any, **options: Any) -> None:
        """Fit on the normal images of ``data`` (any input :func:`components.inputs.normal_images` takes)."""
        raise NotImplementedError

    def _predict_batch(self, items: list, **options: Any) -> AnomalyResult:
        """Raw result of one batch of single images (a list from :func:`components.inputs.as_item_list`)."""
        raise NotImplementedError

    def _state(self, **options: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(state tensors, JSON-able non-tensor state) that, with ``config``, rebuild the fitted model."""
        raise NotImplementedError

    def _restore(self, tensors: dict[str, torch.Tensor], state: dict[str, Any], mmap: bool) -> None:
        """Put what :meth:`_state` returned into a model built from the saved config (``mmap``: the tensors are
        views of the memory-mapped file; keep them as they are where the method can)."""
        raise NotImplementedError

    @classmethod
    def _from_config(cls, config: Any) -> "Detector":
        """A fresh model built from ``config``."""
        return cls(**asdict(config))

    def _batch_options(self, options: dict[str, Any], start: int, stop: int, total: int) -> dict[str, Any]:
        """The ``predict`` options of images ``start:stop`` of ``total`` (override for per-image options)."""
        return options

    def _moved(self, device: torch.device) -> None:
        """Called after ``.to()`` / ``.cuda()`` / ``.cpu()``: move what is not a parameter or buffer."""

    # -------------------------------------------------------------------------------------------- contract
    @property
    def device(self) -> torch.device:
        """Where the model computes (its first parameter or buffer; CPU without any)."""
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    def _apply(self, fn, recurse: bool = True) -> "Detector":
        super()._apply(fn, recurse)
        self._moved(self.device)
        return self

    @classmethod
    def config_from_dict(cls, data: Mapping[str, Any]) -> Any:
        """``cls.Config`` from a dict (e.g. a model file's); unknown keys raise ``ValueError`` naming them and the
        method."""
        if not isinstance(data, Mapping):
            raise TypeError(f"config: expected a mapping for method {cls.method!r}, got {type(data).__name__}")
        known = {f.name for f in fields(cls.Config)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config: unknown key(s) {unknown} for method {cls.method!r} (known: {sorted(known)})")
        return cls.Config(**data)

    def fit(self, data: Any, *, validation: Any = None, holdout: float = HOLDOUT,
            calibration_anomalies: Any = SYNTHETIC, sensitivity: float = DEFAULT_SENSITIVITY,
            **options: Any) -> "Detector":
        """Fit on normal images and learn the OK/NG decision on images the fit did not see. Returns ``self``.

        Args:
            data: a folder (recursive), image paths, PIL images, arrays, tensors, a mapping ``{class: images}`` or
                an ``ad_fast.data`` dataset (its normal images).
            validation: normal images to learn the thresholds on; ``None``: a deterministic ``holdout`` share of
                ``data`` (per class) is kept out of the fit for that (none from fewer than two images: then no
                decision, with a warning).
            calibration_anomalies, sensitivity: how thresholds are learned (:meth:`calibrate`).
            options: the method's own fit options.
        """
        from ..calibration import fit_and_calibrate

        fit_and_calibrate(self, data, validation, holdout, calibration_anomalies, sensitivity,
                          calibration_batch_size=self.default_batch_size, fit=self._fit,
                          synthetic_size=self.input_size, **options)
        return self

    def calibrate(self, normal_images: Any, anomalous: Any = SYNTHETIC, sensitivity: float = DEFAULT_SENSITIVITY,
                  batch_size: int | None = None, **options: Any) -> Decision:
        """Learn :attr:`decision` from normal images the model was not fitted on: for a model that needs no fit
        (MetaUAS with a ``prompt=`` option, a release checkpoint loaded from disk) or to re-learn it.

        Args:
            normal_images: any image input, or a dataset (its normal images).
            anomalous: ``"synthetic"`` (defects pasted into the normal images), ``None`` (a quantile of the normals)
                or labelled anomalies ``(images, masks)`` (see :func:`ad_fast.calibration.calibrate`).
            sensitivity: in [0, 1], higher flags more (:mod:`ad_fast.thresholds`).
            options: predict options used while calibrating (e.g. MetaUAS's ``prompt``).
        """
        from ..calibration import calibrate

        return calibrate(self, normal_images, anomalous, sensitivity, batch_size or self.default_batch_size,
                         synthetic_size=self.input_size, **options)

    def predict_iter(self, images: ImageInput | Sequence[ImageInput], batch_size: int | None = None, *,
                     result_device: str | torch.device = "cpu", **options: Any) -> Iterator[AnomalyResult]:
        """Yield the results of ``batch_size`` images at a time (default: the method's), in input order; only one
        batch of images and maps is held at a time.

        Args:
            images: a path, a folder (searched recursively), PIL image, array, tensor ``[C, H, W]`` or
                ``[B, C, H, W]``, or a list of these.
            result_device: where the results' tensors go (CPU unless asked).
            options: the method's predict options (e.g. a prompt).
        """
        batch_size = self.default_batch_size if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        target = torch.device(result_device)
        items = as_item_list(images, self.input_name)
        # Image files of the next batches decode in threads while this batch runs (PIL releases the GIL).
        for batch in prefetch_batches(items, batch_size, name=self.input_name):
            start, stop = batch.start, batch.start + len(batch.images)
            with torch.inference_mode():
                result = self._predict_batch(batch.images, **self._batch_options(options, start, stop, len(items)))
            result = _results_to(result, target)
            yield result if self.decision is None else self.decision.apply(result)

    def predict(self, images: ImageInput | Sequence[ImageInput], batch_size: int | None = None, *,
                result_device: str | torch.device = "cpu", **options: Any) -> AnomalyResult:
        """Anomaly maps ``[B, 1, H, W]`` and scores ``[B]`` of all ``images``: the results of
        :meth:`predict_iter` joined (maps of batches that differ in size are resized to the method's
        working size, see ``_common_size``)."""
        parts = list(self.predict_iter(images, batch_size=batch_size, result_device=result_device, **options))
        return concat_results(parts, self._common_size)

    @property
    def _common_size(self) -> tuple[int, int] | None:
        """Map size (H, W) that joins batches whose maps differ in size; ``None``: such batches are an error."""
        return None

    # ------------------------------------------------------------------------------------------ model file
    def save(self, path: str | os.PathLike, **options: Any) -> None:
        """Write the model file (see the module docstring) atomically; ``options`` are the method's storage
        options (e.g. DMAD's ``bank_dtype``)."""
        tensors, state = self._state(**options)
        write_safetensors(path, tensors, model_file_metadata(self.method, asdict(self.config), state, self.decision))

    def export(self, path: str | os.PathLike, format: str = "onnx", **options: Any) -> Path:
        """Write the inference graph, ending in :attr:`decision`, to one ONNX file that runs without torch
        (:class:`ad_fast.deploy.Inferencer`); see :func:`ad_fast.export.export_model`. Returns the written path."""
        from ..export import export_model

        return export_model(self, path, format, **options)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", mmap: bool = False,
             **overrides: Any) -> "Detector":
        """Rebuild a model written by :meth:`save` (``Detector.load`` picks the method the file records).

        Args:
            device: where the model goes.
            mmap: the tensors are views of a private memory map of the file (pages are read when touched; see
                :func:`ad_fast.checkpoints.read_safetensors`); methods keep them mapped where they can.
            overrides: config fields replaced before the model is built (e.g. DMAD's backbone ``weights``).

        Raises:
            FileNotFoundError: no such file. ValueError: not an ad_fast model file (or one of another method),
            an unsupported ``format_version``, or a config / tensors that do not fit.
        """
        what = "ad_fast model file" if cls is Detector else f"{cls.__name__} file"
        metadata, tensors = read_safetensors(path, what, mmap=mmap)
        path = os.fspath(path)
        method = metadata.get("method")
        if is_legacy(metadata):
            raise ValueError(f"path: {path!r} is a model file of ad_fast 0.1 (a per-method format); {LEGACY_HINT}")
        if method is None or "format_version" not in metadata:
            raise ValueError(f"path: {path!r} is not a {what} saved by ad_fast (no method/format_version in its "
                             "metadata)")
        if metadata["format_version"] != str(FORMAT_VERSION):
            raise ValueError(f"path: {path!r} has format_version {metadata['format_version']!r}; this ad_fast reads "
                             f"version {FORMAT_VERSION}: load and save it again with the ad_fast version that wrote "
                             f"it (see its 'ad_fast_version' metadata: {metadata.get('ad_fast_version')!r})")
        target = get_model_class(method) if cls is Detector else cls
        if target.method != method:
            raise ValueError(f"path: {path!r} holds a {method!r} model, not a {target.method!r} one "
                             "(use ad_fast.load_model)")
        try:
            config = {**json.loads(metadata["config"]), **overrides}
            state = json.loads(metadata.get("state", "{}"))
            decision = json.loads(metadata["decision"]) if "decision" in metadata else None
        except (KeyError, ValueError) as error:
            raise ValueError(f"path: {path!r}: unreadable metadata ({error})") from error
        model = target._from_config(target.config_from_dict(config))
        model._restore(tensors, state, mmap)
        model.decision = None if decision is None else Decision.from_dict(decision)
        return model.to(device).eval()


    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **options: Any) -> "Detector":
        """Load published weights: an ad_fast model file here (:meth:`load`); methods with a research release
        (MetaUAS, OneNIP) also read its checkpoints."""
        return cls.load(path, **options)


def prefixed(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``tensors`` whose name starts with ``prefix``, without it."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def model_file_metadata(method: str, config: Mapping[str, Any], state: Mapping[str, Any],
                        decision: Decision | None = None) -> dict[str, str]:
    """The string metadata of a model file (see the module docstring)."""
    metadata = {"method": method, "format_version": str(FORMAT_VERSION), "config": json.dumps(dict(config)),
                "ad_fast_version": __version__, "state": json.dumps(dict(state))}
    if decision is not None:
        metadata["decision"] = json.dumps(decision.to_dict())
    return metadata


def is_legacy(metadata: Mapping[str, str]) -> bool:
    """Whether safetensors ``metadata`` is of an ad_fast 0.1 per-method format (see :mod:`.convert`)."""
    return "ad_fast.dmad" in metadata or str(metadata.get("format", "")).startswith("ad_fast.")


def _results_to(result: AnomalyResult, device: torch.device) -> AnomalyResult:
    move = lambda value: value.to(device) if isinstance(value, torch.Tensor) else value  # noqa: E731
    return AnomalyResult(move(result.anomaly_map), move(result.pred_score), move(result.pred_mask),
                         move(result.pred_label), {k: move(v) for k, v in result.extras.items()},
                         move(result.raw_score), move(result.raw_map))


def concat_results(parts: Sequence[AnomalyResult], common_size: tuple[int, int] | None = None) -> AnomalyResult:
    """One result from per-batch results, in order. Extras: tensors concatenated on dim 0, lists joined.

    Raises:
        ValueError: maps of different sizes and no ``common_size`` to resize them to.
    """
    if len(parts) == 1:
        return parts[0]
    sizes = {tuple(p.anomaly_map.shape[-2:]) for p in parts}
    if len(sizes) > 1:
        if common_size is None:
            raise ValueError(f"images: the batches' maps differ in size {sorted(sizes)}; use predict_iter, or "
                             "inputs of one size")
        parts = [p if tuple(p.anomaly_map.shape[-2:]) == tuple(common_size) else p.resized(common_size)
                 for p in parts]

    def join(values: list) -> Any:
        if any(v is None for v in values):
            return None
        if isinstance(values[0], torch.Tensor):
            return torch.cat(values)
        if isinstance(values[0], list):
            return [x for v in values for x in v]
        return values[0]

    extras = {key: join([p.extras.get(key) for p in parts]) for key in parts[0].extras}
    return AnomalyResult(*(join([getattr(p, name) for p in parts])
                           for name in ("anomaly_map", "pred_score", "pred_mask", "pred_label")),
                         extras=extras, raw_score=join([p.raw_score for p in parts]),
                         raw_map=join([p.raw_map for p in parts]))


__all__ = ["Detector", "FORMAT_VERSION", "concat_results", "is_legacy", "model_file_metadata", "prefixed"]
