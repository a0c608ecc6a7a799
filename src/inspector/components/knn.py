"""The nearest-neighbour core: a small FAISS wrapper that searches a memory bank and saves with the model.

Exact flat L2 searches every bank entry; IVF or HNSW trade a little recall for less work (PatchCore's default is
HNSW, docs/benchmarks.md measures each). An HNSW graph over a bank whose values are all float16 numbers (PatchCore
keeps its patches in float16 by default) stores them in float16: nothing is lost, and each search step reads half
the bytes. A GPU is used when faiss was built with one and one is present; there the bank is searched exactly,
which a GPU does fastest, whatever the kind (faiss has no GPU HNSW). Distances returned are Euclidean (not
squared), as PatchCore defines them.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

from inspector.common.errors import InspectorError, ParameterError
from inspector.common.names import IndexKind, choices
from inspector.common.system import cpu_threads

INDEX_KINDS = choices(IndexKind)


class IndexLoadError(InspectorError, RuntimeError):
    """A saved index that cannot be read back."""


class NearestNeighbourIndex:
    """k-NN search over a fixed (N, D) float32 bank."""

    def __init__(
        self,
        kind: IndexKind = "flat",
        nprobe: int = 8,
        hnsw_m: int = 32,
        ef_search: int = 64,
        use_gpu: bool | None = None,
    ) -> None:
        if kind not in INDEX_KINDS:
            raise ParameterError(f"unknown index kind '{kind}', choose from {', '.join(INDEX_KINDS)}")
        self.kind = kind
        self.nprobe = nprobe
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search
        self.use_gpu = gpu_available() if use_gpu is None else use_gpu
        self._cpu_index: faiss.Index | None = None
        self._search_index: faiss.Index | None = None

    @property
    def ntotal(self) -> int:
        return 0 if self._cpu_index is None else int(self._cpu_index.ntotal)

    @property
    def dim(self) -> int:
        return 0 if self._cpu_index is None else int(self._cpu_index.d)

    @property
    def stored_dtype(self) -> str:
        """The precision the index holds the bank in: "float16" (an HNSW graph over float16 values) or "float32"."""
        index = self._cpu_index
        if isinstance(index, faiss.IndexHNSW):
            storage = faiss.downcast_index(index.storage)
            if isinstance(storage, faiss.IndexScalarQuantizer) and storage.sq.qtype == faiss.ScalarQuantizer.QT_fp16:
                return "float16"
        return "float32"

    @property
    def on_gpu(self) -> bool:
        """Whether searches run on a GPU copy of the index (faiss-gpu with a GPU; exact for an HNSW index)."""
        return self._search_index is not None and self._search_index is not self._cpu_index

    def build(self, bank: np.ndarray) -> NearestNeighbourIndex:
        bank = np.ascontiguousarray(bank, dtype=np.float32)
        n, d = bank.shape
        index: faiss.Index
        if self.kind == "flat":
            index = faiss.IndexFlatL2(d)
        elif self.kind == "ivf":
            nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))  # faiss wants ~39 training points per list
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
            index.train(bank)
        elif holds_float16(bank):
            index = faiss.index_factory(d, f"HNSW{self.hnsw_m},SQfp16")
            index.train(bank)  # float16 has nothing to learn, but faiss wants the call before `add`
        else:
            index = faiss.IndexHNSWFlat(d, self.hnsw_m)
        index.add(bank)
        self._set(index)
        return self

    def _set(self, index: faiss.Index) -> None:
        if isinstance(index, faiss.IndexIVF):
            index.nprobe = self.nprobe
        if isinstance(index, faiss.IndexHNSW):
            index.hnsw.efSearch = self.ef_search
            # The graph's M, as built: level 0 links 2 M neighbours, the count `cum_nneighbor_per_level` starts with.
            self.hnsw_m = int(faiss.vector_to_array(index.hnsw.cum_nneighbor_per_level)[1]) // 2
        self._cpu_index = index
        self._search_index = index
        if self.use_gpu:
            if isinstance(index, faiss.IndexHNSW):  # no GPU HNSW: an exact index of the vectors it stores
                flat = faiss.IndexFlatL2(index.d)
                flat.add(index.storage.reconstruct_n(0, index.ntotal))
                index = flat
            self._gpu_resources = faiss.StandardGpuResources()
            self._search_index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Euclidean distances (n, k) and bank indices (n, k) of each query's k nearest bank entries."""
        if self._search_index is None:
            raise RuntimeError("index is empty: build() or load() it first")
        sq, idx = self._search_index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return np.sqrt(np.maximum(sq, 0.0, out=sq), out=sq), idx

    def to_bytes(self) -> bytes:
        """The CPU index serialised, for the model directory."""
        if self._cpu_index is None:
            raise RuntimeError("nothing to save: the index is empty")
        return faiss.serialize_index(self._cpu_index).tobytes()

    def from_bytes(self, data: bytes) -> NearestNeighbourIndex:
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except Exception as exc:
            raise IndexLoadError(f"cannot read FAISS index: {exc}") from exc
        self._set(index)
        return self


def holds_float16(bank: np.ndarray, rows_at_a_time: int = 65536) -> bool:
    """Whether every value of the float32 bank is a float16 number, so storing it in float16 loses nothing.
    Checked a slice of rows at a time, so a large bank needs no full-size copies."""
    with np.errstate(over="ignore"):
        for start in range(0, len(bank), rows_at_a_time):
            rows = bank[start : start + rows_at_a_time]
            if not np.array_equal(rows.astype(np.float16).astype(np.float32), rows):
                return False
    return True


def bank_spacing(bank: np.ndarray, k: int) -> np.ndarray:
    """The mean distance from each bank entry to its `k` nearest other entries (float32; zeros for a bank of one).
    Exact, once, at fit time."""
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    k = min(k, len(bank) - 1)
    if k < 1:
        return np.zeros(len(bank), dtype=np.float32)
    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(bank)
    squared, _ = index.search(bank, k + 1)  # the first column is the entry itself (or an identical one)
    return np.sqrt(np.maximum(squared[:, 1:], 0.0)).mean(axis=1).astype(np.float32)


def relative_spacing(bank: np.ndarray, k: int) -> np.ndarray:
    """How far apart the bank is around each entry, relative to the whole bank: `bank_spacing` divided by its mean
    over all entries (float32, mean 1).

    PatchCore divides a patch's distance by its nearest entry's spacing: the same distance counts for more where
    good patches crowd together than where they are sparse, so a rare-but-normal pattern scores lower
    (docs/benchmarks.md measures it). A bank of identical entries, or of one, gives all ones.
    """
    spacing = bank_spacing(bank, k)
    mean = float(spacing.mean()) if len(spacing) else 0.0
    if mean <= 0.0:
        return np.ones(len(spacing), dtype=np.float32)
    # A duplicated entry has spacing 0; a floor keeps its patches' scores finite.
    return (np.maximum(spacing, 1e-3 * mean) / mean).astype(np.float32)


def gpu_available() -> bool:
    """faiss was built with GPU support (faiss-gpu, the `gpu` extra) and sees a GPU; faiss-cpu never does."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def set_search_threads(threads: int | None) -> int:
    """Set FAISS's OpenMP threads (process-wide: call it once, at an entry point); returns the count set."""
    count = cpu_threads(threads)
    faiss.omp_set_num_threads(count)
    return count
