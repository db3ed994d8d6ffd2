"""Whether the null-world twins reach the world models' quality when they train longer.

Run with ``python benchmarks/null_twin_quality.py`` (CPU, offline; about 12 minutes on 2 cores for the tiny CLIP at
1x, 2x and 4x the profile's steps). The null world shows and says every factor always; its models, trained with the
profile's schedule, recognise shape and colour zero-shot far less well than the world's models, so a world - null
difference mixes "no modality dominance" with "a weaker model". This trains each null twin with the profile's
training config at ``--multiples`` of its step count (each with its own warm-up and cosine schedule, as the profile
would run it) and prints the validation zero-shot accuracy (joint prompts) of shape and colour at the end of each,
beside the world model's. If the gap does not close, training to a quality target is not a matter of steps: the
null world is a harder task for these models (every caption names eleven factors, all of which compete for the
contrastive signal).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402

from mmlib.data.world import generate_world  # noqa: E402
from mmlib.models.training import train_tiny_clip  # noqa: E402
from mmlib.pipeline import QUALITY_FACTORS  # noqa: E402
from mmlib.profiles import get_profile  # noqa: E402


def quality_by_length(profile, model: str = "CLIP", multiples=(1, 2, 4)) -> pd.DataFrame:
    """Train ``model`` on the world once and on the null world at each of ``multiples`` x the profile's steps.

    Returns one row per training: ``world`` ("world" or "null"), ``steps``, ``seconds`` and the final validation
    zero-shot accuracy (joint prompts) of each :data:`QUALITY_FACTORS` factor.
    """
    if model not in ("CLIP", "DeCLIP-like"):
        raise ValueError(f"model must be 'CLIP' or 'DeCLIP-like', got {model!r}")
    if not multiples or any(not isinstance(m, int) or m < 1 for m in multiples):
        raise ValueError(f"multiples must be positive integers, got {multiples!r}")
    base = profile.declip_train if model == "DeCLIP-like" else profile.clip_train
    runs = [("world", profile.world, 1)] + [("null", profile.null_world, m) for m in multiples]
    rows = []
    for name, world_config, multiple in runs:
        cfg = dataclasses.replace(base, steps=base.steps * multiple)
        start = time.perf_counter()
        _, history = train_tiny_clip(generate_world(world_config), profile.arch, cfg, progress=False,
                                     eval_factors=QUALITY_FACTORS, eval_every=cfg.steps)
        rows.append(dict(model=model, world=name, steps=cfg.steps, seconds=time.perf_counter() - start,
                         **{f: history[f"val_zs_{f}"][-1] for f in QUALITY_FACTORS}))
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["CLIP"], choices=["CLIP", "DeCLIP-like"])
    parser.add_argument("--multiples", nargs="+", type=int, default=[1, 2, 4],
                        help="null-world training lengths, as multiples of the profile's steps")
    args = parser.parse_args()
    profile = get_profile("tiny")
    table = pd.concat([quality_by_length(profile, m, tuple(args.multiples)) for m in args.models], ignore_index=True)
    print("validation zero-shot accuracy (joint prompts) at the end of training")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))


if __name__ == "__main__":
    main()
