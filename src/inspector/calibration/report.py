"""What a calibration means, for people: a terminal summary, four plots and a one-page HTML report.

Plots are on the calibration images: ROC and PR curves with the chosen operating point, the good vs defective score
histogram with the threshold (and review band) marked, and the false-reject / escape rates against the threshold
with the confidence bound, so the trade-off behind the number is visible. matplotlib draws without pyplot
(Agg canvas), so no display is needed.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from inspector.calibration.calibration import Calibration
from inspector.calibration.rules import RULES, check_scores, upper_bound
from inspector.evaluation import metrics

GOOD_COLOR = "#2a7ab0"
DEFECT_COLOR = "#d1495b"
THRESHOLD_COLOR = "#222222"
BAND_COLOR = "#f2b134"


def pct(rate: float | None) -> str:
    """A rate as a percentage with three significant digits (0.0104 -> '1.04%')."""
    return "n/a" if rate is None else f"{100 * rate:.3g}%"


# ---- text ----------------------------------------------------------------------------------------------------


def targets_text(c: Calibration) -> str:
    """E.g. 'false rejects <= 1% @95%'; empty for rules without a target."""
    parts = []
    if "false_reject_rate" in c.targets:
        parts.append(f"false rejects <= {pct(c.targets['false_reject_rate'])}")
    if "recall" in c.targets:
        parts.append(f"recall >= {pct(c.targets['recall'])}")
    return f"{', '.join(parts)} @{c.targets.get('confidence', 0.95):.0%}" if parts else "-"


def summary(calibration: Calibration) -> str:
    """The terminal summary: rule, raw threshold, expected rates with bounds, confusion matrix, holdout check."""
    c, e, d = calibration, calibration.expected, calibration.data
    conf = e.get("confidence", c.targets.get("confidence", 0.95))
    lines = [f"calibration {c.name}: rule {c.rule} ({RULES.get(c.rule, c.rule)})"]
    where = d.get("category") or d.get("dir") or d.get("source", "?")
    left_out = d.get("training_images_excluded")
    extra = f"; {left_out} training images left out" if left_out else ""
    if d.get("training_images_included"):
        extra = f"; includes {d['training_images_included']} TRAINING images (optimistic)"
    lines.append(f"  {'images':<18}{d.get('n_good', 0)} good, {d.get('n_defect', 0)} defective ({where}{extra})")
    lines.append(
        f"  {'image threshold':<18}{c.image_threshold:.6g} (raw score; normalised score = score / threshold,"
        " so 1.0 is the threshold)"
    )
    if c.review_band:
        low, high = c.review_band
        lines.append(
            f"  {'review band':<18}{low:g}x .. {high:g}x threshold: raw {low * c.image_threshold:.6g} .. "
            f"{high * c.image_threshold:.6g} go to a person"
        )
    if "false_reject_rate" in e:
        if "order_statistic" in e:  # the normal rule: k/(n+1) is the expected rate on new parts
            seen = f"expected {pct(e['false_reject_rate'])} (threshold = k-th highest of {e['n_good']}, k = "
            seen += f"{e['order_statistic']})"
        else:
            seen = f"{pct(e['false_reject_rate'])} here ({e['false_rejects']}/{e['n_good']})"
        lines.append(
            f"  {'false rejects':<18}{seen}, <= {pct(e['false_reject_rate_upper'])} at {conf:.0%} confidence"
            f"{_target_text(c, 'false_reject_rate')}"
        )
    if "escape_rate" in e:
        lines.append(
            f"  {'escapes':<18}{pct(e['escape_rate'])} here ({e['escapes']}/{e['n_defect']}), "
            f"<= {pct(e['escape_rate_upper'])} at {conf:.0%} confidence{_target_text(c, 'recall')}"
        )
    if c.pixel_threshold is not None:
        lines.append(f"  {'pixel threshold':<18}{c.pixel_threshold:.6g} ({c.pixel_rule})")
    lines += ["  confusion matrix on these images:", *_matrix_lines(e.get("confusion", {}), "    ")]
    measured = e.get("measured_on_holdout")
    if measured:
        h = d.get("holdout", {})
        lines.append(
            f"  measured on the holdout ({h.get('n_good', 0)} good, {h.get('n_defect', 0)} defective, "
            f"never used to choose): false-reject rate {pct(measured['false_reject_rate'])}, "
            f"escape rate {pct(measured['escape_rate'])}"
        )
        lines += _matrix_lines(measured, "    ")
    if e.get("note"):
        lines.append(f"  NOTE: {e['note']}")
    return "\n".join(lines)


def _target_text(c: Calibration, key: str) -> str:
    if key not in c.targets:
        return ""
    shown = pct(c.targets[key])
    if c.expected.get("target_met"):
        met = "met at this confidence"
    elif c.rule == "normal":
        met = "NOT met: too few good images (see NOTE)"
    else:
        met = "met on these images but NOT assured at this confidence"
    return f"; target {'recall ' if key == 'recall' else ''}{shown}: {met}"


def _matrix_lines(counts: dict[str, Any], indent: str) -> list[str]:
    if not counts:
        return []
    present = [
        k for k, n in (("good", counts["false_reject_rate"]), ("defective", counts["escape_rate"])) if n is not None
    ]
    cells = {
        "good": (counts["true_pass"], counts["false_reject"]),
        "defective": (counts["escape"], counts["true_fail"]),
    }
    rows = [f"{indent}{'at the threshold':<18}{'pass':>8}{'fail':>8}"]
    rows += [f"{indent}{k:<18}{cells[k][0]:>8}{cells[k][1]:>8}" for k in present]
    if "verdicts" in counts:
        v = counts["verdicts"]
        rows.append(f"{indent}{'with review band':<18}{'pass':>8}{'review':>8}{'fail':>8}")
        rows += [f"{indent}{k:<18}{v[k]['pass']:>8}{v[k]['review']:>8}{v[k]['fail']:>8}" for k in present]
    return rows


# ---- plots ---------------------------------------------------------------------------------------------------


def write_plots(folder: Path, labels: np.ndarray, scores: np.ndarray, calibration: Calibration) -> list[Path]:
    """roc.png and pr.png (when both classes are present), histogram.png and rates.png; returns the files."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state, safe in a service thread

    y, s = check_scores(labels, scores)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    plots = [("histogram.png", _histogram), ("rates.png", _rates)]
    if y.any() and not y.all():
        plots = [("roc.png", _roc), ("pr.png", _pr), *plots]
    for name, draw in plots:
        fig = Figure(figsize=(7, 5), dpi=110)
        ax = fig.subplots()
        draw(ax, y, s, calibration)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / name)
        written.append(folder / name)
    return written


def _operating_point(y: np.ndarray, s: np.ndarray, t: float) -> tuple[float, float, float]:
    """(false-reject rate, recall, precision) at threshold t."""
    fail = s >= t
    tp = np.count_nonzero(fail & y)
    n_good, n_defect = int(np.count_nonzero(~y)), int(np.count_nonzero(y))
    return np.count_nonzero(fail & ~y) / n_good, tp / n_defect, tp / max(1, int(np.count_nonzero(fail)))


def _roc(ax: Any, y: np.ndarray, s: np.ndarray, c: Calibration) -> None:
    fpr, tpr, _ = metrics.roc_curve(y, s)
    ax.plot(fpr, tpr, color=GOOD_COLOR, lw=2, label=f"ROC (AUROC {metrics.auroc(y, s):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls=":", label="chance")
    x, r, _ = _operating_point(y, s, c.image_threshold)
    ax.plot(x, r, "o", color=THRESHOLD_COLOR, ms=8, label=f"threshold: false rejects {pct(x)}, recall {pct(r)}")
    if "false_reject_rate" in c.targets:
        ax.axvline(c.targets["false_reject_rate"], color=DEFECT_COLOR, ls="--", label="false-reject target")
    ax.set(
        xlabel="false-reject rate (share of good parts failed)",
        ylabel="recall (share of defects caught)",
        title=f"ROC curve, {int((~y).sum())} good / {int(y.sum())} defective images",
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
    )
    ax.legend(loc="lower right")


def _pr(ax: Any, y: np.ndarray, s: np.ndarray, c: Calibration) -> None:
    precision, recall, _ = metrics.precision_recall_curve(y, s)
    best_f1, _ = metrics.f1_max(y, s)
    ax.plot(
        recall,
        precision,
        drawstyle="steps-post",
        color=GOOD_COLOR,
        lw=2,
        label=f"precision-recall (best F1 {best_f1:.3f})",
    )
    _, r, p = _operating_point(y, s, c.image_threshold)
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    ax.plot(
        r, p, "o", color=THRESHOLD_COLOR, ms=8, label=f"threshold: recall {pct(r)}, precision {pct(p)}, F1 {f1:.3f}"
    )
    ax.axhline(y.mean(), color="grey", lw=1, ls=":", label=f"share of defective images ({pct(float(y.mean()))})")
    ax.set(
        xlabel="recall (share of defects caught)",
        ylabel="precision (share of failed parts truly defective)",
        title="Precision-recall curve",
        xlim=(-0.01, 1.01),
        ylim=(0.0, 1.02),
    )
    ax.legend(loc="lower left")


def _histogram(ax: Any, y: np.ndarray, s: np.ndarray, c: Calibration) -> None:
    bins = np.histogram_bin_edges(s, bins=min(60, max(10, s.size // 4)))
    ax.hist(s[~y], bins=bins, color=GOOD_COLOR, alpha=0.65, label=f"good ({int((~y).sum())})")
    if y.any():
        ax.hist(s[y], bins=bins, color=DEFECT_COLOR, alpha=0.55, label=f"defective ({int(y.sum())})")
    _mark_threshold(ax, c)
    top = ax.secondary_xaxis("top", functions=(lambda v: v / c.image_threshold, lambda v: v * c.image_threshold))
    top.set_xlabel("normalised score (multiples of the threshold)")
    ax.set(xlabel="image score (raw)", ylabel="number of images", title="Scores of good and defective images")
    ax.legend(loc="upper right")


def _rates(ax: Any, y: np.ndarray, s: np.ndarray, c: Calibration) -> None:
    conf = c.expected.get("confidence", 0.95)
    grid = np.unique(s)
    good, bad = np.sort(s[~y]), np.sort(s[y])
    if good.size:
        rejects = good.size - np.searchsorted(good, grid, side="left")  # good scores >= each threshold
        bound = [100 * upper_bound(int(x), good.size, conf) for x in rejects]
        ax.step(grid, 100 * rejects / good.size, where="pre", color=GOOD_COLOR, lw=2, label="false-reject rate")
        ax.step(grid, bound, where="pre", color=GOOD_COLOR, lw=1, ls="--", label=f"its {conf:.0%} upper bound")
    if bad.size:
        escapes = np.searchsorted(bad, grid, side="left")  # defect scores < each threshold
        ax.step(grid, 100 * escapes / bad.size, where="pre", color=DEFECT_COLOR, lw=2, label="escape rate")
    if "false_reject_rate" in c.targets:
        ax.axhline(100 * c.targets["false_reject_rate"], color=GOOD_COLOR, ls=":", label="false-reject target")
    if "recall" in c.targets:
        ax.axhline(100 * (1 - c.targets["recall"]), color=DEFECT_COLOR, ls=":", label="escape target")
    _mark_threshold(ax, c)
    ax.set(
        xlabel="image threshold (raw score)",
        ylabel="rate (%)",
        ylim=(-1, 101),
        title="False-reject and escape rate if the threshold were set here",
    )
    ax.legend(loc="best")


def _mark_threshold(ax: Any, c: Calibration) -> None:
    ax.axvline(c.image_threshold, color=THRESHOLD_COLOR, lw=2, label=f"threshold {c.image_threshold:.4g} (1.0x)")
    if c.review_band:
        low, high = c.review_band
        ax.axvspan(
            low * c.image_threshold,
            high * c.image_threshold,
            color=BAND_COLOR,
            alpha=0.25,
            label=f"review band {low:g}x..{high:g}x",
        )


# ---- HTML ----------------------------------------------------------------------------------------------------


def write_html(folder: Path, calibration: Calibration, plots: list[Path]) -> Path:
    """A one-page report beside the plots: the summary, the confusion matrix and the pictures."""
    c = calibration
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in [
            ("rule", f"{c.rule}: {RULES.get(c.rule, '')}"),
            ("image threshold (raw)", f"{c.image_threshold:.6g}"),
            ("normalised score", "score / threshold (1.0 = at the threshold, 1.3 = 30% above)"),
            ("review band", f"{c.review_band[0]:g}x .. {c.review_band[1]:g}x" if c.review_band else "none"),
            (
                "pixel threshold",
                f"{c.pixel_threshold:.6g} ({c.pixel_rule})" if c.pixel_threshold is not None else "none",
            ),
            ("targets", targets_text(c)),
            ("created", c.created),
        ]
    )
    matrix = _html_matrix("Confusion matrix at the threshold (calibration images)", c.expected.get("confusion"))
    matrix += _html_matrix("Measured on the holdout (never used to choose)", c.expected.get("measured_on_holdout"))
    images = "".join(f'<figure><img src="{p.name}" alt="{p.stem}"></figure>' for p in plots)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Calibration {html.escape(c.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} table{{border-collapse:collapse;margin:1em 0}}
th,td{{border:1px solid #ccc;padding:4px 10px;text-align:left}} td.n{{text-align:right}}
img{{max-width:520px;margin:4px}} figure{{display:inline-block;margin:0}} pre{{background:#f6f6f6;padding:1em}}</style>
</head><body><h1>Calibration {html.escape(c.name)}</h1>
<table>{rows}</table>{matrix}
<h2>Summary</h2><pre>{html.escape(summary(c))}</pre>
<h2>Plots</h2>{images}
</body></html>
"""
    path = folder / "report.html"
    path.write_text(page)
    return path


def _html_matrix(title: str, counts: dict[str, Any] | None) -> str:
    if not counts:
        return ""

    def row(name: str, passed: int, failed: int) -> str:
        return f'<tr><th>{name}</th><td class="n">{passed}</td><td class="n">{failed}</td></tr>'

    return (
        f"<h2>{html.escape(title)}</h2><table><tr><th></th><th>pass</th><th>fail</th></tr>"
        f"{row('good', counts['true_pass'], counts['false_reject'])}"
        f"{row('defective', counts['escape'], counts['true_fail'])}</table>"
        f"<p>false-reject rate {pct(counts['false_reject_rate'])}, escape rate {pct(counts['escape_rate'])}</p>"
    )
