"""Layer 5: the paper's uses of the feature categories.

Modules: ``removal`` (feature-group removal against size-matched random removal), ``attribute_bias`` (per-value
recognition of a binary attribute and per-value removal: the gender study), ``adversarial`` (attacks, the alignment
defence, cross-modal steering), ``t2i`` (text-to-image editing in feature space: a tiny diffusion decoder, image
probes, the Stable unCLIP generator).

May import every layer below (``core`` to ``feature_maps``), never ``companions``.
"""
