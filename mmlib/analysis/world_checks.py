"""Does the generated world realise its plan? Planned against empirical shares of shown and said factors.

A factor of the world (:mod:`mmlib.data.world`) is *shown* in an image with probability ``p_depict`` and *said*
in its caption with probability ``p_mention``, both per value. :func:`planted_shares` sets the share the plan
expects beside the share the generator produced, with Wilson intervals; :func:`share_pvalues` tests each row
with an exact two-sided binomial test (chapter 00's first claim check).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from mmlib.core.stats import proportion_ci
from mmlib.data.world import World

__all__ = ["planted_shares", "share_pvalues"]


def planted_shares(world: World) -> pd.DataFrame:
    """Planned and empirical share of samples in which each factor is shown (image) and said (caption).

    Parameters
    ----------
    world : World
        A generated world of ``n`` samples (all splits).

    Returns
    -------
    DataFrame
        Two rows per factor (``side`` = ``"shown"``, ``"said"``), in the world's factor order: ``factor``,
        ``side``, ``planned`` (the plan's probability averaged over the ``n`` drawn values), ``empirical``
        (``k / n``), ``ci_low`` and ``ci_high`` (95 % Wilson interval of the empirical share), ``k`` and ``n``.
    """
    rows = []
    for f in world.factors:
        values = world.latents.values[f.name]
        for side, flags, planned in (("shown", world.latents.depicted[f.name], f.p_depict),
                                     ("said", world.latents.mentioned[f.name], f.p_mention)):
            expected = float(np.mean(np.asarray(planned)[values]))
            k, n = int(flags.sum()), len(flags)
            low, high = proportion_ci(k, n)
            rows.append(dict(factor=f.name, side=side, planned=expected, empirical=k / n, ci_low=low, ci_high=high,
                             k=k, n=n))
    return pd.DataFrame(rows)


def share_pvalues(shares: pd.DataFrame) -> pd.Series:
    """Two-sided exact binomial p-value of each empirical share against its planned probability.

    Parameters
    ----------
    shares : DataFrame
        :func:`planted_shares` (columns ``planned``, ``empirical``, ``n``).

    Returns
    -------
    Series
        One p-value per row (same index). Where the plan is deterministic (``planned`` 0 or 1) the share must
        equal it exactly: the p-value is 1.0 if it does and 0.0 if it does not.
    """
    out = []
    for r in shares.itertuples():
        if 0 < r.planned < 1:
            out.append(float(binomtest(round(r.empirical * r.n), int(r.n), r.planned).pvalue))
        else:
            out.append(1.0 if r.empirical == r.planned else 0.0)
    return pd.Series(out, index=shares.index, name="p_value", dtype=float)
