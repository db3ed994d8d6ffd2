"""Overhead of :func:`mmlib.models.embed.embed_dataset` over a bare open_clip loop, and the speed of a cache hit.

Run with ``python benchmarks/bench_embed.py`` (CPU, offline, about a minute on 2 cores). It embeds ``--n``
generated in-memory pairs with a random-weight default :class:`mmlib.models.clip.TinyClipArch` model, three times
each way (fresh artifact folder per cold run), and prints the best times, their ratio (target <= 1.10) and
the time of a cache hit (target < 1 s).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from mmlib.core.artifacts import stable_hash  # noqa: E402
from mmlib.models.clip import ModelBundle, TinyClipArch, build_tiny_clip, tiny_bundle  # noqa: E402
from mmlib.models.embed import EmbedConfig, embed_dataset  # noqa: E402


class MemoryPairs:
    """``n`` random 48x48 RGB images and short captions, held in memory (a PairDataset)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        pixels = rng.integers(0, 256, (n, 48, 48, 3), dtype=np.uint8)
        self.images = [Image.fromarray(p, mode="RGB") for p in pixels]
        words = ["red", "green", "blue", "circle", "square", "large", "small", "striped"]
        self.captions = [" ".join(rng.choice(words, 5)) for _ in range(n)]
        self._fingerprint = stable_hash("MemoryPairs", n, seed)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    arch = TinyClipArch()
    bundle = tiny_bundle(build_tiny_clip(arch, seed=0), arch)
    data = MemoryPairs(args.n)
    config = EmbedConfig(batch_size=args.batch_size, device="cpu")
    print(f"{args.n} pairs, batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
          f"TinyClipArch() at random weights")
    bare_loop(bundle, MemoryPairs(args.batch_size, seed=1), args.batch_size)  # warm-up

    bare_times, ours_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            started = time.perf_counter()
            ref_image, ref_text = bare_loop(bundle, data, args.batch_size)
            bare_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            result = embed_dataset(bundle, data, config, root=Path(tmp) / f"cold{r}", progress=False)
            ours_times.append(time.perf_counter() - started)
        assert torch.allclose(result.image, ref_image, atol=1e-5) and torch.allclose(result.text, ref_text,
                                                                                     atol=1e-5)
        started = time.perf_counter()
        hit = embed_dataset(bundle, data, config, root=Path(tmp) / "cold0", progress=False)
        hit_time = time.perf_counter() - started
        assert torch.equal(hit.image, result.image)

    bare, ours = min(bare_times), min(ours_times)
    print(f"bare open_clip loop : {bare:7.3f} s  (runs: {', '.join(f'{t:.3f}' for t in bare_times)})")
    print(f"embed_dataset, cold : {ours:7.3f} s  (runs: {', '.join(f'{t:.3f}' for t in ours_times)})")
    print(f"ratio               : {ours / bare:7.3f}   (target <= 1.10)")
    print(f"cache hit           : {hit_time:7.3f} s  (target < 1 s)")


if __name__ == "__main__":
    main()
