"""The two profiles of the book, as typed, frozen configs: ``tiny`` (default) and ``paper``.

A notebook's papermill ``parameters`` cell sets ``profile = "tiny"``; :func:`get_profile` turns the name into
a :class:`Profile`. Both profiles run the same functions; only these parameters differ.

* ``tiny``: offline, CPU, minutes. The generated world (:mod:`mmlib.data.world`), its null-world control, and
  tiny CLIP / DeCLIP-like models the book trains itself (:mod:`mmlib.models.training`).
* ``paper``: a GPU (e.g. Colab) with internet. open_clip ``ViT-B-32`` / ``openai`` and a real paired corpus
  (CC3M-style CSV/TSV or webdataset shards, see :mod:`mmlib.data.corpora`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import open_clip

from mmlib.core.devices import parse_device
from mmlib.core.errors import ConfigError, InputError, InputNotFoundError
from mmlib.core.validation import at_least, one_of, validate_config
from mmlib.data.world import WorldConfig
from mmlib.feature_maps.ncl import NCLConfig
from mmlib.feature_maps.raw import RawConfig
from mmlib.feature_maps.sae import SAEConfig
from mmlib.models.clip import TinyClipArch, UnknownModelError, check_model_name
from mmlib.models.training import TrainConfig


class UnknownProfileError(InputError):
    """The profile name is neither ``tiny`` nor ``paper``."""


@dataclasses.dataclass(frozen=True)
class Profile:
    """All parameters a notebook needs, for one profile.

    Attributes
    ----------
    name : str
        ``"tiny"`` or ``"paper"``.
    world : WorldConfig
        The generated world (the ``paper`` profile uses it as a planted-truth probe of the real model).
    arch : TinyClipArch or None
        Tiny model architecture (``tiny`` only).
    clip_train, declip_train : TrainConfig or None
        Training configs of the tiny CLIP and of the DeCLIP-like variant (``tiny`` only).
    open_clip_model, pretrained : str or None
        The real model (``paper`` only).
    pairs : str or None
        The real paired corpus: a CSV/TSV path or a webdataset shard pattern (``paper`` only; set it in the
        notebook's parameters cell).
    embed_batch_size : int
    device : str
        ``"auto"``: CUDA if available, else CPU.
    raw, sae, ncl : RawConfig, SAEConfig, NCLConfig
        The three feature maps of chapter 02 (``K = 8 d`` on ``paper``; the tiny SAE's ``K`` and ``lambda`` by the
        rule of chapter 02, Table 2.5).
    map_seeds : tuple of int
        Training seeds of the SAE and NCL maps (results are reported across seeds).
    """

    name: str
    world: WorldConfig
    arch: TinyClipArch | None = None
    clip_train: TrainConfig | None = None
    declip_train: TrainConfig | None = None
    open_clip_model: str | None = None
    pretrained: str | None = None
    pairs: str | None = None
    embed_batch_size: int = 256
    device: str = "auto"
    raw: RawConfig = RawConfig()
    sae: SAEConfig = SAEConfig(K=512)
    ncl: NCLConfig = NCLConfig(K=512)
    map_seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        validate_config(self, name=one_of(*PROFILES), embed_batch_size=at_least(1), map_seeds=at_least(0))
        nested = (("world", WorldConfig, False), ("arch", TinyClipArch, True), ("clip_train", TrainConfig, True),
                  ("declip_train", TrainConfig, True), ("raw", RawConfig, False), ("sae", SAEConfig, False),
                  ("ncl", NCLConfig, False))
        for field, cls, optional in nested:
            value = getattr(self, field)
            if not (isinstance(value, cls) or (optional and value is None)):
                raise ConfigError(f"Profile.{field} must be a {cls.__name__}{' or None' if optional else ''}, got "
                                  f"{value!r}.")
        for field in ("open_clip_model", "pretrained", "pairs"):
            value = getattr(self, field)
            if value is not None and not value.strip():
                raise ConfigError(f"Profile.{field} must be None or a non-empty string, got {value!r}.")
        parse_device(self.device, "Profile.device")
        if not self.map_seeds or len(set(self.map_seeds)) != len(self.map_seeds):
            raise ConfigError(f"Profile.map_seeds must be one or more distinct seeds, got {self.map_seeds!r}.")
        if self.name == "tiny":
            missing = [f for f in ("arch", "clip_train", "declip_train") if getattr(self, f) is None]
            if missing:
                raise ConfigError(f"Profile.{missing[0]} must be set for the 'tiny' profile (it trains its own "
                                  "models), got None.")
            if self.arch.image_size != self.world.image_size:
                raise ConfigError(f"Profile.arch.image_size ({self.arch.image_size}) must equal Profile.world."
                                  f"image_size ({self.world.image_size}): the tiny models are trained on the world.")
        if self.name == "paper":
            if self.open_clip_model is None:
                raise ConfigError("Profile.open_clip_model must be set for the 'paper' profile (e.g. 'ViT-B-32'), "
                                  "got None.")
            try:
                check_model_name(self.open_clip_model)
            except UnknownModelError as err:
                raise ConfigError(f"Profile.open_clip_model: {err}") from None

    def feature_map_configs(self, seed: int = 0) -> dict[str, tuple[str, object]]:
        """Map name -> ``(kind, config)`` of the three feature maps, the trainable ones with ``seed``."""
        return {"raw": ("raw", self.raw), "SAE": ("sae", dataclasses.replace(self.sae, seed=seed)),
                "NCL": ("ncl", dataclasses.replace(self.ncl, seed=seed))}

    @property
    def null_world(self) -> WorldConfig:
        """The null-world control: the same world with every factor always shown and always said."""
        return dataclasses.replace(self.world, null=True)

    @property
    def embed_dim(self) -> int:
        """Dimension ``d`` of the joint embedding the feature maps read: the tiny architecture's, or the open_clip
        model's (from its config, without loading weights).
        """
        if self.is_tiny:
            return self.arch.embed_dim
        return int(open_clip.get_model_config(self.open_clip_model)["embed_dim"])

    @property
    def is_tiny(self) -> bool:
        """Whether this is the ``tiny`` profile (the generated world and the book's own models)."""
        return self.name == "tiny"


def _tiny() -> Profile:
    arch = TinyClipArch()
    clip = TrainConfig()
    # DeCLIP-like: 64 pairs x 2 views per step (the cost of a CLIP step); 1-px shifts and a higher peak lr
    # (2-px shifts or lr 2e-3 left shape at 0.79-0.87 after 600 steps; chapter 00 reports the numbers).
    # SAE: K = 2d and lambda = 0.05, chosen by the stated rule of mmlib.reporting.sae_size_rule.SizeRule (the largest K,
    # then the sparsest lambda, that leaves <= 20 % of latents dead for both tiny models; chapter 02, Table 2.5, checks
    # that the rule still selects them). The paper's K = 8d left 60-80 % of the tiny CLIP SAE's latents dead.
    return Profile(name="tiny", world=WorldConfig(), arch=arch, clip_train=clip,
                   declip_train=dataclasses.replace(clip, declip=True, shift=1, lr=3e-3),
                   sae=SAEConfig(K=2 * arch.embed_dim, l1_coef=0.05))


def _paper() -> Profile:
    # ViT-B-32: d = 512, so K = 8 d = 4096 (Method page, `method-feature-maps`); a CC3M subset is streamed in chunks,
    # with fewer epochs.
    return Profile(name="paper", world=WorldConfig(n_train=0, n_val=0, n_test=2000, image_size=64),
                   open_clip_model="ViT-B-32", pretrained="openai", embed_batch_size=256,
                   sae=SAEConfig(K=4096, epochs=5, lr=1e-3), ncl=NCLConfig(K=4096, epochs=5, lr=1e-3))


PROFILES = {"tiny": _tiny, "paper": _paper}


def get_profile(name: str, **overrides) -> Profile:
    """The profile called ``name`` (``"tiny"`` or ``"paper"``), with optional field overrides.

    Raises
    ------
    UnknownProfileError
        for any other name (with the closest valid name).
    ConfigError
        for an override that is not a field of :class:`Profile`, or a value that :class:`Profile` rejects.
    """
    if not isinstance(name, str) or name not in PROFILES:
        close = difflib.get_close_matches(str(name), list(PROFILES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownProfileError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}.{hint}")
    fields = [f.name for f in dataclasses.fields(Profile)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        close = difflib.get_close_matches(unknown[0], fields, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown Profile field(s) {unknown} in the overrides of get_profile({name!r}); the fields "
                          f"are {fields}.{hint}")
    profile = PROFILES[name]()
    return dataclasses.replace(profile, **overrides) if overrides else profile


def read_settings(path: str | os.PathLike) -> dict[str, Any]:
    """A run's settings: a JSON object of :class:`Profile` overrides (see :func:`apply_settings`), read from ``path``.

    Raises
    ------
    InputNotFoundError
        if the file does not exist.
    ConfigError
        if it is not UTF-8 JSON holding an object.
    """
    path = Path(os.fspath(path)).expanduser()
    if not path.is_file():
        raise InputNotFoundError(f"settings file {path} does not exist (or is not a file); pass the JSON file of the "
                                 "run's profile overrides, e.g. the one `mmlib smoke-data` writes")
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"settings file {path} is not valid UTF-8 JSON ({err}); fix or regenerate it") from None
    if not isinstance(settings, dict):
        raise ConfigError(f"settings file {path} holds a JSON {type(settings).__name__}; it must hold an object of "
                          "Profile fields, e.g. {\"pretrained\": \"random\", \"pairs\": \"pairs.csv\"}")
    return settings


def apply_settings(profile: Profile, settings: Mapping[str, Any] | str | os.PathLike | None) -> Profile:
    """``profile`` with the overrides of ``settings`` (a mapping, or the path of a JSON file of one).

    Top-level keys are :class:`Profile` fields. A field that is itself a config (``world``, ``sae``, ``ncl``, ``raw``,
    ``arch``, ``clip_train``, ``declip_train``) takes a mapping of *its* fields, applied to the profile's value;
    ``map_seeds`` takes a list. Every config validates what it is given.

    Raises
    ------
    ConfigError
        for an unknown field (with the closest name), a nested mapping for a field that is not a config, or any
        value a config rejects; see :func:`read_settings` for the file's errors.
    """
    if settings is None:
        return profile
    if isinstance(settings, (str, os.PathLike)):
        settings = read_settings(settings)
    if not isinstance(settings, Mapping):
        raise ConfigError(f"settings must be a mapping of Profile fields or the path of a JSON file, got "
                          f"{type(settings).__name__}")
    fields = {f.name for f in dataclasses.fields(Profile)}
    changes: dict[str, Any] = {}
    for key, value in settings.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), sorted(fields), n=1)
            raise ConfigError(f"unknown setting {key!r}: settings are Profile fields ({sorted(fields)})"
                              + (f"; did you mean {close[0]!r}?" if close else ""))
        current = getattr(profile, key)
        if isinstance(value, Mapping):
            if not dataclasses.is_dataclass(current):
                raise ConfigError(f"setting {key!r} takes a value, not a mapping ({dict(value)!r})")
            nested = {f.name for f in dataclasses.fields(current)}
            unknown = sorted(set(value) - nested)
            if unknown:
                raise ConfigError(f"unknown field(s) {unknown} in setting {key!r}; its fields are {sorted(nested)}")
            value = dataclasses.replace(current, **{k: tuple(v) if isinstance(v, list) else v
                                                    for k, v in value.items()})
        elif isinstance(value, list):
            value = tuple(value)
        changes[key] = value
    return dataclasses.replace(profile, **changes)
