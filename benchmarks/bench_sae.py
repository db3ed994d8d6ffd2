"""Our multimodal SAE (:func:`mmlib.feature_maps.sae.train_sae`) against the ``overcomplete`` library's TopK SAE.

Run with ``python benchmarks/bench_sae.py`` (CPU, offline, about a minute on 2 cores). Both SAEs are
trained on the same planted embeddings (:mod:`mmlib.data.planted`, ``--n`` pairs, ``d = 64``), images and texts
pooled, with the same dictionary size ``K``, TopK ``k`` (so the same L0), epochs, rows per step, learning
rate and thread count; overcomplete as in its README (``TopKSAE`` + ``train_sae`` with an MSE criterion,
a ``TensorDataset`` loader). Prints the best training time of each over ``--repeats`` runs, their ratio
(target <= 1.0), the FVU of each (ours should be within 0.02 of theirs, or better) and our ReLU-L1 SAE's
time and FVU for reference.

overcomplete is a test-only dependency; version 0.3.0 still calls ``matplotlib.cm.get_cmap`` (removed in
matplotlib 3.9) when imported, so :func:`import_overcomplete_sae` restores that alias first.
"""

from __future__ import annotations

import argparse
import os
import time
from types import ModuleType

from mmlib.core.devices import torch_threads

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from mmlib.data.planted import PlantedConfig, generate_planted  # noqa: E402
from mmlib.feature_maps.diagnostics import fvu  # noqa: E402
from mmlib.feature_maps.sae import SAEConfig, train_sae  # noqa: E402


def import_overcomplete_sae() -> ModuleType:
    """``overcomplete.sae``, importable beside matplotlib >= 3.9 (which dropped ``cm.get_cmap``)."""
    import matplotlib
    import matplotlib.cm
    if not hasattr(matplotlib.cm, "get_cmap"):
        matplotlib.cm.get_cmap = matplotlib.colormaps.get_cmap
    import overcomplete.sae
    return overcomplete.sae


def train_overcomplete(x: torch.Tensor, n_latents: int, k: int, epochs: int, rows_per_step: int, lr: float,
                       seed: int) -> tuple[torch.nn.Module, float]:
    """Overcomplete's TopK SAE on rows ``x`` ``(n, d)`` as in its README; returns the model (eval mode) and
    the training seconds.
    """
    oc = import_overcomplete_sae()
    torch.manual_seed(seed)  # overcomplete initialises from torch's global generator
    model = oc.TopKSAE(x.shape[1], nb_concepts=n_latents, top_k=k, device="cpu")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=rows_per_step, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def criterion(x, x_hat, pre_codes, codes, dictionary):
        return (x - x_hat).square().mean()

    started = time.perf_counter()
    oc.train_sae(model, loader, criterion, optimizer, nb_epochs=epochs, monitoring=0)
    seconds = time.perf_counter() - started
    return model.eval(), seconds


def overcomplete_reconstruct(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Reconstructions ``(n, d)`` of an overcomplete SAE."""
    with torch.no_grad():
        return model(x)[2]


def compare(n: int = 8000, n_latents: int = 512, k: int = 8, epochs: int = 20, batch_pairs: int = 256,
            lr: float = 1e-3, seed: int = 0, threads: int | None = 1) -> dict[str, float]:
    """Train both TopK SAEs once on planted data; return their seconds and FVUs (on images and texts pooled)."""
    data = generate_planted(PlantedConfig(d=64, seed=seed), n)
    x = torch.cat([data.image, data.text])
    config = SAEConfig(K=n_latents, kind="topk", k=k, normalize="none", epochs=epochs, batch_size=batch_pairs,
                       lr=lr, seed=seed)
    started = time.perf_counter()
    ours, _ = train_sae((data.image, data.text), config, progress=False, threads=threads)
    ours_s = time.perf_counter() - started
    ours_hat = torch.cat([ours.reconstruct(data.image, "image"), ours.reconstruct(data.text, "text")])
    with torch_threads(threads):
        theirs, theirs_s = train_overcomplete(x, n_latents, k, epochs, 2 * batch_pairs, lr, seed)
    return {"ours_s": ours_s, "theirs_s": theirs_s, "ours_fvu": fvu(x, ours_hat),
            "theirs_fvu": fvu(x, overcomplete_reconstruct(theirs, x))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8000, help="pairs")
    parser.add_argument("--K", type=int, default=512, help="latents")
    parser.add_argument("--k", type=int, default=8, help="TopK active latents")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of both")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for both")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    runs = [compare(args.n, args.K, args.k, args.epochs, lr=args.lr, seed=0, threads=args.threads)
            for _ in range(args.repeats)]
    ours_s, theirs_s = min(r["ours_s"] for r in runs), min(r["theirs_s"] for r in runs)
    print(f"TopK SAE, {args.n} pairs, d=64, K={args.K}, k={args.k}, {args.epochs} epochs, {args.threads} thread(s)")
    print(f"  ours         {ours_s:7.2f} s   FVU {runs[0]['ours_fvu']:.4f}")
    print(f"  overcomplete {theirs_s:7.2f} s   FVU {runs[0]['theirs_fvu']:.4f}")
    print(f"  time ratio ours/theirs = {ours_s / theirs_s:.2f} (target <= 1.0); "
          f"FVU difference ours - theirs = {runs[0]['ours_fvu'] - runs[0]['theirs_fvu']:+.4f} (target <= 0.02)")
    data = generate_planted(PlantedConfig(d=64), args.n)
    started = time.perf_counter()
    relu, history = train_sae((data.image, data.text), SAEConfig(K=args.K), progress=False, threads=args.threads)
    relu_s = time.perf_counter() - started
    x = torch.cat([data.image, data.text])
    x_hat = torch.cat([relu.reconstruct(data.image, "image"), relu.reconstruct(data.text, "text")])
    print(f"  ours ReLU-L1 (defaults) {relu_s:7.2f} s   FVU {fvu(x, x_hat):.4f}   L0 {history['l0'][-1]:.1f}")


if __name__ == "__main__":
    main()
