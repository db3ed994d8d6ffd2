"""SpLiCE: sparse, non-negative decompositions of CLIP embeddings into concept embeddings.

Bhalla et al. (2024), "Interpreting CLIP with Sparse Linear Concept Embeddings (SpLiCE)". An image embedding is
written, without any training, as a sparse non-negative combination of the text embeddings of a concept vocabulary,
after mean-centring each modality.

Modules
-------
``vocabulary``
    The concepts (:class:`ConceptVocabulary`): the world's caption grammar on ``tiny``, a word list on ``paper``.
``admm``
    A batched non-negative lasso solver (:func:`nonneg_lasso_admm`), general, checked against scikit-learn.
``model``
    The decomposition model (:class:`Splice`, :func:`build_splice`): dictionary, modality means, penalty.
``analyses``
    Sparsity sweeps, concept interventions, spurious-correlation detection and feature naming.
``evidence``
    The interval tests and power preconditions of claims 6.1a and 6.1b (penalty rule, faithfulness, planted
    recovery, lift difference).

Every public name of the modules is re-exported here.
"""

from mmlib.companions.splice.admm import (
    AdmmConfig,
    AdmmResult,
    compare_with_sklearn,
    lasso_objective,
    nonneg_lasso_admm,
    nonneg_lasso_sklearn,
)
from mmlib.companions.splice.analyses import (
    SpuriousAudit,
    audit_spurious,
    class_concept_weights,
    factor_weight_share,
    faithful_penalties,
    intervene,
    intervention_report,
    name_features,
    remove_concepts,
    sparsity_sweep,
    spurious_concepts,
    tied_concept_lift,
    tied_hits,
    tied_value,
    tied_weights,
    top_concepts,
    with_wilson_intervals,
    zero_shot_tasks,
)
from mmlib.companions.splice.evidence import (
    faithfulness_tests,
    lift_difference,
    planted_sparse_recovery,
    sparse_penalty,
)
from mmlib.companions.splice.model import Splice, SpliceDecomposition, build_splice, center_embeddings, modality_mean
from mmlib.companions.splice.vocabulary import (
    ConceptVocabulary,
    VocabularyError,
    check_vocabulary,
    read_vocabulary,
    tag_vocabulary,
    world_vocabulary,
)

__all__ = [
    "VocabularyError", "ConceptVocabulary", "world_vocabulary", "read_vocabulary", "tag_vocabulary",
    "check_vocabulary",
    "AdmmConfig", "AdmmResult", "nonneg_lasso_admm", "nonneg_lasso_sklearn", "lasso_objective",
    "compare_with_sklearn",
    "modality_mean", "center_embeddings", "Splice", "SpliceDecomposition", "build_splice",
    "sparsity_sweep", "top_concepts", "remove_concepts", "intervene", "intervention_report",
    "class_concept_weights", "factor_weight_share", "spurious_concepts", "zero_shot_tasks",
    "with_wilson_intervals", "faithful_penalties", "tied_value", "tied_weights", "tied_concept_lift", "tied_hits",
    "SpuriousAudit", "audit_spurious", "name_features",
    "sparse_penalty", "faithfulness_tests", "planted_sparse_recovery", "lift_difference",
]
