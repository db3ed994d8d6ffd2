"""Overhead of :func:`mmlib.models.embed.embed_dataset` over a bare open_clip loop, and the speed of a cache hit.

Run with ``python benchmarks/bench_embed.py`` (CPU, offline, about a minute on 2 cores; ``--quick``: seconds). It
embeds ``n`` generated in-memory pairs (random 48x48 RGB images, five-word captions) with a random-weight default
:class:`mmlib.models.clip.TinyClipArch` model both ways, interleaved in A-B / B-A pairs with both sides warmed and
both under the same torch and BLAS thread limit (:mod:`fair`):

* ours: ``embed_dataset`` **cold**, into a fresh artifact root for every call (so every call computes and writes
  the artifact);
* the reference: a bare open_clip loop doing the same work: preprocess, stack and ``encode_image``; tokenize and
  ``encode_text``; batched, under ``torch.inference_mode``.

It prints min / median / max of the per-pair ratio (goal: median <= 1.05) and the time of a cache hit: from calling
``embed_dataset`` on a stored artifact to the first use of its embeddings (a sum over each).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from fair import compare, limit_threads, ratio_row  # noqa: E402
from PIL import Image  # noqa: E402

from mmlib.core.artifacts import stable_hash  # noqa: E402
from mmlib.models.clip import ModelBundle, TinyClipArch, build_tiny_clip, tiny_bundle  # noqa: E402
from mmlib.models.embed import EmbedConfig, embed_dataset  # noqa: E402

GOAL = 1.05


class MemoryPairs:
    """``n`` random ``size`` x ``size`` RGB images and short captions, held in memory (a PairDataset)."""

    def __init__(self, n: int, seed: int = 0, size: int = 48) -> None:
        rng = np.random.default_rng(seed)
        pixels = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        self.images = [Image.fromarray(p, mode="RGB") for p in pixels]
        words = ["red", "green", "blue", "circle", "square", "large", "small", "striped"]
        self.captions = [" ".join(rng.choice(words, 5)) for _ in range(n)]
        self._fingerprint = stable_hash("MemoryPairs", n, seed, size)

    @property
    def fingerprint(self) -> str:
        """A fingerprint of the benchmark corpus (for the cache key)."""
        return self._fingerprint

    def __len__(self) -> int:
        return len(self.images)

    def image(self, index: int) -> Image.Image:
        """Image ``index``."""
        return self.images[index]

    def caption(self, index: int) -> str:
        """Caption ``index``."""
        return self.captions[index]


def bare_loop(bundle: ModelBundle, data: MemoryPairs, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: preprocess, stack, encode_image; tokenize, encode_text; ``(n, d)`` each."""
    images, texts = [], []
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            idx = range(start, min(start + batch_size, len(data)))
            pixels = torch.stack([bundle.preprocess(data.image(i)) for i in idx])
            tokens = bundle.tokenizer([data.caption(i) for i in idx])
            images.append(bundle.model.encode_image(pixels))
            texts.append(bundle.model.encode_text(tokens))
    return torch.cat(images), torch.cat(texts)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What one run measures: pairs embedded, batch size, interleaved pairs, cache hits timed, thread limit."""

    n: int = 4096
    batch_size: int = 256
    pairs: int = 7
    hits: int = 5
    threads: int = 1
    arch: TinyClipArch = TinyClipArch()

    @classmethod
    def quick(cls) -> Sizes:
        """The book's variant (seconds)."""
        return cls(n=512, pairs=5, hits=5)


def run(sizes: Sizes = Sizes(), log=print) -> dict[str, Any]:
    """Run the comparison; returns ``{"ratios": [row], "tables": {...}}`` (see :mod:`report`)."""
    bundle = tiny_bundle(build_tiny_clip(sizes.arch, seed=0), sizes.arch)
    data = MemoryPairs(sizes.n)
    config = EmbedConfig(batch_size=sizes.batch_size, device="cpu")
    log(f"extraction: {sizes.n} pairs, batch {sizes.batch_size}, {sizes.threads} thread(s), TinyClipArch at random "
        "weights")
    with tempfile.TemporaryDirectory() as tmp:
        calls = iter(range(10 ** 9))
        results = {}

        def ours() -> None:
            results["ours"] = embed_dataset(bundle, data, config, root=Path(tmp) / f"cold{next(calls)}",
                                            progress=False)

        def reference() -> None:
            results["reference"] = bare_loop(bundle, data, sizes.batch_size)

        fair = compare(ours, reference, pairs=sizes.pairs, warmup=1, threads=sizes.threads)
        ref_image, ref_text = results["reference"]
        same = bool(torch.allclose(results["ours"].image, ref_image, atol=1e-5)
                    and torch.allclose(results["ours"].text, ref_text, atol=1e-5))
        stored = Path(tmp) / "cold0"
        size_mb = sum(f.stat().st_size for f in stored.rglob("*") if f.is_file()) / 1e6
        hits = []
        with limit_threads(sizes.threads):
            for _ in range(sizes.hits):
                started = time.perf_counter()
                hit = embed_dataset(bundle, data, config, root=stored, progress=False)
                float(hit.image.sum()) + float(hit.text.sum())  # first use
                hits.append(time.perf_counter() - started)
    log("  " + fair.line("embed_dataset cold / bare loop"))
    log(f"  same embeddings: {same}; cache hit to first use: median {statistics.median(hits):.4f} s "
        f"({size_mb:.1f} MB artifact)")
    row = ratio_row("extraction", GOAL, f"bare open_clip loop, {sizes.n} pairs",
                    "embed_dataset (cold, fresh artifact root)", fair, same_result=same)
    hit_row = {"measurement": "cache hit to first use", "value": f"{statistics.median(hits):.4f} s",
               "detail": f"median of {sizes.hits}, {size_mb:.1f} MB artifact ({sizes.n} pairs)"}
    return {"ratios": [row], "tables": {}, "other": [hit_row]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the book's small variant")
    parser.add_argument("--n", type=int, default=None, help="pairs")
    parser.add_argument("--pairs", type=int, default=None, help="interleaved timing pairs")
    parser.add_argument("--threads", type=int, default=None, help="torch and BLAS threads of both sides")
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    sizes = dataclasses.replace(sizes, **{k: v for k, v in (("n", args.n), ("pairs", args.pairs),
                                                            ("threads", args.threads)) if v is not None})
    row = run(sizes)["ratios"][0]
    print(f"median {row['ratio_median']:.3f} (goal <= {GOAL}): {'met' if row['met'] else 'NOT met'}")


if __name__ == "__main__":
    main()
