"""Planned against empirical shares of the generated world, and their binomial test, on hand-made values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmlib.analysis.world_checks import planted_shares, share_pvalues
from mmlib.data.world import WorldConfig, generate_world


@pytest.fixture(scope="module")
def world():
    return generate_world(WorldConfig(n_train=200, n_val=20, n_test=80, seed=3))


def test_planted_shares_one_row_per_factor_and_side(world):
    shares = planted_shares(world)
    assert len(shares) == 2 * len(world.factors)
    assert list(shares.side[:2]) == ["shown", "said"] and shares.factor.iloc[0] == world.factors[0].name
    assert (shares.n == len(world)).all()
    assert np.allclose(shares.empirical, shares.k / shares.n)
    assert (shares.ci_low <= shares.empirical).all() and (shares.empirical <= shares.ci_high).all()
    by = shares.set_index(["factor", "side"])
    assert by.loc[("shape", "shown"), "planned"] == 1.0 and by.loc[("shape", "shown"), "empirical"] == 1.0
    assert by.loc[("owner", "shown"), "planned"] == 0.0 and by.loc[("owner", "shown"), "k"] == 0
    mood_shown = world.latents.depicted["mood"]
    assert by.loc[("mood", "shown"), "k"] == mood_shown.sum()
    assert by.loc[("mood", "shown"), "planned"] == pytest.approx(0.5)


def test_share_pvalues_hand_values():
    table = pd.DataFrame({"planned": [0.5, 0.5, 1.0, 1.0, 0.0],
                          "empirical": [0.5, 0.9, 1.0, 0.99, 0.0],
                          "n": [100, 100, 100, 100, 100]}, index=[3, 4, 5, 6, 7])
    p = share_pvalues(table)
    assert list(p.index) == [3, 4, 5, 6, 7]
    assert p[3] == pytest.approx(1.0)            # 50 of 100 against 0.5
    assert p[4] < 1e-10                         # 90 of 100 against 0.5
    assert p[5] == 1.0 and p[6] == 0.0 and p[7] == 1.0   # deterministic plans: equal or not


def test_the_generated_world_passes_its_own_test(world):
    assert (share_pvalues(planted_shares(world)) > 1e-3).all()
