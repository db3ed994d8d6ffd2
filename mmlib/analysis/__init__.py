"""Layer 2: the paper's method on tensors, runnable on precomputed embeddings without any model in memory.

Modules: ``mds`` (the Modality Dominance Score, paired and aggregate, streamed), ``categories`` (ImgD / TextD /
CrossD rules, feature masks and size-matched random sets), ``embsim`` (top-m samples, EmbSim, WinRate, purity),
``zero_shot`` (zero-shot scoring, linear probes, the modality gap), ``retrieval`` (retrieval ranks and recall@k),
and the book's tests against planted truth and controls: ``planted_truth`` (class accuracy, MI matching, MDS vs
ideal MDS), ``null_world`` (world against null-world differences), ``alignment`` (categories against the classes the
planted roles expect), ``towers`` (feature maps on the towers' activations before the projection), ``world_checks``
(the generated world against its plan) and ``embedding_checks`` (the modality gap and probe inputs).

May import ``core`` and ``data``.
"""


from mmlib.analysis.categories import CLASSES, Categories, CategoryRule, categorise, group_masks, random_feature_mask
from mmlib.analysis.mds import MDSAccumulator, MDSResult, modality_dominance
from mmlib.analysis.retrieval import recall_at_k, retrieval_ranks, retrieval_recall
from mmlib.analysis.zero_shot import linear_probe_accuracy, modality_gap, zero_shot_accuracy, zero_shot_predict

__all__ = [
    "CLASSES", "Categories", "CategoryRule", "MDSAccumulator", "MDSResult", "categorise", "group_masks",
    "linear_probe_accuracy", "modality_dominance", "modality_gap", "random_feature_mask", "recall_at_k",
    "retrieval_ranks", "retrieval_recall", "zero_shot_accuracy", "zero_shot_predict",
]
