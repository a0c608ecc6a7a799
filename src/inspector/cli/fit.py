"""`inspector fit`: fit a model on good images and write its model directory (the fitting half: imports torch)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inspector.cli.arguments import (
    Subcommands,
    UsageError,
    add_command,
    add_data_args,
    add_threads_args,
    int_tuple,
    set_pairs,
    size,
    training_stack,
)
from inspector.common.names import DEFAULT_MODEL_KIND, ImageScore, IndexKind, ModelKind, Runtime, choices

if TYPE_CHECKING:
    from inspector.data.mvtec import Dataset
    from inspector.models.golden import GoldenRole


def add_parser(sub: Subcommands) -> None:
    p = add_command(sub, "fit", run, "fit a model on good images")
    add_data_args(p)
    p.add_argument("--train-dir", help="fit on a plain folder of good images instead of <category>/train/good")
    p.add_argument("--model", choices=choices(ModelKind), help=f"method (default: config or {DEFAULT_MODEL_KIND})")
    p.add_argument("--out", type=Path, help="model directory to write (default: models/<category>)")
    p.add_argument("--config", help="settings file (default: configs/mvtec/<category>.yaml when present)")
    p.add_argument("--backbone", help="timm backbone name (default tf_efficientnet_lite0, offline weights)")
    p.add_argument("--weights", help="local backbone weights file (.pth/.safetensors) for air-gapped machines")
    p.add_argument("--layers", type=int_tuple, help="backbone stages to use, e.g. '2,3'")
    p.add_argument("--image-size", type=size, help="resize to N or HxW pixels")
    p.add_argument("--crop-size", type=size, help="centre-crop to N or HxW after resizing (0: no crop)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--coreset-ratio", type=float, help="PatchCore: fraction of patches kept in the memory bank")
    p.add_argument("--index", choices=choices(IndexKind), help="PatchCore: FAISS index kind (default hnsw)")
    p.add_argument("--embed-dim", type=int, help="PatchCore: project patch features to this many dimensions")
    p.add_argument(
        "--image-score",
        choices=choices(ImageScore),
        help="PatchCore: image score = mean of the smoothed map's highest pixels (default; --set map_top_fraction=0"
        " for its peak), max patch distance, or the paper's re-weighted max",
    )
    p.add_argument("--n-features", type=int, help="PaDiM: random channel subset size")
    p.add_argument("--epochs", type=int, help="FastFlow: training epochs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other model parameter")
    p.add_argument(
        "--runtime",
        choices=choices(Runtime),
        help="network runtime for feature extraction while fitting (default onnxruntime)",
    )
    add_threads_args(p)


def run(args: argparse.Namespace) -> int:
    torch = training_stack()  # first: the imports below need it
    from inspector.common.system import cpu_threads, return_large_frees_to_the_system
    from inspector.components.knn import set_search_threads
    from inspector.data.mvtec import Dataset, list_images
    from inspector.models.estimators import create_model
    from inspector.models.settings import find_category_config, read_config, resolve_fit_settings

    # Thread counts (torch, FAISS) and the allocator are process-wide: set once, here, never by a model.
    torch.set_num_threads(cpu_threads(args.threads))
    set_search_threads(args.threads)
    return_large_frees_to_the_system()

    if args.train_dir:
        train_dir = Path(args.train_dir)
        if not train_dir.is_dir():
            raise UsageError(f"--train-dir {train_dir} is not a folder")
        images = list_images(train_dir)
        if not images:
            raise UsageError(f"no images in {train_dir}")
        golden: list[tuple[GoldenRole, Path]] = []
        data: dict[str, Any] = {"train_dir": str(train_dir.resolve()), "category": args.category}
    elif args.category:
        dataset = Dataset(args.data_root, args.category)
        images = dataset.train()
        train_dir = dataset.train_dir
        golden = golden_test_images(dataset)
        data = {
            "data_root": str(Path(args.data_root).resolve()),
            "category": args.category,
            "train_dir": str(train_dir.resolve()),
        }
    else:
        raise UsageError("say what to fit on: --category NAME (with --data-root) or --train-dir DIR")

    config_path = Path(args.config) if args.config else find_category_config(args.category)
    config = read_config(config_path) if config_path else {}
    overrides = {
        "backbone": args.backbone,
        "weights": args.weights,
        "layers": args.layers,
        "image_size": args.image_size,
        "crop_size": args.crop_size,
        "batch_size": args.batch_size,
        "runtime": args.runtime,
        "threads": args.threads,
        "seed": args.seed,
        "coreset_ratio": args.coreset_ratio,
        "index": args.index,
        "embed_dim": args.embed_dim,
        "image_score": args.image_score,
        "epochs": args.epochs,
        "n_features": args.n_features,
    }
    if args.crop_size == 0:
        overrides["crop_size"] = None
        config.pop("crop_size", None)
    kind, params = resolve_fit_settings(config, args.model, overrides, set_pairs(args.set))
    if args.image_size and args.crop_size is None and config.get("crop_size"):
        print(
            f"crop_size scaled with --image-size: {config['crop_size']} of {config.get('image_size')} px becomes "
            f"{params['crop_size']} of {args.image_size} (give --crop-size to choose, 0 for none)",
            file=sys.stderr,
        )
    model = create_model(kind).set_params(**params)  # an unknown setting is a ParameterError naming the known ones
    out = args.out or Path("models") / (args.category or train_dir.name)
    source = f" (config {config_path})" if config_path else ""
    print(f"fitting {kind} on {len(images)} images from {train_dir}{source}", file=sys.stderr)
    model.fit(images, progress=not args.quiet, golden=golden)
    data["config"] = str(config_path) if config_path else None
    model.save(out, data=data)
    info = model.fit_info_
    bank = f", bank {info['bank_size']} patches" if "bank_size" in info else ""
    if info.get("coreset_spilled"):
        bank += " (picked from patches spilled to disk past coreset_budget_mb)"
    elif info.get("coreset_exact") is False:
        bank += " (picked in two levels past coreset_budget_mb)"
    print(
        f"fitted {kind}: {info['n_images']} images{bank}, {info['seconds']:.1f} s, "
        f"peak memory {info['peak_rss_mb']:.0f} MiB -> {out}"
    )
    return 0


def golden_test_images(dataset: Dataset) -> list[tuple[GoldenRole, Path]]:
    """A spread of the labelled test images, good and defective, for the golden set exports are checked on."""
    from inspector.models.golden import GOLDEN_TEST_IMAGES, spread

    chosen: list[tuple[GoldenRole, Path]] = []
    samples = dataset.test()
    roles: tuple[tuple[GoldenRole, bool], ...] = (("good", False), ("defect", True))
    for role, defective in roles:
        paths = [s.path for s in samples if s.is_defect == defective]
        chosen += [(role, paths[i]) for i in spread(paths, GOLDEN_TEST_IMAGES)]
    return chosen
