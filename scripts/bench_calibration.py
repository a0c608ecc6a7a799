"""Threshold calibration on unseen magnetic-tile images: does the false-reject rate stay within the stated bound?

Protocol (one category, default magnetic_tile from ../shared/datasets):

1. Fit PatchCore (tf_efficientnet_lite0 with inspector's offline weights, 256x256, 1% coreset, 2 threads) on
   train/good, or load it from --model-cache when that holds a model fitted with the same settings.
2. Score every test image once (test/good and every defect type).
3. For each seed: split test/good and each defect type in half at random (`split_holdout`, stratified). Calibrate
   on one half, measure on the other, for each false-reject target and two rules:
   * `normal`: the calibration half's good images only, threshold = k-th highest good score with k chosen so the
     false-reject rate (FRR) is <= target at 95% confidence (order statistics; falls back to the highest score
     with an honest, larger bound when there are too few good images);
   * `fpr`: the calibration half's good and defective images, lowest threshold with FRR <= target on them;
     its bound is the Clopper-Pearson limit of the false rejects it makes there.
4. Report per rule and target: good images calibrated on, threshold, the stated 95% upper bound of the FRR, the
   FRR measured on the unseen half (mean and range over seeds) and whether it is within the stated bound. The
   bound is a statement about the true rate, which the mean over seeds estimates; single halves of ~95 good images
   scatter around it by several points, so the count of seeds at or under the bound is shown as well.
5. Write the calibrate plots and report of one run (seed 0, rule fpr, target 0.05, pixel threshold from the
   calibration half's masks) to --out.

Run:

    PYTHONPATH=src python scripts/bench_calibration.py --out /tmp/bench_calibration/plots \
        --json /tmp/bench_calibration/bench.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from _bench_common import DEFAULT_DATA_ROOT, machine_info, markdown_table, set_up_fit_process, write_json

BACKBONE = "tf_efficientnet_lite0"
SETTINGS = {"backbone": BACKBONE, "layers": [2, 3], "image_size": 256, "coreset_ratio": 0.01, "batch_size": 8}
RULES = ("normal", "fpr")


def load_or_fit(cache: Path, data_root: Path, category: str, threads: int):
    """The cached model's scorer when it was fitted with these settings (every parameter, defaults included) on
    this category's train/good by this inspector, else a fresh fit's."""
    from inspector.data import Dataset
    from inspector.models.estimators import create_model
    from inspector.models.persistence import ModelDirError
    from inspector.models.scoring import load_scorer

    dataset = Dataset(data_root, category)
    train_dir = str(dataset.train_dir.resolve())
    # As the manifest stores them (tuples as lists); `threads` is how this run scores, not how it was fitted.
    wanted = json.loads(json.dumps(create_model("patchcore", threads=threads, **SETTINGS).get_params(), default=list))
    if (cache / "manifest.json").is_file():
        try:
            scorer = load_scorer(cache, threads=threads)
        except ModelDirError as exc:  # e.g. written by an older inspector
            print(f"not using the cached model: {exc}")
        else:
            if {**scorer.params, "threads": threads} == wanted and scorer.data_info.get("train_dir") == train_dir:
                print(f"using the cached model in {cache}")
                return scorer
    print(f"fitting PatchCore on {len(dataset.train())} images of {dataset.train_dir} (cached in {cache})")
    model = create_model("patchcore", threads=threads, **SETTINGS)
    model.fit(dataset.train(), progress=False)
    model.save(cache, data={"category": category, "data_root": str(data_root.resolve()), "train_dir": train_dir})
    return model.scorer_


def subset(scored: Any, samples: list[Any], index: dict[Path, int]) -> Any:
    from inspector.evaluation.scoring import Scored

    idx = np.array([index[s.path] for s in samples])
    maps = scored.maps[idx] if scored.maps is not None else None
    masks = scored.masks[idx] if scored.masks is not None else None
    return Scored(samples, scored.scores[idx], maps, masks)


def run_seed(scored: Any, index: dict[Path, int], seed: int, targets: list[float], confidence: float) -> list[dict]:
    """Calibrate on one half, measure on the other, for every rule and target."""
    from inspector.calibration.rules import choose_threshold
    from inspector.calibration.workflow import split_holdout

    cal_samples, hold_samples = split_holdout(scored.samples, 0.5, seed)
    cal, hold = subset(scored, cal_samples, index), subset(scored, hold_samples, index)
    good_hold, bad_hold = hold.scores[~hold.labels], hold.scores[hold.labels]
    rows = []
    for target in targets:
        for rule in RULES:
            keep = ~cal.labels if rule == "normal" else np.ones(len(cal.samples), bool)
            choice = choose_threshold(
                rule, cal.labels[keep], cal.scores[keep], target_fpr=target, confidence=confidence
            )
            e = choice.expected
            rows.append(
                {
                    "seed": seed,
                    "rule": rule,
                    "target": target,
                    "n_good": e["n_good"],
                    "n_defect": e["n_defect"],
                    "n_holdout_good": int(good_hold.size),
                    "threshold": choice.threshold,
                    "expected_frr": e["false_reject_rate"],
                    "bound": e["false_reject_rate_upper"],
                    "target_met": e["target_met"],
                    "k": e.get("order_statistic"),
                    "measured_frr": float(np.mean(good_hold >= choice.threshold)),
                    "measured_escape": float(np.mean(bad_hold < choice.threshold)),
                }
            )
    return rows


def summarize(rows: list[dict], targets: list[float]) -> tuple[list[str], list[list[Any]]]:
    headers = [
        "rule",
        "target FRR",
        "good images (cal / unseen)",
        "threshold (mean, range)",
        "stated 95% bound",
        "target assured",
        "expected FRR",
        "measured FRR on unseen half: mean [min, max]",
        "seeds <= bound",
        "within bound",
        "measured escape",
    ]
    table = []
    for target in targets:
        for rule in RULES:
            r = [row for row in rows if row["rule"] == rule and row["target"] == target]
            t = np.array([x["threshold"] for x in r])
            frr = np.array([x["measured_frr"] for x in r])
            bound = np.array([x["bound"] for x in r])
            k = f" (k = {r[0]['k']})" if r[0]["k"] else ""
            table.append(
                [
                    rule,
                    f"{target:.0%}",
                    f"{r[0]['n_good']} / {r[0]['n_holdout_good']}",
                    f"{t.mean():.3f} [{t.min():.3f}, {t.max():.3f}]",
                    _pct(bound.mean()) + k,
                    f"{sum(x['target_met'] for x in r)}/{len(r)}",
                    _pct(np.mean([x["expected_frr"] for x in r])),
                    f"{_pct(frr.mean())} [{_pct(frr.min())}, {_pct(frr.max())}]",
                    f"{int(np.sum(frr <= bound))}/{len(r)}",
                    "yes" if frr.mean() <= bound.mean() else "NO",
                    _pct(np.mean([x["measured_escape"] for x in r])),
                ]
            )
    return headers, table


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def write_one_run(scored: Any, index: dict[Path, int], out: Path, confidence: float) -> list[Path]:
    """What `inspector calibrate --holdout 0.5 --seed 0 --method fpr --target-fpr 0.05` writes, for one look."""
    from inspector.calibration.report import summary, write_html, write_plots
    from inspector.calibration.workflow import calibrate, split_holdout

    cal_samples, hold_samples = split_holdout(scored.samples, 0.5, 0)
    cal, hold = subset(scored, cal_samples, index), subset(scored, hold_samples, index)
    calibration = calibrate(
        cal,
        "fpr",
        target_fpr=0.05,
        confidence=confidence,
        name="bench-fpr-0.05",
        data={"source": "category", "category": "magnetic_tile", "holdout": {"fraction": 0.5, "seed": 0}},
        holdout=hold,
    )
    plots = write_plots(out, cal.labels, cal.scores, calibration)
    report = write_html(out, calibration, plots)
    (out / "calibration.json").write_text(json.dumps(calibration.to_dict(), indent=2))
    print(summary(calibration))
    return [*plots, report]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--model-cache", type=Path, default=Path("/tmp/inspector_bench_calibration/model"))
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.05, 0.01])
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_calibration/plots"), help="plots of one run")
    parser.add_argument("--json", type=Path, help="write every seed's numbers here")
    args = parser.parse_args()
    set_up_fit_process(args.threads)  # torch and FAISS; onnxruntime's come from the model's `threads`

    from inspector.calibration.workflow import score_images
    from inspector.data import Dataset
    from inspector.evaluation import metrics

    scorer = load_or_fit(args.model_cache, args.data_root, args.category, args.threads)
    samples = Dataset(args.data_root, args.category).test()
    print(f"scoring {len(samples)} test images once")
    scored = score_images(scorer, samples, progress=False)
    index = {s.path: i for i, s in enumerate(samples)}
    rows = [row for seed in range(args.seeds) for row in run_seed(scored, index, seed, args.targets, args.confidence)]
    headers, table = summarize(rows, args.targets)
    info = machine_info(packages=("torch", "onnxruntime", "faiss-cpu", "numpy", "scipy"))
    auroc = metrics.auroc(scored.labels, scored.scores)
    print(f"\n{args.category}: {len(samples)} test images, image AUROC {auroc:.4f}, {args.seeds} random half splits\n")
    print(markdown_table(headers, table))
    print(f"\nplots of one run (seed 0, rule fpr, target 5%) in {args.out}:")
    files = write_one_run(scored, index, args.out, args.confidence)
    print("\n".join(f"  {p}" for p in files))
    if args.json:
        write_json(args.json, {"machine": info, "image_auroc": auroc, "settings": SETTINGS, "rows": rows})
    print(f"\n{info['cpu_model']}, {info['usable_cpus']} usable CPUs, {info['date']}")


if __name__ == "__main__":
    main()
