"""mmlib: the helper library of the *Multi-Faceted Multimodal Monosemanticity* reproducibility book.

One module per concept; every arrow of the book's data flow is one function here::

    profile -> world / real corpus -> model -> embeddings -> feature map -> MDS -> ...

Modules
-------
paths      where the repository, notebooks and artifacts live (resolved from the package)
artifacts  content-keyed, atomically written artifact store (safetensors + JSON)
profiles   the ``tiny`` and ``paper`` profiles as typed, frozen configs
world      the generated multimodal world with planted modality dominance
data       the paired-dataset protocol and its errors
realdata   real-data adapters (CSV/TSV of image path + caption, webdataset tar shards, CelebA faces)
models     open_clip loader and the tiny CLIP architecture
training   tiny CLIP / DeCLIP-like training on the world
embed      cached, resumable, torchrun-shardable embedding extraction
evaluate   zero-shot accuracy (prompt readings), linear probes and the modality gap
pipeline   the shared first steps of every chapter: world -> models -> cached embeddings -> feature maps
feature_maps  the feature-map interface, raw CLIP dimensions, storage, source checks, streamed training data
sae        multimodal sparse autoencoder (ReLU-L1 / TopK)
ncl        multimodal non-negative contrastive head
planted    planted sparse dictionary (image-only / text-only / shared atoms)
diagnostics   reconstruction, sparsity, effective rank, downstream retention, purity
mds        Modality Dominance Score (paired / aggregate), streamed
categories ImgD / TextD / CrossD rules and their sensitivity
validation planted-truth checks: class accuracy, MI matching, MDS vs ideal MDS, null world
interpretability  top-m samples, EmbSim, WinRate (a)/(b), purity, m sweep
removal    feature-group removal vs size-matched random removal
stats      seeded bootstrap, aggregation over seeds, CI formatting
bias       per-value zero-shot recognition of a binary attribute and per-value group removal (gender)
adversarial  PGD on pixels, per-category feature movement, the alignment defence, cross-modal attacks
decoder    a small diffusers UNet that generates world images from CLIP image embeddings
image_probes  CNN probes that read the planted factors of (generated) images
editing    feature-space edits of ImgD / TextD / CrossD toward a prompt, and their sweep
unclip     the paper profile's Stable unCLIP generator behind the decoder's interface
splice     SpLiCE: sparse non-negative concept decompositions (batched ADMM), sweeps, interventions, spurious cues
interpret  CLIP-InterpreT: per-head decomposition of a ViT's image embedding, TextSpan, head metrics, analyses
claims     the paper's claims and the verdicts the chapters record
plots      figures shared by the notebooks
"""

__version__ = "0.1.0"
