"""The ``paper`` profile's generator: a real unCLIP-style diffusers pipeline conditioned on CLIP image embeddings.

Stable unCLIP (``StableUnCLIPImg2ImgPipeline``, e.g. ``stabilityai/stable-diffusion-2-1-unclip-small``) generates
an image from a CLIP image embedding passed as ``image_embeds``. Its image encoder is OpenAI's CLIP ViT-L/14,
i.e. open_clip ``ViT-L-14`` / ``openai``: embeddings from that open_clip model (unnormalised, as
``encode_image`` returns them) live in the pipeline's conditioning space, so a feature map trained on them can
edit what the pipeline sees ([ours]: the chapter's ``paper`` branch trains its SAE on that model's embeddings).

:class:`UnCLIPDecoder` gives the pipeline the interface of the tiny profile's
:class:`mmlib.case_studies.t2i.tiny_decoder.EmbeddingDecoder` (``embed_dim``, ``check_conditioning``,
``sample(z, seeds=...)``), so :func:`mmlib.case_studies.t2i.editing.edit_sweep` runs unchanged on either. Offline,
:func:`load_unclip_pipeline` fails at once with a clear message; the code path is tested offline, and run by the
``paper`` profile's smoke run, on :func:`tiny_random_unclip`: a randomly initialised tiny pipeline of the same classes,
built from config (:func:`save_tiny_random_unclip` writes it as a local folder that :func:`load_unclip_pipeline` reads).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmlib.core.errors import InputError
from mmlib.models.clip import WeightsUnavailableError

__all__ = ["UNCLIP_MODEL", "UNCLIP_CLIP", "load_unclip_pipeline", "unclip_embed_dim", "unclip_generate",
           "UnCLIPDecoder", "tiny_random_unclip", "save_tiny_random_unclip"]

#: The default real pipeline, and the open_clip model whose image embeddings it is conditioned on.
UNCLIP_MODEL = "stabilityai/stable-diffusion-2-1-unclip-small"
UNCLIP_CLIP = ("ViT-L-14", "openai")


def load_unclip_pipeline(model_id: str = UNCLIP_MODEL, device: str = "cpu", dtype: torch.dtype | None = None) -> Any:
    """Load a ``StableUnCLIPImg2ImgPipeline`` (downloads the weights unless cached).

    Raises
    ------
    WeightsUnavailableError
        when the weights cannot be loaded (offline and not cached, or an unknown id), with what to do.
    """
    from diffusers import StableUnCLIPImg2ImgPipeline
    try:
        pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(model_id, torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError) as err:
        raise WeightsUnavailableError(
            f"could not load the unCLIP pipeline {model_id!r}: {err}\nThe 'paper' profile of chapter 08 needs "
            "these weights (several GB): run it on a machine with internet access (the book's Colab link) or pass "
            "a local folder saved with pipe.save_pretrained(). The 'tiny' profile needs no download.") from err
    return pipe.to(device)


def _tiny_tokenizer(folder: Path) -> tuple[Any, int]:
    """A CLIP BPE tokenizer over a handful of words and the letters (written to ``folder``), and its vocabulary size."""
    from transformers import CLIPTokenizer
    words = ["a", "photo", "of", "red", "blue"]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{f"{w}</w>": i + 2 for i, w in enumerate(words)}}
    vocab.update({c: len(vocab) + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")})
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77), len(vocab)


def tiny_random_unclip(embed_dim: int = 16, seed: int = 0, image_size: int = 8) -> Any:
    """A randomly initialised tiny ``StableUnCLIPImg2ImgPipeline`` conditioned on CLIP embeddings of ``embed_dim``.

    The same classes as Stable unCLIP (image normaliser, noising scheduler, UNet with a projection class embedding of
    ``2 * embed_dim``, VAE, CLIP text and vision encoders) at tiny sizes: it generates ``image_size`` x
    ``image_size`` images (an even size >= 8; 8 by default) in milliseconds on a CPU. It produces noise, not
    pictures: it exercises the code path (tests, the smoke run), nothing more.
    """
    if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 2 or embed_dim % 2:
        raise InputError(f"embed_dim must be an even integer >= 2, got {embed_dim!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8 or image_size % 2:
        raise InputError(f"image_size must be an even integer >= 8 (the UNet halves it once), got {image_size!r}")
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )
    torch.manual_seed(seed)
    d = embed_dim
    with tempfile.TemporaryDirectory() as folder:
        tokenizer, vocab_size = _tiny_tokenizer(Path(folder))
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size=16, size=16),
        image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=d, projection_dim=d, num_hidden_layers=1, num_attention_heads=2, image_size=16,
            intermediate_size=20, patch_size=8)),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=d),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tokenizer,
        text_encoder=CLIPTextModel(CLIPTextConfig(
            bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=d, projection_dim=d, intermediate_size=20,
            num_attention_heads=2, num_hidden_layers=1, vocab_size=vocab_size)),
        unet=UNet2DConditionModel(
            sample_size=image_size, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(16, 32), attention_head_dim=(2, 4),
            norm_num_groups=8, class_embed_type="projection", projection_class_embeddings_input_dim=2 * d,
            cross_attention_dim=d, layers_per_block=1, use_linear_projection=True),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1),
        vae=AutoencoderKL(block_out_channels=(16,), norm_num_groups=8, latent_channels=4),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_random_unclip(folder: str | os.PathLike, embed_dim: int = 16, seed: int = 0,
                            image_size: int = 8) -> Path:
    """Write :func:`tiny_random_unclip` as a local pipeline folder (``save_pretrained``, safetensors) and return it."""
    folder = Path(os.fspath(folder))
    tiny_random_unclip(embed_dim, seed, image_size).save_pretrained(str(folder), safe_serialization=True)
    return folder


def unclip_embed_dim(pipe: Any) -> int:
    """Dimension of the CLIP image embeddings the pipeline is conditioned on (its image normaliser's width)."""
    return int(pipe.image_normalizer.mean.shape[-1])


@torch.inference_mode()
def unclip_generate(pipe: Any, image_embeds: torch.Tensor | np.ndarray, prompt: str = "", steps: int = 20,
                    guidance: float = 1.0, noise_level: int = 0, seeds: np.ndarray | list[int] | None = None,
                    batch_size: int = 8) -> np.ndarray:
    """Images generated by an unCLIP pipeline from CLIP image embeddings (e.g. edited ones).

    Parameters
    ----------
    pipe : StableUnCLIPImg2ImgPipeline
    image_embeds : (n, d)
        Unnormalised CLIP image embeddings of the pipeline's image encoder (``d = unclip_embed_dim(pipe)``).
    prompt : str
        Text prompt given to the pipeline's text encoder as well (``""``: the image embedding alone decides).
    steps : int
        Denoising steps.
    guidance : float
        Classifier-free guidance (``> 1`` enables it).
    noise_level : int
        Noise added to the image embedding by the pipeline (0: none).
    seeds : (n,) ints, optional
        One generator seed per image (default ``0..n-1``).

    Returns
    -------
    uint8 array ``(n, H, W, 3)``.

    Raises
    ------
    ValueError
        for embeddings of the wrong size or shape, non-finite values, or a bad ``steps``/``guidance``.
    """
    z = torch.as_tensor(image_embeds)
    d = unclip_embed_dim(pipe)
    if z.ndim != 2:
        raise InputError(f"image_embeds must be a 2-D (n, d) tensor, got shape {tuple(z.shape)}")
    if z.shape[1] != d:
        raise InputError(f"image_embeds have dimension {z.shape[1]} but the pipeline is conditioned on d={d} "
                         f"(expected {d}, got {z.shape[1]}): embed with the pipeline's CLIP model ({UNCLIP_CLIP})")
    if not bool(torch.isfinite(z.float()).all()):
        raise InputError("image_embeds contain NaN or Inf")
    if steps < 1 or not (guidance >= 0 and math.isfinite(guidance)):
        raise InputError(f"steps must be >= 1 and guidance a finite number >= 0, got {steps} and {guidance}")
    seeds = np.arange(len(z)) if seeds is None else np.asarray(seeds)
    if seeds.shape != (len(z),):
        raise InputError(f"{len(seeds)} seeds for {len(z)} embeddings")
    param = next(pipe.unet.parameters())
    out = []
    for start in range(0, len(z), batch_size):
        chunk = z[start:start + batch_size].to(param.device, param.dtype)
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[start:start + batch_size]]
        result = pipe(prompt=[prompt] * len(chunk), image_embeds=chunk, num_inference_steps=steps,
                      guidance_scale=guidance, noise_level=noise_level, generator=generators, output_type="np")
        out.append(np.clip(np.round(np.asarray(result.images) * 255), 0, 255).astype(np.uint8))
    return np.concatenate(out) if out else np.zeros((0, 0, 0, 3), np.uint8)


class UnCLIPDecoder:
    """An unCLIP pipeline behind the :class:`mmlib.case_studies.t2i.editing.Generator` interface.

    Attributes
    ----------
    pipe : StableUnCLIPImg2ImgPipeline
    embed_dim : int
    prompt : str
        Passed to the pipeline's text encoder with every embedding (default ``""``).
    noise_level : int
    """

    def __init__(self, pipe: Any, prompt: str = "", noise_level: int = 0) -> None:
        self.pipe, self.prompt, self.noise_level = pipe, prompt, int(noise_level)
        self.embed_dim = unclip_embed_dim(pipe)

    def check_conditioning(self, z: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Validate embeddings ``(n, d)`` (same errors as :func:`unclip_generate`)."""
        z = torch.as_tensor(z)
        if z.ndim != 2 or z.shape[1] != self.embed_dim:
            raise InputError(f"conditioning embeddings must be (n, {self.embed_dim}), got shape {tuple(z.shape)} "
                             f"(expected d={self.embed_dim}, got {z.shape[-1] if z.ndim else 'a scalar'})")
        return z.float()

    def sample(self, z: torch.Tensor | np.ndarray, *, seeds: np.ndarray | None = None, steps: int = 20,
               guidance: float = 1.0) -> np.ndarray:
        """uint8 images ``(n, H, W, 3)`` of embeddings ``(n, d)``, one seeded generator per row."""
        z = self.check_conditioning(z)
        return unclip_generate(self.pipe, z, self.prompt, steps=steps, guidance=guidance,
                               noise_level=self.noise_level, seeds=seeds)
