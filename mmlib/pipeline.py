"""The book's shared first steps, one call per notebook: world -> trained models -> cached embeddings.

Every chapter from 01 on starts from the same artifacts: the generated world (or its null-world control),
the tiny CLIP and DeCLIP-like models trained on it, and their embeddings of the train and test splits. This
module names those steps once, so that a notebook reads ``setup = tiny_setup(P)`` instead of repeating the
plumbing, and every notebook reuses the artifacts the first one stored (nothing is trained twice in a run).

On the ``paper`` profile the same calls load the open_clip model instead of training tiny ones; the world is
then a planted-truth probe of the real model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from mmlib.core.devices import resolve_device
from mmlib.data.corpora import open_pairs
from mmlib.data.embeddings import Embeddings
from mmlib.data.world import World, generate_world
from mmlib.feature_maps.store import TrainedFeatureMap, load_or_train_feature_map
from mmlib.models.clip import ModelBundle, load_open_clip
from mmlib.models.embed import EmbedConfig, embed_dataset
from mmlib.models.training import TrainedModel, load_or_train
from mmlib.profiles import Profile

#: The tiny profile's two models, by display name.
MODEL_NAMES = ("CLIP", "DeCLIP-like")


@dataclasses.dataclass(frozen=True, eq=False)
class Setup:
    """A world, its models and their embeddings.

    Attributes
    ----------
    world : World
    bundles : dict
        model name -> :class:`~mmlib.models.clip.ModelBundle`.
    trained : dict
        model name -> :class:`~mmlib.models.training.TrainedModel` (``tiny`` profile only; empty otherwise).
    embeddings : dict
        ``(model name, split)`` -> :class:`~mmlib.data.embeddings.Embeddings` (with the towers' activations).
    """

    world: World
    bundles: dict[str, ModelBundle]
    trained: dict[str, TrainedModel]
    embeddings: dict[tuple[str, str], Embeddings]

    def emb(self, model: str = "CLIP", split: str = "train") -> Embeddings:
        """The embeddings of ``split`` under ``model`` (KeyError listing what exists otherwise)."""
        try:
            return self.embeddings[(model, split)]
        except KeyError:
            raise KeyError(f"no embeddings for model {model!r}, split {split!r}; "
                           f"available: {sorted(self.embeddings)}") from None


def tiny_setup(profile: Profile, null: bool = False, models: Sequence[str] = MODEL_NAMES,
               splits: Sequence[str] = ("train", "test"), progress: bool = False,
               pairs: str | Path | None = None) -> Setup:
    """The world (``null=True``: its null-world control), its models and their embeddings.

    ``tiny``: trains (or reloads) the tiny CLIP / DeCLIP-like models named in ``models`` on this world.
    ``paper``: loads ``profile.open_clip_model`` with ``profile.pretrained`` (one model, named after it) and
    embeds the world's splits with it (its world has only a test split: a planted-truth probe of the real
    model). ``pairs`` (default ``profile.pairs``), a real corpus (:func:`open_pairs`), is then embedded as the
    ``"train"`` split, on which the feature maps are trained. Embeddings include each tower's pre-projection
    activation (not those of the real corpus, which can be large).
    """
    pairs = pairs if pairs is not None else profile.pairs
    if pairs is not None and profile.is_tiny:
        raise ValueError("pairs is for the paper profile: the tiny profile trains on its world's train split")
    corpus = open_pairs(pairs) if pairs is not None else None  # checked before any model is loaded
    world = generate_world(profile.null_world if null else profile.world)
    trained: dict[str, TrainedModel] = {}
    bundles: dict[str, ModelBundle] = {}
    if profile.is_tiny:
        configs = {"CLIP": profile.clip_train, "DeCLIP-like": profile.declip_train}
        unknown = [m for m in models if m not in configs]
        if unknown:
            raise ValueError(f"unknown tiny model(s) {unknown}; choose from {list(configs)}")
        for name in models:
            trained[name] = load_or_train(world, profile.arch, configs[name], progress=progress, name=name)
            bundles[name] = trained[name].bundle
    else:
        bundles[profile.open_clip_model] = load_open_clip(profile.open_clip_model, profile.pretrained,
                                                          device=resolve_device(profile.device))
    config = EmbedConfig(batch_size=profile.embed_batch_size, towers=True, device=profile.device)
    embeddings = {(name, split): embed_dataset(bundle, world.subset(split), config, progress=progress)
                  for name, bundle in bundles.items() for split in splits if len(world.indices(split))}
    if corpus is not None:
        for name, bundle in bundles.items():
            embeddings[(name, "train")] = embed_dataset(bundle, corpus, dataclasses.replace(config, towers=False),
                                                        progress=progress)
    return Setup(world, bundles, trained, embeddings)


def feature_maps(setup: Setup, profile: Profile, model: str = "CLIP", seed: int = 0,
                 names: Sequence[str] = ("raw", "SAE", "NCL"), progress: bool = False,
                 train: Embeddings | None = None) -> dict[str, TrainedFeatureMap]:
    """The profile's feature maps (``raw``, ``SAE``, ``NCL``) trained on ``model``'s embeddings.

    ``train``: the training embeddings; by default the world's train split. The ``paper`` profile's world has
    no train split (it only probes the real model): pass the real corpus' embeddings (``mmlib.models.embed``).
    Loaded from the artifact store when a chapter already trained them (the key covers the config, the
    seed and the embeddings), trained and stored otherwise.
    """
    configs = profile.feature_map_configs(seed)
    unknown = [n for n in names if n not in configs]
    if unknown:
        raise ValueError(f"unknown feature map(s) {unknown}; choose from {list(configs)}")
    if train is None:
        if (model, "train") not in setup.embeddings:
            raise ValueError(f"no train-split embeddings of {model!r} in this setup (the {profile.name!r} "
                             "profile's world has no train split): set the notebook parameter pairs = "
                             "'/path/to/cc3m_subset.csv' (or a .tar shard pattern), which tiny_setup(P, pairs=pairs) "
                             "embeds as the train split, or pass train=embed_dataset(bundle, corpus)")
        train = setup.emb(model, "train")
    return {name: load_or_train_feature_map(*configs[name], train, progress=progress,
                                            device=resolve_device(profile.device))
            for name in names}
