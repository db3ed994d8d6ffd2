"""Adversarial attack and defence seen through the feature categories (Method page, ``claim-5-6a`` / ``claim-5-6b``).

Modules, one per question of chapter 07:

* ``attacks``: L∞ PGD on images in pixel space ``[0, 1]`` against zero-shot classification
  (:func:`zero_shot_attack`, :func:`pgd_attack`), the differentiable pixels -> embedding forward
  (:class:`ImageEncoder`, :func:`image_encoder`, :func:`to_pixels`), differentiable feature activations, and the
  random ±ε control (:func:`noise_attack`).
* ``shift``: which feature category (ImgD / TextD / CrossD) moves most between benign and adversarial images, against
  size-matched random feature sets (:func:`category_shift`, :func:`feature_scale`).
* ``defence``: the v1 defence, FARE-style alignment training of an adapter on one category of features
  (:func:`alignment_loss`, :class:`DefenceConfig`, :func:`train_alignment_adapter`), cached as an artifact
  (:func:`load_or_train_adapter`).
* ``evaluation``: accuracy under attack (:func:`accuracy_under_attack`, :func:`attack_correctness`), the aligned
  feature sets (:func:`selection_masks`, :func:`first_complete_seed`) and the defences' accuracy table and paired
  differences (:func:`defence_table`, :func:`robust_gaps`); kept out of the defence's code version, which keys the
  adapters.
* ``steering``: the v3 cross-modal adversarial examples (:func:`steering_attack`) and their effect on retrieval in
  both directions (:func:`cross_modal_effect`, :func:`steering_measures`, :func:`selectivity`,
  :func:`measure_summary`).
* ``verdicts``: the tests and power preconditions of claims 5.6a and 5.6b, as data (:func:`defence_tests`,
  :func:`defence_preconditions`, :func:`steering_tests`, :func:`steering_preconditions`,
  :func:`paired_mean_difference`).

Every public name is re-exported here: ``from mmlib.case_studies.adversarial import zero_shot_attack`` works.
"""

from mmlib.case_studies.adversarial.attacks import (
    ImageEncoder,
    PGDConfig,
    feature_activations,
    image_encoder,
    noise_attack,
    pgd_attack,
    to_pixels,
    zero_shot_attack,
    zero_shot_logits,
)
from mmlib.case_studies.adversarial.defence import (
    ADAPTERS,
    INNER_OBJECTIVES,
    DefenceConfig,
    LinearAdapter,
    TrainedAdapter,
    alignment_loss,
    load_or_train_adapter,
    train_alignment_adapter,
)
from mmlib.case_studies.adversarial.evaluation import (
    GAP_COMPARISONS,
    SELECTIONS,
    accuracy_gap,
    accuracy_under_attack,
    attack_correctness,
    defence_table,
    first_complete_seed,
    robust_gaps,
    selection_masks,
)
from mmlib.case_studies.adversarial.shift import category_shift, feature_scale
from mmlib.case_studies.adversarial.steering import (
    best_caption,
    cross_modal_effect,
    measure_summary,
    random_targets,
    selectivity,
    steering_attack,
    steering_measures,
)
from mmlib.case_studies.adversarial.verdicts import (
    defence_preconditions,
    defence_tests,
    paired_mean_difference,
    steering_preconditions,
    steering_tests,
)

__all__ = [
    # attacks
    "PGDConfig", "ImageEncoder", "image_encoder", "to_pixels", "feature_activations", "zero_shot_logits",
    "pgd_attack", "zero_shot_attack", "noise_attack",
    # shift
    "feature_scale", "category_shift",
    # defence
    "alignment_loss", "ADAPTERS", "INNER_OBJECTIVES", "DefenceConfig", "LinearAdapter", "TrainedAdapter",
    "train_alignment_adapter", "load_or_train_adapter",
    # evaluation
    "attack_correctness", "accuracy_under_attack", "SELECTIONS", "selection_masks", "first_complete_seed",
    "defence_table", "GAP_COMPARISONS", "accuracy_gap", "robust_gaps",
    # steering
    "steering_attack", "cross_modal_effect", "random_targets", "steering_measures", "selectivity",
    "measure_summary", "best_caption",
    # verdicts
    "paired_mean_difference", "defence_tests", "defence_preconditions", "steering_tests", "steering_preconditions",
]
