"""Tests of mmlib.models.embed: batch encoding, towers, caching, resume, corruption, torchrun sharding and the CLI."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

import mmlib.models.embed as embed
from mmlib.core import artifacts
from mmlib.core.artifacts import artifact_path, load_artifact, save_artifact
from mmlib.core.devices import resolve_device, torch_threads
from mmlib.core.errors import ArtifactRootError, ConfigError, InputError, NonFiniteError
from mmlib.core.paths import REPO_ROOT
from mmlib.data.corpora import CsvPairs, WebDatasetPairs
from mmlib.data.embeddings import Embeddings
from mmlib.data.protocol import DatasetError
from mmlib.models.clip import ModelBundle, build_tiny_clip, load_open_clip, load_tiny_clip, save_tiny_clip, tiny_bundle
from mmlib.models.embed import (
    EmbedConfig,
    TowersUnsupportedError,
    embed_dataset,
    embed_splits,
    embedding_key,
    encode_pairs,
)

SMALL = EmbedConfig(batch_size=2, shard_size=2, device="cpu")  # 10 pairs -> 5 shards of one batch each


def batch(bundle: ModelBundle, dataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (n, 3, H, W), tokens (n, L))`` of the first ``n`` pairs."""
    images = torch.stack([bundle.preprocess(dataset.image(i)) for i in range(n)])
    return images, bundle.tokenizer([dataset.caption(i) for i in range(n)])


@pytest.fixture
def count_batches(monkeypatch):
    """Wrap ``encode_pairs``: returns a list that records each batch size; ``fail_after`` raises then."""
    real = embed.encode_pairs

    def install(fail_after: int | None = None) -> list[int]:
        calls: list[int] = []

        def wrapper(bundle, images, tokens, towers=False, **kwargs):
            if fail_after is not None and len(calls) == fail_after:
                raise RuntimeError("simulated crash")
            calls.append(images.shape[0])
            return real(bundle, images, tokens, towers, **kwargs)

        monkeypatch.setattr(embed, "encode_pairs", wrapper)
        return calls

    return install


class Untouchable:
    """A stand-in model that fails on any use."""

    def __getattr__(self, name):
        raise AssertionError(f"the model was used ({name}) although the result is cached")


def leftovers(root: Path) -> list[Path]:
    """Temporary files or folders anywhere under ``root``."""
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def shard_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("embeddings.parts/*/*"))


# ------------------------------------------------------------------------------------------------ one batch

def test_encode_pairs_matches_open_clip_and_projections(tiny_clip, synthetic_pairs):
    images, tokens = batch(tiny_clip, synthetic_pairs(5), 5)
    out = encode_pairs(tiny_clip, images, tokens, towers=True)
    model = tiny_clip.model
    with torch.no_grad():
        ref_image, ref_text = model.encode_image(images), model.encode_text(tokens)
    assert set(out) == {"image", "text", "image_tower", "text_tower"}
    assert out["image"].shape == (5, 16) and out["text"].shape == (5, 16)
    assert out["image_tower"].shape == (5, 32) and out["text_tower"].shape == (5, 32)
    assert all(v.dtype == torch.float32 and not v.requires_grad for v in out.values())
    torch.testing.assert_close(out["image"], ref_image, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["text"], ref_text, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["image_tower"] @ model.visual.proj.detach(), out["image"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["text_tower"] @ model.text_projection.detach(), out["text"], rtol=0, atol=1e-5)
    assert not torch.allclose(out["image_tower"][0], out["image_tower"][1])  # really per-pair activations

    plain = encode_pairs(tiny_clip, images, tokens)
    assert set(plain) == {"image", "text"}
    torch.testing.assert_close(plain["image"], out["image"], rtol=0, atol=1e-6)


def test_towers_need_a_standard_clip(tiny_clip, synthetic_pairs):
    custom = open_clip.CustomTextCLIP(
        embed_dim=16, vision_cfg=dict(image_size=16, patch_size=8, width=32, layers=1, head_width=16),
        text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1)).eval()
    bundle = dataclasses.replace(tiny_clip, model=custom, identity="custom-text-clip")
    images, tokens = batch(bundle, synthetic_pairs(2), 2)
    assert encode_pairs(bundle, images, tokens)["text"].shape == (2, 16)
    with pytest.raises(NotImplementedError, match="CustomTextCLIP.*towers=False"):
        encode_pairs(bundle, images, tokens, towers=True)


def test_vit_b_32_random_weights_with_towers(artifact_root, synthetic_pairs):
    bundle = load_open_clip("ViT-B-32", pretrained=None)
    result = embed_dataset(bundle, synthetic_pairs(4), EmbedConfig(batch_size=4, towers=True, device="cpu"),
                           progress=False)
    assert result.image.shape == (4, 512) and result.text.shape == (4, 512)
    assert result.image_tower.shape == (4, 768) and result.text_tower.shape == (4, 512)
    assert result.meta["tower_widths"] == [768, 512]
    model = bundle.model
    torch.testing.assert_close(result.image_tower @ model.visual.proj.detach(), result.image, rtol=0, atol=1e-4)
    torch.testing.assert_close(result.text_tower @ model.text_projection.detach(), result.text, rtol=0, atol=1e-4)
    images, tokens = batch(bundle, synthetic_pairs(4), 4)
    with torch.no_grad():
        torch.testing.assert_close(result.image, model.encode_image(images), rtol=0, atol=1e-5)
        torch.testing.assert_close(result.text, model.encode_text(tokens), rtol=0, atol=1e-5)


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_config_is_validated_and_frozen():
    with pytest.raises(ValueError, match="batch_size"):
        EmbedConfig(batch_size=0)
    with pytest.raises(ValueError, match="shard_size"):
        EmbedConfig(shard_size=-1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        EmbedConfig().towers = True  # type: ignore[misc]


# ------------------------------------------------------------------------------------------ embed_dataset

def test_embed_dataset_equals_a_bare_loop(tiny_clip, synthetic_pairs, artifact_root):
    ds = synthetic_pairs(7)
    config = EmbedConfig(batch_size=3, shard_size=6, device="cpu")
    result = embed_dataset(tiny_clip, ds, config, progress=False)
    assert isinstance(result, Embeddings) and len(result) == 7 and result.dim == 16
    assert result.image_tower is None and result.text_tower is None
    images, tokens = batch(tiny_clip, ds, 7)
    with torch.no_grad():
        torch.testing.assert_close(result.image, tiny_clip.model.encode_image(images), rtol=0, atol=1e-5)
        torch.testing.assert_close(result.text, tiny_clip.model.encode_text(tokens), rtol=0, atol=1e-5)
    assert result.key == embedding_key(tiny_clip, ds, config)
    assert result.path == artifact_root / "embeddings" / result.key
    assert result.meta["n"] == 7 and result.meta["dataset_fingerprint"] == ds.fingerprint
    assert result.meta["identity"] == tiny_clip.identity and result.meta["seconds"] >= 0
    assert not (artifact_root / "embeddings.parts").exists() and not leftovers(artifact_root)
    norms = result.normalized().image.norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones(7))


def test_model_mode_is_restored(tiny_clip, synthetic_pairs, artifact_root):
    tiny_clip.model.train()
    embed_dataset(tiny_clip, synthetic_pairs(3), SMALL, progress=False)
    assert tiny_clip.model.training


def test_cache_hit_is_fast_and_never_touches_the_model(tiny_clip, synthetic_pairs, artifact_root):
    ds = synthetic_pairs(10_000)
    key = embedding_key(tiny_clip, ds, EmbedConfig(device="cpu"))
    tensors = {"image": torch.randn(10_000, 64), "text": torch.randn(10_000, 64)}
    save_artifact("embeddings", key, tensors, {"n": 10_000})
    untouchable = dataclasses.replace(tiny_clip, model=Untouchable())
    started = time.perf_counter()
    result = embed_dataset(untouchable, ds, EmbedConfig(device="cpu"), progress=False)
    assert time.perf_counter() - started < 1.0
    assert torch.equal(result.image, tensors["image"]) and torch.equal(result.text, tensors["text"])


def test_second_run_is_a_cache_hit(tiny_clip, synthetic_pairs, artifact_root, count_batches):
    ds = synthetic_pairs(6)
    first = embed_dataset(tiny_clip, ds, SMALL, progress=False)
    untouchable = dataclasses.replace(tiny_clip, model=Untouchable())
    calls = count_batches()
    again = embed_dataset(untouchable, ds, dataclasses.replace(SMALL, shard_size=4, num_workers=1), progress=False)
    assert calls == [] and again.key == first.key and torch.equal(again.image, first.image)


def test_pairs_embedded_with_towers_serve_a_request_without_them(tiny_clip, synthetic_pairs, artifact_root,
                                                                 count_batches):
    """The corpus is embedded once: chapter 01 embeds it with the towers, the later chapters without."""
    ds = synthetic_pairs(6)
    with_towers = embed_dataset(tiny_clip, ds, dataclasses.replace(SMALL, towers=True), progress=False)
    untouchable = dataclasses.replace(tiny_clip, model=Untouchable())
    calls = count_batches()
    plain = embed_dataset(untouchable, ds, SMALL, progress=False)
    assert calls == [] and plain.image_tower is None and plain.text_tower is None
    assert torch.equal(plain.image, with_towers.image) and torch.equal(plain.text, with_towers.text)
    assert plain.key == with_towers.key and with_towers.image_tower is not None  # the original keeps its towers
    # the other way round is not a hit: towers asked of pairs embedded without them are computed
    other = synthetic_pairs(5, seed=2)
    embed_dataset(tiny_clip, other, SMALL, progress=False)
    calls = count_batches()
    assert embed_dataset(tiny_clip, other, dataclasses.replace(SMALL, towers=True), progress=False).image_tower \
        is not None and sum(calls) == 5


def test_stale_inputs_change_the_key_and_recompute(tiny_clip, tiny_arch, synthetic_pairs, artifact_root,
                                                  count_batches):
    calls = count_batches()
    base = embed_dataset(tiny_clip, synthetic_pairs(4), SMALL, progress=False)
    assert sum(calls) == 4
    other_data = embed_dataset(tiny_clip, synthetic_pairs(4, seed=1), SMALL, progress=False)
    assert other_data.key != base.key and sum(calls) == 8
    other_weights = tiny_bundle(build_tiny_clip(tiny_arch, seed=1), tiny_arch)
    reweighted = embed_dataset(other_weights, synthetic_pairs(4), SMALL, progress=False)
    assert reweighted.key != base.key and sum(calls) == 12
    assert not torch.allclose(reweighted.image, base.image)
    with_towers = embed_dataset(tiny_clip, synthetic_pairs(4), dataclasses.replace(SMALL, towers=True),
                                progress=False)
    assert with_towers.key != base.key and sum(calls) == 16
    torch.testing.assert_close(with_towers.image, base.image, rtol=0, atol=1e-6)
    assert len({base.key, other_data.key, reweighted.key, with_towers.key}) == 4
    assert sorted(p.name for p in (artifact_root / "embeddings").iterdir()) == sorted(
        [base.key, other_data.key, reweighted.key, with_towers.key])


def test_resume_computes_only_the_missing_shards(tiny_clip, synthetic_pairs, artifact_root, tmp_path,
                                                 count_batches):
    ds = synthetic_pairs(10)
    reference = embed_dataset(tiny_clip, ds, SMALL, root=tmp_path / "reference", progress=False)

    count_batches(fail_after=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        embed_dataset(tiny_clip, ds, SMALL, progress=False)
    # no partial artifact: three complete shard files, no final folder, no temporary files
    assert shard_files(artifact_root) == [f"shard-{i:06d}.safetensors" for i in range(3)]
    assert not artifact_path("embeddings", reference.key).exists() and not leftovers(artifact_root)

    calls = count_batches()
    resumed = embed_dataset(tiny_clip, ds, SMALL, progress=False)
    assert calls == [2, 2]  # shards 3 and 4 only
    assert resumed.key == reference.key
    assert torch.equal(resumed.image, reference.image) and torch.equal(resumed.text, reference.text)
    assert not (artifact_root / "embeddings.parts").exists()


def test_a_dataset_error_mid_extraction_leaves_only_complete_shards(tiny_clip, synthetic_pairs, artifact_root):
    class Broken(synthetic_pairs):
        def image(self, index):
            if index == 7:
                raise DatasetError("image 7 is unreadable")
            return super().image(index)

    with pytest.raises(DatasetError, match="image 7"):
        embed_dataset(tiny_clip, Broken(10), dataclasses.replace(SMALL, batch_size=1, shard_size=3), progress=False)
    assert shard_files(artifact_root) == ["shard-000000.safetensors", "shard-000001.safetensors"]
    assert not (artifact_root / "embeddings").exists() and not leftovers(artifact_root)


def test_corrupt_final_artifact_is_recomputed_with_a_warning(tiny_clip, synthetic_pairs, artifact_root,
                                                             count_batches):
    ds = synthetic_pairs(4)
    first = embed_dataset(tiny_clip, ds, SMALL, progress=False)
    tensor_file = first.path / "tensors.safetensors"
    data = bytearray(tensor_file.read_bytes())
    data[-5] ^= 0xFF
    tensor_file.write_bytes(bytes(data))
    calls = count_batches()
    with pytest.warns(RuntimeWarning, match="checksum.*recomputing"):
        again = embed_dataset(tiny_clip, ds, SMALL, progress=False)
    assert sum(calls) == 4 and torch.equal(again.image, first.image)
    load_artifact("embeddings", first.key)  # intact again


@pytest.mark.parametrize("damage", ["truncate", "foreign"])
def test_corrupt_shard_is_recomputed_with_a_warning(tiny_clip, synthetic_pairs, artifact_root, tmp_path,
                                                    count_batches, damage):
    ds = synthetic_pairs(10)
    reference = embed_dataset(tiny_clip, ds, SMALL, root=tmp_path / "reference", progress=False)
    count_batches(fail_after=3)
    with pytest.raises(RuntimeError):
        embed_dataset(tiny_clip, ds, SMALL, progress=False)
    shards = sorted(artifact_root.glob("embeddings.parts/*/*"))
    if damage == "truncate":
        shards[1].write_bytes(shards[1].read_bytes()[:50])
    else:  # a valid safetensors file for other rows
        shards[1].write_bytes(shards[2].read_bytes())
    calls = count_batches()
    with pytest.warns(RuntimeWarning, match="recomputing shard 1"):
        resumed = embed_dataset(tiny_clip, ds, SMALL, progress=False)
    assert calls == [2, 2, 2]  # shard 1, then 3 and 4
    assert torch.equal(resumed.image, reference.image) and torch.equal(resumed.text, reference.text)


def test_empty_dataset_is_an_error(tiny_clip, synthetic_pairs, artifact_root):
    with pytest.raises(DatasetError, match="no pairs"):
        embed_dataset(tiny_clip, synthetic_pairs(0), SMALL, progress=False)


def test_worker_processes_give_the_same_result(tiny_clip, synthetic_pairs, tmp_path):
    ds = synthetic_pairs(6)
    serial = embed_dataset(tiny_clip, ds, SMALL, root=tmp_path / "a", progress=False)
    parallel = embed_dataset(tiny_clip, ds, dataclasses.replace(SMALL, num_workers=2, shard_size=6),
                             root=tmp_path / "b", progress=False)
    assert parallel.key == serial.key
    torch.testing.assert_close(parallel.image, serial.image, rtol=0, atol=1e-6)


def test_embed_splits(tiny_clip, synthetic_pairs, artifact_root):
    splits = embed_splits(tiny_clip, {"train": synthetic_pairs(5), "test": synthetic_pairs(3, seed=2)}, SMALL,
                          progress=False)
    assert list(splits) == ["train", "test"]
    assert [len(e) for e in splits.values()] == [5, 3]


# --------------------------------------------------------------------------------------------- CLI, torchrun

@pytest.fixture
def saved_tiny_model(tmp_path, tiny_arch) -> Path:
    path = tmp_path / "tiny-model"
    save_tiny_clip(path, build_tiny_clip(tiny_arch, seed=3), tiny_arch)
    return path


def test_cli_on_webdataset_shards(saved_tiny_model, make_wds_shards, tmp_path, capsys):
    shards = make_wds_shards((3, 2))
    pattern = str(shards[0].parent / "{00000..00001}.tar")
    root = tmp_path / "cli"
    assert embed.main(["--wds", pattern, "--tiny-model", str(saved_tiny_model), "--root", str(root),
                       "--batch-size", "2", "--shard-size", "4", "--no-progress"]) == 0
    printed = Path(capsys.readouterr().out.strip().splitlines()[-1])
    expected = embed_dataset(load_tiny_clip(saved_tiny_model), WebDatasetPairs(pattern), SMALL,
                             root=tmp_path / "api", progress=False)
    assert printed == root / "embeddings" / expected.key
    torch.testing.assert_close(load_artifact("embeddings", expected.key, root).tensors["image"], expected.image,
                               rtol=0, atol=1e-6)


def test_cli_reports_bad_input(saved_tiny_model, tmp_path, capsys):
    assert embed.main(["--csv", str(tmp_path / "missing.csv"), "--tiny-model", str(saved_tiny_model)]) == 2
    assert "missing.csv does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        embed.main(["--csv", "x.csv"])  # no model given
    assert "--tiny-model" in capsys.readouterr().err
    assert embed.main(["--wds", "x.tar", "--image-root", "img", "--tiny-model", str(saved_tiny_model)]) == 2
    assert "--image-root applies to --csv only" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_two_processes_equal_one(saved_tiny_model, make_csv_corpus, tmp_path):
    csv_path = make_csv_corpus(40)
    env = {**os.environ, "MMLIB_ARTIFACTS": str(tmp_path / "dist"), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), "-m", "mmlib.models.embed", "--csv", str(csv_path),
               "--tiny-model", str(saved_tiny_model), "--batch-size", "4", "--shard-size", "8", "--towers",
               "--device", "cpu", "--no-progress"]
    proc = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(printed) == 1, proc.stdout  # rank 0 only
    dist_path = Path(printed[0])
    distributed = load_artifact("embeddings", dist_path.name, tmp_path / "dist")
    assert distributed.meta["world_size"] == 2
    assert not (tmp_path / "dist" / "embeddings.parts").exists()

    with torch_threads(1):  # the ranks run one thread each (OMP_NUM_THREADS=1): the key records it
        single = embed_dataset(load_tiny_clip(saved_tiny_model), CsvPairs(csv_path),
                               EmbedConfig(batch_size=4, shard_size=8, towers=True, device="cpu"),
                               root=tmp_path / "single", progress=False)
    assert single.key == dist_path.name
    for name in ("image", "text", "image_tower", "text_tower"):
        torch.testing.assert_close(distributed.tensors[name], getattr(single, name), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------- issue 15: trustworthy inputs

@pytest.mark.parametrize("field, value", [
    ("batch_size", 0), ("batch_size", -3), ("batch_size", 2.0), ("batch_size", "8"), ("batch_size", True),
    ("batch_size", None), ("shard_size", 0), ("shard_size", 4.5), ("shard_size", "1024"), ("num_workers", -1),
    ("num_workers", 1.0), ("towers", "yes"), ("towers", 1), ("device", "gpu"), ("device", 0), ("device", "meta"),
    ("device", "cuda:x"), ("device", None),
])
def test_every_bad_config_field_is_a_config_error(field, value):
    with pytest.raises(ConfigError, match=rf"EmbedConfig\.{field}|{field}") as info:
        EmbedConfig(**{field: value})
    assert repr(value) in str(info.value) or str(value) in str(info.value)


def test_numpy_integers_are_accepted_as_ints(tiny_clip, synthetic_pairs, tmp_path):
    config = EmbedConfig(batch_size=np.int64(2), shard_size=np.int32(4), num_workers=np.int64(0), towers=np.bool_(0),
                         device="cpu")
    assert type(config.batch_size) is int and type(config.shard_size) is int and type(config.towers) is bool
    result = embed_dataset(tiny_clip, synthetic_pairs(3), config, root=tmp_path, progress=False)
    assert result.key == embedding_key(tiny_clip, synthetic_pairs(3), SMALL)


def test_shard_size_must_be_a_multiple_of_batch_size():
    with pytest.raises(ConfigError, match=r"EmbedConfig\.shard_size \(1000\) must be a multiple of batch_size "
                                          r"\(256\): use 1024"):
        EmbedConfig(shard_size=1000)
    with pytest.raises(ConfigError, match=r"use 4\b"):
        EmbedConfig(batch_size=4, shard_size=2)
    assert EmbedConfig(batch_size=4, shard_size=12).rows_per_shard == 12
    assert EmbedConfig().rows_per_shard == 4096  # the old default
    assert EmbedConfig(batch_size=48).rows_per_shard == 4128  # rounded up to whole batches
    assert dataclasses.replace(EmbedConfig(batch_size=256), batch_size=48).rows_per_shard == 4128


def test_what_changes_the_bytes_changes_the_key(tiny_clip, synthetic_pairs, monkeypatch):
    ds = synthetic_pairs(5)
    base = embedding_key(tiny_clip, ds, SMALL)
    assert embedding_key(tiny_clip, ds, dataclasses.replace(SMALL, batch_size=1, shard_size=2)) != base
    assert embedding_key(tiny_clip, ds, dataclasses.replace(SMALL, towers=True)) != base
    assert embedding_key(tiny_clip, ds, dataclasses.replace(SMALL, shard_size=8, num_workers=2)) == base
    with torch_threads(1):
        one = embedding_key(tiny_clip, ds, SMALL)
    with torch_threads(2):
        two = embedding_key(tiny_clip, ds, SMALL)
    assert one != two
    monkeypatch.setattr(embed, "resolve_device", lambda device="auto": torch.device("cuda"))
    assert embedding_key(tiny_clip, ds, SMALL) not in (one, two)
    with pytest.raises(InputError, match="config must be an EmbedConfig"):
        embedding_key(tiny_clip, ds, True)  # the old `towers` argument


def test_shard_size_never_changes_the_bytes(tiny_clip, synthetic_pairs, tmp_path):
    ds = synthetic_pairs(9)  # a partial last batch
    results = [embed_dataset(tiny_clip, ds, EmbedConfig(batch_size=2, shard_size=s, device="cpu", towers=True),
                             root=tmp_path / f"s{s}", progress=False) for s in (2, 4, 6, 10)]
    assert len({r.key for r in results}) == 1
    files = {(r.path / "tensors.safetensors").read_bytes() for r in results}
    assert len(files) == 1
    for r in results[1:]:
        for name in ("image", "text", "image_tower", "text_tower"):
            assert torch.equal(getattr(r, name), getattr(results[0], name))
    other = embed_dataset(tiny_clip, ds, EmbedConfig(batch_size=3, shard_size=3, device="cpu", towers=True),
                          root=tmp_path / "s2", progress=False)
    assert other.key != results[0].key  # a second artifact next to the first, never mixed with it
    assert len(list((tmp_path / "s2" / "embeddings").iterdir())) == 2


def bad_batches(bundle, images, tokens):
    yield "images must be a torch.Tensor", images.tolist(), tokens
    yield "tokens must be a torch.Tensor", images, tokens.tolist()
    yield r"images must have shape \(b, 3, H, W\), got \(3, 16, 16\)", images[0], tokens
    yield r"images must have shape \(b, 3, H, W\), got \(2, 1, 16, 16\)", images[:, :1], tokens
    yield "images must hold floating-point pixels", (images * 255).to(torch.uint8), tokens
    yield "images are 32x32 pixels but 'tiny-clip' expects 16x16", images.repeat(1, 1, 2, 2), tokens
    yield r"tokens must have shape \(b, L\)", images, tokens[0]
    yield r"tokens must have shape \(b, L\) with L >= 1", images, tokens[:, :0]
    yield "tokens must hold integer token ids", images, tokens.float()
    yield "the batch is empty", images[:0], tokens[:0]
    yield "2 images and 1 token rows", images, tokens[:1]
    yield "tokens have 8 positions but 'tiny-clip' has a context length of 16", images, tokens[:, :8]
    yield r"tokens must be ids in \[0, 49408\), got values in \[-1,", images, torch.where(tokens == 0, -1, tokens)
    yield r"got values in \[\d+, 49408\]", images, torch.where(tokens == 0, 49408, tokens)


def test_encode_pairs_rejects_every_malformed_batch(tiny_clip, synthetic_pairs):
    images, tokens = batch(tiny_clip, synthetic_pairs(2), 2)
    for message, bad_images, bad_tokens in bad_batches(tiny_clip, images, tokens):
        with pytest.raises(InputError, match=message):
            encode_pairs(tiny_clip, bad_images, bad_tokens)
    images[1, 0, 3, 4] = float("nan")
    with pytest.raises(NonFiniteError, match=r"images hold non-finite pixels in 1 of 2 row\(s\) .*rows 1\)"):
        encode_pairs(tiny_clip, images, tokens)


def test_non_finite_model_output_names_the_model_and_rows_and_stores_nothing(tiny_clip, synthetic_pairs,
                                                                            artifact_root):
    real = tiny_clip.model.encode_text
    calls = []

    def broken(tokens, normalize=False):  # the second batch (dataset rows 2..3) is NaN in its second row
        out = real(tokens)
        calls.append(1)
        if len(calls) == 2:
            out = out.clone()
            out[1, 5] = float("inf")
        return out

    tiny_clip.model.encode_text = broken
    with pytest.raises(NonFiniteError, match=r"model 'tiny-clip' returned 1 non-finite value\(s\) in its 'text' "
                                             r"output .*dataset rows 2\.\.3 \(dataset rows 3\)"):
        embed_dataset(tiny_clip, synthetic_pairs(6), SMALL, progress=False)
    assert not (artifact_root / "embeddings").exists() or not any((artifact_root / "embeddings").iterdir())
    assert not (artifact_root / "embeddings.parts").exists()  # shard 0 was written, then removed
    assert not leftovers(artifact_root)

    del tiny_clip.model.encode_text
    with torch.no_grad():
        tiny_clip.model.visual.proj[0, 0] = float("nan")  # broken weights: every row
    with pytest.raises(NonFiniteError, match=r"'image' output for 2 pair\(s\) .*dataset rows 0, 1\)"):
        embed_dataset(tiny_clip, synthetic_pairs(6), SMALL, progress=False)


def test_embed_dataset_names_a_wrong_argument(tiny_clip, synthetic_pairs, artifact_root):
    ds = synthetic_pairs(3)
    with pytest.raises(InputError, match="bundle must be a ModelBundle"):
        embed_dataset(tiny_clip.model, ds, SMALL)
    with pytest.raises(InputError, match="dataset must be a PairDataset.*lacks fingerprint, image, caption"):
        embed_dataset(tiny_clip, [1, 2, 3], SMALL)
    with pytest.raises(InputError, match="config must be an EmbedConfig, got dict"):
        embed_dataset(tiny_clip, ds, {"batch_size": 2})
    with pytest.raises(InputError, match="root must be a folder path"):
        embed_dataset(tiny_clip, ds, SMALL, root=3)

    class NoFingerprint(synthetic_pairs):
        fingerprint = None

    with pytest.raises(InputError, match="dataset.fingerprint must be a non-empty str"):
        embed_dataset(tiny_clip, NoFingerprint(3), SMALL)

    class BadCaption(synthetic_pairs):
        def caption(self, index):
            return 42 if index == 1 else super().caption(index)

    with pytest.raises(InputError, match=r"dataset.caption\(1\) returned a int, not a str"):
        embed_dataset(tiny_clip, BadCaption(3), SMALL, progress=False)
    class NotAnImage(synthetic_pairs):
        def image(self, index):
            return np.zeros((16, 16, 3), dtype=np.uint8)

    with pytest.raises(InputError, match=r"dataset.image\(0\) returned a ndarray, not a PIL image"):
        embed_dataset(tiny_clip, NotAnImage(3), SMALL, progress=False)
    grey = dataclasses.replace(tiny_clip, preprocess=lambda image: torch.zeros(1, 16, 16))
    with pytest.raises(InputError, match=r"dataset row 0 returned a torch.float32 tensor of shape \(1, 16, 16\)"):
        embed_dataset(grey, ds, SMALL, progress=False)
    bad_preprocess = dataclasses.replace(tiny_clip, preprocess=lambda image: torch.zeros(16, 16))
    with pytest.raises(InputError, match=r"preprocessing of dataset row 0 returned a torch.float32 tensor of shape "
                                         r"\(16, 16\)"):
        embed_dataset(bad_preprocess, ds, SMALL, progress=False)
    assert not (artifact_root / "embeddings").exists()


def test_towers_of_an_unsupported_model_fail_before_any_work(tiny_clip, synthetic_pairs, artifact_root):
    custom = open_clip.CustomTextCLIP(
        embed_dim=16, vision_cfg=dict(image_size=16, patch_size=8, width=32, layers=1, head_width=16),
        text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1)).eval()
    bundle = dataclasses.replace(tiny_clip, model=custom, identity="custom-text-clip")
    with pytest.raises(TowersUnsupportedError, match="CustomTextCLIP.*towers=False") as info:
        embed_dataset(bundle, synthetic_pairs(4), dataclasses.replace(SMALL, towers=True), progress=False)
    assert isinstance(info.value, NotImplementedError) and isinstance(info.value, InputError)
    assert not (artifact_root / "embeddings.parts").exists()


def test_a_bad_artifact_root_fails_before_the_model_is_used(tiny_clip, synthetic_pairs, tmp_path):
    untouchable = dataclasses.replace(tiny_clip, model=Untouchable())
    a_file = tmp_path / "root.txt"
    a_file.write_text("not a folder")
    with pytest.raises(ArtifactRootError, match="is a file"):
        embed_dataset(untouchable, synthetic_pairs(3), SMALL, root=a_file, progress=False)
    with pytest.raises(ArtifactRootError, match="a parent is a file"):
        embed_dataset(untouchable, synthetic_pairs(3), SMALL, root=a_file / "below", progress=False)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_root_fails_before_the_model_is_used(tiny_clip, synthetic_pairs, tmp_path):
    root = tmp_path / "read-only"
    root.mkdir()
    root.chmod(0o555)
    try:
        with pytest.raises(ArtifactRootError, match="not writable"):
            embed_dataset(dataclasses.replace(tiny_clip, model=Untouchable()), synthetic_pairs(3), SMALL, root=root,
                          progress=False)
    finally:
        root.chmod(0o755)


def test_an_unavailable_device_or_bad_world_size_is_named(tiny_clip, synthetic_pairs, artifact_root, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="EmbedConfig.device is 'cuda' but torch sees no CUDA device"):
        embed_dataset(tiny_clip, synthetic_pairs(3), dataclasses.replace(SMALL, device="cuda"), progress=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"'cuda:3' but torch sees only 1 CUDA device"):
        embed_dataset(tiny_clip, synthetic_pairs(3), dataclasses.replace(SMALL, device="cuda:3"), progress=False)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(InputError, match="WORLD_SIZE must be an integer, got 'two'"):
        embed_dataset(tiny_clip, synthetic_pairs(3), SMALL, progress=False)
    assert not artifact_root.exists()


def test_cache_hit_removes_stale_temporaries_of_the_key(tiny_clip, synthetic_pairs, artifact_root):
    ds = synthetic_pairs(4)
    first = embed_dataset(tiny_clip, ds, SMALL, progress=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = first.path.parent / f".{first.key}.{artifacts._HOST}.{dead.pid}.{'0' * 32}.tmp"
    stale.mkdir()
    live = first.path.parent / f".{first.key}.{artifacts._HOST}.{os.getpid()}.{'1' * 32}.tmp"
    live.mkdir()  # a writer that still runs (this process) is left alone
    embed_dataset(dataclasses.replace(tiny_clip, model=Untouchable()), ds, SMALL, progress=False)
    assert not stale.exists() and live.exists()


def test_cache_hit_maps_the_artifact_and_scans_no_row(tiny_clip, synthetic_pairs, artifact_root, monkeypatch,
                                                     count_batches):
    """A stamped hit neither hashes the tensor file nor scans the values: its tensors are views of a map of the file
    (read when used). A same-size edit of the file, even with its mtime restored, is still caught and recomputed.
    """
    import mmlib.data.embeddings as embeddings_module

    ds = synthetic_pairs(6)
    first = embed_dataset(tiny_clip, ds, SMALL, progress=False)
    text = first.text.clone()  # first.text maps the file: the in-place edit below would show through it
    monkeypatch.setattr(artifacts, "STAMP_RACY_S", 0.02)
    time.sleep(0.05)
    untouchable = dataclasses.replace(tiny_clip, model=Untouchable())
    embed_dataset(untouchable, ds, SMALL, progress=False)  # hashed, and stamped now that the file is old enough
    tensor_file = first.path / "tensors.safetensors"
    assert (first.path / "verified.json").is_file()

    def fail(*args, **kwargs):
        raise AssertionError("read every byte on a cache hit")

    with monkeypatch.context() as patch:
        patch.setattr(artifacts, "file_sha256", fail)
        patch.setattr(embeddings_module, "check_finite", fail)
        hit = embed_dataset(untouchable, ds, SMALL, progress=False)
    assert torch.equal(hit.image, first.image) and torch.equal(hit.text, first.text) and hit.key == first.key
    if sys.platform.startswith("linux"):
        maps = [line.split(maxsplit=5) for line in Path("/proc/self/maps").read_text().splitlines()]
        ranges = [tuple(int(x, 16) for x in f[0].split("-")) for f in maps
                  if len(f) == 6 and f[5] == str(tensor_file.resolve())]
        assert any(lo <= hit.image.data_ptr() < hi for lo, hi in ranges), "the hit's tensors are not mapped"

    before = tensor_file.stat()
    time.sleep(0.05)
    with open(tensor_file, "r+b") as handle:
        handle.seek(-5, os.SEEK_END)
        byte = handle.read(1)
        handle.seek(-5, os.SEEK_END)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(tensor_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    calls = count_batches()
    with pytest.warns(RuntimeWarning, match="checksum.*recomputing"):
        again = embed_dataset(tiny_clip, ds, SMALL, progress=False)
    assert sum(calls) == 6 and torch.equal(again.text, text)
