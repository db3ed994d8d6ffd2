"""mmlib: the helper library of the *Multi-Faceted Multimodal Monosemanticity* reproducibility book.

One module per concept; every arrow of the book's data flow is one function here::

    profile -> world / real corpus -> model -> embeddings -> feature map -> MDS -> ...

Modules
-------
paths      where the repository, notebooks and artifacts live (resolved from the package)
artifacts  content-keyed, atomically written artifact store (safetensors + JSON)
profiles   the ``tiny`` and ``paper`` profiles as typed, frozen configs
world      the generated multimodal world with planted modality dominance
data       real-data adapters (CSV/TSV of image path + caption, webdataset tar shards)
models     open_clip loader and tiny CLIP / DeCLIP-like training
embed      cached, resumable, torchrun-shardable embedding extraction
evaluate   zero-shot accuracy, linear probes and the modality gap
plots      figures shared by the notebooks
"""

__version__ = "0.1.0"
