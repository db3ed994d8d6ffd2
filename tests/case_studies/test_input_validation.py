"""Bad inputs to the case studies: non-finite tensors, wrong shapes and bad configs give a named mmlib error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmlib.case_studies.adversarial.attacks import PGDConfig, noise_attack, pgd_attack, zero_shot_logits
from mmlib.case_studies.adversarial.defence import DefenceConfig, alignment_loss
from mmlib.case_studies.adversarial.shift import category_shift, feature_scale
from mmlib.case_studies.adversarial.steering import best_caption, cross_modal_effect, selectivity
from mmlib.case_studies.attribute_bias import AttributeTask, PlantedAttributeConfig
from mmlib.case_studies.removal import RemovalData, remove_features
from mmlib.case_studies.t2i.editing import EditConfig, edit_embedding, edit_features
from mmlib.case_studies.t2i.image_probes import ProbeConfig
from mmlib.case_studies.t2i.tiny_decoder import DecoderConfig
from mmlib.core.errors import ConfigError, InputError, NonFiniteError

BAD = [float("nan"), float("inf"), float("-inf")]


def _with(x: torch.Tensor, index: tuple[int, ...], value: float) -> torch.Tensor:
    y = x.clone()
    y[index] = value
    return y


def _emb(n: int = 4, d: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


class _Map:
    has_decoder = True

    def encode(self, z, modality):  # pragma: no cover - the checks come first
        raise AssertionError("must not be reached")


@pytest.mark.parametrize("bad", BAD)
def test_tensor_inputs_reject_non_finite_values(bad):
    z, h = _emb(), _emb().abs()
    mask = np.array([True, False, True])
    pixels = torch.rand(2, 3, 4, 4)
    cases = [
        (lambda: RemovalData(image_emb=_with(z, (1, 2), bad), text_emb=z), r"RemovalData.image_emb.*row 1, column 2"),
        (lambda: RemovalData(image_emb=z, text_emb=_with(z, (0, 0), bad)), "RemovalData.text_emb"),
        (lambda: remove_features(_Map(), _with(z, (3, 1), bad), "image", mask), "z.*row 3, column 1"),
        (lambda: noise_attack(_with(pixels, (1, 2, 3, 0), bad), 0.1), r"x holds.*\(1, 2, 3, 0\)"),
        (lambda: pgd_attack(torch.nn.Identity(), _with(pixels, (0, 0, 0, 0), bad), None, PGDConfig()), "x holds"),
        (lambda: zero_shot_logits(z, _with(z, (2, 2), bad)), "class_emb.*row 2, column 2"),
        (lambda: alignment_loss(_with(h, (0, 1), bad), h, mask), "h_adv.*row 0, column 1"),
        (lambda: category_shift(h, _with(h, (1, 1), bad), {"g": mask}), "h_adv"),
        (lambda: feature_scale(_with(h, (2, 0), bad)), "h holds"),
        (lambda: selectivity(_with(h, (1, 0), bad), h, torch.ones(3), mask, mask), "h_clean"),
        (lambda: cross_modal_effect(z, _with(z, (1, 1), bad), z, np.arange(4)), "image_adv.*row 1, column 1"),
        (lambda: best_caption(z, _with(z, (3, 2), bad)), "text.*row 3, column 2"),
        (lambda: edit_features(_with(h, (1, 2), bad), h, mask, 0.5), "h_ref.*row 1, column 2"),
        (lambda: edit_features(h, _with(h, (0, 0), bad), mask, 0.5), "h_prompt"),
        (lambda: edit_embedding(_Map(), z, _with(z, (2, 1), bad), mask, 0.5), "z_prompt.*row 2, column 1"),
        (lambda: AttributeTask("a", ("x", "y"), _with(z, (0, 1), bad), z[:2], np.array([0, 1, 0, 1])),
         "AttributeTask.image_emb"),
    ]
    for call, match in cases:
        with pytest.raises(NonFiniteError, match=match):
            call()


def test_shapes_and_scales_give_named_errors():
    z, h = _emb(), _emb().abs()
    mask = np.array([True, False, True])
    with pytest.raises(InputError, match="paired captions"):
        RemovalData(image_emb=z, text_emb=z[:3])
    with pytest.raises(InputError, match=r"RemovalData.text_emb \(4, 2\).*image_emb \(4, 3\)"):
        RemovalData(image_emb=z, text_emb=z[:, :2])
    with pytest.raises(InputError, match="class_emb"):
        RemovalData(image_emb=z, class_emb=z[:, :2], labels=np.zeros(4, int))
    with pytest.raises(InputError, match=r"h_clean \(4, 3\) and h_adv \(3, 3\)"):
        selectivity(h, h[:3], torch.ones(3), mask, mask)
    with pytest.raises(InputError, match="scale must be positive"):
        selectivity(h, h, torch.tensor([1.0, 0.0, 1.0]), mask, mask)
    with pytest.raises(InputError, match="scale must be positive"):
        selectivity(h, h, torch.tensor([1.0, float("nan"), 1.0]), mask, mask)
    assert np.isfinite(selectivity(h, h + 1, torch.tensor([1.0, float("inf"), 1.0]), mask, ~mask)).all()
    with pytest.raises(InputError, match=r"z \(4, 3\) and text \(4, 2\)"):
        best_caption(z, z[:, :2])


@pytest.mark.parametrize("cls, kwargs", [
    (PGDConfig, dict(eps="0.1")), (PGDConfig, dict(eps=float("nan"))), (PGDConfig, dict(steps=0)),
    (PGDConfig, dict(step_size=float("inf"))), (PGDConfig, dict(step_size="x")), (PGDConfig, dict(seed=1.5)),
    (PGDConfig, dict(random_start="yes")),
    (DefenceConfig, dict(lr="1e-3")), (DefenceConfig, dict(lr=float("nan"))), (DefenceConfig, dict(batch_size=0)),
    (DefenceConfig, dict(weight_decay=-1.0)), (DefenceConfig, dict(steps=2.0)), (DefenceConfig, dict(eps=-0.1)),
    (PlantedAttributeConfig, dict(strength="1")), (PlantedAttributeConfig, dict(strength=float("nan"))),
    (PlantedAttributeConfig, dict(p_depict=(0.5, float("nan")))), (PlantedAttributeConfig, dict(p_mention=(0.5, 2.0))),
    (PlantedAttributeConfig, dict(seed=True)),
    (EditConfig, dict(alphas=(0.5, float("nan")))), (EditConfig, dict(alphas=(1.5,))), (EditConfig, dict(steps="20")),
    (EditConfig, dict(guidance=float("inf"))), (EditConfig, dict(scale=-1.0)), (EditConfig, dict(prompt_modality="x")),
    (DecoderConfig, dict(lr=float("nan"))), (DecoderConfig, dict(cond_drop=1.0)), (DecoderConfig, dict(steps="5")),
    (DecoderConfig, dict(weight_decay=-0.1)), (DecoderConfig, dict(warmup=-1)), (DecoderConfig, dict(channels=(32, 0))),
    (DecoderConfig, dict(film="yes")),
    (ProbeConfig, dict(lr=float("inf"))), (ProbeConfig, dict(noise=-0.1)), (ProbeConfig, dict(epochs=1.5)),
    (ProbeConfig, dict(noise=float("nan"))), (ProbeConfig, dict(batch_size=0)),
])
def test_configs_reject_wrong_types_nan_and_out_of_range(cls, kwargs):
    with pytest.raises(ConfigError):
        cls(**kwargs)


def test_config_errors_name_class_and_field():
    with pytest.raises(ConfigError, match=r"ProbeConfig.noise must be"):
        ProbeConfig(noise=-0.1)
    with pytest.raises(ConfigError, match=r"DecoderConfig.lr|lr must be"):
        DecoderConfig(lr=float("nan"))
    with pytest.raises(ConfigError, match=r"EditConfig.steps must be an integer"):
        EditConfig(steps="20")
    assert PGDConfig() == PGDConfig() and DefenceConfig().lr == 1e-3 and EditConfig().steps == 20
