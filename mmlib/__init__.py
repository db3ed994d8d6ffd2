"""mmlib: the helper library of the *Multi-Faceted Multimodal Monosemanticity* reproducibility book.

Every arrow of the book's data flow is one function here::

    profile -> world / real corpus -> model -> embeddings -> feature map -> MDS -> categories -> case studies

The package is built in layers. A module may import from its own layer and from the layers below it, never
from a layer above (``tests/test_layers.py`` enforces this, and that the import graph has no cycle):

==========  ===============  ==============================================================================
rank        layer            what it holds
==========  ===============  ==============================================================================
0           ``core``         paths, the artifact store, statistics, devices and threads
1           ``data``         the paired-dataset protocol, embeddings, the generated world, real corpora
2           ``analysis``     the paper's method on tensors: MDS, categories, EmbSim/WinRate, zero-shot
                             scoring, retrieval, planted-truth checks (no model needed)
3           ``models``       the tiny CLIP and open_clip models, their training, prompts, embedding extraction
4           ``feature_maps`` raw dimensions, the multimodal SAE and NCL head, their store and diagnostics
5           ``case_studies`` the paper's uses of the categories: removal, gender bias, adversarial, text-to-image
5           ``companions``   SpLiCE and CLIP-InterpreT (the two layers of rank 5 never import each other)
6           ``profiles``     the ``tiny`` and ``paper`` profiles as typed, frozen configs
7           ``reporting``    chapter set-up, the claims registry and verdicts, numbers bound to the prose, plots
8           ``pipeline``     the chapters' shared steps: world -> models -> embeddings -> maps -> MDS -> categories
9           ``cli``          the ``mmlib`` command line: ``embed``, ``verify``, ``clean``
10          ``__main__``     ``python -m mmlib`` (runs :mod:`mmlib.cli`)
==========  ===============  ==============================================================================
"""

import warnings

from tqdm import TqdmWarning

__version__ = "0.1.0"

# open_clip, huggingface_hub and diffusers import tqdm.auto, which warns in a Jupyter kernel without ipywidgets and
# prints an absolute path into the chapter. The book ships no widgets (they need a CDN): the text progress bar is what
# it wants, so that one warning is silenced as soon as any part of mmlib is imported.
warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)

#: The layers, lowest first: each entry is one rank; a module may import its own rank or a lower one (within one
#: rank, only its own layer). ``profiles`` and ``pipeline`` are single modules, the others subpackages.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),
    ("data",),
    ("analysis",),
    ("models",),
    ("feature_maps",),
    ("case_studies", "companions"),
    ("profiles",),
    ("reporting",),
    ("pipeline",),
    ("cli",),
    ("__main__",),
)
