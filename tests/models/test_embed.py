"""Tests of mmlib.models.embed: batch encoding, towers, caching, resume, corruption, torchrun sharding and the CLI."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import open_clip
import pytest
import torch

import mmlib.models.embed as embed
from mmlib.core.artifacts import artifact_path, load_artifact, save_artifact
from mmlib.core.devices import resolve_device
from mmlib.core.paths import REPO_ROOT
from mmlib.data.corpora import CsvPairs, WebDatasetPairs
from mmlib.data.embeddings import Embeddings
from mmlib.data.protocol import DatasetError
from mmlib.models.clip import ModelBundle, build_tiny_clip, load_open_clip, load_tiny_clip, save_tiny_clip, tiny_bundle
from mmlib.models.embed import EmbedConfig, embed_dataset, embed_splits, embedding_key, encode_pairs

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

        def wrapper(bundle, images, tokens, towers=False):
            if fail_after is not None and len(calls) == fail_after:
                raise RuntimeError("simulated crash")
            calls.append(images.shape[0])
            return real(bundle, images, tokens, towers)

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
    result = embed_dataset(tiny_clip, ds, EmbedConfig(batch_size=3, shard_size=4, device="cpu"), progress=False)
    assert isinstance(result, Embeddings) and len(result) == 7 and result.dim == 16
    assert result.image_tower is None and result.text_tower is None
    images, tokens = batch(tiny_clip, ds, 7)
    with torch.no_grad():
        torch.testing.assert_close(result.image, tiny_clip.model.encode_image(images), rtol=0, atol=1e-5)
        torch.testing.assert_close(result.text, tiny_clip.model.encode_text(tokens), rtol=0, atol=1e-5)
    assert result.key == embedding_key(tiny_clip, ds) and result.path == artifact_root / "embeddings" / result.key
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
    key = embedding_key(tiny_clip, ds)
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
    again = embed_dataset(untouchable, ds, dataclasses.replace(SMALL, batch_size=5, shard_size=3), progress=False)
    assert calls == [] and again.key == first.key and torch.equal(again.image, first.image)


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
        embed_dataset(tiny_clip, Broken(10), dataclasses.replace(SMALL, shard_size=3), progress=False)
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
                       "--batch-size", "2", "--shard-size", "3", "--no-progress"]) == 0
    printed = Path(capsys.readouterr().out.strip().splitlines()[-1])
    expected = embed_dataset(load_tiny_clip(saved_tiny_model), WebDatasetPairs(pattern), SMALL,
                             root=tmp_path / "api", progress=False)
    assert printed == root / "embeddings" / expected.key
    torch.testing.assert_close(load_artifact("embeddings", expected.key, root).tensors["image"], expected.image,
                               rtol=0, atol=1e-6)


def test_cli_reports_bad_input(saved_tiny_model, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        embed.main(["--csv", str(tmp_path / "missing.csv"), "--tiny-model", str(saved_tiny_model)])
    assert exit_info.value.code == 2
    assert "missing.csv does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        embed.main(["--csv", "x.csv"])  # no model given
    assert "--tiny-model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        embed.main(["--wds", "x.tar", "--image-root", "img", "--tiny-model", str(saved_tiny_model)])
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

    single = embed_dataset(load_tiny_clip(saved_tiny_model), CsvPairs(csv_path),
                           EmbedConfig(batch_size=4, shard_size=8, towers=True, device="cpu"),
                           root=tmp_path / "single", progress=False)
    assert single.key == dist_path.name
    for name in ("image", "text", "image_tower", "text_tower"):
        torch.testing.assert_close(distributed.tensors[name], getattr(single, name), rtol=0, atol=1e-6)
