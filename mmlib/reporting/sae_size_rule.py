"""The stated rule that sets the SAE's dictionary size ``K`` and L1 strength ``lambda`` (chapter 02, Table 2.5).

The paper's ``K = 8 d`` is sized for real CLIP, whose embeddings carry thousands of concepts. The tiny models' world
has some tens, and at ``K = 8 d`` most of the tiny CLIP SAE's latents never fire: the survivors fire on a handful of
pairs, so removing or editing a class of them changes nothing measurable, and the planted-dictionary test that
validates the method (chapter 03) ran in another regime, with nothing dead. The rule below chooses one setting for
every model of a profile, in a fixed order and before any MDS is computed:

1. candidates ``K = m d`` for ``m`` in :attr:`SizeRule.k_multiples` (largest first: the paper's ``8 d`` is tried
   first), and for each ``K`` the L1 strengths :attr:`SizeRule.l1_coefs` (largest, i.e. sparsest, first);
2. a candidate *meets* the rule for a model when its SAE, trained with the profile's schedule (seed of the first map
   seed), leaves at most :attr:`SizeRule.max_dead` of its latents dead on the test split (never active on either
   modality) and reconstructs it with FVU at most :attr:`SizeRule.max_fvu` (mean of the two modalities);
3. the chosen setting is the first candidate in that order that meets the rule for every model.

Nothing in the rule looks at an MDS, a category or a claim.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pandas as pd

from mmlib.core.errors import InputError
from mmlib.core.validation import at_least, between, validate_config
from mmlib.data.embeddings import Embeddings
from mmlib.feature_maps.diagnostics import reconstruction_report
from mmlib.feature_maps.sae import SAEConfig, SAEMap
from mmlib.feature_maps.store import TrainedFeatureMap
from mmlib.reporting.map_quality import Variant, sae_sweep

__all__ = ["SizeRule", "size_rule_variants", "size_rule_table", "chosen_setting", "regime_table"]


@dataclasses.dataclass(frozen=True)
class SizeRule:
    """How ``K`` and ``lambda`` are chosen (see the module docstring).

    Attributes
    ----------
    k_multiples : tuple of int
        ``K / d`` of the candidates, in the order they are tried (the paper's 8 first).
    l1_coefs : tuple of float
        ``lambda`` of the candidates for each ``K``, in the order they are tried (sparsest first).
    max_dead : float
        Largest share of latents dead on the test split (in ``[0, 1]``).
    max_fvu : float
        Largest fraction of variance unexplained on the test split (mean of image and text).
    """

    k_multiples: tuple[int, ...] = (8, 4, 2, 1)
    l1_coefs: tuple[float, ...] = (0.1, 0.05, 0.03)
    max_dead: float = 0.2
    max_fvu: float = 0.05

    def __post_init__(self) -> None:
        for name in ("k_multiples", "l1_coefs"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        validate_config(self, k_multiples=at_least(1), l1_coefs=at_least(0.0), max_dead=between(0.0, 1.0),
                        max_fvu=at_least(0.0))
        for name in ("k_multiples", "l1_coefs"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise InputError(f"SizeRule.{name} must hold one or more distinct values, got {values!r}.")

    def candidates(self, d: int) -> list[tuple[int, float]]:
        """``(K, lambda)`` in the order the rule tries them, for embeddings of dimension ``d``."""
        if not isinstance(d, int) or d < 1:
            raise InputError(f"d (the embedding dimension) must be a positive integer, got {d!r}.")
        return [(m * d, c) for m in self.k_multiples for c in self.l1_coefs]


def _label(k: int, d: int, l1: float) -> str:
    return f"K={k} ({k // d}d), λ={l1:g}"


def size_rule_variants(base: SAEConfig, d: int, rule: SizeRule = SizeRule()) -> list[Variant]:
    """The rule's candidates as SAE settings: ``base`` (a ReLU + L1 SAE) with each ``(K, lambda)``, in rule order."""
    if base.kind != "relu_l1":
        raise InputError(f"the size rule chooses K and lambda of a ReLU + L1 SAE; base.kind is {base.kind!r}")
    return [("relu_l1", _label(k, d, c), dataclasses.replace(base, K=k, l1_coef=c)) for k, c in rule.candidates(d)]


def size_rule_table(base: SAEConfig, data: Mapping[str, tuple[Embeddings, Embeddings]], rule: SizeRule = SizeRule(),
                    device: str = "cpu", progress: bool = False) -> pd.DataFrame:
    """Train (or reload) every candidate on each model's embeddings and apply the rule.

    Parameters
    ----------
    base : SAEConfig
        The schedule and seed every candidate shares (the profile's SAE with the first map seed).
    data : {model name: (train, test)}
        Each model's training and evaluation pairs, all of the same dimension ``d``.
    rule : SizeRule
    device : str
    progress : bool

    Returns
    -------
    DataFrame
        One row per candidate and model, in rule order: ``order``, ``setting``, ``K``, ``k_over_d``, ``l1_coef``,
        ``model``, ``l0``, ``fvu``, ``dead_both``, ``train_seconds``, ``meets`` (this model) and ``meets_all`` (every
        model), and ``chosen`` (True on the rows of the chosen setting).

    Raises
    ------
    InputError
        for no model, or models of different dimensions.
    """
    if not data:
        raise InputError("size_rule_table needs the embeddings of at least one model: {name: (train, test)}")
    dims = {name: train.dim for name, (train, _) in data.items()}
    if len(set(dims.values())) != 1:
        raise InputError(f"the models' embeddings must share one dimension d for one rule; got {dims}")
    d = next(iter(dims.values()))
    variants = size_rule_variants(base, d, rule)
    tables = []
    for name, (train, test) in data.items():
        t = sae_sweep(variants, train, test, device=device, progress=progress)
        tables.append(t.assign(model=name, order=range(len(variants)),
                               K=[v[2].K for v in variants], l1_coef=[v[2].l1_coef for v in variants]))
    table = pd.concat(tables, ignore_index=True)
    table["k_over_d"] = table.K // d
    table["meets"] = (table.dead_both <= rule.max_dead) & (table.fvu <= rule.max_fvu)
    table["meets_all"] = table.groupby("order").meets.transform("all")
    first = table.loc[table.meets_all, "order"].min()
    table["chosen"] = table.order == first
    columns = ["order", "setting", "K", "k_over_d", "l1_coef", "model", "l0", "fvu", "dead_both", "train_seconds",
               "meets", "meets_all", "chosen"]
    return table[columns].sort_values(["order", "model"], kind="stable").reset_index(drop=True)


def chosen_setting(table: pd.DataFrame) -> tuple[int, float] | None:
    """``(K, lambda)`` the rule chose in a :func:`size_rule_table`, or ``None`` when no candidate met it."""
    rows = table[table.chosen]
    if rows.empty:
        return None
    return int(rows.K.iloc[0]), float(rows.l1_coef.iloc[0])



def regime_table(maps: Mapping[str, tuple[TrainedFeatureMap, Embeddings]]) -> pd.DataFrame:
    """The regime of each trained SAE, side by side (chapter 03, Table 3.1c: the planted test against the maps it
    validates).

    Parameters
    ----------
    maps : {label: (trained SAE, pairs)}
        Each SAE with the pairs to measure it on (its training pairs: ``(n, d)`` per modality).

    Returns
    -------
    DataFrame
        One row per label: ``d``, ``K``, ``k_over_d``, ``l1_coef``, ``epochs``, ``steps`` (the last logged step),
        ``n_pairs``, ``l0`` and ``fvu`` (means of the two modalities) and ``dead_both`` (never active on either).

    Raises
    ------
    InputError
        for a map that is not a ReLU + L1 or TopK SAE (``SAEMap``).
    """
    rows = []
    for label, (trained, pairs) in maps.items():
        fmap = trained.fmap
        if not isinstance(fmap, SAEMap):
            raise InputError(f"regime_table compares SAEs; {label!r} is a {type(fmap).__name__}")
        config = fmap.train_config
        report = reconstruction_report(fmap, pairs.image, pairs.text)
        steps = trained.history.get("step") or [float("nan")]
        rows.append(dict(label=label, d=fmap.input_dim, K=fmap.n_features, k_over_d=fmap.n_features / fmap.input_dim,
                         l1_coef=config.l1_coef if config.kind == "relu_l1" else float("nan"), epochs=config.epochs,
                         steps=steps[-1], n_pairs=len(pairs.image), l0=report.l0.mean(), fvu=report.fvu.mean(),
                         dead_both=report.dead_both.iloc[0]))
    return pd.DataFrame(rows).set_index("label")
