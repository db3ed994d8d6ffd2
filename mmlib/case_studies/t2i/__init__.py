"""Text-to-image editing (the paper's experiment 7).

``editing`` (feature-space edits toward a prompt, their sweep and the scaling intervention), ``tiny_decoder`` (a small
diffusers UNet generating world images from CLIP image embeddings), ``image_probes`` (CNN probes reading the planted
factors of generated images), ``readout`` (chapter 08's reading of them: what the decoder reproduces, per-reference
values and bootstrap intervals), ``unclip`` (the paper profile's Stable unCLIP).
"""
