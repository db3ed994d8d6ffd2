"""The chapters' shared steps, one call each: world -> models -> embeddings -> feature maps -> MDS -> categories.

* :func:`setup`: the generated world (or its null-world control), its models and their cached embeddings. On the
  ``tiny`` profile it trains (or reloads) the tiny CLIP / DeCLIP-like models; on ``paper`` it loads the open_clip
  model and embeds the real corpus as the train split.
* :func:`trained_maps`: the profile's feature maps (raw dimensions, SAE, NCL) trained on one model's embeddings.
* :func:`map_grid`: every (world, model, map, seed) combination a chapter asks for, each with its feature map, its
  MDS in both forms and its categories (:class:`MapResult`), in one :class:`MapGrid`.

Every expensive step goes through the artifact store, so a chapter reloads what an earlier chapter trained and
nothing is trained twice in a run.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from mmlib.analysis.categories import DEFAULT_RULE, Categories, CategoryRule, categorise, parse_rule
from mmlib.analysis.controls import CONTROLS, shuffle_pairs, swap_modalities
from mmlib.analysis.mds import MDSResult, modality_dominance
from mmlib.core.devices import resolve_device
from mmlib.core.errors import ArgumentTypeError, InputError, MissingKeyError
from mmlib.data.corpora import open_pairs
from mmlib.data.embeddings import Embeddings
from mmlib.data.world import World, generate_world
from mmlib.feature_maps.base import FeatureMap
from mmlib.feature_maps.store import TrainedFeatureMap, load_or_train_feature_map
from mmlib.models.clip import RANDOM_WEIGHTS, ModelBundle, build_tiny_clip, load_open_clip, tiny_bundle
from mmlib.models.embed import EmbedConfig, embed_dataset
from mmlib.models.training import TrainedModel, load_or_train
from mmlib.profiles import Profile

#: The tiny profile's two models, by display name.
MODEL_NAMES = ("CLIP", "DeCLIP-like")
#: The worlds a chapter can ask for: the generated world and its null-world control (every factor shown and said).
WORLDS = ("world", "null")
#: What :func:`map_grid` takes as ``worlds``: the two worlds and the real-data controls of
#: :mod:`mmlib.analysis.controls` (``"random-init"``, ``"shuffled"``, ``"swapped"``), which exist on both profiles.
SETUPS = WORLDS + CONTROLS
#: How the chapters name each setup in text (the ``"world"`` of the paper profile is its real corpus).
SETUP_NAMES = {"world": "world", "null": "null world", "random-init": "random-init control",
               "shuffled": "shuffled pairs", "swapped": "swapped modalities"}
#: The seed of the random-init control's model (the same untrained model for every map seed).
RANDOM_INIT_SEED = 0
#: The seed of the shuffled control's permutation of the captions.
SHUFFLE_SEED = 0
#: The feature maps of chapter 02, by display name.
MAP_NAMES = ("raw", "SAE", "NCL")


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
            raise MissingKeyError(f"no embeddings for model {model!r}, split {split!r}; "
                           f"available: {sorted(self.embeddings)}") from None

    @property
    def models(self) -> tuple[str, ...]:
        """The model names, in the order they were loaded."""
        return tuple(self.bundles)


def baseline_control(profile: Profile) -> str:
    """The control every chapter sets the world against first: the null world on ``tiny``, where it exists, and the
    shuffled-pairs control elsewhere. Of the real-data controls, shuffled pairs agree most often with the null world
    where both exist (chapter 03, Table 3.10d, whose claim check 5 asserts it), and they keep the trained model, so a
    difference from them is not one of model quality.
    """
    return "null" if profile.is_tiny else "shuffled"


def setup_names(profile: Profile) -> dict[str, str]:
    """:data:`SETUP_NAMES` for ``profile``: on ``paper`` the ``"world"`` is called ``"corpus"``."""
    return {**SETUP_NAMES, "world": "world" if profile.is_tiny else "corpus"}


def setup(profile: Profile, null: bool = False, models: Sequence[str] | None = None,
          splits: Sequence[str] = ("train", "test"), progress: bool = False,
          pairs: str | Path | None = None, control: str | None = None) -> Setup:
    """The world (``null=True``: its null-world control), its models and their embeddings.

    ``tiny``: trains (or reloads) the tiny models named in ``models`` (default both of :data:`MODEL_NAMES`) on this
    world. ``paper``: loads ``profile.open_clip_model`` with ``profile.pretrained`` (one model, named after it) and
    embeds the world's splits with it (its world has only a test split: a planted-truth probe of the real model).
    ``pairs`` (default ``profile.pairs``), a real corpus (:func:`~mmlib.data.corpora.open_pairs`), is then embedded
    as the ``"train"`` split, on which the feature maps are trained. Embeddings include each tower's pre-projection
    activation (not those of the real corpus, which can be large).

    ``control`` (:mod:`mmlib.analysis.controls`; both profiles): ``"random-init"`` puts the same architectures at
    random initialisation (seed :data:`RANDOM_INIT_SEED`; on ``paper`` open_clip's ``pretrained="random"``) in place
    of the trained models; ``"shuffled"`` permutes the captions of the train split (seed :data:`SHUFFLE_SEED`), on
    which the maps and the MDS are computed (the test split keeps its pairs). ``"swapped"`` needs no setup of its
    own (:func:`map_grid` uses the world's).
    """
    if control not in (None, "random-init", "shuffled"):
        raise InputError(f"unknown control {control!r} for setup(); choose 'random-init' or 'shuffled' (the "
                         "'swapped' control uses the world's setup: ask map_grid for it)")
    if control is not None and null:
        raise InputError("a control is set up on the world, not on the null world: pass null=False")
    pairs = pairs if pairs is not None else profile.pairs
    if pairs is not None and profile.is_tiny:
        raise InputError("pairs is for the paper profile: the tiny profile trains on its world's train split")
    if null and not profile.is_tiny:
        raise InputError("the null world is the tiny profile's control (its models are trained on it); the paper "
                         "profile has no null-world model")
    corpus = open_pairs(pairs) if pairs is not None else None  # checked before any model is loaded
    world = generate_world(profile.null_world if null else profile.world)
    trained: dict[str, TrainedModel] = {}
    bundles: dict[str, ModelBundle] = {}
    if profile.is_tiny:
        configs = {"CLIP": profile.clip_train, "DeCLIP-like": profile.declip_train}
        models = MODEL_NAMES if models is None else tuple(models)
        unknown = [m for m in models if m not in configs]
        if unknown:
            raise InputError(f"unknown tiny model(s) {unknown}; choose from {list(configs)}")
        for name in models:
            if control == "random-init":  # untrained: the architecture alone
                bundles[name] = tiny_bundle(build_tiny_clip(profile.arch, seed=RANDOM_INIT_SEED), profile.arch,
                                            name=f"{name} (random init)")
                continue
            trained[name] = load_or_train(world, profile.arch, configs[name], progress=progress, name=name)
            bundles[name] = trained[name].bundle
    else:
        if models is not None and tuple(models) != (profile.open_clip_model,):
            raise InputError(f"the paper profile loads one model, {profile.open_clip_model!r}; got {list(models)}")
        if control == "random-init":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                bundle = load_open_clip(profile.open_clip_model, RANDOM_WEIGHTS, device=resolve_device(profile.device))
        else:
            bundle = load_open_clip(profile.open_clip_model, profile.pretrained, device=resolve_device(profile.device))
        bundles[profile.open_clip_model] = bundle
    config = EmbedConfig(batch_size=profile.embed_batch_size, towers=True, device=profile.device)
    embeddings = {(name, split): embed_dataset(bundle, world.subset(split), config, progress=progress)
                  for name, bundle in bundles.items() for split in splits if len(world.indices(split))}
    if corpus is not None:
        for name, bundle in bundles.items():
            embeddings[(name, "train")] = embed_dataset(bundle, corpus, dataclasses.replace(config, towers=False),
                                                        progress=progress)
    if control == "shuffled":
        embeddings = {k: shuffle_pairs(e, SHUFFLE_SEED) if k[1] == "train" else e for k, e in embeddings.items()}
    return Setup(world, bundles, trained, embeddings)


#: The factors whose validation zero-shot accuracy (joint prompts) measures a tiny model's quality when a world
#: model is matched to its null twin (:func:`quality_matched_profile`): the two fully cross-modal factors, which both
#: worlds show and say always.
QUALITY_FACTORS = ("shape", "colour")


def quality_matched_profile(profile: Profile, null_setup: Setup,
                            factors: Sequence[str] = QUALITY_FACTORS) -> Profile:
    """``profile`` whose tiny models stop training once they are as good as their null-world twins.

    The null twins, trained with the world's schedule, are weaker models (chapter 00); training them longer does not
    close the gap (``benchmarks/null_twin_quality.py``). The match is made the other way: each world model trains with
    ``TrainConfig.stop_at`` set to its null twin's final validation zero-shot accuracy of each of ``factors``, so it
    stops at the first check where it is at least as good on every one of them. A world - null difference measured
    with these models is not one of model quality (on those factors).

    ``null_setup`` is :func:`setup` ``(profile, null=True)`` with both tiny models.
    """
    if not profile.is_tiny:
        raise InputError("quality matching needs the null world's models: the tiny profile only")
    if not null_setup.world.config.null:
        raise InputError("null_setup is not the null world's setup: build it with setup(profile, null=True)")
    missing = [m for m in MODEL_NAMES if m not in null_setup.trained]
    if missing:
        raise InputError(f"null_setup lacks the trained null twin(s) {missing}: build it with setup(profile, "
                         "null=True) and both tiny models")

    def target(name: str) -> tuple[tuple[str, float], ...]:
        history = null_setup.trained[name].history
        absent = [f for f in factors if not history.get(f"val_zs_{f}")]
        if absent:
            raise InputError(f"the null twin {name!r} has no validation zero-shot accuracy of {absent} in its history")
        return tuple((f, float(history[f"val_zs_{f}"][-1])) for f in factors)

    return dataclasses.replace(
        profile, clip_train=dataclasses.replace(profile.clip_train, stop_at=target("CLIP")),
        declip_train=dataclasses.replace(profile.declip_train, stop_at=target("DeCLIP-like")))


def training_quality(setups: Mapping[str, Setup], factors: Sequence[str] = QUALITY_FACTORS) -> pd.DataFrame:
    """One row per (setup, tiny model): the steps it trained and its final validation zero-shot accuracy per factor.

    ``setups``: name -> :class:`Setup` of the ``tiny`` profile (e.g. the world, its quality-matched twin, the null
    world). Columns ``setup``, ``model``, ``steps`` and one per factor (joint prompts).
    """
    rows = []
    for name, s in setups.items():
        for model, trained in s.trained.items():
            rows.append(dict(setup=name, model=model, steps=trained.steps_run,
                             **{f: (trained.history.get(f"val_zs_{f}") or [float("nan")])[-1] for f in factors}))
    return pd.DataFrame(rows, columns=["setup", "model", "steps", *factors])


def trained_maps(setup: Setup, profile: Profile, model: str = "CLIP", seed: int = 0,
                 names: Sequence[str] = MAP_NAMES, progress: bool = False,
                 train: Embeddings | None = None) -> dict[str, TrainedFeatureMap]:
    """The profile's feature maps (``raw``, ``SAE``, ``NCL``) trained on ``model``'s embeddings.

    ``train``: the training embeddings; by default the setup's train split (on the ``paper`` profile: the real
    corpus, see :func:`setup`). Loaded from the artifact store when a chapter already trained them (the key covers
    the config, the seed and the embeddings), trained and stored otherwise.
    """
    configs = profile.feature_map_configs(seed)
    unknown = [n for n in names if n not in configs]
    if unknown:
        raise InputError(f"unknown feature map(s) {unknown}; choose from {list(configs)}")
    if train is None:
        if (model, "train") not in setup.embeddings:
            raise InputError(f"no train-split embeddings of {model!r} in this setup (the {profile.name!r} "
                             "profile's world has no train split): set the notebook parameter pairs = "
                             "'/path/to/cc3m_subset.csv' (or a .tar shard pattern), which setup(P, pairs=pairs) "
                             "embeds as the train split, or pass train=embed_dataset(bundle, corpus)")
        train = setup.emb(model, "train")
    return {name: load_or_train_feature_map(*configs[name], train, progress=progress,
                                            device=resolve_device(profile.device))
            for name in names}


@dataclasses.dataclass(frozen=True, eq=False)
class MapResult:
    """One feature map of one model on one world, with its MDS (both forms, on the train split) and categories.

    Attributes
    ----------
    world, model, map : str
        Which world (``"world"`` or ``"null"``), model and feature map (``"raw"``, ``"SAE"``, ``"NCL"``).
    seed : int
        The map's training seed.
    trained : TrainedFeatureMap
        The map from the artifact store, with its training history.
    mds, mds_aggregate : MDSResult
        Paired (default) and aggregate MDS over the train-split pairs.
    rule : CategoryRule
        The category rule of :attr:`categories`.
    setup : Setup
        Where the embeddings come from (for :meth:`activations`).
    """

    world: str
    model: str
    map: str
    seed: int
    trained: TrainedFeatureMap
    mds: MDSResult
    mds_aggregate: MDSResult
    rule: CategoryRule
    setup: Setup

    @property
    def key(self) -> tuple[str, str, str, int]:
        """``(world, model, map, seed)``."""
        return (self.world, self.model, self.map, self.seed)

    @property
    def fmap(self) -> FeatureMap:
        """The feature map."""
        return self.trained.fmap

    @functools.cached_property
    def categories(self) -> Categories:
        """ImgD / TextD / CrossD of the features under :attr:`rule`."""
        return categorise(self.mds, self.rule)

    def categorise(self, rule: CategoryRule | str) -> Categories:
        """The categories under another rule (e.g. ``"fixed"``)."""
        return categorise(self.mds, rule)

    def activations(self, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """Image and text activations ``(n, K)`` of the pairs of ``split`` (computed on each call)."""
        return self.fmap.activations(self.setup.emb(self.model, split))

    def summary(self) -> dict[str, object]:
        """``world``, ``model``, ``map``, ``seed`` and :meth:`~mmlib.analysis.mds.MDSResult.summary` of the MDS."""
        return dict(world=self.world, model=self.model, map=self.map, seed=self.seed, **self.mds.summary())


class MapGrid(Mapping[tuple[str, str, str, int], MapResult]):
    """The results of :func:`map_grid`, keyed by ``(world, model, map, seed)``.

    Attributes
    ----------
    setups : dict
        world -> :class:`Setup`.
    worlds, models, maps, seeds : tuple
        The grid's axes, in the order asked for.
    """

    def __init__(self, results: Mapping[tuple[str, str, str, int], MapResult], setups: Mapping[str, Setup],
                 worlds: Sequence[str], models: Sequence[str], maps: Sequence[str], seeds: Sequence[int]) -> None:
        self._results = dict(results)
        self.setups = dict(setups)
        self.worlds, self.models, self.maps, self.seeds = tuple(worlds), tuple(models), tuple(maps), tuple(seeds)

    def __getitem__(self, key: tuple[str, str, str, int]) -> MapResult:
        try:
            return self._results[key]
        except KeyError:
            raise MissingKeyError(f"no map result {key!r} in this grid (worlds {self.worlds}, models {self.models}, "
                           f"maps {self.maps}, seeds {self.seeds})") from None

    def __iter__(self) -> Iterator[tuple[str, str, str, int]]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)

    def __repr__(self) -> str:
        return (f"MapGrid({len(self)} results: worlds {self.worlds}, models {self.models}, maps {self.maps}, "
                f"seeds {self.seeds})")

    def select(self, **where: object) -> list[MapResult]:
        """The results whose ``world`` / ``model`` / ``map`` / ``seed`` equal the given values, in grid order."""
        unknown = [k for k in where if k not in ("world", "model", "map", "seed")]
        if unknown:
            raise ArgumentTypeError(f"select() filters on world, model, map and seed; got {unknown}")
        return [r for r in self._results.values() if all(getattr(r, k) == v for k, v in where.items())]

    def summary(self) -> pd.DataFrame:
        """One row per result: its keys and the summary of its (paired) MDS over alive features."""
        return pd.DataFrame([r.summary() for r in self._results.values()])


def map_grid(profile: Profile, worlds: Sequence[str] = WORLDS, models: Sequence[str] | None = None,
             maps: Sequence[str] = MAP_NAMES, seeds: Sequence[int] | None = None,
             rule: CategoryRule | str = DEFAULT_RULE, progress: bool = False,
             setups: Mapping[str, Setup] | None = None, pairs: str | Path | None = None) -> MapGrid:
    """Every (world, model, map, seed) a chapter needs: each feature map, its MDS in both forms and its categories.

    Parameters
    ----------
    profile : Profile
    worlds : sequence of {"world", "null", "random-init", "shuffled", "swapped"}
        ``"null"`` (the null-world control) exists on the ``tiny`` profile only; the three real-data controls
        (:mod:`mmlib.analysis.controls`) on both: ``"random-init"`` and ``"shuffled"`` train their own maps (see
        :func:`setup`), ``"swapped"`` scores the world's maps with each pair's modalities exchanged at random (seed:
        the map seed), so its results share the world's maps, setup and test activations.
    models : sequence of str, optional
        Default: every model of the profile (the tiny CLIP and DeCLIP-like models; on ``paper`` the open_clip model).
    maps : sequence of {"raw", "SAE", "NCL"}
    seeds : sequence of int, optional
        Map training seeds (default ``profile.map_seeds``); raw dimensions do not depend on the seed.
    rule : CategoryRule or str
        The category rule of each result's :attr:`MapResult.categories` (default μ±σ).
    progress : bool
        A progress bar over the grid (and the training bars of anything not cached yet).
    setups : mapping, optional
        world -> :class:`Setup` already built (e.g. by :func:`setup` with ``pairs=`` on the paper profile); the
        missing worlds are set up here.
    pairs : str or Path, optional
        ``paper`` profile: the real corpus each setup made here embeds as its train split (default
        ``profile.pairs``; see :func:`setup`).

    Returns
    -------
    MapGrid
    """
    worlds, maps = tuple(worlds), tuple(maps)
    bad = [w for w in worlds if w not in SETUPS]
    if bad or not worlds:
        raise InputError(f"unknown world(s) {bad or list(worlds)}; choose from {list(SETUPS)}")
    if "null" in worlds and not profile.is_tiny:
        raise InputError("the null world exists on the tiny profile only (its models are trained on it); on the "
                         f"paper profile ask for the world and the real-data controls, worlds={('world', *CONTROLS)}")
    unknown_maps = [m for m in maps if m not in MAP_NAMES]
    if unknown_maps or not maps:
        raise InputError(f"unknown feature map(s) {unknown_maps or list(maps)}; choose from {list(MAP_NAMES)}")
    seeds = tuple(profile.map_seeds if seeds is None else seeds)
    if not seeds:
        raise InputError("no map seeds given")
    rule = parse_rule(rule)
    setups = dict(setups or {})
    for w in worlds:
        if w == "swapped" and "world" not in setups:
            setups["world"] = setup(profile, models=models, progress=progress, pairs=pairs)
        if w not in setups:
            setups[w] = (setups["world"] if w == "swapped" else
                         setup(profile, null=(w == "null"), models=models, progress=progress,
                               pairs=None if w == "null" else pairs,
                               control=w if w in ("random-init", "shuffled") else None))
    models = tuple(setups[worlds[0]].models if models is None else models)
    cells = list(itertools.product(worlds, models, maps, seeds))
    results: dict[tuple[str, str, str, int], MapResult] = {}
    for w, m, name, seed in tqdm(cells, desc="feature maps and MDS", disable=not progress):
        trained = trained_maps(setups[w], profile, model=m, seed=seed, names=(name,), progress=progress)[name]
        a_image, a_text = trained.fmap.activations(setups[w].emb(m, "train"))
        if w == "swapped":
            a_image, a_text = swap_modalities(a_image, a_text, seed=seed)
        results[(w, m, name, seed)] = MapResult(
            world=w, model=m, map=name, seed=seed, trained=trained, rule=rule, setup=setups[w],
            mds=modality_dominance(a_image, a_text), mds_aggregate=modality_dominance(a_image, a_text,
                                                                                        form="aggregate"))
    return MapGrid(results, setups, worlds, models, maps, seeds)
