"""SpLiCE's ADMM solver (mmlib.companions.splice.admm) against scikit-learn, on planted problems."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmlib.companions.splice.admm import (
    AdmmConfig,
    compare_with_sklearn,
    lasso_objective,
    nonneg_lasso_admm,
    nonneg_lasso_sklearn,
)

TIGHT = dict(eps_abs=1e-11, eps_rel=1e-9, max_iter=20000, kkt_tol=1e-10)


def planted_problem(n: int, k: int, d: int, active: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm dictionary ``(k, d)`` with a decaying spectrum and targets ``(n, d)``: sparse mixtures + noise."""
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.arange(1, d + 1, dtype=torch.float64) ** -0.5
    dictionary = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64) * spectrum, dim=1)
    pick = torch.randint(0, k, (n, active), generator=g)
    mix = (torch.rand(n, active, generator=g, dtype=torch.float64)[..., None] * dictionary[pick]).sum(1)
    noise = 0.3 * F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    return dictionary, F.normalize(F.normalize(mix, dim=1) + noise, dim=1)


@pytest.mark.parametrize("k, d, penalty, working_set", [
    (80, 16, 0.05, None),   # K > d: Woodbury d x d solve over the whole vocabulary
    (80, 16, 0.05, 8),      # working sets grown by KKT checks
    (300, 32, 0.1, 16),
    (10, 16, 0.01, None),   # K <= d: the K x K system directly
])
def test_admm_matches_sklearn(k, d, penalty, working_set):
    dictionary, targets = planted_problem(6, k, d)
    reference = nonneg_lasso_sklearn(dictionary, targets, penalty)
    result = nonneg_lasso_admm(dictionary, targets, penalty, AdmmConfig(working_set=working_set, **TIGHT))
    assert result.weights.shape == (6, k) and result.weights.dtype == torch.float64
    assert bool(result.converged.all())
    assert float(result.weights.min()) >= 0.0
    assert torch.allclose(result.weights, reference, atol=1e-6)
    assert torch.equal(result.weights > 1e-7, reference > 1e-7)  # same support
    gap = lasso_objective(dictionary, targets, result.weights, penalty) - \
        lasso_objective(dictionary, targets, reference, penalty)
    assert float(gap.abs().max()) < 1e-10


def test_admm_defaults_float32_near_optimal():
    dictionary, targets = planted_problem(40, 500, 32, seed=1)
    reference = nonneg_lasso_sklearn(dictionary, targets, 0.1)
    for working_set in (None, 32):
        result = nonneg_lasso_admm(dictionary.float(), targets.float(), 0.1, AdmmConfig(working_set=working_set))
        assert result.weights.dtype == torch.float32 and bool(result.converged.all())
        f_admm = lasso_objective(dictionary, targets, result.weights, 0.1)
        f_ref = lasso_objective(dictionary, targets, reference, 0.1)
        assert float(((f_admm - f_ref) / f_ref).max()) < 1e-4
        assert float((result.weights.double() - reference).abs().max()) < 5e-3


def test_admm_large_penalty_gives_zero_and_validates_shapes():
    dictionary, targets = planted_problem(5, 30, 8)
    above = float((targets @ dictionary.T).max()) + 1e-3  # every correlation below lambda: w = 0 is optimal
    assert float(nonneg_lasso_admm(dictionary, targets, above).weights.abs().max()) == 0.0
    with pytest.raises(ValueError, match="dictionary"):
        nonneg_lasso_admm(dictionary, targets[:, :4], 0.1)
    with pytest.raises(ValueError, match="l1_penalty"):
        nonneg_lasso_admm(dictionary, targets, -1.0)
    with pytest.raises(ValueError, match="relaxation"):
        AdmmConfig(relaxation=2.0)
    with pytest.raises(ValueError, match="rho"):
        AdmmConfig(rho=0.0)


def test_compare_with_sklearn_tabulates_each_solver():
    dictionary, targets = planted_problem(4, 40, 16)
    solvers = {"tight": (AdmmConfig(working_set=None, **TIGHT), torch.float64),
               "loose": (AdmmConfig(working_set=None, eps_rel=1e-3), torch.float32)}
    table = compare_with_sklearn(dictionary, targets, 0.05, solvers)
    assert list(table["solver"]) == ["tight", "loose", "scikit-learn Lasso(positive=True)"]
    assert list(table.columns) == ["solver", "seconds", "converged", "max_abs_diff", "same_support",
                                   "max_rel_objective_gap"]
    tight = table.iloc[0]
    assert tight["max_abs_diff"] < 1e-6 and tight["same_support"] == 1.0 and tight["converged"] == 1.0
    assert abs(tight["max_rel_objective_gap"]) < 1e-9
    assert table.iloc[1]["max_rel_objective_gap"] < 1e-2
    assert (table["seconds"] >= 0).all() and table.iloc[2]["max_abs_diff"] == 0.0
