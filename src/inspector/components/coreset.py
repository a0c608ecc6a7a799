"""Greedy k-center coreset (PatchCore's memory-bank subsampling), with fit memory bounded by a budget.

Picking a coreset from all N patches at once is the paper's algorithm and the most accurate (docs/benchmarks.md
measures it against the two-level pass below), but it holds an N x D array: for wide backbones or many images
that is gigabytes, which is where anomalib runs out of memory. So patches are held in memory while they fit in
`exact_budget_mb`. Past the budget there are two fallbacks:

* "spill" (the default): the patches go to a temporary file, and the same one-shot pass runs over the file's
  mapping. The bank is the one the held patches would give, to the bit. The process holds only 8 bytes a patch,
  and the kernel keeps in its page cache what fits and drops it under memory pressure.
* "stream": each chunk of patches is reduced by greedy k-center as it arrives (keeping `oversample` times the
  final ratio) and the final greedy pass runs over the pooled survivors. Memory and disk stay bounded however many
  patches come; greedy k-center is a 2-approximation of the optimal covering radius, so the two-level result
  stays a constant-factor cover, but a worse bank than the one-shot pass.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
import numpy.typing as npt
import torch

from inspector.common.errors import InspectorError
from inspector.common.names import CoresetFallback, choices
from inspector.common.progress import progress_bar
from inspector.common.system import cpu_threads, filesystem_type

log = logging.getLogger(__name__)


class CoresetSpillError(InspectorError, OSError):
    """The coreset's spill file could not be written (most often: its disk is full)."""


def greedy_coreset(
    features: np.ndarray | torch.Tensor,
    n_select: int,
    projection_dim: int | None = 256,
    seed: int = 0,
    progress: bool = False,
    threads: int | None = None,
    scratch_dir: str | Path | None = None,
) -> np.ndarray:
    """Indices of `n_select` rows chosen by greedy k-center (farthest-point) selection.

    Wider features are first reduced by a seeded Gaussian random projection to `projection_dim` dimensions (as in
    the PatchCore paper), which keeps pairwise distances within a small factor at a fraction of the cost. Narrow
    features are used as they are: on magnetic_tile with 152-d features, projecting to 128 cost 0.007 image AUROC.
    Distances are updated by `threads` workers (default: every core this process may run on). float16 rows are
    read as they are and widened block by block, so they are never held twice. With `scratch_dir` the projected
    rows go to a temporary file there and are read through its mapping instead of being held.
    """
    x = torch.as_tensor(features)
    if x.dtype not in (torch.float32, torch.float16):
        x = x.float()
    n = x.shape[0]
    if n_select >= n:
        return np.arange(n)
    if n_select <= 0:
        raise ValueError(f"n_select must be positive, got {n_select}")
    generator = torch.Generator().manual_seed(seed)
    if projection_dim is not None and x.shape[1] > projection_dim:
        projection = torch.randn(x.shape[1], projection_dim, generator=generator) / projection_dim**0.5
        x = _project(x, projection, scratch_dir)
    with torch.inference_mode():
        workers = cpu_threads(threads)
        greedy = _BlockedGreedy(x, n_select, workers)
        selected = np.empty(n_select, dtype=np.int64)
        selected[0] = int(torch.randint(n, (1,), generator=generator))
        with ThreadPoolExecutor(max(1, workers - 1)) as pool:  # threads start on the first submit: none for one
            for i in progress_bar(range(1, n_select), desc="coreset", unit="pt", disable=not progress, leave=False):
                greedy.add_center(int(selected[i - 1]))
                selected[i] = greedy.farthest(pool)
    return selected


PROJECT_ROWS = 65536  # rows projected per product: float16 rows are widened this many at a time


def _project(x: torch.Tensor, projection: torch.Tensor, scratch_dir: str | Path | None) -> torch.Tensor:
    """x @ projection in float32, PROJECT_ROWS at a time into memory or, with `scratch_dir`, into a mapped file.

    Both give the same bits: each slice is the same product whichever memory it lands in."""
    shape = (x.shape[0], projection.shape[1])
    if scratch_dir is None:
        out = torch.empty(shape)
    else:
        with _spill_errors(scratch_dir), tempfile.TemporaryFile(dir=scratch_dir) as file:
            _reserve(file, shape[0] * shape[1] * 4)  # unlinked at once: the mapping keeps the file alive
            out = torch.from_numpy(np.memmap(file, dtype=np.float32, mode="r+", shape=shape))
    for start in range(0, shape[0], PROJECT_ROWS):
        torch.matmul(x[start : start + PROJECT_ROWS].float(), projection, out=out[start : start + PROJECT_ROWS])
    return out


def _reserve(file: IO[bytes], size: int) -> None:
    """Size `file` to `size` bytes with its disk blocks allocated now: a mapped page that finds the disk full
    later kills the process (SIGBUS) instead of raising."""
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(file.fileno(), 0, size)
    else:  # macOS: no reservation; the blocks are allocated as pages are written
        file.truncate(size)


SPILL_REMEDY = (
    "free disk space there, point coreset_spill_dir (or TMPDIR) at a larger disk, or set coreset_fallback='stream'"
)


@contextmanager
def _spill_errors(directory: str | Path) -> Iterator[None]:
    """A full disk or a missing directory while spilling, as one error that says what to change."""
    try:
        yield
    except OSError as error:
        raise CoresetSpillError(
            f"could not write the coreset's spill file in {directory}: {error.strerror or error}; {SPILL_REMEDY}"
        ) from error


PART_ROWS = 1024  # a multiple of 64 (see below); 1024 rows of 152 floats (608 KB) stay in a core's L2 cache
CENTER_GROUP = 16  # times PART_ROWS, under torch's 32768-element grain: no op starts an OpenMP team in a worker


class _BlockedGreedy:
    """Farthest-point selection that reads a block of rows once for many centers instead of once per center.

    Updating every row's distance at each pick reads all rows from memory for one matrix-vector product, which
    the BLAS does at a fifth of its speed on cached rows. Here each block records how many of the centers it has
    taken into its distances and an upper bound of those distances (they only fall as centers are added). A pick
    brings blocks up to date in order of their bound and stops at the first bound below the farthest distance
    found: no row there can be farther. Most picks update two or three blocks, each for tens of centers while it
    is cached. A block has a part of PART_ROWS rows per worker and the workers take parts until none are left:
    they share each block's backlog, and a worker the system runs late leaves its part to the others.
    The BLAS computes rows in groups of four from the start of the matrix, so `addmv` on rows that start at a
    multiple of 64 gives each row the same distance, to the bit, as one call on all rows: the picks, ties
    included, are those of updating every row at every pick.
    """

    def __init__(self, x: torch.Tensor, n_select: int, workers: int) -> None:
        self.x = x
        # No (N, D) temporary, unlike (x * x).sum(1); float16 rows are widened a slice at a time.
        slices = [x] if x.dtype == torch.float32 else x.split(SLAB_BYTES // (4 * max(1, x.shape[1])))
        self.sq_norms = torch.cat([torch.linalg.vector_norm(p.float(), dim=1) for p in slices]).square_()
        if not bool(torch.isfinite(self.sq_norms).all()):
            raise ValueError("features must be finite")  # a NaN bound would hide its block from every pick
        self.workers = workers
        self.min_dist = torch.full((len(x),), float("inf"))
        self.center_rows = torch.empty(n_select, x.shape[1])  # the centers, copied as float32 rows
        self.centers: list[torch.Tensor] = []  # views of center_rows, made once
        self.widened = threading.local()  # per worker: a float32 copy of the part it updates (float16 rows)
        self.center_sq_norms = torch.empty(n_select)
        self.block_rows = workers * PART_ROWS
        self.bound = np.full(-(-len(x) // self.block_rows), np.inf)
        self.applied = np.zeros(len(self.bound), dtype=np.int64)  # centers[:applied] are in the block's distances

    def add_center(self, index: int) -> None:
        self.center_sq_norms[len(self.centers)] = self.sq_norms[index]
        self.centers.append(self.center_rows[len(self.centers)].copy_(self.x[index]))

    def farthest(self, pool: ThreadPoolExecutor) -> int:
        """The row farthest from its nearest center, the lowest index among equals (as torch.argmax picks)."""
        best = -np.inf, -1
        for block in np.argsort(-self.bound, kind="stable").tolist():
            if self.bound[block] < best[0]:
                break
            start, stop = block * self.block_rows, min((block + 1) * self.block_rows, len(self.x))
            first, last = int(self.applied[block]), len(self.centers)
            parts = iter(range(start, stop, PART_ROWS))  # shared: a worker that starts late finds less left
            helpers = [pool.submit(self._update_parts, parts, stop, first, last) for _ in range(self.workers - 1)]
            found = self._update_parts(parts, stop, first, last)
            for helper in helpers:
                found += helper.result()
            self.applied[block] = last
            self.bound[block] = max(found)[0]
            best = max(best, *found, key=_farther)
        return best[1]

    def _update_parts(self, parts: Iterator[int], stop: int, first: int, last: int) -> list[tuple[float, int]]:
        """`_update` on parts of PART_ROWS rows starting where `parts` says, until the workers have taken them all."""
        return [self._update(part, min(part + PART_ROWS, stop), first, last) for part in parts]

    def _rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows start:stop as float32: a view of float32 rows, else widened into this worker's reused buffer
        (a fresh tensor per call left the heap fragmented: hundreds of MiB over a 762-image pass)."""
        if self.x.dtype == torch.float32:
            return self.x[start:stop]
        buffer = getattr(self.widened, "rows", None)
        if buffer is None:
            buffer = self.widened.rows = torch.empty(PART_ROWS, self.x.shape[1])
        return buffer[: stop - start].copy_(self.x[start:stop])

    def _update(self, start: int, stop: int, first: int, last: int) -> tuple[float, int]:
        """Take centers[first:last] into the rows' distances; their farthest distance and row.

        Torch ops release the GIL. Distances to CENTER_GROUP centers at a time are offset and reduced in one op
        each, so that workers mostly wait on the BLAS, not on each other for the GIL.
        """
        with torch.inference_mode():  # per thread
            x, sq_norms, min_dist = self._rows(start, stop), self.sq_norms[start:stop], self.min_dist[start:stop]
            buffer = torch.empty(CENTER_GROUP, stop - start)
            for group in range(first, last, CENTER_GROUP):
                dist = buffer[: min(CENTER_GROUP, last - group)]
                for center, out in zip(self.centers[group:last], dist.unbind(0), strict=False):
                    # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2, each term rounded as one addmv on all rows rounds it
                    torch.addmv(sq_norms, x, center, alpha=-2.0, out=out)
                dist.add_(self.center_sq_norms[group : group + len(dist), None])
                torch.minimum(min_dist, dist.amin(0), out=min_dist)
            value, index = torch.max(min_dist, 0)
        return float(value), start + int(index)


def _farther(found: tuple[float, int]) -> tuple[float, int]:
    """Sort key: the larger distance, then the lower row index (torch.argmax's choice among equal maxima)."""
    return found[0], -found[1]


SLAB_BYTES = 64 * 2**20  # held batches are joined into slabs this large: freed at once when copied, never twice held


class StreamingCoreset:
    """Accumulates patch features batch by batch and returns a coreset of `ratio` of all patches seen.

    `threads` is the greedy passes' worker count (default: every core this process may run on). `dtype` is what
    the patches are held in: float16 halves the memory they take and the memory each greedy pick reads, at the cost
    of rounding them (and the bank taken from them) to 11 significant bits. `fallback` is what happens past
    `exact_budget_mb` (see the module's docstring); "spill" writes to a temporary file in `spill_dir` (default: the
    system's temporary directory, TMPDIR).
    """

    def __init__(
        self,
        ratio: float,
        oversample: float = 10.0,
        chunk_size: int = 16384,
        projection_dim: int | None = 256,
        seed: int = 0,
        exact_budget_mb: float | None = 512.0,
        threads: int | None = None,
        dtype: npt.DTypeLike = np.float32,
        fallback: CoresetFallback = "spill",
        spill_dir: str | Path | None = None,
    ) -> None:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"coreset ratio must be in (0, 1], got {ratio}")
        if fallback not in choices(CoresetFallback):
            raise ValueError(f"coreset fallback must be one of {', '.join(choices(CoresetFallback))}, got {fallback!r}")
        self.dtype = np.dtype(dtype)
        self.ratio = ratio
        # Each chunk keeps this fraction; never more than half so the pool is always a real reduction.
        self.keep = 1.0 if ratio > 0.5 else min(max(oversample * ratio, ratio), 0.5)
        self.chunk_size = chunk_size
        self.projection_dim = projection_dim
        self.seed = seed
        self.exact_budget_bytes = None if exact_budget_mb is None else exact_budget_mb * 2**20
        self.threads = threads
        self.fallback = fallback
        self.spill_dir = Path(spill_dir) if spill_dir is not None else Path(tempfile.gettempdir())
        self.n_seen = 0
        self._pending: list[np.ndarray] = []
        self._n_pending = 0
        self._pending_bytes = 0
        self._loose: list[np.ndarray] = []  # batches held but not yet joined into a slab
        self._pool: list[np.ndarray] = []
        self._spill: IO[bytes] | None = None  # past the budget with fallback "spill": every patch, in arrival order
        self._width = 0
        self.expected_rows: int | None = None  # see `expect`

    def expect(self, rows: int) -> None:
        """Say how many patches will come in all, so that a spill checks for room for all of them before it
        starts, rather than finding the disk full at the end of a long feature pass."""
        self.expected_rows = rows

    @property
    def exact(self) -> bool:
        """True while the final pass is the one-shot greedy over every patch (held, or spilled to a file)."""
        return self.spilled or (not self._pool and not self._over_budget())

    @property
    def spilled(self) -> bool:
        """True once the patches have gone to the spill file."""
        return self._spill is not None

    @property
    def pool_size(self) -> int:
        """How many patches the final pass would run over now."""
        if self.spilled:
            return self.n_seen
        return sum(len(p) for p in self._pool) + self._n_pending

    def _over_budget(self) -> bool:
        return self.exact_budget_bytes is not None and self._pending_bytes > self.exact_budget_bytes

    def add(self, features: np.ndarray) -> None:
        """Add (n, D) patch features; past the memory budget they are spilled, or full chunks reduced."""
        features = np.ascontiguousarray(features, dtype=self.dtype)
        self.n_seen += len(features)
        self._width = features.shape[1]
        if self._spill is not None:
            self._write_spill(features)
            return
        self._n_pending += len(features)
        self._pending_bytes += features.nbytes
        self._loose.append(features)
        if not self._pool and not self._over_budget():
            if sum(p.nbytes for p in self._loose) >= SLAB_BYTES:
                self._join_loose()
        elif self.fallback == "spill":
            self._start_spill()
        else:
            self._reduce_pending(whole_chunks_only=True)

    def _start_spill(self) -> None:
        """Move every held patch to a new spill file; later batches are appended to it as they come."""
        kind = filesystem_type(self.spill_dir)
        if kind in ("tmpfs", "ramfs"):
            log.warning(
                "the coreset spills its patches to %s, which is held in memory (%s): point coreset_spill_dir or "
                "TMPDIR at a disk to keep them out of memory",
                self.spill_dir,
                kind,
            )
        log.info(
            "the patches passed the coreset's %.0f MiB budget: spilling them to %s",
            self._pending_bytes / 2**20,
            self.spill_dir,
        )
        self._check_room()
        self._join_loose()
        with _spill_errors(self.spill_dir):
            # Closed by finalize or by a failed write; unlinked at once, so the file is gone however the fit ends.
            self._spill = tempfile.TemporaryFile(dir=self.spill_dir)  # noqa: SIM115
        while self._pending:
            self._write_spill(self._pending.pop(0))
        self._n_pending = self._pending_bytes = 0

    def _check_room(self) -> None:
        """With `expect`ed rows, fail now if the spill directory cannot hold them (and their projection)."""
        if self.expected_rows is None:
            return
        row_bytes = self._width * self.dtype.itemsize
        if self.projection_dim is not None and self._width > self.projection_dim:
            row_bytes += self.projection_dim * 4  # the projected float32 rows the greedy pass reads
        needed = max(self.expected_rows, self.n_seen) * row_bytes
        with _spill_errors(self.spill_dir):
            free = shutil.disk_usage(self.spill_dir).free
        if needed > free:
            raise CoresetSpillError(
                f"the coreset's spill file needs {_size(needed)} in {self.spill_dir}, which has {_size(free)} free; "
                f"{SPILL_REMEDY}"
            )

    def _write_spill(self, features: np.ndarray) -> None:
        """Append rows to the spill file; a failed write lets go of the file (and its disk) before raising."""
        assert self._spill is not None
        try:
            with _spill_errors(self.spill_dir):
                self._spill.write(features.data)
        except CoresetSpillError:
            self._spill.close()
            self._spill = None
            raise

    def _join_loose(self) -> None:
        """Move loose batches to the pending list as one slab (small batches reuse freed heap; slabs are mapped)."""
        if self._loose:
            self._pending.append(np.concatenate(self._loose) if len(self._loose) > 1 else self._loose[0])
            self._loose = []

    def _reduce_pending(self, whole_chunks_only: bool = False) -> None:
        """Reduce pending batches chunk by chunk, freeing each batch once it is in a chunk."""
        self._join_loose()
        while self._pending and (self._n_pending >= self.chunk_size or not whole_chunks_only):
            parts, n = [], 0
            while self._pending and n < self.chunk_size:
                part = self._pending[0]
                take = min(len(part), self.chunk_size - n)
                if take < len(part):  # a slab larger than the chunk: take a slice, leave the rest
                    self._pending[0] = part[take:]
                    part = part[:take]
                else:
                    self._pending.pop(0)
                parts.append(part)
                n += take
            self._n_pending -= n
            self._pending_bytes -= sum(p.nbytes for p in parts)
            chunk = np.concatenate(parts) if len(parts) > 1 else parts[0]
            del parts
            if self.keep < 1.0:
                n_keep = max(1, round(self.keep * len(chunk)))
                seed = self.seed + len(self._pool)
                chunk = chunk[greedy_coreset(chunk, n_keep, self.projection_dim, seed, threads=self.threads)]
            self._pool.append(chunk)

    def finalize(self, progress: bool = False) -> np.ndarray:
        """The memory bank: (round(ratio * patches seen), D) float32 (the held rows, widened)."""
        if self.n_seen == 0:
            raise ValueError("no features were added to the coreset")
        n_select = max(1, round(self.ratio * self.n_seen))
        if self._spill is not None:
            return self._finalize_spilled(n_select, progress)
        if self.exact:
            self._join_loose()
            parts = self._pending
        else:
            self._reduce_pending()
            parts = self._pool
        pool = _concatenate_consuming(parts)
        self._pending, self._n_pending, self._pending_bytes, self._pool, self._loose = [], 0, 0, [], []
        if n_select >= len(pool):
            return pool.astype(np.float32, copy=False)
        chosen = greedy_coreset(pool, n_select, self.projection_dim, self.seed, progress, self.threads)
        return pool[chosen].astype(np.float32, copy=False)

    def _finalize_spilled(self, n_select: int, progress: bool) -> np.ndarray:
        """The one-shot pass over the spill file's mapping; the bank is copied out before the mapping goes."""
        spill, self._spill = self._spill, None
        assert spill is not None
        with spill:
            with _spill_errors(self.spill_dir):
                spill.flush()
            pool = np.memmap(spill, dtype=self.dtype, mode="r+", shape=(self.n_seen, self._width))
        if n_select >= len(pool):
            return np.array(pool, dtype=np.float32)
        chosen = greedy_coreset(pool, n_select, self.projection_dim, self.seed, progress, self.threads, self.spill_dir)
        return np.array(pool[chosen], dtype=np.float32)  # a plain array in memory: the mapping goes with `pool`


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.1f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.0f} KiB"


def _concatenate_consuming(parts: list[np.ndarray]) -> np.ndarray:
    """np.concatenate that frees each part once copied, so the peak is the result plus one part, not twice it."""
    if len(parts) == 1:
        return parts.pop()
    out = np.empty((sum(len(p) for p in parts), parts[0].shape[1]), dtype=parts[0].dtype)
    at = 0
    while parts:
        part = parts.pop(0)
        out[at : at + len(part)] = part
        at += len(part)
    return out
