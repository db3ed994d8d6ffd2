"""The feature-map interface: input checks, raw dims, storage, sources, streamed data, the artifact store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mmlib.core.artifacts import CorruptArtifactError, write_tensors_atomic
from mmlib.core.devices import torch_threads
from mmlib.data.embeddings import Embeddings
from mmlib.feature_maps._training import History, Liveness, data_stats, iterate_batches, linear_decay_lr, pair_chunks
from mmlib.feature_maps.base import (
    Source,
    SourceMismatchError,
    check_embeddings,
    check_modality,
    check_source,
    source_of,
)
from mmlib.feature_maps.raw import RawConfig, RawDims
from mmlib.feature_maps.sae import SAEConfig, train_sae
from mmlib.feature_maps.store import load_feature_map, load_or_train_feature_map

TINY_SAE = SAEConfig(K=16, epochs=1, batch_size=32, seed=0)


def make_embeddings(n: int = 64, d: int = 8, identity: str = "tiny:test:abc", seed: int = 0) -> Embeddings:
    gen = torch.Generator().manual_seed(seed)
    return Embeddings(image=torch.randn(n, d, generator=gen), text=torch.randn(n, d, generator=gen),
                      key=f"emb-{identity}-{n}-{d}-{seed}", meta={"identity": identity, "model": "tiny", "n": n})


# ------------------------------------------------------------------------------------------- input checks

def test_check_embeddings_reports_dimension_nan_inf_and_shape():
    z = torch.zeros(5, 6)
    assert check_embeddings(z, 6).dtype == torch.float32
    with pytest.raises(ValueError, match=r"expected 8, got 6"):
        check_embeddings(z, 8)
    z[1, 0], z[3, 2] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"NaN or Inf in 2 of 5 rows \(first at row 1\)"):
        check_embeddings(z, 6)
    with pytest.raises(ValueError, match="2-D"):
        check_embeddings(torch.zeros(6), 6)
    assert check_embeddings(np.ones((2, 3), dtype=np.float64)).dtype == torch.float32
    assert check_modality("text") == "text"
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        check_modality("audio")


def test_encode_checks_inputs_of_a_map():
    raw = RawDims(4)
    with pytest.raises(ValueError, match="expected 4, got 3"):
        raw.encode(torch.zeros(2, 3), "image")
    with pytest.raises(ValueError, match="NaN or Inf in 1 of 2 rows"):
        raw.encode(torch.tensor([[0.0, 1, 2, 3], [float("inf"), 0, 0, 0]]), "text")
    with pytest.raises(ValueError, match="unknown modality"):
        raw.encode(torch.zeros(2, 4), "video")


# ---------------------------------------------------------------------------------------------- raw dims

def test_raw_dims_activations_and_no_decoder():
    z = torch.tensor([[-2.0, 0.5, 0.0]])
    assert torch.equal(RawDims(3).encode(z, "image"), torch.tensor([[2.0, 0.5, 0.0]]))
    assert torch.equal(RawDims(3, RawConfig("relu")).encode(z, "text"), torch.tensor([[0.0, 0.5, 0.0]]))
    raw = RawDims(3)
    assert raw.n_features == raw.input_dim == 3 and not raw.has_decoder
    with pytest.raises(NotImplementedError, match="has no decoder"):
        raw.decode(torch.zeros(1, 3), "image")
    with pytest.raises(NotImplementedError, match="has no decoder"):
        raw.reconstruct(z, "image")
    with pytest.raises(ValueError, match="'abs' or 'relu'"):
        RawConfig("gelu")


@settings(max_examples=30, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 6), st.just(5)),
              elements=st.floats(-1e6, 1e6, allow_nan=False, width=32)),
       st.sampled_from(["abs", "relu"]), st.sampled_from(["image", "text"]))
def test_raw_dims_encode_is_non_negative(z, activation, modality):
    h = RawDims(5, RawConfig(activation)).encode(z, modality)
    assert h.shape == z.shape and bool((h >= 0).all())


# ----------------------------------------------------------------------------------------------- storage

def test_save_load_roundtrip_raw(tmp_path):
    raw = RawDims(3, RawConfig("relu"), source=Source(identity="m", model="M", embeddings_key="k", n=7))
    path = raw.save(tmp_path / "raw.safetensors")
    back = load_feature_map(path)
    assert isinstance(back, RawDims) and back.activation == "relu" and back.source == raw.source
    z = torch.randn(4, 3)
    assert torch.equal(back.encode(z, "image"), raw.encode(z, "image"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_load_rejects_foreign_unknown_missing_and_truncated_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_feature_map(tmp_path / "nothing.safetensors")
    write_tensors_atomic(tmp_path / "other.safetensors", {"x": torch.zeros(2)})
    with pytest.raises(ValueError, match="not a feature map"):
        load_feature_map(tmp_path / "other.safetensors")
    config = RawDims(2).config() | {"kind": "pca"}
    write_tensors_atomic(tmp_path / "pca.safetensors", {"x": torch.zeros(2)}, {"config": json.dumps(config)})
    with pytest.raises(ValueError, match="unknown kind 'pca'"):
        load_feature_map(tmp_path / "pca.safetensors")
    path = RawDims(2).save(tmp_path / "raw.safetensors")
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CorruptArtifactError):
        load_feature_map(path)


def test_saved_map_refuses_embeddings_of_another_dimension(tmp_path):
    fmap, _ = train_sae(make_embeddings(d=8), TINY_SAE, progress=False, threads=1)
    back = load_feature_map(fmap.save(tmp_path / "sae.safetensors"))
    with pytest.raises(ValueError, match="expects d=8 .*expected 8, got 6"):
        back.encode(torch.zeros(3, 6), "image")


# ------------------------------------------------------------------------------------------------ sources

def test_source_is_read_from_embeddings_and_tensors():
    emb = make_embeddings()
    src = source_of(emb)
    assert src == Source(identity="tiny:test:abc", model="tiny", embeddings_key=emb.key, n=64)
    pair = source_of((emb.image, emb.text))
    assert pair.identity is None and pair.n == 64
    assert pair.embeddings_key == source_of((emb.image.clone(), emb.text.clone())).embeddings_key
    assert source_of(lambda: iter([])) == Source()


def test_check_source_refuses_a_map_of_another_model():
    emb = make_embeddings(identity="open_clip:ViT-B-32:openai")
    fmap, _ = train_sae(emb, TINY_SAE, progress=False, threads=1)
    check_source(fmap, emb)                                   # Embeddings
    check_source(fmap, "open_clip:ViT-B-32:openai")           # identity string
    with pytest.raises(SourceMismatchError, match="trained on embeddings of model 'open_clip:ViT-B-32:openai'"):
        check_source(fmap, make_embeddings(identity="open_clip:ViT-L-14:openai"))

    class Bundle:
        identity = "tiny:other:xyz"

    with pytest.raises(SourceMismatchError, match="not of 'tiny:other:xyz'"):
        check_source(fmap, Bundle())
    unknown = RawDims(8)
    with pytest.raises(SourceMismatchError, match="records no source model"):
        check_source(unknown, emb)
    check_source(unknown, emb, allow_unknown=True)
    with pytest.raises(TypeError, match="model identity"):
        check_source(fmap, 3)


# ---------------------------------------------------------------------------------------- streamed data

def test_pair_chunks_accepts_tensors_callables_and_lists():
    emb = make_embeddings(n=10, d=3)
    chunks = list(pair_chunks(emb, chunk_size=4)())
    assert [len(i) for i, _ in chunks] == [4, 4, 2]
    assert torch.equal(torch.cat([t for _, t in chunks]), emb.text)
    listed = [(emb.image[:5], emb.text[:5]), (emb.image[5:], emb.text[5:])]
    assert len(list(pair_chunks(listed)())) == 2 and len(list(pair_chunks(listed)())) == 2  # re-iterable
    assert len(list(pair_chunks(lambda: iter(listed))())) == 2
    with pytest.raises(TypeError, match="one-shot iterator"):
        pair_chunks(iter(listed))
    with pytest.raises(TypeError, match="cannot read training pairs"):
        pair_chunks(3)


def test_pair_chunks_checks_every_chunk():
    bad = torch.zeros(4, 3)
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"text embeddings \(chunk 1\) contain NaN or Inf in 1 of 4 rows"):
        list(pair_chunks([(torch.zeros(4, 3), torch.zeros(4, 3)), (torch.zeros(4, 3), bad)])())
    with pytest.raises(ValueError, match="4 image but 3 text"):
        list(pair_chunks([(torch.zeros(4, 3), torch.zeros(3, 3))])())
    with pytest.raises(ValueError, match="expected 3, got 2"):
        list(pair_chunks([(torch.zeros(4, 3), torch.zeros(4, 2))])())


def test_data_stats_hand_values():
    image = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    text = torch.tensor([[0.0, 2.0], [0.0, 2.0]])
    stats = data_stats(pair_chunks((image, text), chunk_size=1))
    assert stats.n == 2 and stats.dim == 2 and stats.chunk_sizes == (1, 1)
    assert torch.allclose(stats.mean, torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    assert torch.allclose(stats.sq_norm, torch.tensor([5.0, 4.0]))          # (1 + 9) / 2, (4 + 4) / 2
    assert torch.allclose(stats.centered_sq_norm, torch.tensor([1.0, 0.0]))
    assert stats.steps_per_epoch(batch_size=1) == 2
    with pytest.raises(ValueError, match="no pairs"):
        data_stats(pair_chunks(lambda: iter([])))


def test_iterate_batches_covers_every_pair_once_and_is_seeded():
    emb = make_embeddings(n=23, d=2)
    chunks = pair_chunks(emb, chunk_size=10)
    batches = list(iterate_batches(chunks, 4, torch.Generator().manual_seed(1)))
    assert all(b.shape[0] == 2 for b in batches)
    rows = torch.cat([b[0] for b in batches])
    assert len(rows) == 23 and torch.equal(rows[rows[:, 0].argsort()], emb.image[emb.image[:, 0].argsort()])
    texts = torch.cat([b[1] for b in batches])
    assert torch.equal(texts[rows[:, 0].argsort()], emb.text[emb.image[:, 0].argsort()])  # pairs stay aligned
    again = list(iterate_batches(chunks, 4, torch.Generator().manual_seed(1)))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    # chunks of 10, 10 and 3 rows in batches of 4, dropping batches under 4 rows: 4 + 4, 4 + 4, nothing
    assert sum(len(b[0]) for b in iterate_batches(chunks, 4, torch.Generator(), min_batch=4)) == 16
    assert data_stats(chunks).steps_per_epoch(4, min_batch=4) == 4
    assert data_stats(chunks).steps_per_epoch(4) == 7


def test_training_helpers():
    assert linear_decay_lr(1, 10, 1.0, 0.2) == 1.0 and linear_decay_lr(10, 10, 1.0, 0.2) == pytest.approx(0.5)
    assert linear_decay_lr(10, 10, 1.0, 0.0) == 1.0
    live = Liveness(1, 3, window=2)
    assert not live.update(torch.tensor([[True, False, False]]), 1).any()
    assert live.update(torch.tensor([[False, False, False]]), 2).tolist() == [[False, True, True]]
    live.revive(torch.tensor([[False, True, False]]), 2)
    assert live.dead(2).tolist() == [[False, False, True]]
    hist = History(("loss",), log_every=2, total=3)
    for step, value in ((1, 1.0), (2, 3.0), (3, 5.0)):
        hist.add(step, 0.5, 0.1, loss=value)
    assert hist.data == {"step": [2, 3], "loss": [2.0, 5.0], "dead": [0.5, 0.5], "lr": [0.1, 0.1]}
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        with torch_threads(0):
            pass


def test_streamed_training_equals_training_on_tensors():
    emb = make_embeddings(n=40, d=4)
    config = SAEConfig(K=8, epochs=2, batch_size=8, chunk_size=16)
    a, _ = train_sae(emb, config, progress=False, threads=1)
    chunks = [(emb.image[i:i + 16], emb.text[i:i + 16]) for i in range(0, 40, 16)]
    b, _ = train_sae(lambda: iter(chunks), config, progress=False, threads=1)
    assert all(torch.equal(a.state_tensors()[k], b.state_tensors()[k]) for k in a.state_tensors())
    assert b.source.identity is None and b.source.n == 40


# ------------------------------------------------------------------------------------------ artifact store

def test_load_or_train_reuses_the_artifact(artifact_root, monkeypatch):
    emb = make_embeddings()
    first = load_or_train_feature_map("sae", TINY_SAE, emb, progress=False, threads=1)
    assert first.path.parent.parent == artifact_root and first.history["step"]
    assert first.fmap.source.identity == "tiny:test:abc"
    import mmlib.feature_maps.sae
    monkeypatch.setattr(mmlib.feature_maps.sae, "train_sae", lambda *a, **k: pytest.fail("retrained a stored map"))
    second = load_or_train_feature_map("sae", TINY_SAE, emb, progress=False)
    assert second.key == first.key and second.history == first.history
    z = emb.image[:5]
    assert torch.equal(second.fmap.encode(z, "image"), first.fmap.encode(z, "image"))
    assert torch.equal(load_feature_map(first.path).encode(z, "image"), first.fmap.encode(z, "image"))
    raw = load_or_train_feature_map("raw", RawConfig(), emb)
    assert raw.key != first.key and isinstance(raw.fmap, RawDims) and raw.fmap.source.identity == "tiny:test:abc"
    with pytest.raises(TypeError, match="needs a SAEConfig"):
        load_or_train_feature_map("sae", RawConfig(), emb)
    with pytest.raises(ValueError, match="unknown feature map kind"):
        load_or_train_feature_map("pca", RawConfig(), emb)


def test_load_or_train_keys_on_config_and_data(artifact_root):
    from mmlib.feature_maps.store import feature_map_key
    emb = make_embeddings()
    key = feature_map_key("sae", TINY_SAE, emb)
    assert key != feature_map_key("sae", SAEConfig(K=17, epochs=1, batch_size=32), emb)
    assert key != feature_map_key("sae", TINY_SAE, make_embeddings(seed=1))
    pair_key = feature_map_key("sae", TINY_SAE, (emb.image, emb.text))
    assert pair_key == feature_map_key("sae", TINY_SAE, (emb.image.clone(), emb.text.clone()))
    with pytest.raises(TypeError, match="fingerprint"):
        feature_map_key("sae", TINY_SAE, lambda: iter([]))
