"""Layer 5: the two companion systems that interpret CLIP from other angles.

Packages: ``splice`` (SpLiCE: sparse non-negative concept decompositions), ``clip_interpret`` (CLIP-InterpreT: the
per-head decomposition of a ViT's image embedding, TextSpan, head metrics and analyses).

May import every layer below (``core`` to ``feature_maps``), never ``case_studies``.
"""
