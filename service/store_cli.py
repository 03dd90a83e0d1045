"""``edgefit store build|specialize|add|evaluate|cascades|list|plot``: model-store maintenance.

Each command imports its heavy dependencies (onnx, torch, matplotlib) only when it runs, so
registering these commands costs ``edgefit serve`` nothing and the slim serving image, which has
none of them, still starts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model_store.store import StoreError, open_store

DEFAULT_STORE = Path("model_store/artifacts")


def _store_dir(args: argparse.Namespace) -> Path:
    return Path(args.store or os.environ.get("EDGEFIT_STORE_DIR") or DEFAULT_STORE)


def _names(value: str | None) -> list[str] | None:
    return [n.strip() for n in value.split(",") if n.strip()] if value else None


def _triple(value: str) -> tuple[float, float, float]:
    parts = [float(x) for x in value.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("expected three comma-separated numbers, e.g. 127,127,127")
    return parts[0], parts[1], parts[2]


def _progress_bars() -> Callable[[str, int, int], None]:
    """A ``(stage, done, total)`` callback drawing one tqdm bar per stage."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            # In a CI log (no terminal) every redraw is a line: redraw rarely there.
            interval = 0.1 if sys.stderr.isatty() else 15.0
            bar = bars[stage] = tqdm(
                total=total, desc=stage, unit="step", dynamic_ncols=True, mininterval=interval
            )
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def cmd_build(args: argparse.Namespace) -> None:
    from model_store.answers import AnswerCache
    from model_store.build.builder import build

    started = time.monotonic()
    store = build(_store_dir(args), Path(args.images), _progress_bars(), AnswerCache.default())
    print(
        f"built {len(store.manifest.variants)} variants in {store.root} in {time.monotonic() - started:.0f} s"
    )


def cmd_specialize(args: argparse.Namespace) -> None:
    if args.device:
        specialize_device(args)
        return
    if not (args.family and args.images):
        raise StoreError("specialize needs --family and --images (or --device)")
    from model_store.answers import AnswerCache
    from model_store.build.latency_table import error_summary
    from model_store.build.specialize import recipe_for, specialize

    recipe = recipe_for(args.family)
    resolutions = tuple(int(r) for r in _names(args.resolutions) or ()) or recipe.resolutions

    def say(line: str) -> None:
        print(f"[specialize] {line}", flush=True)

    result = specialize(
        _store_dir(args),
        Path(args.images),
        recipe,
        resolutions,
        k=args.k,
        search_images=args.search_images,
        budget_seconds=args.budget,
        say=say,
        answers=AnswerCache.default(),
    )
    print(
        f"frontier on this device with {recipe.arch}'s subnets ({result.scored} scored; "
        "est. top-1 = store top1 of the full network + the subnet's difference on the search half):"
    )
    for c in result.front:
        print(
            f"  {c.name:22} {c.predicted_ms:7.2f} ms  est. {100 * c.estimated_top1:5.1f}%  "
            f"search {100 * c.search_top1:5.1f}%"
        )
    print("written (top1 derived from the held-out half):")
    for pick in result.picks:
        v = pick.variant
        print(
            f"  {v.name:22} predicted {pick.candidate.predicted_ms:6.2f} ms, "
            f"measured {pick.measured_ms:6.2f} ms, est. {100 * pick.candidate.estimated_top1:5.1f}%, "
            f"top1 {100 * (v.top1 or 0):5.1f}% ({v.top1_dataset})"
        )
    if result.checks:
        median, p90 = error_summary(result.checks)
        print(
            f"latency table vs whole-network measurement, {len(result.checks)} subnets: "
            f"median error {100 * median:.1f} %, p90 {100 * p90:.1f} %"
        )
    print(
        f"specialized {recipe.arch} in {result.seconds:.0f} s; "
        f"the store has {len(result.store.manifest.variants)} variants"
    )


def specialize_device(args: argparse.Namespace) -> None:
    """What a server's first start on this device does, offline: profile every candidate of the
    store afresh, re-check its int8 variants, choose this device's frontier and cache the choice
    where a server with the same ``EDGEFIT_*`` settings reads it."""
    from service.runtime.models import load_models
    from service.settings import Settings

    settings = Settings(store_dir=_store_dir(args))
    if settings.variants or not settings.frontier:
        raise StoreError("--device chooses a frontier: unset EDGEFIT_VARIANTS, and EDGEFIT_FRONTIER=false")
    started = time.monotonic()
    models = load_models(settings, fresh=True)
    print(f"this device's frontier ({len(models.variants)} variants, fastest first; p50 inference here):")
    for name, variant in models.variants.items():
        top1 = "unknown" if variant.top1 is None else f"{100 * variant.top1:.1f}%"
        print(f"  {name:24} {1000 * models.profiles[name].p50:7.2f} ms  top1 {top1}")
    print("not served here:")
    for name, left in sorted(models.left.items()):
        print(f"  {name:24} {left.reason}: {left.detail}")
    for name, failed in sorted(models.unavailable.items()):
        print(f"  {name:24} unavailable: {failed}")
    total = len(models.variants) + len(models.left) + len(models.unavailable)
    print(
        f"chose {len(models.variants)} of {total} candidates in {time.monotonic() - started:.0f} s; "
        f"cached in {settings.cache_dir}, where a server with these settings starts with it"
    )


def _ints(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated integers, e.g. 160,192,224") from None


def _precisions(value: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in value.split(","))
    if not parts or any(p not in ("fp32", "int8") for p in parts):
        raise argparse.ArgumentTypeError("expected fp32, int8 or fp32,int8")
    return parts


def _preprocess_spec(args: argparse.Namespace) -> Any:
    """The preset named by ``--preprocess`` with the explicit flags applied on top."""
    from dataclasses import replace

    from model_store.presets import PRESETS

    spec = PRESETS[args.preprocess]
    for flag in ("mean", "std", "interpolation"):
        if getattr(args, flag) is not None:
            spec = replace(spec, **{flag: getattr(args, flag)})
    if args.crop is not None and args.resize is None:
        raise StoreError("--crop goes with --resize: the shorter side is resized to R for every C cropped")
    if args.resize is not None:
        crop = args.crop
        if crop is None:
            if len(args.resolutions) != 1:
                raise StoreError("with several resolutions give --resize R --crop C (e.g. 256 and 224)")
            crop = args.resolutions[0]
        spec = spec.with_crop_ratio(args.resize, crop)
    return spec


def cmd_add(args: argparse.Namespace) -> None:
    from model_store.add_request import AddRequest
    from model_store.ingest import add

    request = AddRequest(
        prefix=args.name,
        family=args.family,
        resolutions=args.resolutions,
        precisions=args.precisions,
        preprocess=_preprocess_spec(args),
        labels_file=Path(args.labels) if args.labels else None,
        calibration_dir=Path(args.calibration) if args.calibration else None,
        evaluate_dir=Path(args.evaluate) if args.evaluate else None,
        dataset=args.dataset,
        # Absent: AddRequest's default, the builder's gate (0.95).
        **({} if args.min_agreement is None else {"min_agreement": args.min_agreement}),
        top1=args.top1,
    )
    before = {v.name for v in open_store(_store_dir(args), missing_ok=True).manifest.variants}
    store = add(_store_dir(args), Path(args.file), request, _progress_bars())
    for v in store.manifest.variants:
        if v.name in before:
            continue
        top1 = "unknown"
        if v.top1 is not None:
            on = f" on {v.top1_dataset}" if v.top1_dataset else ""
            top1 = f"{100 * v.top1:.1f}% ({v.top1_source}{on})"
        print(f"added {v.name:28} top1 {top1}")
    skipped = [
        request.name(r, p)
        for r in request.resolutions
        for p in request.precisions
        if request.name(r, p) not in {v.name for v in store.manifest.variants}
    ]
    if skipped:
        print(f"not added (int8 below the agreement gate): {', '.join(skipped)}")
    print(f"the store now has {len(store.manifest.variants)} variants")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from model_store.evaluate import evaluate, labelled_images, record, stage_progress

    store = open_store(_store_dir(args))
    names = _names(args.variants)
    try:
        variants = [store.manifest.variant(n) for n in names] if names else list(store.manifest.variants)
    except KeyError as exc:
        raise StoreError(f"no variant {exc.args[0]} in {store.root}") from exc
    images = labelled_images(Path(args.images))
    dataset = args.dataset or Path(args.images).name
    advance = stage_progress(_progress_bars(), f"evaluate on {dataset}", len(images) * len(variants))
    results = evaluate(store, variants, images, progress=advance)
    store = store.write(record(store.manifest, dataset, results))
    for result in results:
        v = store.manifest.variant(result.variant)
        top1 = "-" if v.top1 is None else f"{100 * v.top1:.1f}% ({v.top1_source})"
        print(f"{v.name:24} measured {100 * result.top1:5.1f}%  top1 {top1}")


def cmd_cascades(args: argparse.Namespace) -> None:
    from model_store.answers import AnswerCache
    from model_store.planning import record_answers

    store, recorded = record_answers(
        _store_dir(args), Path(args.images), AnswerCache.default(), _progress_bars()
    )
    print(
        f"recorded the answers of {len(store.manifest.variants)} variants on {recorded.dataset} "
        f"({recorded.images} images) in {recorded.file}: a server plans its cascades from them "
        "among the variants it serves (thresholds on the even images, figures on the odd)"
    )


def cmd_list(args: argparse.Namespace) -> None:
    store = open_store(_store_dir(args))
    if args.json:
        print(store.manifest.model_dump_json(indent=2))
        return
    header = (
        f"{'variant':22} {'family':20} {'res':>4} {'prec':5} {'size':>9} {'params':>7} "
        f"{'MACs':>8} {'top1':>6}  source"
    )
    print(header)
    print("-" * len(header))
    for v in sorted(store.manifest.variants, key=lambda v: (v.family, -v.resolution, v.precision)):
        top1 = f"{100 * v.top1:5.1f}%" if v.top1 is not None else "     -"
        macs = f"{v.macs / 1e6:7.0f}M" if v.macs is not None else "       -"
        params = f"{v.params / 1e6:6.2f}M" if v.params is not None else "      -"
        print(
            f"{v.name:22} {v.family:20} {v.resolution:4} {v.precision:5} "
            f"{v.size_bytes / 2**20:7.2f}MB {params} {macs} {top1}  {v.top1_source or 'unknown'}"
        )
    # A variant's size counts the tensors it uses from a shared weights file; the store holds
    # each file once.
    files = store.files()
    on_disk = sum((store.root / f).stat().st_size for f in files if (store.root / f).is_file())
    print(f"{len(store.manifest.variants)} variants in {len(files)} files, {on_disk / 2**20:.2f} MB on disk")


def cmd_plot(args: argparse.Namespace) -> None:
    import onnxruntime as ort
    from tqdm import tqdm

    from model_store.plot import Point, plot_frontier
    from model_store.runner import VariantRunner, time_inference
    from service.runtime.profiler import cpu_model

    store = open_store(_store_dir(args))
    points = []
    for v in tqdm(store.manifest.variants, desc="profile", unit="variant"):
        if v.top1 is None:
            continue
        timings = sorted(time_inference(VariantRunner.from_store(store, v, args.threads), args.runs, 3))
        points.append(
            Point(v.name, 1000 * timings[len(timings) // 2], v.top1, v.precision, subnet=v.subnet is not None)
        )
    cpu = cpu_model()
    title = (
        f"edgefit store {store.root} — {cpu}, {os.cpu_count()} cores, {args.threads} thread(s), "
        f"onnxruntime {ort.__version__}"
    )
    plot_frontier(points, title, Path(args.out))
    print(f"wrote {args.out}")


def _add_arguments(add: argparse.ArgumentParser) -> None:
    """``store add``'s flags: the model, its ladder, its preprocessing, its labels and checks."""
    add.add_argument("file", help="ONNX: float [N, 3, H, W] (H, W may be dynamic) or uint8 [N, H, W, 3]")
    add.add_argument("--name", required=True, help="variant name prefix: {name}-{resolution}-{precision}")
    add.add_argument("--family", required=True)
    sizes = add.add_mutually_exclusive_group(required=True)
    sizes.add_argument("--resolutions", type=_ints, help="one variant per resolution, e.g. 160,192,224")
    sizes.add_argument("--resolution", dest="resolutions", type=_ints, help="one resolution")
    kinds = add.add_mutually_exclusive_group()
    kinds.add_argument("--precisions", type=_precisions, default=("fp32",), help="fp32, int8 or fp32,int8")
    kinds.add_argument("--precision", dest="precisions", type=_precisions, help="one precision")
    add.add_argument("--calibration", metavar="DIR", help="images to calibrate int8 with")
    add.add_argument(
        "--min-agreement",
        type=float,
        # Not imported here: `edgefit serve` must not load the quantiser (onnx is not installed
        # in the serving image).
        help="share of images on which int8 must give fp32's top-1 class (default 0.95)",
    )
    add.add_argument(
        "--evaluate",
        metavar="DIR",
        help="labelled images (class/xxx.jpg or wnid_*.JPEG): top1 measured on them",
    )
    add.add_argument("--dataset", help="name recorded for --evaluate (default: the folder's name)")
    add.add_argument("--labels", metavar="FILE", help="one label per line; line number = class index")
    add.add_argument("--top1", type=float, help="published top-1 of this checkpoint (fp32, one resolution)")
    add.add_argument(
        "--preprocess",
        choices=("torchvision", "timm", "lite"),
        default="torchvision",
        help="preset normalisation and crop ratio; the flags below override it",
    )
    add.add_argument("--mean", type=_triple, help="per-channel mean in 0..255 (timm: pretrained_cfg x 255)")
    add.add_argument("--std", type=_triple, help="per-channel std in 0..255")
    add.add_argument("--interpolation", choices=("bilinear", "bicubic"))
    add.add_argument(
        "--resize",
        "--resize-shorter",
        type=int,
        help="shorter side before the centre crop (for --crop pixels cropped)",
    )
    add.add_argument("--crop", type=int, help="with --resize: the crop that --resize is for (e.g. 224)")


def add_store_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``store ...`` under ``commands`` (the root parser's subparsers); each sets ``run``."""
    store = commands.add_parser("store", help="maintain the model store").add_subparsers(
        dest="store_command", required=True
    )

    def store_command(
        name: str, help: str, run: Callable[[argparse.Namespace], None]
    ) -> argparse.ArgumentParser:
        command: argparse.ArgumentParser = store.add_parser(name, help=help)
        command.add_argument(
            "--store", help=f"store directory (default: EDGEFIT_STORE_DIR or {DEFAULT_STORE})"
        )
        command.set_defaults(run=run)
        return command

    build = store_command("build", "build the default EfficientNet-Lite ladder, fp32 and int8", cmd_build)
    build.add_argument("--images", required=True, help="labelled images for calibration and evaluation")

    special = store_command(
        "specialize",
        "search a family's subnets and add them to the pool, fp32 and int8; with --device, choose "
        "this device's frontier of the store for its servers",
        cmd_specialize,
    )
    special.add_argument(
        "--device",
        action="store_true",
        help="profile the whole store here and cache this device's frontier (EDGEFIT_* settings apply)",
    )
    special.add_argument("--family", help="lite0, lite1 or lite2")
    special.add_argument("--images", help="labelled images: even positions search, odd score")
    special.add_argument("--resolutions", default="", help="comma-separated (default: the family's ladder)")
    special.add_argument(
        "--k",
        type=int,
        default=4,
        help="most subnets to write (each in fp32 and int8), shared among resolutions",
    )
    special.add_argument("--search-images", type=int, default=100, help="search-half images to score with")
    special.add_argument("--budget", type=float, default=60.0, help="search time budget in seconds")

    _add_arguments(
        store_command("add", "build a ladder of variants from an ONNX model exported elsewhere", cmd_add)
    )

    evaluate = store_command("evaluate", "measure top-1 on a labelled folder", cmd_evaluate)
    evaluate.add_argument("--images", required=True)
    evaluate.add_argument("--variants", help="comma-separated names (default: all)")
    evaluate.add_argument("--dataset", help="name to record (default: the folder's name)")

    cascades = store_command(
        "cascades",
        "record every variant's answers, from which servers plan confidence cascades",
        cmd_cascades,
    )
    cascades.add_argument("--images", required=True, help="labelled images: even positions plan, odd score")

    listing = store_command("list", "print the variants", cmd_list)
    listing.add_argument("--json", action="store_true")

    plot = store_command("plot", "plot the accuracy/latency frontier on this machine", cmd_plot)
    plot.add_argument("--out", default="frontier.png", help="PNG or SVG file to write")
    plot.add_argument("--runs", type=int, default=20)
    plot.add_argument("--threads", type=int, default=1)


# Commands that only read the store: they tidy it when they can, but never wait for a writer.
READING_COMMANDS = ("list", "plot")


def run_store_command(args: argparse.Namespace) -> None:
    """Runs a store command holding the store's lock, after removing what killed commands left
    there (model_store.debris): commands that write wait for one running on the same store."""
    from model_store.debris import remove_debris, store_lock

    root = _store_dir(args)
    reading = args.store_command in READING_COMMANDS

    def waiting() -> None:
        print(f"edgefit: waiting for another store command on {root} to finish", file=sys.stderr, flush=True)

    with store_lock(root, wait=not reading, waiting=waiting) as held:
        if held and os.access(root, os.W_OK):
            try:
                removed = remove_debris(root, unreferenced=True)
            except OSError as exc:
                print(f"edgefit: could not tidy {root}: {exc.strerror}", file=sys.stderr)
            else:
                if removed:
                    print(
                        f"edgefit: removed what killed store commands left: {', '.join(removed)}",
                        file=sys.stderr,
                    )
        args.run(args)
