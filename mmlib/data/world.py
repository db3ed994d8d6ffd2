"""The generated multimodal world: image-caption pairs with planted modality dominance.

Every sample has a value for each latent *factor* (shape, colour, texture, ...). Each factor value is
*depicted* in the image with probability ``p_depict`` and *mentioned* in the caption with probability
``p_mention``, independently. A feature that perfectly tracks the factor is active on the image side when
the factor is depicted and on the text side when it is mentioned, so its ideal Modality Dominance Score is

    MDS* = (p_d (1 - p_m) + 1/2 p_d p_m) / (p_d + p_m - p_d p_m)

(the image share of activation, averaged over pairs where either side is active). The default world builds
two *graded ladders* (always shown with p_m in {1, 0.5, 0.2, 0.05}; always said with p_d in {1, 0.5, 0.2,
0.05}), one pure image-only and one pure text-only factor, and a binary attribute with a planted asymmetry
for the bias chapter. The *null world* shows and says every factor always: the control for every MDS result.

Images are ``(H, W, 3)`` uint8 RGB (default 32 px): an object (shape, colour, texture, size, position) on a
coloured background, and a bottom *glyph strip* whose slots carry the abstract factors (mood, weather,
action, owner, gender) when depicted, as a white pattern or (``glyph_style="colour"``) a colour per value.
Captions come from a small grammar with synonyms.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from functools import cached_property

import numpy as np
import pandas as pd
from PIL import Image

from mmlib.core.artifacts import code_version, stable_hash
from mmlib.core.errors import ConfigError, InputError, MissingKeyError
from mmlib.core.validation import at_least, between, one_of, validate_config

SPLITS = ("train", "val", "test")

# Object colours and background colours (RGB in [0, 1]).
_COLOURS = {"red": (0.85, 0.15, 0.15), "green": (0.15, 0.7, 0.2), "blue": (0.15, 0.3, 0.9),
            "yellow": (0.95, 0.85, 0.1)}
_BACKGROUNDS = {"black": (0.08, 0.08, 0.08), "white": (0.92, 0.92, 0.92), "purple": (0.5, 0.25, 0.6),
                "brown": (0.5, 0.33, 0.18)}
_STRIP = 0.35  # grey level of the glyph strip
_GLYPH = 1.0   # glyph ink
#: Fill colours of the ``"colour"`` glyph style, one per value index (cyan, magenta, orange, white): none is an
#: object or background colour, and none is the strip's grey.
_GLYPH_COLOURS = np.array([(0.0, 0.9, 0.9), (0.95, 0.1, 0.9), (1.0, 0.55, 0.0), (1.0, 1.0, 1.0)])
#: How a glyph factor's value is drawn in its slot: a white 5x5 pattern, or a solid block of a value colour.
GLYPH_STYLES = ("pattern", "colour")
_OUTLINE = 1.0  # grey level of a 1-px object outline (colour-independent edges); None for no outline
_RADII = (4.0, 5.5, 7.0, 8.5)  # object radius (px at 32 px) per size value
#: The factors the renderer draws, with their kind and the most values it can draw for each.
_DRAWN = {"shape": ("object", 4), "colour": ("object", len(_COLOURS)), "texture": ("object", 4),
          "size": ("object", len(_RADII)), "background": ("scene", len(_BACKGROUNDS)), "position": ("scene", 4)}
#: Factor kinds.
FACTOR_KINDS = ("object", "glyph", "scene")
#: Column names of :meth:`World.table` that a factor may not take.
_RESERVED_NAMES = ("split", "caption")


class UnknownFactorError(MissingKeyError):
    """A factor name that the world does not have (also a ``KeyError``)."""


def _as_tuples(obj: object, *names: str, depth: int = 1) -> None:
    """Store list-valued fields of the frozen dataclass ``obj`` as tuples (nested ``depth`` levels)."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, list) or (depth > 1 and isinstance(value, tuple)
                                       and any(isinstance(v, list) for v in value)):
            value = tuple(tuple(v) if depth > 1 and isinstance(v, list) else v for v in value)
            object.__setattr__(obj, name, value)


@dataclasses.dataclass(frozen=True)
class Factor:
    """A latent factor of the world.

    Attributes
    ----------
    name : str
    values : tuple of str
        The value names (canonical words).
    p_depict, p_mention : tuple of float
        Per-value probability that the value is shown in the image / said in the caption.
    kind : str
        ``"object"`` (an intrinsic property of the drawn object: always depicted), ``"glyph"`` (drawn in
        the glyph strip when depicted) or ``"scene"`` (background / position: always depicted).
    role : str
        Where it sits in the design: ``cross``, ``image-ladder``, ``text-ladder``, ``image-only``,
        ``text-only`` or ``binary``.
    synonyms : tuple of tuple of str
        Per value, the words the caption grammar may use for it.
    """

    name: str
    values: tuple[str, ...]
    p_depict: tuple[float, ...]
    p_mention: tuple[float, ...]
    kind: str
    role: str
    synonyms: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        _as_tuples(self, "values", "p_depict", "p_mention")
        _as_tuples(self, "synonyms", depth=2)
        validate_config(self, kind=one_of(*FACTOR_KINDS))
        where = f"Factor {self.name!r}"
        if not self.name.strip():
            raise ConfigError(f"Factor.name must be a non-empty string, got {self.name!r}.")
        n = len(self.values)
        if n < 2:
            raise ConfigError(f"{where}: Factor.values must hold at least 2 values, got {self.values!r}.")
        if len(set(self.values)) != n or not all(v.strip() for v in self.values):
            raise ConfigError(f"{where}: Factor.values must be distinct non-empty strings, got {self.values!r}.")
        for field in ("p_depict", "p_mention", "synonyms"):
            if len(getattr(self, field)) != n:
                raise ConfigError(f"{where}: Factor.{field} must hold one entry per value ({n}), got "
                                  f"{len(getattr(self, field))}: give one p_depict, p_mention and synonym list "
                                  "per value.")
        for field in ("p_depict", "p_mention"):
            for p in getattr(self, field):
                if not 0.0 <= p <= 1.0:
                    raise ConfigError(f"{where}: Factor.{field} must hold probabilities in [0, 1], got {p}.")
        for value, words in zip(self.values, self.synonyms):
            if not words or not all(w.strip() for w in words):
                raise ConfigError(f"{where}: Factor.synonyms of value {value!r} must be a non-empty tuple of "
                                  f"non-empty words, got {words!r}.")
        if self.kind in ("object", "scene") and min(self.p_depict) < 1.0:
            raise ConfigError(f"{where} is drawn as part of the {self.kind} and is always depicted: Factor.p_depict "
                              f"must be 1, got {self.p_depict} (use a glyph factor for partial depiction).")

    @property
    def ideal_mds(self) -> float:
        """Ideal MDS of a perfect feature for this factor, averaged over its (equiprobable) values."""
        return float(np.mean([ideal_mds(d, m) for d, m in zip(self.p_depict, self.p_mention)]))

    def with_probabilities(self, p_depict: float, p_mention: float) -> Factor:
        """A copy with the same probabilities for every value."""
        n = len(self.values)
        return dataclasses.replace(self, p_depict=(p_depict,) * n, p_mention=(p_mention,) * n)


def ideal_mds(p_depict: float, p_mention: float) -> float:
    """Ideal MDS of a perfect feature: ``(p_d(1-p_m) + p_d p_m / 2) / (p_d + p_m - p_d p_m)``.

    ``nan`` when the factor is never depicted nor mentioned.
    """
    either = p_depict + p_mention - p_depict * p_mention
    if either == 0:
        return math.nan
    return (p_depict * (1 - p_mention) + 0.5 * p_depict * p_mention) / either


def _factor(name, values, p_d, p_m, kind, role, synonyms) -> Factor:
    n = len(values)

    def as_tuple(p: object) -> tuple[float, ...]:
        return tuple(p) if isinstance(p, (tuple, list)) else (float(p),) * n
    return Factor(name, tuple(values), as_tuple(p_d), as_tuple(p_m), kind, role,
                  tuple(tuple(s) for s in synonyms))


def default_factors() -> tuple[Factor, ...]:
    """The default factor table: two graded ladders, pure image/text-only factors and a binary attribute."""
    return (
        # p_d = p_m = 1: the rung both ladders share (fully cross-modal).
        _factor("shape", ["circle", "square", "triangle", "cross"], 1, 1, "object", "cross",
                [["circle", "disc", "ring"], ["square", "box", "block"], ["triangle", "wedge"],
                 ["cross", "plus"]]),
        _factor("colour", list(_COLOURS), 1, 1, "object", "cross",
                [["red", "crimson"], ["green", "emerald"], ["blue", "navy"], ["yellow", "golden"]]),
        # Always shown, said less and less often (image ladder).
        _factor("texture", ["plain", "striped", "dotted", "checkered"], 1, 0.5, "object", "image-ladder",
                [["plain", "solid"], ["striped", "stripy"], ["dotted", "spotted"], ["checkered", "chequered"]]),
        _factor("size", ["small", "medium", "large", "huge"], 1, 0.2, "object", "image-ladder",
                [["small", "little"], ["medium", "average"], ["large", "big"], ["huge", "giant"]]),
        _factor("background", list(_BACKGROUNDS), 1, 0.05, "scene", "image-ladder",
                [["black"], ["white"], ["purple"], ["brown"]]),
        # Pure image-only: shown, never said.
        _factor("position", ["upper left", "upper right", "lower left", "lower right"], 1, 0, "scene",
                "image-only", [["upper left", "top left"], ["upper right", "top right"],
                               ["lower left", "bottom left"], ["lower right", "bottom right"]]),
        # Always said, shown less and less often (text ladder).
        _factor("mood", ["happy", "sad", "angry", "calm"], 0.5, 1, "glyph", "text-ladder",
                [["happy", "cheerful"], ["sad", "gloomy"], ["angry", "furious"], ["calm", "peaceful"]]),
        _factor("weather", ["sunny", "rainy", "snowy", "windy"], 0.2, 1, "glyph", "text-ladder",
                [["sunny"], ["rainy"], ["snowy"], ["windy"]]),
        _factor("action", ["jumping", "sleeping", "spinning", "waiting"], 0.05, 1, "glyph", "text-ladder",
                [["jumping", "leaping"], ["sleeping", "resting"], ["spinning", "turning"],
                 ["waiting", "standing"]]),
        # Pure text-only: said, never shown.
        _factor("owner", ["alice", "bob", "carol", "dave"], 0, 1, "glyph", "text-only",
                [["alice"], ["bob"], ["carol"], ["dave"]]),
        # Binary attribute with a planted asymmetry: "female" is signalled mostly in the image,
        # "male" mostly in the caption.
        _factor("gender", ["female", "male"], (0.9, 0.2), (0.2, 0.9), "glyph", "binary",
                [["woman", "female", "lady"], ["man", "male", "gentleman"]]),
    )


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Everything that determines a world.

    Attributes
    ----------
    n_train, n_val, n_test : int
        Split sizes.
    image_size : int
        Image side in pixels (a multiple of 16 is recommended; the layout scales with it).
    seed : int
    null : bool
        The null world: every factor always depicted and always mentioned.
    spurious : float
        Strength in [0, 1] of a spurious correlation: with this probability the background is tied to the
        shape (circle->black, square->white, triangle->purple, cross->brown) instead of drawn at random.
    noise : float
        Standard deviation of additive pixel noise (in [0, 1] units).
    glyph_style : {"pattern", "colour"}
        How a glyph factor's value is drawn in its slot: ``"pattern"`` (the default), one of four white 5x5 patterns
        (plus, x, ring, bars); ``"colour"``, the slot filled with one of four colours (cyan, magenta, orange, white).
        Under the world's full captions the tiny models learn no pattern glyph; with colour glyphs they read gender
        (and the DeCLIP-like model mood) from both modalities; shape's zero-shot accuracy varies with the training seed
        in either style, and fell with colour glyphs in four of the six runs measured
        (``benchmarks/glyph_suppression.py --styles``, with ``--embed-dim`` and ``--seed``).
    factors : tuple of Factor
    """

    n_train: int = 8000
    n_val: int = 1000
    n_test: int = 2000
    image_size: int = 32
    seed: int = 0
    null: bool = False
    spurious: float = 0.0
    noise: float = 0.03
    factors: tuple[Factor, ...] = dataclasses.field(default_factory=default_factors)
    glyph_style: str = "pattern"

    def __post_init__(self) -> None:
        _as_tuples(self, "factors")
        validate_config(self, n_train=at_least(0), n_val=at_least(0), n_test=at_least(0), image_size=at_least(16),
                        seed=at_least(0), spurious=between(0.0, 1.0), noise=at_least(0.0),
                        glyph_style=one_of(*GLYPH_STYLES))
        if self.n_train + self.n_val + self.n_test == 0:
            raise ConfigError("WorldConfig.n_train, n_val and n_test (split sizes) must not all be 0: give at least "
                              "one split a positive size.")
        for i, f in enumerate(self.factors):
            if not isinstance(f, Factor):
                raise ConfigError(f"WorldConfig.factors[{i}] must be a Factor, got {f!r} ({type(f).__name__}).")
        names = [f.name for f in self.factors]
        if len(set(names)) != len(names):
            raise ConfigError(f"WorldConfig.factors: factor names must be unique, got {names}.")
        for f in self.factors:
            if f.name in _RESERVED_NAMES:
                raise ConfigError(f"WorldConfig.factors: a factor may not be called {f.name!r} (a column of the "
                                  f"ground-truth table); rename it.")
        by_name = {f.name: f for f in self.factors}
        for required, (kind, most) in _DRAWN.items():
            f = by_name.get(required)
            if f is None:
                raise ConfigError(f"WorldConfig.factors: the world needs a {required!r} factor to draw an image "
                                  f"(it has {names}).")
            if f.kind != kind:
                raise ConfigError(f"WorldConfig.factors: the {required!r} factor is drawn as part of the {kind}, so "
                                  f"its kind must be {kind!r}, got {f.kind!r}.")
            if len(f.values) > most:
                raise ConfigError(f"WorldConfig.factors: the renderer draws at most {most} values of {required!r}, "
                                  f"got {len(f.values)} ({f.values}).")
        tied = min(4, len(by_name["shape"].values))
        if self.spurious > 0 and len(by_name["background"].values) < tied:
            raise ConfigError(f"WorldConfig.spurious={self.spurious} ties the background to the shape, which needs "
                              f"{tied} background values, got {len(by_name['background'].values)}: set spurious=0 "
                              "or give the background more values.")
        n_glyphs = sum(f.kind == "glyph" for f in self.factors)
        glyph_px = 5 * max(1, int(round(self.image_size / 32.0)))
        if n_glyphs and self.image_size / n_glyphs < glyph_px:
            raise ConfigError(f"WorldConfig.image_size: {n_glyphs} glyph factors of {glyph_px} px do not fit side by "
                              f"side in a {self.image_size} px image: use image_size >= {n_glyphs * glyph_px}.")

    @property
    def effective_factors(self) -> tuple[Factor, ...]:
        """The factors with the null-world switch applied."""
        if self.null:
            return tuple(f.with_probabilities(1.0, 1.0) for f in self.factors)
        return self.factors

    @property
    def n(self) -> int:
        """Total number of samples over the three splits."""
        return self.n_train + self.n_val + self.n_test

    def fingerprint(self) -> str:
        """A hash of the config and of this module's code (the world is a deterministic function of both)."""
        return stable_hash("world", self, code_version(__name__))


def factor_table(config: WorldConfig) -> pd.DataFrame:
    """One row per factor: role, values, p_depict, p_mention and the ideal MDS of a perfect feature.

    Factors whose probabilities differ by value (the binary attribute) get one row per value as well.
    """
    rows = []
    for f in config.effective_factors:
        uniform = len(set(f.p_depict)) == 1 and len(set(f.p_mention)) == 1
        rows.append(dict(factor=f.name, value="(all)" if not uniform else ", ".join(f.values), role=f.role,
                         p_depict=float(np.mean(f.p_depict)), p_mention=float(np.mean(f.p_mention)),
                         ideal_mds=f.ideal_mds))
        if not uniform:
            for v, d, m in zip(f.values, f.p_depict, f.p_mention):
                rows.append(dict(factor=f.name, value=v, role=f.role, p_depict=d, p_mention=m,
                                 ideal_mds=ideal_mds(d, m)))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------- sampling
@dataclasses.dataclass(frozen=True)
class Latents:
    """Ground truth for ``n`` samples: value index, depicted flag and mentioned flag per factor."""

    values: dict[str, np.ndarray]     # factor -> (n,) int
    depicted: dict[str, np.ndarray]   # factor -> (n,) bool
    mentioned: dict[str, np.ndarray]  # factor -> (n,) bool


#: In a spurious world, the background tied to each shape (shape index -> background index, cyclically).
SPURIOUS_BACKGROUND = np.array([0, 1, 2, 3])


def _check_count(value: object, name: str, low: int) -> None:
    """Raise :class:`InputError` unless ``value`` is an integer ``>= low``."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r} ({type(value).__name__}).")


def sample_latents(config: WorldConfig, n: int, rng: np.random.Generator) -> Latents:
    """Draw factor values (uniform over values) and depiction/mention flags for ``n`` samples."""
    _check_count(n, "n", 0)
    values, depicted, mentioned = {}, {}, {}
    for f in config.effective_factors:
        v = rng.integers(len(f.values), size=n)
        if f.name == "background" and config.spurious > 0 and "shape" in values:
            tie = rng.random(n) < config.spurious
            v = np.where(tie, SPURIOUS_BACKGROUND[values["shape"] % 4], v)
        values[f.name] = v
        depicted[f.name] = rng.random(n) < np.asarray(f.p_depict)[v]
        mentioned[f.name] = rng.random(n) < np.asarray(f.p_mention)[v]
    return Latents(values, depicted, mentioned)


# ---------------------------------------------------------------------------------------------- rendering
# Glyphs: 5x5 binary patterns, one per value index (plus, x, ring, bars).
_GLYPHS = np.array([
    [[0, 0, 1, 0, 0], [0, 0, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0], [0, 0, 1, 0, 0]],
    [[1, 0, 0, 0, 1], [0, 1, 0, 1, 0], [0, 0, 1, 0, 0], [0, 1, 0, 1, 0], [1, 0, 0, 0, 1]],
    [[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 0, 0, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]],
    [[1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]],
], dtype=bool)


def _shape_mask(shape: np.ndarray, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean masks ``(n, H, W)`` of the shapes, given offsets from the centre ``(n, H, W)`` and radii."""
    ax, ay = np.abs(dx), np.abs(dy)
    circle = dx ** 2 + dy ** 2 <= r ** 2
    square = (ax <= 0.82 * r) & (ay <= 0.82 * r)
    # Upward triangle with apex at -r and base at +0.8 r.
    t = (dy + r) / (1.8 * r)
    triangle = (dy >= -r) & (dy <= 0.8 * r) & (ax <= t * r * 1.05)
    arm = 0.36 * r
    cross = ((ax <= arm) & (ay <= r)) | ((ay <= arm) & (ax <= r))
    s = shape[:, None, None]
    return np.where(s == 0, circle, np.where(s == 1, square, np.where(s == 2, triangle, cross)))


def _texture_mask(texture: np.ndarray, xx: np.ndarray, yy: np.ndarray, scale: float) -> np.ndarray:
    """Where the texture darkens the object, ``(n, H, W)`` bool: plain, striped, dotted, checkered."""
    period = max(2, int(round(2 * scale)))
    xi = np.floor(xx).astype(int)
    yi = np.floor(yy).astype(int)
    stripes = (yi % period) < max(1, period // 2)
    dots = ((xi % (period + 1)) == 0) & ((yi % (period + 1)) == 0)
    checker = ((xi // period) + (yi // period)) % 2 == 0
    t = texture[:, None, None]
    return np.where(t == 1, stripes, np.where(t == 2, dots, np.where(t == 3, checker, False)))


def render_images(config: WorldConfig, latents: Latents, rng: np.random.Generator,
                  batch: int = 2048) -> np.ndarray:
    """Draw the images of ``latents``: uint8 ``(n, S, S, 3)`` with ``S = config.image_size``."""
    _check_count(batch, "batch", 1)
    S = config.image_size
    scale = S / 32.0
    strip_h = int(round(7 * scale))
    field = S - strip_h  # height of the object field
    glyph_factors = [f.name for f in config.effective_factors if f.kind == "glyph"]
    n = len(latents.values["shape"])
    out = np.empty((n, S, S, 3), dtype=np.uint8)
    colours = np.array(list(_COLOURS.values()))
    backgrounds = np.array(list(_BACKGROUNDS.values()))
    radii = np.asarray(_RADII) * scale
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) + 0.5
    for start in range(0, n, batch):
        sl = slice(start, min(n, start + batch))
        m = sl.stop - sl.start
        v = {k: a[sl] for k, a in latents.values.items()}
        pos = v["position"]
        cx = np.where(pos % 2 == 0, 0.3, 0.7) * S + rng.uniform(-1.5, 1.5, m) * scale
        cy = np.where(pos < 2, 0.3, 0.7) * field + rng.uniform(-1.0, 1.0, m) * scale
        r = radii[v["size"]] + rng.uniform(-0.4, 0.4, m) * scale
        dx = xx[None] - cx[:, None, None]
        dy = yy[None] - cy[:, None, None]
        obj = _shape_mask(v["shape"], dx, dy, r[:, None, None])
        obj[:, field:, :] = False
        img = np.broadcast_to(backgrounds[v["background"]][:, None, None, :], (m, S, S, 3)).copy()
        col = colours[v["colour"]][:, None, None, :]
        dark = _texture_mask(v["texture"], xx[None] + rng.integers(0, 4, m)[:, None, None],
                             yy[None] + rng.integers(0, 4, m)[:, None, None], scale)
        obj_rgb = np.where(dark[..., None], col * 0.45, col)
        img = np.where(obj[..., None], obj_rgb, img)
        if _OUTLINE is not None:
            inner = obj.copy()
            inner[:, 1:, :] &= obj[:, :-1, :]
            inner[:, :-1, :] &= obj[:, 1:, :]
            inner[:, :, 1:] &= obj[:, :, :-1]
            inner[:, :, :-1] &= obj[:, :, 1:]
            img = np.where((obj & ~inner)[..., None], _OUTLINE, img)
        img[:, field:, :, :] = _STRIP
        # Glyph strip: one slot per glyph factor, drawn only when depicted.
        g = max(1, int(round(scale)))
        glyph_px = 5 * g
        slot_w = S / max(1, len(glyph_factors))
        top = field + (strip_h - glyph_px) // 2
        for slot, name in enumerate(glyph_factors):
            shown = latents.depicted[name][sl]
            if not shown.any():
                continue
            left = int(round(slot * slot_w + (slot_w - glyph_px) / 2))
            region = img[:, top:top + glyph_px, left:left + glyph_px, :]
            if config.glyph_style == "colour":
                region[shown] = _GLYPH_COLOURS[v[name][shown] % len(_GLYPH_COLOURS)][:, None, None, :]
                continue
            pattern = np.kron(_GLYPHS[v[name] % len(_GLYPHS)], np.ones((g, g), dtype=bool))  # (m, 5g, 5g)
            ink = pattern & shown[:, None, None]
            region[ink] = _GLYPH
        if config.noise > 0:
            img = img + rng.normal(0.0, config.noise, img.shape)
        out[sl] = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return out


# ------------------------------------------------------------------------------------------------ captions
#: Caption openings, drawn uniformly per caption ("" = none).
CAPTION_PREFIXES = ("a photo of", "an image of", "a picture of", "")
#: The noun of a caption that does not mention the shape.
OBJECT_NOUNS = ("object", "thing", "shape")


def phrase(factor: str, word: str) -> str:
    """The caption clause that mentions ``factor`` with ``word``."""
    templates = {
        "position": "in the {}", "background": "on a {} background", "mood": "that looks {}",
        "weather": "on a {} day", "action": "that is {}", "owner": "owned by {}",
        "gender": "belonging to a {}",
    }
    return templates.get(factor, "{}").format(word)


def compose_caption(words: dict[str, str], order: Sequence[str] = (), prefix: str = "a photo of") -> str:
    """Build a caption from chosen words per mentioned factor.

    ``words`` maps factor name -> word. Object adjectives come before the noun (size, colour, texture);
    the shape word is the noun (``"object"`` if unmentioned); other factors follow as clauses in ``order``.
    """
    adjectives = [words[k] for k in ("size", "colour", "texture") if k in words]
    noun = words.get("shape", "object")
    head = " ".join([*adjectives, noun])
    article = "an" if head[0] in "aeiou" else "a"
    clauses = [phrase(k, words[k]) for k in order if k in words and k not in
               ("size", "colour", "texture", "shape")]
    clauses += [phrase(k, words[k]) for k in words if k not in order and k not in
                ("size", "colour", "texture", "shape")]
    text = " ".join([prefix, article, head, *clauses]).strip()
    return text


def write_captions(config: WorldConfig, latents: Latents, rng: np.random.Generator) -> list[str]:
    """One caption per sample: mentioned factors only, random synonyms, random clause order and prefix."""
    factors = config.effective_factors
    n = len(latents.values["shape"])
    clause_names = [f.name for f in factors if f.name not in ("size", "colour", "texture", "shape")]
    captions = []
    for i in range(n):
        words = {}
        for f in factors:
            if latents.mentioned[f.name][i]:
                choices = f.synonyms[latents.values[f.name][i]]
                words[f.name] = choices[rng.integers(len(choices))]
        order = [clause_names[j] for j in rng.permutation(len(clause_names))]
        prefix = CAPTION_PREFIXES[rng.integers(len(CAPTION_PREFIXES))]
        if "shape" not in words:
            words["shape"] = OBJECT_NOUNS[rng.integers(len(OBJECT_NOUNS))]
        captions.append(compose_caption(words, order, prefix))
    return captions


def prompt(factor: Factor, value_index: int, template: str = "a photo of") -> str:
    """A zero-shot class prompt that mentions only ``factor`` = its ``value_index``-th value (canonical word)."""
    return compose_caption({factor.name: factor.synonyms[value_index][0]}, prefix=template)


# ------------------------------------------------------------------------------------------------- world
@dataclasses.dataclass(frozen=True, eq=False)
class World:
    """A generated world: images, captions, ground truth and splits.

    Attributes
    ----------
    config : WorldConfig
    images : np.ndarray
        uint8 ``(n, S, S, 3)``.
    captions : list of str
        ``n`` captions.
    latents : Latents
        Ground truth per factor.
    split : np.ndarray
        ``(n,)`` array of ``"train" | "val" | "test"``.
    """

    config: WorldConfig
    images: np.ndarray
    captions: list[str]
    latents: Latents
    split: np.ndarray

    @property
    def factors(self) -> tuple[Factor, ...]:
        """The factors actually generated (``config.effective_factors``)."""
        return self.config.effective_factors

    def factor(self, name: str) -> Factor:
        """The factor called ``name`` (KeyError listing the known names otherwise)."""
        for f in self.factors:
            if f.name == name:
                return f
        raise UnknownFactorError(f"unknown factor {name!r}; known factors: {[f.name for f in self.factors]}")

    @cached_property
    def fingerprint(self) -> str:
        """The world's fingerprint: its config and the generator's code version (:meth:`WorldConfig.fingerprint`)."""
        return self.config.fingerprint()

    def __len__(self) -> int:
        return len(self.captions)

    def image(self, index: int) -> Image.Image:
        """Image ``index`` as an RGB ``PIL.Image``."""
        return Image.fromarray(self.images[index], mode="RGB")

    def caption(self, index: int) -> str:
        """Caption ``index``."""
        return self.captions[index]

    def indices(self, split: str) -> np.ndarray:
        """Indices of a split (``train``, ``val`` or ``test``)."""
        if split not in SPLITS:
            raise InputError(f"unknown split {split!r}; choose one of {SPLITS}")
        return np.flatnonzero(self.split == split)

    def subset(self, split: str) -> WorldSplit:
        """A :class:`~mmlib.data.protocol.PairDataset` view of one split."""
        return WorldSplit(self, split, self.indices(split))

    def table(self) -> pd.DataFrame:
        """Ground truth per sample: split, caption, and per factor its value, depicted and mentioned flags."""
        cols: dict[str, object] = {"split": self.split, "caption": self.captions}
        for f in self.factors:
            cols[f.name] = np.asarray(f.values, dtype=object)[self.latents.values[f.name]]
            cols[f"{f.name}_shown"] = self.latents.depicted[f.name]
            cols[f"{f.name}_said"] = self.latents.mentioned[f.name]
        return pd.DataFrame(cols)


@dataclasses.dataclass(frozen=True, eq=False)
class WorldSplit:
    """One split of a :class:`World` as a :class:`~mmlib.data.protocol.PairDataset`."""

    world: World
    name: str
    index: np.ndarray

    @property
    def fingerprint(self) -> str:
        """The split's fingerprint: the world's, and the split's name."""
        return stable_hash(self.world.fingerprint, self.name)

    def __len__(self) -> int:
        return len(self.index)

    def image(self, i: int) -> Image.Image:
        """Image ``i`` of the split, as an RGB ``PIL.Image``."""
        return self.world.image(int(self.index[i]))

    def caption(self, i: int) -> str:
        """Caption ``i`` of the split."""
        return self.world.caption(int(self.index[i]))

    def values(self, factor: str) -> np.ndarray:
        """Value indices ``(len,)`` of ``factor`` in this split."""
        return self.world.latents.values[factor][self.index]

    def depicted(self, factor: str) -> np.ndarray:
        """Whether ``factor`` is shown in each image of the split ``(n,)`` bool."""
        return self.world.latents.depicted[factor][self.index]

    def mentioned(self, factor: str) -> np.ndarray:
        """Whether ``factor`` is said in each caption of the split ``(n,)`` bool."""
        return self.world.latents.mentioned[factor][self.index]


def generate_world(config: WorldConfig | None = None) -> World:
    """Generate a world deterministically from its config (same config -> identical world)."""
    if config is None:
        config = WorldConfig()
    if not isinstance(config, WorldConfig):
        raise InputError(f"generate_world: config must be a WorldConfig (or None for the default world), got "
                         f"{type(config).__name__}.")
    rng = np.random.default_rng(config.seed)
    latents = sample_latents(config, config.n, rng)
    images = render_images(config, latents, np.random.default_rng([config.seed, 1]))
    captions = write_captions(config, latents, np.random.default_rng([config.seed, 2]))
    split = np.array(["train"] * config.n_train + ["val"] * config.n_val + ["test"] * config.n_test)
    return World(config, images, captions, latents, split)
