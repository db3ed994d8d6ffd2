"""Model loaders and their errors; the tiny CLIP architecture: preprocessing, save and reload."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mmlib.data.world import WorldConfig, generate_world
from mmlib.models.clip import (
    TinyClipArch,
    UnknownModelError,
    WeightsUnavailableError,
    build_tiny_clip,
    load_open_clip,
    load_tiny_clip,
    save_tiny_clip,
)
from mmlib.models.training import (
    images_to_tensor,
)

ARCH = TinyClipArch(embed_dim=32, image_size=32, patch_size=8, vision_width=32, vision_layers=1,
                    vision_head_width=16, text_width=32, text_layers=1, text_heads=2, context_length=32)
WORLD = WorldConfig(n_train=512, n_val=128, n_test=128, seed=0)


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError, match="ViT-B-32"):
        load_open_clip("ViT-B-33")



def test_pretrained_offline_says_how_to_run_paper_profile():
    with pytest.raises(WeightsUnavailableError, match="paper"):
        load_open_clip("ViT-B-32", "openai")
    with pytest.raises(WeightsUnavailableError, match="no pretrained tag"):
        load_open_clip("ViT-B-32", "openaii")



def test_preprocess_matches_training_tensor(tiny_arch=ARCH):
    w = generate_world(dataclasses.replace(WORLD, n_train=4, n_val=0, n_test=0))
    from mmlib.models.clip import tiny_bundle
    bundle = tiny_bundle(build_tiny_clip(ARCH), ARCH)
    via_pil = torch.stack([bundle.preprocess(w.image(i)) for i in range(4)])
    assert torch.allclose(via_pil, images_to_tensor(w.images, ARCH), atol=1e-6)



def test_save_reload_identical_outputs(tmp_path):
    model = build_tiny_clip(ARCH, seed=1)
    save_tiny_clip(tmp_path / "m", model, ARCH)
    bundle = load_tiny_clip(tmp_path / "m")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model.encode_image(x), bundle.model.encode_image(x))
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "m").iterdir())


def test_caption_scaled_sets_every_class_to_the_mean_caption_norm():
    import pytest

    from mmlib.models.prompts import caption_scale, caption_scaled

    captions = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # norms 5 and 1: mean 3
    assert caption_scale(captions) == 3.0
    classes = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    out = caption_scaled(classes, captions)
    assert torch.allclose(out.norm(dim=1), torch.tensor([3.0, 3.0]))
    assert torch.allclose(out[1], torch.tensor([3.0, 3.0]) / 2 ** 0.5)
    assert caption_scaled(torch.ones(2, 4, 2), captions).shape == (2, 4, 2)  # (k, p, d) prompt sets too
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        caption_scale(torch.zeros(0, 2))


# ------------------------------------------------------------------------------- bad inputs (issue 15)

import json  # noqa: E402
from pathlib import Path  # noqa: E402

from mmlib.core.errors import ConfigError, CorruptArtifactError, InputError, MmlibError, NonFiniteError  # noqa: E402
from mmlib.models.clip import CheckpointError, TinyModelError  # noqa: E402

SMALL_REAL = "ViT-S-32"  # the smallest ViT open_clip knows: a real checkpoint's code path, quickly


class _Evil:
    """A pickle that would create a file when unpickled (it must never be)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_error_classes_are_mmlib_errors():
    assert issubclass(UnknownModelError, InputError) and issubclass(UnknownModelError, ValueError)
    assert issubclass(WeightsUnavailableError, MmlibError) and issubclass(WeightsUnavailableError, RuntimeError)
    assert issubclass(CheckpointError, WeightsUnavailableError) and issubclass(CheckpointError, InputError)


@pytest.mark.parametrize("name", [None, 3, ["ViT-B-32"]])
def test_model_name_must_be_a_string(name):
    with pytest.raises(UnknownModelError, match="must be a string"):
        load_open_clip(name)


@pytest.mark.parametrize("pretrained", ["", "   ", 3, b"openai"])
def test_pretrained_must_be_a_tag_path_or_none(pretrained):
    with pytest.raises(InputError, match="pretrained must be a tag"):
        load_open_clip("ViT-B-32", pretrained)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", 3.5])
def test_bad_device(device):
    with pytest.raises(InputError, match="device must be .auto. or a torch device|device must be a string"):
        load_open_clip("ViT-B-32", None, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda():
    with pytest.raises(InputError, match="torch sees no CUDA device"):
        load_open_clip("ViT-B-32", None, device="cuda")


def test_checkpoint_directory_says_a_file_is_expected(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory; a checkpoint FILE is expected") as err:
        load_open_clip("ViT-B-32", str(tmp_path))
    assert "offline" not in str(err.value)


def test_empty_checkpoint(tmp_path):
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.bin is empty"):
        load_open_clip("ViT-B-32", str(tmp_path / "empty.bin"))


def _bad_checkpoint(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.bin"
    if kind == "garbage":
        path.write_bytes(b"this is not a checkpoint at all" * 10)
    elif kind == "evil":
        torch.save({"state_dict": _Evil(tmp_path / "pwned")}, path)
    elif kind == "module":
        torch.save(torch.nn.Linear(2, 2), path)
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "empty_dict":
        torch.save({}, path)
    elif kind == "other_arch":
        torch.save(build_tiny_clip(ARCH).state_dict(), path)
    elif kind == "bad_safetensors":
        path = tmp_path / "x.safetensors"
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    return path


@pytest.mark.parametrize("kind, message", [
    ("garbage", "is not a readable checkpoint"), ("evil", "pickled Python objects"),
    ("module", "pickled Python objects"), ("tensor", "does not hold a state dict"),
    ("empty_dict", "does not hold a state dict"), ("other_arch", f"does not hold {SMALL_REAL} weights"),
    ("bad_safetensors", "is not a readable checkpoint"),
])
def test_bad_checkpoint_file_names_it_and_never_advises_unsafe_loading(tmp_path, kind, message):
    path = _bad_checkpoint(tmp_path, kind)
    with pytest.raises(CheckpointError, match=message) as err:
        load_open_clip(SMALL_REAL, str(path))
    text = str(err.value)
    assert str(path) in text and "weights_only=False" not in text
    assert "weights_only=True" in text or kind == "other_arch"
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_valid_checkpoint_file_loads(tmp_path, suffix):
    from safetensors.torch import save_file
    reference = load_open_clip(SMALL_REAL, None).model
    path = tmp_path / f"ckpt{suffix}"
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    torch.save(state, path) if suffix == ".bin" else save_file(state, str(path))
    bundle = load_open_clip(SMALL_REAL, str(path))
    assert bundle.identity == f"open_clip:{SMALL_REAL}:{path}"
    assert all(torch.equal(v, state[k]) for k, v in bundle.model.state_dict().items())


def test_random_weights_are_asked_for_by_name_and_seeded(monkeypatch):
    from mmlib.models.clip import RANDOM_WEIGHTS

    torch.manual_seed(3)
    a = load_open_clip(SMALL_REAL, RANDOM_WEIGHTS)
    torch.manual_seed(3)
    b = load_open_clip(SMALL_REAL, None)
    torch.manual_seed(4)
    c = load_open_clip(SMALL_REAL, "random")
    assert a.name == f"{SMALL_REAL}/random" and a.identity == b.identity != c.identity
    assert a.identity.startswith(f"open_clip:{SMALL_REAL}:random:")
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())


def test_unknown_tag_that_is_no_file_either():
    with pytest.raises(WeightsUnavailableError, match="no pretrained tag 'nope', and no file 'nope' exists"):
        load_open_clip("ViT-B-32", "nope")


# ----------------------------------------------------------------------------------------- tiny folders

@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "m"
    save_tiny_clip(path, build_tiny_clip(ARCH, seed=1), ARCH, extra={"note": "x"})
    return path


def test_save_records_weights_checksum(saved):
    from mmlib.core.artifacts import file_sha256
    config = json.loads((saved / "config.json").read_text())
    assert config["weights_sha256"] == file_sha256(saved / "model.safetensors") and config["note"] == "x"
    assert load_tiny_clip(saved).identity == load_tiny_clip(saved).identity


def test_one_byte_flip_of_the_weights_is_detected(saved):
    weights = saved / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifactError, match=r"model\.safetensors does not match the SHA-256 recorded in .*"
                                                   r"config\.json"):
        load_tiny_clip(saved)


def _edit_config(path: Path, edit) -> None:
    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))


def test_config_that_does_not_fit_the_weights_names_both_files(saved):
    _edit_config(saved, lambda c: c["arch"].update(vision_width=64))
    with pytest.raises(CorruptArtifactError, match=r"weights in .*model\.safetensors do not fit the architecture in "
                                                   r".*config\.json \(.*size mismatch"):
        load_tiny_clip(saved)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("weights_sha256"), "records no checksum .* re-save"),
    (lambda c: c["arch"].update(patch_size=0), r"invalid architecture \(TinyClipArch\.patch_size"),
    (lambda c: c["arch"].update(colour="red"), r"unknown architecture field\(s\) \['colour'\]"),
    (lambda c: c.pop("arch"), "has no 'arch' object"),
])
def test_bad_config_is_a_corrupt_artifact(saved, edit, message):
    _edit_config(saved, edit)
    with pytest.raises(CorruptArtifactError, match=message):
        load_tiny_clip(saved)


def test_unreadable_config_or_missing_files(saved, tmp_path):
    (saved / "config.json").write_text("{not json")
    with pytest.raises(CorruptArtifactError, match=r"config\.json is not readable JSON"):
        load_tiny_clip(saved)
    (saved / "config.json").unlink()
    with pytest.raises(TinyModelError, match=r"has no config\.json"):
        load_tiny_clip(saved)
    with pytest.raises(TinyModelError, match="does not exist"):
        load_tiny_clip(tmp_path / "nowhere")
    with pytest.raises(TinyModelError, match="is a file, not a folder"):
        load_tiny_clip(saved / "model.safetensors")


def test_missing_weights(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(CorruptArtifactError, match=r"model\.safetensors is missing"):
        load_tiny_clip(saved)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(extra={"arch": 1}), InputError, "reserved key"),
    (dict(extra={"f": object()}), InputError, "not JSON-serialisable"),
    (dict(extra={"f": float("nan")}), InputError, "not JSON-serialisable"),
    (dict(arch=dataclasses.replace(ARCH, embed_dim=16)), InputError, "do not fit arch"),
    (dict(arch={"embed_dim": 32}), InputError, "arch must be a TinyClipArch"),
])
def test_save_rejects_bad_input_and_writes_nothing(tmp_path, kwargs, error, message):
    args = {"path": tmp_path / "m", "model": build_tiny_clip(ARCH), "arch": ARCH, **kwargs}
    with pytest.raises(error, match=message):
        save_tiny_clip(**args)
    assert not (tmp_path / "m").exists()


def test_save_rejects_non_finite_weights_and_a_file_path(tmp_path):
    model = build_tiny_clip(ARCH)
    with torch.no_grad():
        model.logit_scale.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="logit_scale"):
        save_tiny_clip(tmp_path / "m", model, ARCH)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        save_tiny_clip(tmp_path / "file", build_tiny_clip(ARCH), ARCH)


# -------------------------------------------------------------------------------------------- TinyClipArch

@pytest.mark.parametrize("changes, message", [
    (dict(embed_dim=0), r"TinyClipArch\.embed_dim must be in \[1"), (dict(patch_size=2.0), "patch_size must be an"),
    (dict(vision_layers=True), "vision_layers must be an integer"), (dict(context_length="32"), "context_length"),
    (dict(mean=(0.5, 0.5)), "mean must be three"), (dict(std=(0.2, float("nan"), 0.2)), "std must be three"),
    (dict(std=(0.2, 0.0, 0.2)), "std must be positive"), (dict(stem_channels=(32, 0)), "stem_channels"),
    (dict(image_size=30), "not a multiple of patch_size"), (dict(vision_head_width=24), "multiple of"),
    (dict(text_heads=3), "multiple of text_heads"), (dict(stem_channels=(8,)), "downsamples by 4"),
])
def test_arch_rejects_bad_fields(changes, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(ARCH, **changes)


# ------------------------------------------------------------------------------------------------ prompts

def test_prompt_inputs_are_checked(tiny_clip):
    from mmlib.models.prompts import caption_scale, caption_scaled, encode_texts
    with pytest.raises(InputError, match="one string"):
        encode_texts(tiny_clip, "a photo")
    with pytest.raises(InputError, match=r"texts\[1\] must be a string"):
        encode_texts(tiny_clip, ["a", None])
    with pytest.raises(InputError, match="texts is empty"):
        encode_texts(tiny_clip, [])
    with pytest.raises(NonFiniteError, match="captions holds 1 non-finite"):
        caption_scale(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(InputError, match="all zero vectors"):
        caption_scale(torch.zeros(3, 2))
    with pytest.raises(NonFiniteError, match="class_emb"):
        caption_scaled(torch.tensor([[float("inf"), 0.0]]), torch.ones(2, 2))
