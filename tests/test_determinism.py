"""Two fresh runs on one machine give the same bytes: the same artifact keys, the same trained models and maps, the
same MDS and the same claims table (each run in its own process, from its own empty artifact store).

The full-size check is ``make check-determinism`` (two cold builds of the book, claims tables compared); this test
runs the same chain at toy size: train the tiny models, train the feature maps, score MDS, categorise, record
verdicts, read the claims table back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mmlib.core.paths import REPO_ROOT

RUN = r'''
import dataclasses, hashlib, json, sys
from mmlib.core.artifacts import tensor_fingerprint
from mmlib.data.world import WorldConfig
from mmlib.feature_maps.ncl import NCLConfig
from mmlib.feature_maps.sae import SAEConfig
from mmlib.models.clip import TinyClipArch
from mmlib.models.training import TrainConfig
from mmlib.pipeline import map_grid
from mmlib.reporting.chapter import start_chapter
from mmlib.reporting.claims import claims_table

arch = TinyClipArch(embed_dim=16, image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_head_width=16,
                    text_width=32, text_layers=1, text_heads=2, context_length=16)
cfg = TrainConfig(steps=40, batch_size=16, warmup=4)
ch = start_chapter("03_mds", "tiny", world=WorldConfig(n_train=64, n_val=16, n_test=32, image_size=32), arch=arch,
                   clip_train=cfg, declip_train=dataclasses.replace(cfg, declip=True), embed_batch_size=16,
                   device="cpu", sae=SAEConfig(K=32, epochs=3, batch_size=16), ncl=NCLConfig(K=32, epochs=3,
                   batch_size=16), map_seeds=(0, 1))
grid = map_grid(ch.profile, maps=("SAE", "NCL"))
s = grid.summary()
mean = s.groupby("model")["mean"].mean()
ch.record([ch.verdict("5.1a", "inconclusive", f"mean MDS {mean.to_dict()}"),
           ch.verdict("5.1b", "inconclusive", f"share extreme {s.share_extreme.round(6).tolist()}")])
out = {"models": {m: t.path.name for m, t in grid.setups["world"].trained.items()},
       "weights": {m: tensor_fingerprint(t.bundle.model.state_dict()) for m, t in grid.setups["world"].trained.items()},
       "maps": {"/".join(map(str, k)): r.trained.key for k, r in grid.items()},
       "map_bytes": {"/".join(map(str, k)): tensor_fingerprint(r.fmap.state_tensors()) for k, r in grid.items()},
       "mds": hashlib.sha256(s.round(12).to_csv().encode()).hexdigest(),
       "claims": claims_table("tiny")[["claim", "verdict", "evidence"]].to_dict(orient="records")}
print("RESULT" + json.dumps(out, sort_keys=True))
'''


def run_once(root) -> dict:
    env = {**os.environ, "MMLIB_ARTIFACTS": str(root), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("MMLIB_RUN_ID", None)
    proc = subprocess.run([sys.executable, "-c", RUN], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


@pytest.mark.slow
def test_two_fresh_runs_give_identical_models_maps_and_claims(tmp_path):
    first, second = run_once(tmp_path / "a"), run_once(tmp_path / "b")
    assert len(first["maps"]) == 2 * 2 * 2 * 2  # worlds x models x maps x seeds
    for part in ("models", "weights", "maps", "map_bytes", "mds", "claims"):
        assert first[part] == second[part], f"{part} differ between two fresh runs"
    assert [c["verdict"] for c in first["claims"][:2]] == ["inconclusive", "inconclusive"]
