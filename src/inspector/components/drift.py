"""Drift watch: cheap statistics of every inspected image, compared in a rolling window against a reference.

Lighting, fixtures and cameras drift; a model fitted on last month's images then scores this month's parts on
a different footing long before the verdicts look wrong. Each monitored statistic (the pass score and three
image statistics) keeps a rolling window of its newest values and compares it with a reference sample:

- the population stability index (PSI) over bins fixed from the reference (its quantiles), with additive
  smoothing so an empty bin gives a finite value; 0.1 is the usual "moderate", 0.2 the usual "alarm" level;
- two two-sample tests of the window against the reference: Kolmogorov–Smirnov (any change of shape) and the
  Mann–Whitney rank-sum test (a shift of the whole distribution, which is what a lighting change does; on real
  images it needs far fewer images than KS to see one).

The alarm rule (`DriftRule`, defaults): once a statistic's window holds `window` (50) values it is checked after
each new value; it *drifts* at a check when PSI > `psi_alarm` (0.2, over `bins` = 5 quantile bins) **and** the
smaller of the two p-values < `alpha` (1e-5). The alarm is raised when one statistic drifts on `raise_after` (2)
consecutive checks. It is cleared (hysteresis) when no statistic has had PSI > `psi_alarm` with a p-value below
the laxer `clear_alpha` (1e-3) for `clear_after` (50) consecutive checks, i.e. a whole window of ordinary parts.
Why these numbers: the window is about as many images as the alarm may take (50), and a window that small makes
PSI noisy (its mean on a stable stream is about (bins - 1) / window, hence 5 bins rather than 10); the strict
p-value keeps 4 statistics checked after every part silent over thousands of stable images. How fast and how
quietly this works on real images, and the smallest shift it sees, is measured in docs/benchmarks.md
(scripts/bench_drift.py).

A statistic without a reference (a model directory written before drift watch, a calibration without good
scores) takes its first `bootstrap` (200) values as the reference and says so in its `source`.

Pure numpy, no torch: this runs on the line box for every inspection.
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inspector.common.errors import InspectorError, ParameterError

IMAGE_STATISTICS = ("brightness", "contrast", "sharpness")
MONITORED = ("score", *IMAGE_STATISTICS)
REFERENCE_FILE = "drift_reference.json"
REFERENCE_FORMAT = 1
STATISTICS_SIDE = 160  # image statistics are taken on a gray copy about this many pixels on its longer side
MAX_REFERENCE = 2000  # a reference sample is thinned to this many values (evenly spaced order statistics)
_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 luma


class DriftReferenceError(InspectorError, ValueError):
    """A drift reference file that is damaged or written by an incompatible version."""


def image_statistics(rgb: np.ndarray) -> dict[str, float]:
    """Brightness (mean grey level), contrast (RMS: standard deviation of the grey levels) and sharpness
    (variance of the 4-neighbour Laplacian) of an RGB uint8 image, on a copy subsampled by striding to about
    `STATISTICS_SIDE` pixels: striding keeps single original pixels, so blur still shows in the Laplacian, and it
    costs a fraction of a millisecond at any image size."""
    step = max(1, -(-max(rgb.shape[:2]) // STATISTICS_SIDE))
    small = rgb[::step, ::step]
    gray = small.astype(np.float32) @ _GRAY if small.ndim == 3 else small.astype(np.float32)
    laplacian = (
        gray[1:-1, :-2] + gray[1:-1, 2:] + gray[:-2, 1:-1] + gray[2:, 1:-1] - 4.0 * gray[1:-1, 1:-1]
        if min(gray.shape) >= 3
        else np.zeros(1, np.float32)
    )
    return {
        "brightness": round(float(gray.mean()), 4),
        "contrast": round(float(gray.std()), 4),
        "sharpness": round(float(laplacian.var()), 4),
    }


# ---- the two comparisons ----------------------------------------------------------------------------------------


def bin_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Interior bin edges at the reference's quantiles k / bins (duplicates merged, so ties cannot make empty
    bins by construction). A value equal to an edge falls into the bin above it."""
    quantiles = np.quantile(reference, np.arange(1, bins) / bins)
    return np.unique(quantiles)


def bin_fractions(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Fractions of `values` per bin, smoothed (+0.5 per bin), so a bin the sample misses stays finite in PSI."""
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return (counts + 0.5) / (len(values) + 0.5 * len(counts))


def psi(reference_fractions: np.ndarray, window_fractions: np.ndarray) -> float:
    """Population stability index: sum over bins of (window - reference) * ln(window / reference)."""
    diff = window_fractions - reference_fractions
    return float(np.sum(diff * np.log(window_fractions / reference_fractions)))


def ks_test(reference_sorted: np.ndarray, sample: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov–Smirnov test: (statistic D, p-value) from the asymptotic Kolmogorov distribution
    with Stephens' small-sample correction (as in Numerical Recipes' `kstwo`); `reference_sorted` must be
    sorted ascending."""
    window = np.sort(sample)
    n, m = len(window), len(reference_sorted)
    if n == 0 or m == 0:
        return 0.0, 1.0
    pooled = np.concatenate([reference_sorted, window])
    cdf_reference = np.searchsorted(reference_sorted, pooled, side="right") / m
    cdf_window = np.searchsorted(window, pooled, side="right") / n
    statistic = float(np.max(np.abs(cdf_reference - cdf_window)))
    return statistic, kolmogorov_sf((math.sqrt(n * m / (n + m)) + 0.12 + 0.11 / math.sqrt(n * m / (n + m))) * statistic)


def rank_sum_test(reference_sorted: np.ndarray, sample: np.ndarray) -> float:
    """Two-sided p-value of the Mann–Whitney rank-sum test of `sample` against the sorted reference (normal
    approximation; ties count half). Far more powerful than KS against a shift of the whole distribution, what
    a lighting change does: on real images it flags a shift KS needs half again as many images for."""
    n, m = len(sample), len(reference_sorted)
    if n == 0 or m == 0:
        return 1.0
    below = np.searchsorted(reference_sorted, sample, side="left")
    not_above = np.searchsorted(reference_sorted, sample, side="right")
    u = float(np.sum(below + not_above)) / 2.0  # pairs (sample, reference) where the sample value is larger
    z = (u - n * m / 2.0) / math.sqrt(n * m * (n + m + 1) / 12.0)
    return math.erfc(abs(z) / math.sqrt(2.0))


def kolmogorov_sf(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution: 2 * sum_j (-1)^(j-1) exp(-2 j^2 lam^2)."""
    if lam < 0.2:  # the series converges slowly there, and the probability is 1 to 15 digits
        return 1.0
    j = np.arange(1, 101)
    terms = 2.0 * (-1.0) ** (j - 1) * np.exp(-2.0 * j**2 * lam**2)
    return float(min(1.0, max(0.0, terms.sum())))


# ---- the reference ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftReference:
    """Reference samples per statistic (sorted) and where they came from, e.g. "fit: 762 training images"."""

    samples: dict[str, np.ndarray]
    sources: dict[str, str]

    @classmethod
    def from_values(cls, values: Mapping[str, Sequence[float]], source: str) -> DriftReference:
        samples = {name: _thin(np.sort(np.asarray(v, dtype=np.float64))) for name, v in values.items() if len(v)}
        return cls(samples, dict.fromkeys(samples, source))

    @classmethod
    def from_images(cls, images: Sequence[np.ndarray], source: str) -> DriftReference:
        """The image statistics of `images` (decoded RGB uint8) as a reference."""
        stats = [image_statistics(image) for image in images]
        return cls.from_values({name: [s[name] for s in stats] for name in IMAGE_STATISTICS}, source)

    def merged(self, other: DriftReference) -> DriftReference:
        """This reference with `other`'s statistics added (or replacing this one's of the same name)."""
        return DriftReference({**self.samples, **other.samples}, {**self.sources, **other.sources})

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "format": REFERENCE_FORMAT,
                "statistics": {
                    name: {"source": self.sources[name], "values": [round(float(v), 6) for v in sample]}
                    for name, sample in self.samples.items()
                },
            },
            indent=1,
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> DriftReference:
        try:
            raw = json.loads(data)
            if raw.get("format") != REFERENCE_FORMAT:
                raise DriftReferenceError(f"drift reference format {raw.get('format')!r}, expected {REFERENCE_FORMAT}")
            statistics = raw["statistics"]
            samples = {name: np.sort(np.asarray(s["values"], dtype=np.float64)) for name, s in statistics.items()}
            sources = {name: str(s["source"]) for name, s in statistics.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            if isinstance(exc, DriftReferenceError):
                raise
            raise DriftReferenceError(f"drift reference is damaged: {exc}") from exc
        return cls({k: v for k, v in samples.items() if len(v)}, sources)

    @classmethod
    def read(cls, model_dir: Path) -> DriftReference | None:
        """The reference fit wrote into a model directory, or None where the directory predates drift watch."""
        path = Path(model_dir) / REFERENCE_FILE
        return cls.from_bytes(path.read_bytes()) if path.is_file() else None


def _thin(sorted_values: np.ndarray) -> np.ndarray:
    if len(sorted_values) <= MAX_REFERENCE:
        return sorted_values
    return sorted_values[np.linspace(0, len(sorted_values) - 1, MAX_REFERENCE).round().astype(int)]


# ---- the monitor ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftRule:
    """The alarm rule; the module docstring says why these defaults."""

    window: int = 50
    bins: int = 5
    psi_alarm: float = 0.2
    alpha: float = 1e-5
    clear_alpha: float = 1e-3
    raise_after: int = 2
    clear_after: int = 50
    bootstrap: int = 200
    history: int = 300  # values and check results kept per statistic for the plots

    def validate(self) -> DriftRule:
        if self.window < 10 or self.bins < 2 or self.bootstrap < self.bins:
            raise ParameterError(f"drift rule needs window >= 10, bins >= 2 and bootstrap >= bins: {self}")
        if not self.psi_alarm > 0 or not 0 < self.alpha <= self.clear_alpha < 1:
            raise ParameterError(f"drift rule needs psi_alarm > 0 and 0 < alpha <= clear_alpha < 1: {self}")
        if self.raise_after < 1 or self.clear_after < 1 or self.history < 1:
            raise ParameterError(f"drift rule needs raise_after, clear_after and history >= 1: {self}")
        return self


class _Statistic:
    """One monitored statistic: its reference (given, or the first `bootstrap` values), window and checks."""

    def __init__(self, name: str, rule: DriftRule, reference: np.ndarray | None, source: str | None) -> None:
        self.name = name
        self.rule = rule
        self.window: deque[float] = deque(maxlen=rule.window)
        self.values: deque[tuple[float, float]] = deque(maxlen=rule.history)  # (time, value)
        self.checks: deque[tuple[float, float, float, float]] = deque(maxlen=rule.history)  # time, PSI, KS p, rank p
        self.pending: list[float] = []  # bootstrap values while there is no reference yet
        self.observed = 0
        self.drifting_run = 0  # consecutive checks on which this statistic drifted
        self.unsettled = False  # drifting by the laxer p-value that clearing the alarm asks for
        self.psi: float | None = None
        self.ks_statistic: float | None = None
        self.ks_p: float | None = None
        self.rank_p: float | None = None
        self.source = source or f"first {rule.bootstrap} inspections after load"
        self.bootstrapped = reference is None
        self._set_reference(reference)

    def _set_reference(self, reference: np.ndarray | None) -> None:
        self.reference = None if reference is None else np.sort(np.asarray(reference, dtype=np.float64))
        if self.reference is not None:
            self.edges = bin_edges(self.reference, self.rule.bins)
            self.reference_fractions = bin_fractions(self.reference, self.edges)

    def observe(self, value: float, at: float) -> bool | None:
        """Add a value; None while there is nothing to check yet, else whether this statistic drifts now."""
        self.observed += 1
        self.values.append((at, value))
        if self.reference is None:
            self.pending.append(value)
            if len(self.pending) >= self.rule.bootstrap:
                self._set_reference(np.array(self.pending))
                self.pending = []
            return None
        self.window.append(value)
        if len(self.window) < self.rule.window:
            return None
        sample = np.fromiter(self.window, dtype=np.float64, count=len(self.window))
        self.psi = psi(self.reference_fractions, bin_fractions(sample, self.edges))
        self.ks_statistic, self.ks_p = ks_test(self.reference, sample)
        self.rank_p = rank_sum_test(self.reference, sample)
        self.checks.append((at, self.psi, self.ks_p, self.rank_p))
        p = min(self.ks_p, self.rank_p)
        drifting = self.psi > self.rule.psi_alarm and p < self.rule.alpha
        self.unsettled = self.psi > self.rule.psi_alarm and p < self.rule.clear_alpha
        self.drifting_run = self.drifting_run + 1 if drifting else 0
        return drifting

    def snapshot(self, series: bool) -> dict[str, Any]:
        ref = self.reference
        status = (
            f"collecting its reference: {len(self.pending)} of {self.rule.bootstrap}"
            if ref is None
            else f"filling the window: {len(self.window)} of {self.rule.window}"
            if len(self.window) < self.rule.window
            else "checked"
        )
        return {
            "name": self.name,
            "status": status,
            "psi": _round(self.psi),
            "ks_statistic": _round(self.ks_statistic),
            "ks_p": _sig(self.ks_p),
            "rank_p": _sig(self.rank_p),
            "drifting": self.drifting_run > 0,
            "window": len(self.window),
            "observed": self.observed,
            "window_mean": _round(float(np.mean(self.window))) if self.window else None,
            "reference_n": 0 if ref is None else len(ref),
            "reference_source": self.source,
            "reference_bootstrapped": self.bootstrapped,
            "reference_band": None if ref is None else [_round(float(q)) for q in np.quantile(ref, (0.05, 0.5, 0.95))],
            "values": [[_round(t, 3), _round(v)] for t, v in self.values] if series else [],
            "checks": [[_round(t, 3), _round(p), _sig(k), _sig(r)] for t, p, k, r in self.checks] if series else [],
        }


class DriftMonitor:
    """Rolling-window drift checks of several statistics against a reference, with one alarm (the rule in the
    module docstring). Thread-safe: the service feeds it from its store thread and reads it from requests."""

    def __init__(
        self,
        reference: DriftReference | None,
        rule: DriftRule | None = None,
        statistics: Sequence[str] = MONITORED,
    ) -> None:
        self.rule = (rule or DriftRule()).validate()
        samples = reference.samples if reference else {}
        sources = reference.sources if reference else {}
        self._stats = {
            name: _Statistic(name, self.rule, samples.get(name), sources.get(name) if name in samples else None)
            for name in statistics
        }
        self._lock = threading.Lock()
        self.alarm = False
        self.since: float | None = None  # when the alarm was raised (or last cleared)
        self.triggered_by: list[str] = []
        self._quiet_run = 0
        self.raised = 0  # alarms raised since the monitor started

    def observe(self, values: Mapping[str, float], at: float) -> bool:
        """Feed the newest values (missing statistics are skipped, e.g. the score of a part that did not pass)
        and return whether the alarm is on afterwards."""
        with self._lock:
            checked = False
            for name, value in values.items():
                stat = self._stats.get(name)
                if stat is not None and value is not None and math.isfinite(value):
                    checked |= stat.observe(float(value), at) is not None
            if checked:
                self._update(at)
            return self.alarm

    def _update(self, at: float) -> None:
        rule = self.rule
        if not self.alarm:
            firing = [s.name for s in self._stats.values() if s.drifting_run >= rule.raise_after]
            if firing:
                self.alarm, self.since, self.triggered_by, self._quiet_run = True, at, firing, 0
                self.raised += 1
            return
        quiet = not any(s.unsettled for s in self._stats.values())
        self._quiet_run = self._quiet_run + 1 if quiet else 0
        if self._quiet_run >= rule.clear_after:
            self.alarm, self.since, self.triggered_by = False, at, []

    def snapshot(self, series: bool = True) -> dict[str, Any]:
        """Everything the page, /v1/drift and `inspector drift` show: the rule, the alarm and every statistic,
        with the recent values and checks for plots unless `series` is false."""
        with self._lock:
            stats = {name: s.snapshot(series) for name, s in self._stats.items()}
            return {
                "alarm": self.alarm,
                "since": self.since,
                "triggered_by": list(self.triggered_by),
                "alarms_raised": self.raised,
                "rule": {
                    "window": self.rule.window,
                    "bins": self.rule.bins,
                    "psi_alarm": self.rule.psi_alarm,
                    "clear_alpha": self.rule.clear_alpha,
                    "alpha": self.rule.alpha,
                    "raise_after": self.rule.raise_after,
                    "clear_after": self.rule.clear_after,
                    "bootstrap": self.rule.bootstrap,
                },
                "statistics": stats,
            }

    def summary(self) -> str:
        """One line naming the alarm, for /readyz and logs (empty when there is none)."""
        with self._lock:
            if not self.alarm:
                return ""
            parts = [f"{name} PSI {self._stats[name].psi:.2f}" for name in self.triggered_by if self._stats[name].psi]
            return ", ".join(parts)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _sig(value: float | None) -> float | None:
    """A p-value to 3 significant digits (they span many orders of magnitude)."""
    return None if value is None else float(f"{value:.3g}")
