"""Text-to-image editing (the paper's experiment 7): ``editing`` (feature-space edits toward a prompt and their
sweep), ``tiny_decoder`` (a small diffusers UNet generating world images from CLIP image embeddings), ``image_probes``
(CNN probes reading the planted factors of generated images), ``unclip`` (the paper profile's Stable unCLIP).
"""
