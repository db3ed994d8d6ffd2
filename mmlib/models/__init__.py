"""Layer 3: the models and what they compute.

Modules: ``clip`` (open_clip loading and the tiny CLIP architecture), ``training`` (the tiny CLIP and DeCLIP-like
training on the generated world), ``prompts`` (class prompts and their embeddings), ``embed`` (cached, resumable,
torchrun-shardable embedding extraction; ``python -m mmlib.models.embed``).

May import ``core``, ``data`` and ``analysis``.
"""


from mmlib.models.clip import ModelBundle, TinyClipArch, load_open_clip, load_tiny_clip
from mmlib.models.embed import EmbedConfig, embed_dataset
from mmlib.models.prompts import caption_scaled, class_embeddings, encode_texts
from mmlib.models.training import TrainConfig, TrainedModel, load_or_train

__all__ = [
    "EmbedConfig", "ModelBundle", "TinyClipArch", "TrainConfig", "TrainedModel", "caption_scaled",
    "class_embeddings", "embed_dataset", "encode_texts", "load_open_clip", "load_or_train", "load_tiny_clip",
]
