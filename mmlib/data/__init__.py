"""Layer 1: paired images and captions, and their embeddings.

Modules: ``protocol`` (the :class:`PairDataset` protocol every source implements), ``embeddings`` (the
:class:`Embeddings` every later step reads), ``world`` (the generated multimodal world with planted modality
dominance), ``planted`` (a planted sparse dictionary of image-only, text-only and shared atoms), ``corpora`` (real
CSV/TSV and webdataset corpora), ``celeba`` (CelebA faces for the gender study).

May import ``core``.
"""


from mmlib.data.celeba import CelebAFaces
from mmlib.data.corpora import CsvPairs, WebDatasetPairs, open_pairs
from mmlib.data.embeddings import Embeddings
from mmlib.data.planted import PlantedConfig, PlantedData, generate_planted
from mmlib.data.protocol import DatasetError, PairDataset
from mmlib.data.world import Factor, World, WorldConfig, WorldSplit, generate_world, ideal_mds

__all__ = [
    "CelebAFaces", "CsvPairs", "DatasetError", "Embeddings", "Factor", "PairDataset", "PlantedConfig",
    "PlantedData", "WebDatasetPairs", "World", "WorldConfig", "WorldSplit", "generate_planted",
    "generate_world", "ideal_mds", "open_pairs",
]
