"""Why the tiny CLIPs do not learn the glyph factors: the mood glyph under three training conditions.

Run with ``python benchmarks/glyph_suppression.py`` (CPU, offline, about 4 minutes on 2 cores). It trains the
tiny profile's CLIP for ``--steps`` steps on a world of ``--n-train`` pairs under three conditions and prints the
validation zero-shot accuracy of ``mood`` (joint prompts, images where the glyph is drawn) and of ``shape``
every 100 steps:

* ``always shown``: mood depicted with p_d = 1 (the other factors as in the tiny world), full captions;
* ``half shown, mood-only captions``: p_d = 0.5 as in the tiny world, but every caption is "a photo that looks
  <mood>", so nothing else competes for the contrastive signal;
* ``half shown, full captions``: the tiny world's mood factor (p_d = 0.5, p_m = 1).

If mood is learned in the first two conditions but not in the third, the glyph is visible and learnable and
the model's capacity suffices; what stops it is the competition with the other factors of the captions (shape,
colour, texture, ...): feature suppression in contrastive learning (Chen et al., NeurIPS 2021).

``--styles`` asks instead whether the *way* a glyph is drawn decides what survives that competition. It trains
both tiny models with the tiny profile's schedule on the tiny world (full captions) drawn with each
``WorldConfig.glyph_style`` (white 5x5 patterns, or one solid colour per value), and prints, per style and model,
the test-split zero-shot accuracy of shape, colour, mood and gender (joint prompts) and chapter 01's
Table 1.3: the balanced accuracy of a linear probe per factor from the joint image and text embeddings
(:func:`mmlib.analysis.factor_readability.readability_table`). About 10 minutes on 2 cores; the models and
embeddings go to the artifact store, so a rerun only probes. ``--embed-dim`` trains the models with another joint
embedding width, and ``--seed`` with another training seed (both models), to see how much of a difference is
capacity and how much is one training run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mmlib.analysis.factor_readability import readability_table  # noqa: E402
from mmlib.data.world import GLYPH_STYLES, generate_world  # noqa: E402
from mmlib.models.embed import EmbedConfig, embed_dataset  # noqa: E402
from mmlib.models.prompts import zero_shot_report  # noqa: E402
from mmlib.models.training import load_or_train, train_tiny_clip  # noqa: E402
from mmlib.profiles import get_profile  # noqa: E402

MOOD_WORDS = ("happy", "sad", "angry", "calm")


def condition_world(world_config, mood_p_depict: float, mood_only_captions: bool):
    """The world with mood drawn at ``mood_p_depict`` (and, optionally, captions that say only the mood)."""
    factors = tuple(f.with_probabilities(mood_p_depict, 1.0) if f.name == "mood" else f
                    for f in world_config.factors)
    world = generate_world(dataclasses.replace(world_config, factors=factors))
    if mood_only_captions:
        captions = [f"a photo that looks {MOOD_WORDS[v]}" for v in world.latents.values["mood"]]
        world = dataclasses.replace(world, captions=captions)
    return world


#: The factors whose zero-shot accuracy ``--styles`` prints (the cross-modal pair and two glyph factors).
STYLE_ZERO_SHOT = ("shape", "colour", "mood", "gender")


def style_readability(profile, style: str, model: str, n_boot: int = 100):
    """Train (or reload) ``model`` of ``profile`` on its world drawn with glyph ``style``; probe every factor.

    Returns ``(zero_shot, table)``: the test-split zero-shot accuracy (joint prompts, images where the factor is
    drawn) per :data:`STYLE_ZERO_SHOT` factor and
    :func:`~mmlib.analysis.factor_readability.readability_table` of the joint embeddings.
    """
    world = generate_world(dataclasses.replace(profile.world, glyph_style=style))
    train = profile.declip_train if model == "DeCLIP-like" else profile.clip_train
    trained = load_or_train(world, profile.arch, train, progress=False, name=model)
    config = EmbedConfig(batch_size=profile.embed_batch_size)
    emb = {s: embed_dataset(trained.bundle, world.subset(s), config, progress=False) for s in ("train", "test")}
    joint = {side: (getattr(emb["train"], side), getattr(emb["test"], side)) for side in ("image", "text")}
    table = readability_table(world.subset("train"), world.subset("test"), joint, n_boot=n_boot)
    zero_shot = zero_shot_report(trained.bundle, emb["test"].image, world.subset("test"), STYLE_ZERO_SHOT)
    return dict(zip(zero_shot["factor"], zero_shot["accuracy"])), table


def styled_profile(profile, embed_dim: int | None = None, seed: int | None = None):
    """``profile`` with the tiny models' joint embedding width and training seed replaced (None: kept)."""
    if embed_dim is not None:
        profile = dataclasses.replace(profile, arch=dataclasses.replace(profile.arch, embed_dim=embed_dim))
    if seed is not None:
        profile = dataclasses.replace(profile, clip_train=dataclasses.replace(profile.clip_train, seed=seed),
                                      declip_train=dataclasses.replace(profile.declip_train, seed=seed))
    return profile


def compare_styles(profile) -> None:
    """Print, per glyph style and tiny model, the zero-shot accuracies and the factor probe table."""
    for style in GLYPH_STYLES:
        for model in ("CLIP", "DeCLIP-like"):
            start = time.perf_counter()
            zero_shot, table = style_readability(profile, style, model)
            print(f"\nglyph_style={style!r}, {model} ({time.perf_counter() - start:.0f} s); test zero-shot: "
                  + ", ".join(f"{f} {a:.2f}" for f, a in zero_shot.items()))
            print(table[["factor", "role", "p_depict", "p_mention", "image", "text", "required", "readable"]]
                  .to_string(index=False, float_format=lambda x: f"{x:.2f}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--styles", action="store_true", help="compare the glyph styles on the tiny world instead")
    parser.add_argument("--embed-dim", type=int, default=None, help="--styles: joint embedding width (default: "
                        "the tiny profile's)")
    parser.add_argument("--seed", type=int, default=None, help="--styles: training seed of both models (default: "
                        "the tiny profile's)")
    args = parser.parse_args()
    profile = get_profile("tiny")
    if args.styles:
        compare_styles(styled_profile(profile, args.embed_dim, args.seed))
        return
    world_config = dataclasses.replace(profile.world, n_train=args.n_train)
    train = dataclasses.replace(profile.clip_train, steps=args.steps, warmup=min(30, args.steps))
    conditions = {"always shown": (1.0, False), "half shown, mood-only captions": (0.5, True),
                  "half shown, full captions": (0.5, False)}
    print(f"tiny CLIP, {args.steps} steps x {train.batch_size} pairs, {args.n_train} training pairs; "
          "validation zero-shot accuracy (joint prompts) every 100 steps, mood on images where it is drawn")
    for name, (p_depict, mood_only) in conditions.items():
        world = condition_world(world_config, p_depict, mood_only)
        start = time.perf_counter()
        _, history = train_tiny_clip(world, profile.arch, train, progress=False, eval_factors=("mood", "shape"))
        steps = history["eval_step"]
        print(f"{name:32s} ({time.perf_counter() - start:.0f} s)  "
              + "  ".join(f"step {s}: mood {m:.2f} shape {h:.2f}"
                          for s, m, h in zip(steps, history["val_zs_mood"], history["val_zs_shape"])))


if __name__ == "__main__":
    main()
