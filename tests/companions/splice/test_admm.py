"""SpLiCE's non-negative lasso solvers (mmlib.companions.splice.admm) against scikit-learn, on planted problems.

The exact active-set method (the default) and ADMM are both held to scikit-learn's tight solve: the objective, the
support and the KKT conditions of the full problem (a weight > 0 has correlation ``c_k (z - C^T w) = lambda``,
every other atom correlation ``<= lambda``), including degenerate problems (penalty above every correlation,
duplicate atoms, fewer atoms than dimensions, no penalty) and the fallback to ADMM, which is flagged per embedding.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mmlib.companions.splice.admm import (
    AdmmConfig,
    AdmmResult,
    compare_with_sklearn,
    lasso_objective,
    nonneg_lasso_admm,
    nonneg_lasso_sklearn,
)
from mmlib.core.errors import ArgumentTypeError, InputError, NonFiniteError

TIGHT = dict(eps_abs=1e-11, eps_rel=1e-9, max_iter=20000, kkt_tol=1e-10)
METHODS = ("active_set", "admm")


def planted_problem(n: int, k: int, d: int, active: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm dictionary ``(k, d)`` with a decaying spectrum and targets ``(n, d)``: sparse mixtures + noise."""
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.arange(1, d + 1, dtype=torch.float64) ** -0.5
    dictionary = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64) * spectrum, dim=1)
    pick = torch.randint(0, k, (n, active), generator=g)
    mix = (torch.rand(n, active, generator=g, dtype=torch.float64)[..., None] * dictionary[pick]).sum(1)
    noise = 0.3 * F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    return dictionary, F.normalize(F.normalize(mix, dim=1) + noise, dim=1)


def assert_kkt(dictionary: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, penalty: float,
               tol: float) -> None:
    """The optimality conditions of the full problem, in float64 (to ``tol``).

    Weights >= 0, correlation with the residual = penalty on the support and <= penalty elsewhere.
    """
    weights = weights.double()
    correlation = (targets.double() - weights @ dictionary.double()) @ dictionary.double().T
    assert float(weights.min()) >= 0.0
    assert float(correlation.max()) <= penalty + tol
    support = weights > 0
    if bool(support.any()):
        assert float((correlation[support] - penalty).abs().max()) <= tol


def relative_gap(dictionary, targets, weights, reference, penalty) -> float:
    ours = lasso_objective(dictionary, targets, weights, penalty)
    best = lasso_objective(dictionary, targets, reference, penalty)
    return float(((ours - best) / best.clamp_min(1e-300)).max())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("k, d, penalty, working_set", [
    (80, 16, 0.05, None),   # K > d (ADMM: Woodbury d x d solve over the whole vocabulary)
    (80, 16, 0.05, 8),      # ADMM: working sets grown by KKT checks
    (300, 32, 0.1, 16),
    (10, 16, 0.01, None),   # K <= d (ADMM: the K x K system directly)
    (400, 160, 0.05, 64),   # d >= 128: the active set bounds most correlations instead of computing them
])
def test_solvers_match_sklearn(method, k, d, penalty, working_set):
    dictionary, targets = planted_problem(6, k, d)
    reference = nonneg_lasso_sklearn(dictionary, targets, penalty)
    config = AdmmConfig(working_set=working_set, method=method, **TIGHT)
    result = nonneg_lasso_admm(dictionary, targets, penalty, config)
    assert result.weights.shape == (6, k) and result.weights.dtype == torch.float64
    assert bool(result.converged.all()) and not bool(result.fallback.any())
    assert float(result.weights.min()) >= 0.0
    assert torch.allclose(result.weights, reference, atol=1e-6)
    assert torch.equal(result.weights > 1e-7, reference > 1e-7)  # same support
    gap = lasso_objective(dictionary, targets, result.weights, penalty) - \
        lasso_objective(dictionary, targets, reference, penalty)
    assert float(gap.abs().max()) < 1e-10
    assert_kkt(dictionary, targets, result.weights, penalty, 1e-8)


def test_active_set_is_exact_and_certified():
    dictionary, targets = planted_problem(30, 2000, 64, active=8, seed=3)
    reference = nonneg_lasso_sklearn(dictionary, targets, 0.1, tol=1e-12)
    result = nonneg_lasso_admm(dictionary, targets, 0.1)          # the defaults: active set, kkt_tol 1e-6
    assert bool(result.converged.all()) and not bool(result.fallback.any())
    assert result.fallback.shape == (30,) and result.fallback.dtype == torch.bool
    assert relative_gap(dictionary, targets, result.weights, reference, 0.1) < 1e-9
    assert_kkt(dictionary, targets, result.weights, 0.1, 1e-6)
    assert torch.equal(result.primal_residual, torch.zeros(30, dtype=torch.float64))
    assert float(result.dual_residual.max()) <= 1e-6              # the reported KKT violation
    assert int(result.iterations.min()) >= 2 and int(result.iterations.max()) <= 30


def test_solvers_float32_near_optimal():
    dictionary, targets = planted_problem(40, 500, 32, seed=1)
    reference = nonneg_lasso_sklearn(dictionary, targets, 0.1)
    for method, working_set in (("active_set", 64), ("admm", None), ("admm", 32)):
        config = AdmmConfig(working_set=working_set, method=method)
        result = nonneg_lasso_admm(dictionary.float(), targets.float(), 0.1, config)
        assert result.weights.dtype == torch.float32 and bool(result.converged.all())
        f_admm = lasso_objective(dictionary, targets, result.weights, 0.1)
        f_ref = lasso_objective(dictionary, targets, reference, 0.1)
        assert float(((f_admm - f_ref) / f_ref).max()) < (1e-6 if method == "active_set" else 1e-4)
        assert float((result.weights.double() - reference).abs().max()) < 5e-3


@pytest.mark.parametrize("method", METHODS)
def test_large_penalty_gives_zero(method):
    dictionary, targets = planted_problem(5, 30, 8)
    above = float((targets @ dictionary.T).max()) + 1e-3  # every correlation below lambda: w = 0 is optimal
    result = nonneg_lasso_admm(dictionary, targets, above, AdmmConfig(method=method))
    assert float(result.weights.abs().max()) == 0.0 and bool(result.converged.all())
    if method == "active_set":
        assert result.iterations.tolist() == [1] * 5


def test_validates_shapes_and_config():
    dictionary, targets = planted_problem(5, 30, 8)
    with pytest.raises(ValueError, match="dictionary"):
        nonneg_lasso_admm(dictionary, targets[:, :4], 0.1)
    with pytest.raises(InputError, match=r"targets \(n, d\).*\(8,\)"):
        nonneg_lasso_admm(dictionary, targets[0], 0.1)
    with pytest.raises(ValueError, match="l1_penalty"):
        nonneg_lasso_admm(dictionary, targets, -1.0)
    with pytest.raises(ValueError, match="relaxation"):
        AdmmConfig(relaxation=2.0)
    with pytest.raises(ValueError, match="rho"):
        AdmmConfig(rho=0.0)
    with pytest.raises(ValueError, match="method"):
        AdmmConfig(method="newton")
    with pytest.raises(ValueError, match="max_pivots"):
        AdmmConfig(max_pivots=0)
    with pytest.raises(ValueError, match="kkt_tol"):
        AdmmConfig(kkt_tol=-1e-6)


def test_rejects_bad_inputs_with_named_errors():
    dictionary, targets = planted_problem(5, 30, 8)
    cases = [
        (lambda: nonneg_lasso_admm(dictionary.numpy(), targets, 0.1), ArgumentTypeError, "dictionary must be a torch"),
        (lambda: nonneg_lasso_admm(dictionary, targets.tolist(), 0.1), ArgumentTypeError, "targets must be a torch"),
        (lambda: nonneg_lasso_admm(dictionary.long(), targets, 0.1), InputError, "dictionary must be float32"),
        (lambda: nonneg_lasso_admm(dictionary.half(), targets, 0.1), InputError, "dictionary must be float32"),
        (lambda: nonneg_lasso_admm(dictionary, targets.long(), 0.1), InputError, "targets must be a real"),
        (lambda: nonneg_lasso_admm(dictionary, targets, None), ArgumentTypeError, "l1_penalty must be a number"),
        (lambda: nonneg_lasso_admm(dictionary, targets, "0.1"), ArgumentTypeError, "l1_penalty must be a number"),
        (lambda: nonneg_lasso_admm(dictionary, targets, True), ArgumentTypeError, "l1_penalty must be a number"),
        (lambda: nonneg_lasso_admm(dictionary, targets, float("nan")), InputError, "l1_penalty must be a finite"),
        (lambda: nonneg_lasso_admm(dictionary, targets, 0.1, config={"method": "admm"}), ArgumentTypeError,
         "config must be an AdmmConfig"),
        (lambda: nonneg_lasso_admm(dictionary, targets.clone().index_fill_(1, torch.tensor([2]), float("nan")), 0.1),
         NonFiniteError, "targets.*row 0, column 2"),
        # finite, but the products overflow float32: refused rather than "converged" with w = 0
        (lambda: nonneg_lasso_admm(dictionary.float() * 1e30, targets.float(), 0.1), InputError, "too large"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
    one = nonneg_lasso_admm(dictionary, targets, torch.tensor(0.1, dtype=torch.float64))  # a 0-d tensor is a number
    assert torch.equal(one.weights, nonneg_lasso_admm(dictionary, targets, 0.1).weights)


def test_empty_batch_keeps_dtype():
    dictionary, _ = planted_problem(1, 30, 8)
    result = nonneg_lasso_admm(dictionary, torch.zeros(0, 8, dtype=torch.float64), 0.1)
    assert isinstance(result, AdmmResult) and result.weights.shape == (0, 30)
    assert result.weights.dtype == torch.float64 and result.fallback.dtype == torch.bool


@pytest.mark.parametrize("method", METHODS)
def test_duplicate_atoms(method):
    """Exact duplicates make the free-set systems singular when both copies enter.

    The split between copies is arbitrary, but the objective and the KKT conditions are those of the tight solve.
    """
    dictionary, targets = planted_problem(12, 60, 16, active=4, seed=5)
    dictionary = torch.cat([dictionary, dictionary[:20], dictionary[:5]])       # 25 atoms repeated
    reference = nonneg_lasso_sklearn(dictionary, targets, 0.05, tol=1e-12)
    result = nonneg_lasso_admm(dictionary, targets, 0.05, AdmmConfig(method=method))
    assert bool(result.converged.all())
    exact = method == "active_set"
    assert relative_gap(dictionary, targets, result.weights, reference, 0.05) < (1e-9 if exact else 1e-5)
    assert_kkt(dictionary, targets, result.weights, 0.05, 1e-8 if exact else 2e-4)


@pytest.mark.parametrize("method", METHODS)
def test_fewer_atoms_than_dimensions_or_working_set(method):
    dictionary, targets = planted_problem(7, 5, 24, active=2, seed=2)          # K = 5 < d = 24 < m = 64
    reference = nonneg_lasso_sklearn(dictionary, targets, 0.02, tol=1e-12)
    result = nonneg_lasso_admm(dictionary, targets, 0.02, AdmmConfig(method=method, **TIGHT))
    assert bool(result.converged.all())
    assert relative_gap(dictionary, targets, result.weights, reference, 0.02) < 1e-10
    assert_kkt(dictionary, targets, result.weights, 0.02, 1e-8)


def test_no_penalty_is_nonnegative_least_squares():
    dictionary, targets = planted_problem(6, 10, 16, seed=4)
    result = nonneg_lasso_admm(dictionary, targets, 0.0, AdmmConfig(kkt_tol=1e-10))
    assert bool(result.converged.all())
    for row in range(6):
        expected, _ = scipy.optimize.nnls(dictionary.T.numpy(), targets[row].numpy())
        np.testing.assert_allclose(result.weights[row].numpy(), expected, atol=1e-9)


def test_more_free_atoms_than_dimensions_are_never_needed():
    """In 3 dimensions at most 3 atoms can be free at once (the rank); the solution still matches."""
    dictionary, targets = planted_problem(10, 200, 3, active=3, seed=6)
    reference = nonneg_lasso_sklearn(dictionary, targets, 0.01, tol=1e-12)
    result = nonneg_lasso_admm(dictionary, targets, 0.01)
    assert bool(result.converged.all()) and int((result.weights > 0).sum(1).max()) <= 3
    assert relative_gap(dictionary, targets, result.weights, reference, 0.01) < 1e-5  # objectives ~0.01: tiny
    assert_kkt(dictionary, targets, result.weights, 0.01, 1e-6)


def test_active_set_falls_back_to_admm():
    """With two steps allowed the active-set method cannot finish: ADMM solves those embeddings.

    Its support warm-starts the active set again, which then certifies (polishes) the solution in a step or two.
    """
    dictionary, targets = planted_problem(8, 300, 32, seed=7)
    reference = nonneg_lasso_sklearn(dictionary, targets, 0.1, tol=1e-12)
    result = nonneg_lasso_admm(dictionary, targets, 0.1, AdmmConfig(max_pivots=2))
    assert bool(result.converged.all()) and int(result.iterations.min()) > 10  # ADMM iterations counted
    assert bool(result.fallback.all())                                          # and recorded
    assert torch.equal(result.primal_residual, torch.zeros(8, dtype=torch.float64))  # polished: certified again
    admm = nonneg_lasso_admm(dictionary, targets, 0.1, AdmmConfig(method="admm"))
    assert not bool(admm.fallback.any())                                        # nothing to fall back from
    assert relative_gap(dictionary, targets, result.weights, reference, 0.1) < 1e-9
    assert_kkt(dictionary, targets, result.weights, 0.1, 1e-6)


def test_murty_steps_stay_within_the_rank():
    """Small penalties in 8 dimensions put supports at the rank; the single exchanges of the backup rule must not
    add an atom to a full free set (a singular system, then cycling until ``max_pivots``: ADMM).
    """
    g = torch.Generator().manual_seed(24)
    dictionary = F.normalize(torch.randn(40, 8, generator=g, dtype=torch.float64), dim=1)
    targets = torch.randn(16, 8, generator=g, dtype=torch.float64)
    result = nonneg_lasso_admm(dictionary, targets, 0.01, AdmmConfig(kkt_tol=1e-9))
    assert bool(result.converged.all()) and not bool(result.fallback.any())
    assert int(result.iterations.max()) < 50 and int((result.weights > 0).sum(1).max()) <= 8
    assert_kkt(dictionary, targets, result.weights, 0.01, 1e-7)


def test_active_set_deterministic_and_chunked():
    dictionary, targets = planted_problem(50, 1000, 64, active=6, seed=8)
    dictionary, targets = dictionary.float(), targets.float()
    first = nonneg_lasso_admm(dictionary, targets, 0.1)
    again = nonneg_lasso_admm(dictionary, targets, 0.1)
    chunked = nonneg_lasso_admm(dictionary, targets, 0.1, AdmmConfig(chunk_size=7))
    assert torch.equal(first.weights, again.weights) and torch.equal(first.iterations, again.iterations)
    assert torch.equal(first.weights > 0, chunked.weights > 0)
    assert torch.allclose(first.weights, chunked.weights, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 80), d=st.integers(1, 24),
       penalty=st.sampled_from([0.0, 0.01, 0.1, 0.5]))
def test_active_set_kkt_on_random_problems(seed, k, d, penalty):
    """Embeddings the active set solves (primal residual 0) satisfy the KKT conditions to rounding.

    Any handed to ADMM (``fallback``: a few percent of these small, dense problems, where supports reach the rank
    and the backup rule needs more than ``max_pivots`` single exchanges) reach the tight objective within 1e-4.
    """
    g = torch.Generator().manual_seed(seed)
    dictionary = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    targets = torch.randn(4, d, generator=g, dtype=torch.float64)
    if penalty == 0.0 and k > d:  # NNLS with a rank-deficient Gram: solutions are not unique
        penalty = 0.01
    result = nonneg_lasso_admm(dictionary, targets, penalty, AdmmConfig(kkt_tol=1e-9))
    exact = result.primal_residual == 0
    assert bool(exact[~result.fallback].all())  # no fallback: solved by the active set
    if bool(exact.any()):
        assert bool(result.converged[exact].all())
        assert_kkt(dictionary, targets[exact], result.weights[exact], penalty, 1e-7)
    if penalty > 0:
        reference = nonneg_lasso_sklearn(dictionary, targets, penalty, tol=1e-12)
        ours = lasso_objective(dictionary, targets, result.weights, penalty)
        best = lasso_objective(dictionary, targets, reference, penalty)
        gap = (ours - best) / best.abs().clamp_min(1e-12)
        assert float(gap.max()) <= 1e-4
        if bool(exact.any()):
            assert float(gap[exact].max()) <= 1e-9


def test_compare_with_sklearn_tabulates_each_solver():
    dictionary, targets = planted_problem(4, 40, 16)
    solvers = {"tight": (AdmmConfig(working_set=None, method="admm", **TIGHT), torch.float64),
               "loose": (AdmmConfig(working_set=None, method="admm", eps_rel=1e-3), torch.float32),
               "active set": (AdmmConfig(), torch.float32)}
    table = compare_with_sklearn(dictionary, targets, 0.05, solvers)
    assert list(table["solver"]) == ["tight", "loose", "active set", "scikit-learn Lasso(positive=True)"]
    assert list(table.columns) == ["solver", "seconds", "converged", "max_abs_diff", "same_support",
                                   "max_rel_objective_gap"]
    tight = table.iloc[0]
    assert tight["max_abs_diff"] < 1e-6 and tight["same_support"] == 1.0 and tight["converged"] == 1.0
    assert abs(tight["max_rel_objective_gap"]) < 1e-9
    assert table.iloc[1]["max_rel_objective_gap"] < 1e-2
    assert table.iloc[2]["max_rel_objective_gap"] < 1e-6 and table.iloc[2]["converged"] == 1.0
    assert (table["seconds"] >= 0).all() and table.iloc[3]["max_abs_diff"] == 0.0
