"""The artifact store: stable keys, atomic writes, corruption detected and recomputed, code versions."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_bytes

from mmlib.core.artifacts import (
    CorruptArtifactError,
    artifact_path,
    file_sha256,
    load_artifact,
    load_or_compute,
    read_tensors,
    save_artifact,
    stable_hash,
)


def test_stable_hash_is_order_and_type_stable():
    assert stable_hash({"a": 1, "b": (1, 2)}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_save_load_and_corruption_recompute(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(4.0)}, {"note": "hi"}

    art = load_or_compute("k", "key1", compute, root=tmp_path)
    assert torch.equal(art.tensors["x"], torch.arange(4.0)) and art.meta["note"] == "hi"
    load_or_compute("k", "key1", compute, root=tmp_path)
    assert len(calls) == 1
    # corrupt the tensor file: detected, warned, recomputed
    (artifact_path("k", "key1", tmp_path) / "tensors.safetensors").write_bytes(b"garbage")
    with pytest.raises(CorruptArtifactError):
        load_artifact("k", "key1", tmp_path)
    with pytest.warns(RuntimeWarning, match="recomputing"):
        load_or_compute("k", "key1", compute, root=tmp_path)
    assert len(calls) == 2
    assert not [p for p in (tmp_path / "k").iterdir() if p.name.startswith(".")]


def test_failed_compute_leaves_nothing(tmp_path):
    def boom():
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        load_or_compute("k", "key2", boom, root=tmp_path)
    assert not (tmp_path / "k" / "key2").exists()
    save_artifact("k", "key3", {"x": torch.zeros(1)}, {}, root=tmp_path)
    assert json.loads((tmp_path / "k" / "key3" / "meta.json").read_text())["key"] == "key3"


def _mixed_tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"f32": torch.randn(33, 7, generator=gen), "f64": torch.randn(5, dtype=torch.float64, generator=gen),
            "bf16": torch.randn(3, 4, generator=gen).to(torch.bfloat16), "i64": torch.arange(-6, 6).reshape(3, 4),
            "u8": torch.arange(7, dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
            "empty": torch.zeros(0, 3), "scalar": torch.tensor(2.5)}


def test_lazy_tensors_equal_the_eager_ones(tmp_path):
    folder = save_artifact("k", "mixed", _mixed_tensors(), {}, root=tmp_path)
    eager = load_bytes((folder / "tensors.safetensors").read_bytes())  # a plain read into memory
    lazy = load_artifact("k", "mixed", tmp_path).tensors
    assert set(lazy) == set(eager) == set(_mixed_tensors())
    for name, value in _mixed_tensors().items():
        assert lazy[name].dtype == eager[name].dtype == value.dtype and lazy[name].shape == value.shape
        assert torch.equal(lazy[name], eager[name]) and torch.equal(lazy[name], value), name


def _file_mappings(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process mapping ``path`` (``/proc/self/maps``)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path):
            start, stop = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, stop))
    return ranges


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_loaded_tensors_are_views_of_a_map_of_the_file(tmp_path):
    """Nothing is read at load: each tensor lies inside a memory map of the tensor file (not a copy in memory)."""
    folder = save_artifact("k", "big", {"a": torch.ones(1000, 64), "b": torch.zeros(10, 3)}, {}, root=tmp_path)
    tensors = load_artifact("k", "big", tmp_path).tensors
    ranges = _file_mappings((folder / "tensors.safetensors").resolve())
    assert ranges, "the tensor file is not mapped"
    for name, value in tensors.items():
        start, stop = value.data_ptr(), value.data_ptr() + value.numel() * value.element_size()
        assert any(lo <= start and stop <= hi for lo, hi in ranges), name


def test_writing_to_a_loaded_tensor_never_reaches_the_file(tmp_path):
    folder = save_artifact("k", "w", {"x": torch.arange(12.0).reshape(3, 4)}, {}, root=tmp_path)
    tensor_file = folder / "tensors.safetensors"
    before = file_sha256(tensor_file)
    art = load_artifact("k", "w", tmp_path)
    art.tensors["x"][1] = -1.0
    art.tensors["x"].mul_(3)
    assert art.tensors["x"][1, 0] == -3.0  # the writes took effect in memory
    also = read_tensors(tensor_file)["x"]
    assert file_sha256(tensor_file) == before and torch.equal(also, torch.arange(12.0).reshape(3, 4))
    assert torch.equal(load_artifact("k", "w", tmp_path, full=True).tensors["x"], torch.arange(12.0).reshape(3, 4))




def test_code_version_covers_the_import_closure(tmp_path, monkeypatch):
    import mmlib.core.artifacts as artifacts
    from mmlib.core.imports import import_closure, module_file

    closure = import_closure("mmlib.models.training")
    # the tiny architecture and the world it trains on are part of what produces a trained model
    assert {"mmlib.models.clip", "mmlib.data.world", "mmlib.core.artifacts"} <= closure
    assert "mmlib.companions.splice" not in closure
    artifacts.code_version.cache_clear()
    before = artifacts.code_version("mmlib.models.training")
    edited = tmp_path / "clip.py"
    edited.write_bytes(module_file("mmlib.models.clip").read_bytes() + b"\n# an edit of the architecture\n")
    monkeypatch.setattr(artifacts, "module_file",
                        lambda name: edited if name == "mmlib.models.clip" else module_file(name))
    artifacts.code_version.cache_clear()
    try:
        assert artifacts.code_version("mmlib.models.training") != before
        assert artifacts.code_version("mmlib.companions.splice") == artifacts.code_version("mmlib.companions.splice")
    finally:
        artifacts.code_version.cache_clear()
    with pytest.raises(ValueError, match="not a module of the mmlib package"):
        artifacts.code_version("mmlib.nothing_here")


def test_trained_keys_depend_on_the_thread_count():
    from mmlib.data.world import WorldConfig, generate_world
    from mmlib.models.training import TrainConfig, model_key

    world = generate_world(WorldConfig(n_train=8, n_val=0, n_test=0))
    one, two = TrainConfig(threads=1), TrainConfig(threads=2)
    from mmlib.models.clip import TinyClipArch

    assert model_key(world, TinyClipArch(), one) != model_key(world, TinyClipArch(), two)
    with pytest.raises(ValueError, match="threads"):
        TrainConfig(threads=0)


def _compute_in_another_process(root: str, marker: str) -> None:
    """Child of the concurrency test: load_or_compute the same key, appending to ``marker`` when it computes."""
    import time as _time

    def compute():
        with open(marker, "a") as f:
            f.write("x")
        _time.sleep(1.0)  # long enough for the other process to arrive while this one computes
        return {"x": torch.arange(3.0)}, {"who": "child"}

    load_or_compute("k", "shared", compute, root=Path(root))


@pytest.mark.skipif(sys.platform == "win32", reason="advisory locks via fcntl")
def test_processes_that_need_the_same_missing_artifact_compute_it_once(tmp_path):
    import multiprocessing as mp

    marker = tmp_path / "computed.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_compute_in_another_process, args=(str(tmp_path / "store"), str(marker)))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert marker.read_text() == "x"  # one computed, the other waited and loaded
    art = load_or_compute("k", "shared", lambda: pytest.fail("recomputed"), root=tmp_path / "store")
    assert torch.equal(art.tensors["x"], torch.arange(3.0))
    assert (tmp_path / "store" / ".locks" / "k" / "shared.lock").exists()  # the lock file stays, hidden
