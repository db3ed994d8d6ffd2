"""CLIP-InterpreT: the per-head decomposition of a ViT CLIP's image embedding, TextSpan, and five analyses.

Gandelsman, Efros & Steinhardt (ICLR 2024), "Interpreting CLIP's Image Representation via Text-Based
Decomposition", and Madasu, Gandelsman, Lal & Howard (2024, arXiv:2409.06579), "Quantifying and Enabling the
Interpretability of CLIP-like Models" (CLIP-InterpreT).

Modules
-------
``decomposition``
    The image embedding as a sum of per-layer, per-head and fixed terms (:func:`decompose_images`), its check
    against ``encode_image`` and each term's direct effect.
``textspan``
    TextSpan per head, each head's property and its consistency, the model-level scores
    (:func:`head_property_scores`) and their random-assignment baseline.
``evidence``
    The interval and the planted positive control of claim 6.2b (:func:`association_excess`,
    :func:`planted_head_recovery`).
``analyses``
    Property-based and per-head nearest neighbours, topic and contrastive segmentation, and which heads write the
    book's features.

Every public name of the modules is re-exported here.
"""

from mmlib.companions.clip_interpret.analyses import (
    attribution_by_category,
    contrastive_heatmap,
    dominant_property,
    head_embeddings,
    head_feature_projections,
    head_heatmap,
    head_image_neighbors,
    head_text_neighbors,
    nearest_neighbors,
    neighbour_agreement,
    per_head_neighbours,
    property_nearest_neighbors,
    segmentation_maps,
    share_by_head,
    upsample_heatmap,
    value_queries,
)
from mmlib.companions.clip_interpret.decomposition import (
    Head,
    ImageDecomposition,
    NotAViTError,
    decompose_images,
    decomposition_error,
    direct_effects,
    layer_index,
    preprocess_images,
    vision_transformer,
    world_images,
)
from mmlib.companions.clip_interpret.evidence import (
    HeadSpecialisation,
    association_excess,
    head_specialisation,
    planted_head_recovery,
)
from mmlib.companions.clip_interpret.textspan import (
    TextPool,
    TextSpanResult,
    head_properties,
    head_property_scores,
    property_heads,
    random_assignment_baseline,
    textspan,
    textspan_heads,
    upper_tail_p,
    world_descriptions,
)

__all__ = [
    "Head", "NotAViTError", "vision_transformer", "preprocess_images", "ImageDecomposition", "layer_index",
    "world_images", "decompose_images", "decomposition_error", "direct_effects",
    "TextPool", "world_descriptions", "TextSpanResult", "textspan", "textspan_heads", "head_properties",
    "head_property_scores", "property_heads", "random_assignment_baseline", "upper_tail_p",
    "head_embeddings", "nearest_neighbors", "property_nearest_neighbors", "head_image_neighbors",
    "head_text_neighbors", "head_heatmap", "contrastive_heatmap", "upsample_heatmap", "head_feature_projections",
    "attribution_by_category", "neighbour_agreement", "dominant_property", "value_queries", "per_head_neighbours",
    "segmentation_maps", "share_by_head",
    "association_excess", "planted_head_recovery", "HeadSpecialisation", "head_specialisation",
]
