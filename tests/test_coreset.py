"""Greedy k-center coreset: what PatchCore's memory bank relies on."""

from __future__ import annotations

import logging
import shutil
import subprocess
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from inspector.common.errors import InspectorError
from inspector.common.system import filesystem_type
from inspector.components.coreset import CoresetSpillError, StreamingCoreset, greedy_coreset


def _covering_radius(points: np.ndarray, centers: np.ndarray) -> float:
    d = np.linalg.norm(points[:, None, :] - centers[None], axis=2)
    return float(d.min(axis=1).max())


def test_selects_distinct_indices_deterministically() -> None:
    x = np.random.default_rng(0).normal(size=(500, 16)).astype(np.float32)
    a = greedy_coreset(x, 50, projection_dim=None, seed=3)
    assert len(a) == 50
    assert len(set(a.tolist())) == 50
    np.testing.assert_array_equal(a, greedy_coreset(x, 50, projection_dim=None, seed=3))


def test_covers_far_better_than_random_and_finds_every_cluster() -> None:
    rng = np.random.default_rng(1)
    centers = rng.normal(scale=20.0, size=(10, 8))
    x = np.concatenate([c + rng.normal(size=(100, 8)) for c in centers]).astype(np.float32)
    chosen = greedy_coreset(x, 10, projection_dim=None)
    assert len({int(i) // 100 for i in chosen}) == 10  # one point from each cluster
    random = rng.choice(len(x), 10, replace=False)
    assert _covering_radius(x, x[chosen]) < 0.5 * _covering_radius(x, x[random])


def _min_separation(centers: np.ndarray) -> float:
    d = np.linalg.norm(centers[:, None, :] - centers[None], axis=2)
    return float(d[np.triu_indices(len(centers), 1)].min())


def test_greedy_centers_are_farther_apart_than_the_radius_they_leave() -> None:
    # Farthest-point selection's certificate: each pick was the farthest point when it was chosen, so any two
    # centers lie at least the final covering radius apart, and no k-subset can cover with less than half that
    # radius (the 2-approximation). Rows taken without the algorithm (here the first 12) do not have it.
    x = np.random.default_rng(2).uniform(size=(300, 2)).astype(np.float32)
    greedy = x[greedy_coreset(x, 12, projection_dim=None)]
    radius = _covering_radius(x, greedy)
    assert _min_separation(greedy) >= radius - 1e-6
    first = x[:12]
    assert _min_separation(first) < _covering_radius(x, first)
    rng = np.random.default_rng(3)
    best_random = min(_covering_radius(x, x[rng.choice(300, 12, replace=False)]) for _ in range(200))
    assert radius < best_random


def _greedy_updating_every_row(x: np.ndarray, n_select: int, seed: int) -> np.ndarray:
    """The plain farthest-point pass (the code before blocks): every row's distance updated at every pick."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.from_numpy(x)
    sq_norms = torch.linalg.vector_norm(rows, dim=1).square_()
    min_dist = torch.full((len(rows),), float("inf"))
    selected = [int(torch.randint(len(rows), (1,), generator=generator))]
    while len(selected) < n_select:
        dist = torch.addmv(sq_norms, rows, rows[selected[-1]], alpha=-2.0).add_(sq_norms[selected[-1]])
        torch.minimum(min_dist, dist, out=min_dist)
        selected.append(int(torch.argmax(min_dist)))
    return np.array(selected)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_blocked_pass_picks_exactly_what_updating_every_row_picks(
    monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    import inspector.components.coreset as coreset

    monkeypatch.setattr(coreset, "PART_ROWS", 64)  # dozens of blocks, the last one short
    rng = np.random.default_rng(10)
    spread = rng.normal(size=(4003, 24)).astype(np.float32)
    ties = rng.integers(0, 3, size=(3001, 6)).astype(np.float32)  # 729 distinct rows: equal distances everywhere
    clumps = np.repeat(rng.normal(size=(400, 40)), 5, axis=0)[rng.permutation(2000)].astype(np.float32)
    for x, n_select in ((spread, 300), (ties, 200), (clumps, 300)):
        for seed in (0, 1):
            expected = _greedy_updating_every_row(x, n_select, seed)
            picked = greedy_coreset(x, n_select, projection_dim=None, seed=seed, threads=threads)
            np.testing.assert_array_equal(picked, expected)


def test_full_size_blocks_pick_what_updating_every_row_picks() -> None:
    x = np.random.default_rng(11).normal(size=(5003, 8)).astype(np.float32)  # blocks of 2048 rows, the last short
    np.testing.assert_array_equal(
        greedy_coreset(x, 150, projection_dim=None, seed=4, threads=2), _greedy_updating_every_row(x, 150, 4)
    )


def test_rejects_non_finite_features() -> None:
    x = np.ones((100, 4), dtype=np.float32)
    x[7, 2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        greedy_coreset(x, 10, projection_dim=None)


def test_streaming_returns_the_requested_fraction_and_bounds_its_pool() -> None:
    rng = np.random.default_rng(4)
    stream = StreamingCoreset(ratio=0.01, oversample=10, chunk_size=2048, seed=0, exact_budget_mb=0, fallback="stream")
    for _ in range(10):
        stream.add(rng.normal(size=(1024, 32)).astype(np.float32))
        assert stream.pool_size <= 0.1 * stream.n_seen + 2048  # reduced chunks + at most one pending chunk
    bank = stream.finalize()
    assert bank.shape == (round(0.01 * 10 * 1024), 32)


def test_streaming_coreset_covers_like_the_one_shot_coreset() -> None:
    rng = np.random.default_rng(5)
    x = np.concatenate([c + rng.normal(size=(400, 8)) for c in rng.normal(scale=10, size=(20, 8))])
    x = x[rng.permutation(len(x))].astype(np.float32)
    stream = StreamingCoreset(ratio=0.02, chunk_size=1000, projection_dim=None, exact_budget_mb=0, fallback="stream")
    for part in np.array_split(x, 8):
        stream.add(part)
    streamed = _covering_radius(x, stream.finalize())
    one_shot = _covering_radius(x, x[greedy_coreset(x, round(0.02 * len(x)), projection_dim=None)])
    assert streamed <= 2.0 * one_shot


def test_within_its_memory_budget_the_stream_is_the_one_shot_coreset() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3000, 16)).astype(np.float32)
    stream = StreamingCoreset(ratio=0.02, chunk_size=500, projection_dim=None, seed=7, exact_budget_mb=1.0)
    for part in np.array_split(x, 6):
        stream.add(part)
    assert stream.exact
    assert stream.pool_size == len(x)  # 188 KiB held, under 1 MiB: nothing reduced yet
    np.testing.assert_array_equal(stream.finalize(), x[greedy_coreset(x, 60, projection_dim=None, seed=7)])


def test_past_its_memory_budget_the_stream_reduces_what_it_held() -> None:
    rng = np.random.default_rng(8)
    # 0.25 MiB = 2048 x 32
    stream = StreamingCoreset(ratio=0.01, chunk_size=1024, seed=0, exact_budget_mb=0.25, fallback="stream")
    stream.add(rng.normal(size=(1500, 32)).astype(np.float32))
    assert stream.exact
    stream.add(rng.normal(size=(1500, 32)).astype(np.float32))
    assert not stream.exact
    assert stream.pool_size < 3000  # two whole chunks reduced, the rest pending
    assert stream.finalize().shape == (30, 32)


def test_held_batches_join_into_slabs_without_changing_the_coreset(monkeypatch: pytest.MonkeyPatch) -> None:
    import inspector.components.coreset as coreset

    monkeypatch.setattr(coreset, "SLAB_BYTES", 16 * 1024)  # 256 rows of 16 floats per slab
    rng = np.random.default_rng(9)
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    held = StreamingCoreset(ratio=0.02, chunk_size=300, projection_dim=None, seed=2, exact_budget_mb=1.0)
    for part in np.array_split(x, 20):
        held.add(part)
    assert held.exact
    assert len(held._pending) >= 6  # slabs of at least 256 rows, in arrival order
    np.testing.assert_array_equal(held.finalize(), x[greedy_coreset(x, 40, projection_dim=None, seed=2)])
    # Crossing the budget later cuts the slabs into exact chunks: the pool shrinks to about `keep` of what was held.
    crossing = StreamingCoreset(
        ratio=0.02, chunk_size=300, projection_dim=None, exact_budget_mb=100_000 / 2**20, fallback="stream"
    )
    for part in np.array_split(x, 20):
        crossing.add(part)
    assert not crossing.exact
    assert crossing.pool_size < 0.2 * 1800 + 300
    assert crossing.finalize().shape == (40, 16)


@pytest.mark.parametrize("threads", [1, 2])
def test_float16_rows_pick_what_their_float32_values_pick(threads: int) -> None:
    rng = np.random.default_rng(12)
    half = rng.normal(size=(5000, 24)).astype(np.float16)
    np.testing.assert_array_equal(
        greedy_coreset(half, 50, projection_dim=None, seed=3, threads=threads),
        greedy_coreset(half.astype(np.float32), 50, projection_dim=None, seed=3, threads=threads),
    )
    wide = rng.normal(size=(600, 40)).astype(np.float16)  # projected to 16 dims first, in slices
    np.testing.assert_array_equal(
        greedy_coreset(wide, 20, projection_dim=16, seed=1), greedy_coreset(wide.astype(np.float32), 20, 16, seed=1)
    )


def test_a_float16_stream_holds_half_the_bytes_and_returns_a_float32_bank() -> None:
    rng = np.random.default_rng(13)
    x = rng.normal(size=(3000, 16)).astype(np.float32)
    budget = x.nbytes * 0.75 / 2**20  # float32 rows would cross it, float16 rows do not
    single, half = (
        StreamingCoreset(0.02, projection_dim=None, seed=4, exact_budget_mb=budget, dtype=dtype)
        for dtype in (np.float32, np.float16)
    )
    for part in np.array_split(x, 6):
        single.add(part)
        half.add(part)
    assert not half.spilled and single.spilled
    bank = half.finalize()
    rounded = x.astype(np.float16).astype(np.float32)
    assert bank.dtype == np.float32
    np.testing.assert_array_equal(bank, rounded[greedy_coreset(rounded, 60, projection_dim=None, seed=4)])


def test_rejects_bad_ratio_and_empty_stream() -> None:
    with pytest.raises(ValueError):
        StreamingCoreset(ratio=0.0)
    with pytest.raises(ValueError, match="no features"):
        StreamingCoreset(ratio=0.1).finalize()


@pytest.mark.parametrize(("dtype", "width", "projection_dim"), [(np.float32, 16, None), (np.float16, 40, 16)])
def test_past_its_budget_a_spilled_stream_picks_the_held_bank_and_holds_none_of_it(
    tmp_path: Path, dtype: type, width: int, projection_dim: int | None
) -> None:
    rng = np.random.default_rng(14)
    x = rng.normal(size=(4000, width)).astype(np.float32)
    held = StreamingCoreset(0.02, projection_dim=projection_dim, seed=5, exact_budget_mb=None, dtype=dtype)
    budget_mb = 0.02
    spilled = StreamingCoreset(
        0.02, projection_dim=projection_dim, seed=5, exact_budget_mb=budget_mb, dtype=dtype, spill_dir=tmp_path
    )
    tracemalloc.start()
    try:
        for part in np.array_split(x, 10):
            held_before = tracemalloc.get_traced_memory()[0]
            spilled.add(part)
            assert tracemalloc.get_traced_memory()[0] - held_before < budget_mb * 2**20  # written out, not kept
            held.add(part)
    finally:
        tracemalloc.stop()
    assert spilled.spilled and spilled.exact and spilled.pool_size == len(x)
    assert list(tmp_path.iterdir()) == []  # unlinked at once: nothing is left behind, however the fit ends
    np.testing.assert_array_equal(spilled.finalize(), held.finalize())


def test_a_spill_it_cannot_write_says_what_to_change(tmp_path: Path) -> None:
    stream = StreamingCoreset(0.02, exact_budget_mb=0, spill_dir=tmp_path / "missing")
    with pytest.raises(CoresetSpillError, match=r"missing.*coreset_spill_dir.*coreset_fallback='stream'"):
        stream.add(np.ones((10, 4), np.float32))
    assert isinstance(CoresetSpillError("x"), InspectorError)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB file system (a tmpfs mounted here), for what a full disk does; needs root."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_while_spilling_is_one_error_that_says_what_to_change(full_disk: Path) -> None:
    x = np.random.default_rng(15).normal(size=(4000, 16)).astype(np.float32)  # 250 KiB, four times the disk
    stream = StreamingCoreset(0.02, exact_budget_mb=0.01, spill_dir=full_disk)
    with pytest.raises(CoresetSpillError, match=r"No space left on device.*coreset_spill_dir"):
        for part in np.array_split(x, 20):
            stream.add(part)
        stream.finalize()
    assert not list(full_disk.iterdir()) and shutil.disk_usage(full_disk).used == 0  # the spill file let go
    # Wide rows are projected into a second spill file: a disk that holds the rows but not that one also says so.
    wide = StreamingCoreset(0.02, projection_dim=12, exact_budget_mb=0.001, spill_dir=full_disk, dtype=np.float16)
    for part in np.array_split(np.ones((1500, 16), np.float16), 3):  # 47 KiB of rows, then 70 KiB projected
        wide.add(part)
    with pytest.raises(CoresetSpillError, match="No space left on device"):
        wide.finalize()


def test_a_spill_that_cannot_fit_fails_before_it_writes_anything(full_disk: Path) -> None:
    stream = StreamingCoreset(0.02, exact_budget_mb=0.01, spill_dir=full_disk)
    stream.expect(4000)  # 4,000 rows of 16 float32: 250 KiB for a 64 KiB disk
    with pytest.raises(CoresetSpillError, match=r"needs 250 KiB in .*tiny, which has 64 KiB free"):
        stream.add(np.ones((400, 16), np.float32))
    assert not list(full_disk.iterdir())
    roomy = StreamingCoreset(0.02, exact_budget_mb=0.01, spill_dir=full_disk)
    roomy.expect(800)  # 50 KiB: it fits
    for part in np.array_split(np.random.default_rng(16).normal(size=(800, 16)), 4):
        roomy.add(part)
    assert roomy.spilled and roomy.finalize().shape == (16, 16)


def test_spilling_to_memory_backed_storage_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    shm = Path("/dev/shm")
    if filesystem_type(shm) != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm on this machine")
    stream = StreamingCoreset(0.5, exact_budget_mb=0, spill_dir=shm)
    with caplog.at_level(logging.WARNING, logger="inspector.components.coreset"):
        stream.add(np.ones((10, 4), np.float32))
    assert "held in memory (tmpfs)" in caplog.text
    assert stream.finalize().shape == (5, 4)
