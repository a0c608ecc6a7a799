"""The line runtime: exported bundles (fp32, fp16, int8) scored by the torch-free install against the fitted
model scored the way it was before exports existed, on the whole test set, in one run.

    python scripts/bench_runtime.py --model-dir /tmp/mt/model --data-root ../shared/datasets \
        --category magnetic_tile --linebox-python .linebox/bin/python

The model directory must be fitted and calibrated (`inspector fit`, `inspector calibrate`). Each variant is
exported with `export_bundle`; a variant the parity gate refuses is still written (outside the gate, marked
"refused") so that its speed and accuracy can be reported. Every evaluation runs `inspector evaluate` in its own
process, one after another: the model directory with this (full) install, the bundles with the line-box python.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from _bench_common import DEFAULT_DATA_ROOT, machine_info, markdown_table, write_json
from inspector.calibration import load_active_calibration
from inspector.export import ParityError, export_bundle
from inspector.export.bundle import PARITY_FILE
from inspector.models.golden import GOLDEN_FILE, GoldenSet
from inspector.models.persistence import NETWORK_FILE, read_model_dir, write_model_dir
from inspector.runtime.precision import PRECISIONS, convert_network


def evaluate(python: str, model_dir: Path, data_root: Path, category: str, threads: int) -> dict[str, Any]:
    """`inspector evaluate --json` in a fresh process; adds the per-image scores from its CSV."""
    with tempfile.TemporaryDirectory() as tmp:
        scores_csv = Path(tmp) / "scores.csv"
        command = [str(Path(python).parent / "inspector"), "evaluate", "--model-dir", str(model_dir), "--data-root"]
        command += [str(data_root), "--category", category, "--threads", str(threads), "-q", "--json"]
        done = subprocess.run([*command, "--csv", str(scores_csv)], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{' '.join(command)} failed:\n{done.stderr}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        with scores_csv.open() as f:
            report["scores"] = {row["path"]: float(row["score"]) for row in csv.DictReader(f)}
    return report


TIMING_SCRIPT = """
import json, statistics, sys, time
from inspector.components.knn import set_search_threads
from inspector.data.io import read_image
from inspector.models.scoring import load_scorer
model_dir, threads, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
set_search_threads(threads)
scorer = load_scorer(model_dir, threads=threads)
images = [read_image(p) for p in paths]
scorer.score(images[:1])
times = []
for image in images:
    start = time.perf_counter()
    scorer.score([image])
    times.append((time.perf_counter() - start) * 1e3)
print(json.dumps(statistics.median(times)))
"""


def time_scoring(python: str, model_dir: Path, images: list[str], threads: int) -> float:
    """Median ms per image at batch 1 (decoded image -> score and map) in a fresh process."""
    command = [python, "-c", TIMING_SCRIPT, str(model_dir), str(threads), *images]
    return float(json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout))


def export_variant(model_dir: Path, out: Path, precision: str, threads: int) -> str:
    """Export through the gate; a refused variant is written anyway (bench only) and its refusal returned."""
    try:
        return export_bundle(model_dir, out, precision, threads).summary()  # type: ignore[arg-type]
    except ParityError as refused:
        manifest, files = read_model_dir(model_dir)
        golden = GoldenSet.from_bytes(files[GOLDEN_FILE])
        files[NETWORK_FILE] = convert_network(files[NETWORK_FILE], precision, golden.batch("train"))  # type: ignore[arg-type]
        files[PARITY_FILE] = json.dumps(refused.report.to_dict()).encode()
        write_model_dir(out, {k: v for k, v in manifest.items() if k != "files"}, files)
        return "REFUSED by the gate: " + refused.report.summary()


def format_cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2e}" if abs(value) < 1e-2 else f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--linebox-python", default=".linebox/bin/python")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timing-images", type=int, default=100, help="images each speed round scores")
    parser.add_argument("--timing-rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    calibration = load_active_calibration(args.model_dir)
    if calibration is None:
        sys.exit(f"{args.model_dir} has no calibration: run `inspector calibrate` first")
    probe = subprocess.run([args.linebox_python, "-c", "import torch"], capture_output=True)
    if probe.returncode == 0:
        sys.exit(f"{args.linebox_python} can import torch: it is not a line-box install")

    reference = evaluate(sys.executable, args.model_dir, args.data_root, args.category, args.threads)
    reference_verdicts = {k: calibration.verdict(v) for k, v in reference["scores"].items()}
    rows: list[dict[str, Any]] = [
        {
            "variant": "model dir, full install (before)",
            "image AUROC": reference["image_auroc"],
            "pixel AUROC": reference["pixel_auroc"],
            "ms/img in evaluate": reference["ms_per_image"],
        }
    ]
    gates: dict[str, str] = {}
    workdir = Path(tempfile.mkdtemp(prefix="inspector-bench-runtime-"))
    try:
        for precision in PRECISIONS:
            bundle = workdir / precision
            gates[precision] = export_variant(args.model_dir, bundle, precision, args.threads)
            print(f"{precision}: {gates[precision]}", file=sys.stderr)
            result = evaluate(args.linebox_python, bundle, args.data_root, args.category, args.threads)
            names = sorted(reference["scores"])
            ref = np.array([reference["scores"][n] for n in names])
            got = np.array([result["scores"][n] for n in names])
            flips = sum(calibration.verdict(result["scores"][n]) != reference_verdicts[n] for n in names)
            rows.append(
                {
                    "variant": f"{precision} bundle, line-box install",
                    "image AUROC": result["image_auroc"],
                    "pixel AUROC": result["pixel_auroc"],
                    "ms/img in evaluate": result["ms_per_image"],
                    "|d image AUROC|": abs(result["image_auroc"] - reference["image_auroc"]),
                    "|d pixel AUROC|": abs(result["pixel_auroc"] - reference["pixel_auroc"]),
                    "max rel score diff": float(np.max(np.abs(got - ref) / np.abs(ref))),
                    "verdict flips": f"{flips} / {len(names)}",
                    "gate": "refused" if gates[precision].startswith("REFUSED") else "passed",
                    "network MB": round((bundle / NETWORK_FILE).stat().st_size / 1e6, 2),
                }
            )
        # Speed, alternating: every variant scores the same images in each round, so a change in the machine's
        # load hits all of them alike; the row gets the median of its rounds' medians.
        images = sorted(reference["scores"])[:: max(1, len(reference["scores"]) // args.timing_images)]
        variants = [(sys.executable, args.model_dir)] + [(args.linebox_python, workdir / p) for p in PRECISIONS]
        rounds: list[list[float]] = [[] for _ in variants]
        for _ in range(args.timing_rounds):
            for i, (python, model_dir) in enumerate(variants):
                rounds[i].append(time_scoring(python, model_dir, images, args.threads))
        for row, timings in zip(rows, rounds, strict=True):
            row["ms/img, alternating"] = statistics.median(timings)
            row["rounds"] = " ".join(f"{t:.1f}" for t in timings)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(machine_info()))
    print(f"calibration {calibration.name}: threshold {calibration.image_threshold:.4g}")
    headers = list(dict.fromkeys(key for row in rows for key in row))
    print(markdown_table(headers, [[format_cell(row.get(h, "")) for h in headers] for row in rows]))
    for precision, line in gates.items():
        print(f"- {precision}: {line}")
    if args.json:
        write_json(args.json, {"rows": rows, "gates": gates})


if __name__ == "__main__":
    main()
