"""Layer 4: monosemantic feature maps ``g`` from embeddings ``(n, d)`` to non-negative activations ``(n, K)``.

Modules: ``base`` (the :class:`FeatureMap` interface, sources and input checks), ``raw`` (raw CLIP dimensions),
``sae`` (the multimodal sparse autoencoder), ``ncl`` (the multimodal non-negative contrastive head), ``store`` (the
registry of kinds, saving and loading, train-or-load through the artifact store), ``diagnostics`` (reconstruction,
sparsity, retention, purity); ``_training`` holds what the trainers share.

May import ``core``, ``data``, ``analysis`` and ``models``.
"""


from mmlib.feature_maps.base import FeatureMap, FeatureMapLike, Source
from mmlib.feature_maps.ncl import NCLConfig, NCLMap
from mmlib.feature_maps.raw import RawConfig, RawDims
from mmlib.feature_maps.sae import SAEConfig, SAEMap
from mmlib.feature_maps.store import TrainedFeatureMap, load_feature_map, load_or_train_feature_map

__all__ = [
    "FeatureMap", "FeatureMapLike", "NCLConfig", "NCLMap", "RawConfig", "RawDims", "SAEConfig", "SAEMap",
    "Source", "TrainedFeatureMap", "load_feature_map", "load_or_train_feature_map",
]
