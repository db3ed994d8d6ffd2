"""Pixel probes of the planted image factors: they learn the easy factors of a small world, are cached,
and refuse bad input.
"""

from __future__ import annotations

import numpy as np
import pytest

from mmlib.case_studies.t2i.image_probes import (
    IMAGE_FACTORS,
    FactorProbes,
    ProbeConfig,
    load_or_train_probes,
    probe_table,
)
from mmlib.data.world import WorldConfig, generate_world

CFG = ProbeConfig(factors=("background", "colour", "position"), channels=(16, 32), epochs=6, batch_size=64, lr=5e-3)


@pytest.fixture(scope="module")
def world():
    return generate_world(WorldConfig(n_train=600, n_val=0, n_test=200, seed=3))


def _split(world, name):
    idx = world.indices(name)
    return world.images[idx], {f: world.latents.values[f][idx] for f in IMAGE_FACTORS}


def test_probes_read_easy_factors_and_reload(world, artifact_root):
    (x_tr, y_tr), (x_te, y_te) = _split(world, "train"), _split(world, "test")
    n_classes = {f.name: len(f.values) for f in world.factors}
    first = load_or_train_probes(x_tr, y_tr, n_classes, CFG)
    assert first.trained_now and first.history["loss"][-1] < first.history["loss"][0]
    table = probe_table(first.probes, x_te, y_te).set_index("factor")
    # background is a flat colour over most of the image: a CNN reads it almost perfectly
    assert table.loc["background", "ci_low"] > 0.8, table
    assert (table.accuracy > table.chance).all(), table
    again = load_or_train_probes(x_tr, y_tr, n_classes, CFG)
    assert not again.trained_now
    a, b = first.probes.predict(x_te), again.probes.predict(x_te)
    for f in CFG.factors:
        np.testing.assert_array_equal(a[f], b[f])


def test_bad_input(world):
    n_classes = {f.name: len(f.values) for f in world.factors}
    probes = FactorProbes(CFG, n_classes)
    x, y = _split(world, "test")
    with pytest.raises(ValueError, match=r"unknown factor\(s\) \['mood'\]"):
        probes.predict(x[:2], ["mood"])
    with pytest.raises(ValueError, match="no labels for factor"):
        load_or_train_probes(x[:4], {"colour": y["colour"][:4]}, n_classes, CFG)
    with pytest.raises(ValueError, match="empty"):
        probe_table(probes, x[:0], {f: v[:0] for f, v in y.items()})
    with pytest.raises(ValueError, match="shape"):
        probe_table(probes, x[:3], {f: v[:2] for f, v in y.items()})
    with pytest.raises(ValueError, match="unique"):
        ProbeConfig(factors=("shape", "shape"))
