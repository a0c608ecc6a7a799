"""Where the network and the search run: onnxruntime's providers fastest first (TensorRT, CUDA, CPU), only those
the installed build has, FAISS on a GPU when faiss-gpu sees one, and /v1/models saying which ran. Nothing here
needs a GPU: availability is faked, the sessions that run are CPU ones."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np
import onnxruntime as ort
import pytest

from inspector.components.knn import NearestNeighbourIndex, gpu_available
from inspector.models.persistence import NETWORK_FILE, read_model_dir, write_model_dir
from inspector.models.scoring import load_scorer
from inspector.runtime import onnx
from inspector.runtime.onnx import OnnxRunner, choose_providers
from inspector.runtime.precision import Precision
from tests.test_service import running, settings_for

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


def names(providers: list[Any]) -> list[str]:
    return [p[0] if isinstance(p, tuple) else p for p in providers]


@pytest.mark.parametrize(
    ("available", "expected"),
    [
        ([CPU, CUDA, "AzureExecutionProvider", TRT], [TRT, CUDA, CPU]),
        (["AzureExecutionProvider", CUDA, CPU], [CUDA, CPU]),
        (["AzureExecutionProvider", CPU], [CPU]),
        ([TRT, CPU], [TRT, CPU]),
        ([], [CPU]),
    ],
)
def test_only_available_providers_are_asked_for_fastest_first_cpu_last(
    available: list[str], expected: list[str]
) -> None:
    assert names(choose_providers(available)) == expected


@pytest.mark.parametrize(("precision", "fp16"), [("fp32", False), ("fp16", True)])
def test_tensorrt_builds_engines_at_the_networks_precision_into_a_cache_that_outlives_the_process(
    precision: Precision, fp16: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INSPECTOR_TRT_CACHE", str(tmp_path / "trt"))
    (trt, *_) = choose_providers([TRT, CPU], precision)
    assert trt == (
        TRT,
        {"trt_fp16_enable": fp16, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(tmp_path / "trt")},
    )
    monkeypatch.delenv("INSPECTOR_TRT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (trt, *_) = choose_providers([TRT, CPU], precision)
    assert trt[1]["trt_engine_cache_path"] == str(tmp_path / "home" / ".cache" / "inspector" / "trt")


def test_an_int8_network_is_not_given_to_tensorrt() -> None:
    """Export's int8 has asymmetric uint8 activations, which TensorRT's Q/DQ import refuses."""
    assert choose_providers([TRT, CUDA, CPU], "int8") == [CUDA, CPU]
    assert choose_providers([TRT, CPU], "int8") == [CPU]
    assert names(choose_providers([TRT, CUDA, CPU])) == [TRT, CUDA, CPU]  # a fitted model's network is fp32


class FakeSession:
    """An InferenceSession that records what it was asked for and, like onnxruntime when TensorRT's libraries
    are missing, runs on the next provider."""

    requested: ClassVar[list[Any]] = []

    def __init__(self, source: Any, options: Any, providers: list[Any]) -> None:
        FakeSession.requested = providers
        self._providers = names(providers)[1:]

    def get_providers(self) -> list[str]:
        return self._providers

    def get_inputs(self) -> list[Any]:
        return [type("Input", (), {"name": "image"})()]


def test_runner_requests_the_gpu_providers_and_reports_the_one_that_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT, CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    monkeypatch.setenv("INSPECTOR_TRT_CACHE", str(tmp_path / "trt"))
    with caplog.at_level(logging.INFO, logger=onnx.__name__):
        runner = OnnxRunner(b"not a graph: the fake session never reads it", threads=1)
    assert names(FakeSession.requested) == [TRT, CUDA, CPU]
    assert (tmp_path / "trt").is_dir()  # TensorRT wants its cache folder to exist
    assert runner.provider == CUDA
    assert [r.getMessage() for r in caplog.records] == [f"onnxruntime runs the network on {CUDA}"]


@pytest.mark.parametrize(
    ("precision", "providers", "fp16"),
    [
        (None, [TRT, CUDA, CPU], False),
        ("fp32", [TRT, CUDA, CPU], False),
        ("fp16", [TRT, CUDA, CPU], True),
        ("int8", [CUDA, CPU], None),
    ],
)
def test_a_bundle_runs_on_tensorrt_at_its_export_precision(
    precision: Precision | None,
    providers: list[str],
    fp16: bool | None,
    patchcore_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifest, files = read_model_dir(patchcore_dir)
    manifest = {k: v for k, v in manifest.items() if k not in ("files", "format_version")}
    if precision is not None:  # None: a fitted model directory, which has no export section
        manifest["export"] = {"precision": precision}
    write_model_dir(tmp_path / "bundle", manifest, files)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT, CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    monkeypatch.setenv("INSPECTOR_TRT_CACHE", str(tmp_path / "trt"))
    load_scorer(tmp_path / "bundle", threads=1)
    assert names(FakeSession.requested) == providers
    if fp16 is not None:
        assert FakeSession.requested[0][1]["trt_fp16_enable"] is fp16


def test_a_cpu_only_build_scores_on_cpu_and_says_so(
    patchcore_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["AzureExecutionProvider", CPU])
    with caplog.at_level(logging.INFO, logger=onnx.__name__):
        runner = OnnxRunner((patchcore_dir / NETWORK_FILE).read_bytes(), threads=1)
    assert runner.provider == CPU
    assert runner.session.get_providers() == [CPU]
    assert f"onnxruntime runs the network on {CPU}" in caplog.messages
    scorer = load_scorer(patchcore_dir, threads=1)
    assert (scorer.runtime, scorer.provider) == (f"onnxruntime/{CPU}", CPU)


def test_models_endpoint_names_the_provider_and_where_the_search_runs(
    service_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    with running(settings_for(service_model_dir, tmp_path)) as client:
        (info,) = client.get("/v1/models").json()
    assert info["runtime"] == f"onnxruntime/{CPU}"
    assert info["provider"] == CPU
    assert info["search_on_gpu"] is gpu_available()


class FakeGpuIndex:
    """What faiss.index_cpu_to_gpu returns, searching the CPU index it was given."""

    def __init__(self, index: faiss.Index) -> None:
        self.index = index
        self.searches = 0

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.searches += 1
        return self.index.search(queries, k)


def test_faiss_moves_the_index_to_a_gpu_by_itself_when_it_sees_one(monkeypatch: pytest.MonkeyPatch) -> None:
    bank = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    cpu = NearestNeighbourIndex("flat").build(bank)
    assert cpu.use_gpu is gpu_available()
    assert cpu.on_gpu is gpu_available()

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda res, device, index: FakeGpuIndex(index), raising=False)
    gpu = NearestNeighbourIndex("flat").from_bytes(cpu.to_bytes())
    assert gpu.use_gpu and gpu.on_gpu
    distances, nearest = gpu.search(bank[:5], 1)
    assert nearest[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert np.allclose(distances, 0.0, atol=1e-3)
    assert gpu._search_index.searches == 1  # the search went through the GPU copy
    assert gpu.to_bytes() == cpu.to_bytes()  # what is saved stays the CPU index

    # faiss has no GPU HNSW: the GPU searches the vectors the HNSW index holds, exactly; the HNSW index is saved.
    hnsw = NearestNeighbourIndex("hnsw", ef_search=1).build(bank)
    assert hnsw.use_gpu and hnsw.on_gpu
    assert isinstance(hnsw._search_index.index, faiss.IndexFlatL2)
    queries = bank[::7] + 0.3
    np.testing.assert_array_equal(hnsw.search(queries, 3)[1], cpu.search(queries, 3)[1])
    assert isinstance(faiss.deserialize_index(np.frombuffer(hnsw.to_bytes(), np.uint8)), faiss.IndexHNSWFlat)

    # A float16 bank, held in float16 by the graph, is searched exactly on the GPU too, at its float16 values.
    half = bank.astype(np.float16).astype(np.float32)
    hnsw16 = NearestNeighbourIndex("hnsw", ef_search=1).build(half)
    assert hnsw16.stored_dtype == "float16" and hnsw16.on_gpu
    exact = NearestNeighbourIndex("flat", use_gpu=False).build(half)
    np.testing.assert_array_equal(hnsw16.search(queries, 3)[1], exact.search(queries, 3)[1])
