"""Tiny random-weight models built from configs, for tests and for ``pds-hf distill --demo``.

Nothing here downloads anything: the tokenizer's vocabulary is made in memory, and every model is
built from a config with seeded random weights, as diffusers' fast tests do. The shapes match the
real pipeline (a CLIP with projected features; a StableUnCLIPImg2Img pipeline whose UNet takes those
features as ``image_embeds``), so every code path runs, in milliseconds, with meaningless outputs.

Example:
    ```py
    >>> from pds_hf.testing import tiny_clip_encoder, tiny_unclip_pipeline
    >>> encoder = tiny_clip_encoder()
    >>> encoder.encode_texts(["a red circle"]).shape
    (1, 32)
    >>> pipe = tiny_unclip_pipeline()  # makes 32x32 images from 32-d image embeddings
    ```
"""

from __future__ import annotations

import contextlib
import os

TINY_EMBED_DIM = 32


def _byte_alphabet() -> list[str]:
    # CLIP's byte-level BPE maps every byte to a printable character; bytes that are not printable
    # themselves are shifted past 255.
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1))
    printable |= set(range(ord("®"), ord("ÿ") + 1))
    chars, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + shifted))
            shifted += 1
    return chars


def tiny_clip_tokenizer():
    """A CLIP tokenizer with a character-level vocabulary (514 tokens), built in memory."""
    from transformers import CLIPTokenizer

    chars = _byte_alphabet()
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def model_sizes(
    hidden_size: int = 32,
    intermediate_size: int = 37,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    **extra,
) -> dict:
    """The sizes a transformers text or vision config takes, as keyword arguments: the tiny models' by default.

    Args:
        hidden_size, intermediate_size, num_hidden_layers, num_attention_heads: the transformer's shape.
        **extra: any other config keys (``image_size``, ``patch_size``, ``projection_dim``, ``hidden_act``, ...).

    Example:
        ```py
        >>> from transformers import CLIPVisionConfig
        >>> from pds_hf.testing import model_sizes
        >>> CLIPVisionConfig(**model_sizes(image_size=32, patch_size=4)).num_hidden_layers
        2
        ```
    """
    return dict(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        **extra,
    )


def clip_text_sizes(tokenizer, *sizes: int, **extra) -> dict:
    """:func:`model_sizes` for a CLIP text tower that reads ``tokenizer``'s tokens: its vocabulary size (unless
    ``vocab_size`` is given), its maximum length as the position count, and its start, end and padding token ids.

    Example:
        ```py
        >>> from pds_hf.testing import clip_text_sizes, tiny_clip_tokenizer
        >>> clip_text_sizes(tiny_clip_tokenizer(), 64, 128, 2, 4)["vocab_size"]
        514
        ```
    """
    ids = dict(
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model_sizes(*sizes, **{**ids, **extra})


def tiny_distilled_set(*, record: dict | None = None):
    """Three pairs in the schema ``pds_hf.distill`` writes (8x8 images, 4-d embeddings), for tests of what reads,
    saves or publishes a distilled set; ``record`` (a run record) is carried in its info when given.

    Example:
        ```py
        >>> from pds_hf.testing import tiny_distilled_set
        >>> list(tiny_distilled_set()["caption"])
        ['a red circle', 'a blue square', 'a green cross']
        ```
    """
    import numpy as np
    from datasets import Dataset
    from PIL import Image

    from .schema import output_features, run_record_info

    rng = np.random.default_rng(0)
    features = output_features(4)
    columns = {
        "image": [Image.new("RGB", (8, 8), (60 * i, 0, 0)) for i in range(3)],
        "caption": ["a red circle", "a blue square", "a green cross"],
        "image_embedding": rng.standard_normal((3, 4)).astype(np.float32),
        "text_embedding": rng.standard_normal((3, 4)).astype(np.float32),
        "support": [5, 0, 2],
        "image_cluster": [0, 1, 2],
        "text_cluster": [2, 0, 1],
        "source_row": [7, 8, 9],
    }
    info = None if record is None else run_record_info(record, features)
    return Dataset.from_dict({name: columns[name] for name in features}, features=features, info=info)


def local_process_env(rank: int, world_size: int, port: int, **extra: str) -> dict[str, str]:
    """The environment of process ``rank`` of a ``world_size``-process ``torch.distributed`` group on this machine,
    as ``torchrun`` sets it, on the CPU only: this process's environment plus the rank variables and ``extra``.

    Example:
        ```py
        >>> import subprocess, sys
        >>> from pds_hf.testing import local_process_env
        >>> procs = [subprocess.Popen([sys.executable, "job.py"], env=local_process_env(rank, 2, 29500))
        ...          for rank in range(2)]
        ```
    """
    ranks = dict(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        CUDA_VISIBLE_DEVICES="",
    )
    return {**os.environ, **ranks, **extra}


def run_local_group(args: list[str], world: int, *, timeout: float, **extra: str) -> list[str]:
    """Run the command line ``args`` as the ``world`` processes of a ``torch.distributed`` group on this machine,
    each with :func:`local_process_env` (a free port) plus ``extra``, and wait for them all.

    Args:
        args: the command each process runs, e.g. ``[sys.executable, "job.py"]``.
        world: how many processes (ranks 0 to ``world - 1``; with 1, ``WORLD_SIZE=1``: a single process).
        timeout: seconds to wait for each process.
        extra: more environment variables, the same in every process.

    Returns:
        What each process printed (stdout and stderr together), rank by rank.

    Raises:
        RuntimeError: a process exited with an error; the message names each such rank, its exit status and
            the last 3,000 characters of its output.
        subprocess.TimeoutExpired: a process was still running after ``timeout`` seconds (all are killed).

    Example:
        ```py
        >>> import sys
        >>> from pds_hf.testing import run_local_group
        >>> outputs = run_local_group([sys.executable, "job.py"], 2, timeout=60, OMP_NUM_THREADS="1")
        ```
    """
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = [
        subprocess.Popen(
            args,
            env=local_process_env(rank, world, port, **extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(world)
    ]
    outputs, failed = [], []
    for rank, proc in enumerate(procs):
        try:
            outputs.append(proc.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise
        if proc.returncode:
            failed.append(f"rank {rank} exited {proc.returncode}:\n{outputs[-1][-3000:]}")
    if failed:
        raise RuntimeError("\n".join(failed))
    return outputs


@contextlib.contextmanager
def _seeded(seed: int):
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def tiny_clip_model(seed: int = 0, *, image_size: int = 32):
    """A 2-layer ``CLIPModel`` (hidden 32, projection 32) with seeded random weights, and its processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = tiny_clip_tokenizer()
    text = clip_text_sizes(tokenizer)
    vision = model_sizes(image_size=image_size, patch_size=4)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=TINY_EMBED_DIM)
    with _seeded(seed):
        model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return model, processor


def tiny_clip_encoder(seed: int = 0):
    """:class:`~pds_hf.encode.TransformersEncoder` over :func:`tiny_clip_model`; 32-d features."""
    from .encode import TransformersEncoder

    model, processor = tiny_clip_model(seed)
    encoder = TransformersEncoder(model, processor)
    encoder.name = "pds-hf/tiny-random-clip"
    # Built from a fixed config and seed, so its outputs are reproducible and may be cached.
    encoder.fingerprint = f"pds-hf/tiny-random-clip:seed={seed}"
    return encoder


def save_tiny_clip(folder, seed: int = 0) -> str:
    """Write :func:`tiny_clip_model` and its processor to ``folder``, to be loaded by path like a Hub id.

    For what takes model ids only (``DistillBuilder``'s config, the CLI): a local folder stands in for the Hub.
    """
    model, processor = tiny_clip_model(seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def save_tiny_unclip(folder, seed: int = 0) -> str:
    """Write :func:`tiny_unclip_pipeline` to ``folder``, to be loaded by path like a Hub id."""
    tiny_unclip_pipeline(seed).save_pretrained(folder)
    return str(folder)


def random_unclip_pipeline(
    tokenizer,
    *,
    text: dict,
    vision: dict,
    embedding_dim: int,
    unet_channels: tuple[int, ...],
    attention_heads: tuple[int, ...],
    cross_attention_dim: int,
    latent_size: int,
    vae_channels: tuple[int, ...],
    layers_per_block: int = 1,
    feature_extractor=None,
    clip_sample: bool = True,
):
    """A ``StableUnCLIPImg2ImgPipeline`` of the given sizes with random weights (from torch's current seed), wired
    like ``stabilityai/stable-diffusion-2-1-unclip-small``: its schedulers (v-prediction DDIM; squared-cosine
    noising of the image embedding), a fresh image normaliser, and a UNet conditioned on the noised image
    embedding and its noise level (``2 * embedding_dim`` inputs).

    Used by :func:`tiny_unclip_pipeline` and by ``benchmarks/gpu/bench_gpu.py`` (the real architecture), so both
    build and wire the pipeline the same way.

    Args:
        tokenizer: the CLIP tokenizer of the text encoder.
        text, vision: ``CLIPTextConfig`` and ``CLIPVisionConfig`` keywords (see :func:`clip_text_sizes` and
            :func:`model_sizes`); the vision tower projects to ``embedding_dim``.
        embedding_dim: size of the image embeddings the UNet is conditioned on.
        unet_channels: the UNet's block widths; every block but the last has cross-attention.
        attention_heads: the UNet's attention head size, one per block.
        cross_attention_dim: the width of the text encoder's states the UNet attends to.
        latent_size: the latents' side; the VAE's images are ``2 ** (len(vae_channels) - 1)`` times larger.
        vae_channels: the VAE's block widths.
        layers_per_block: ResNet layers per block, in the UNet and the VAE.
        feature_extractor: the pipeline's image processor (default: ``CLIPImageProcessor()``).
        clip_sample: the DDIM scheduler's ``clip_sample``.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    text_encoder = CLIPTextModel(CLIPTextConfig(**text))
    # Only used when the pipeline is given an image instead of image_embeds; required all the same.
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision))
    cross_blocks = len(unet_channels) - 1
    unet = UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=layers_per_block,
        block_out_channels=unet_channels,
        down_block_types=("CrossAttnDownBlock2D",) * cross_blocks + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * cross_blocks,
        attention_head_dim=attention_heads,
        cross_attention_dim=cross_attention_dim,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=2 * embedding_dim,
        use_linear_projection=True,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=vae_channels,
        layers_per_block=layers_per_block,
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
        norm_num_groups=32,
        sample_size=latent_size * 2 ** (len(vae_channels) - 1),
    )
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=feature_extractor if feature_extractor is not None else CLIPImageProcessor(),
        image_encoder=image_encoder.eval(),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=embedding_dim),
        image_noising_scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2"),
        tokenizer=tokenizer,
        text_encoder=text_encoder.eval(),
        unet=unet.eval(),
        scheduler=DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            prediction_type="v_prediction",
            set_alpha_to_one=False,
            steps_offset=1,
            clip_sample=clip_sample,
        ),
        vae=vae.eval(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_unclip_pipeline(seed: int = 0, *, embedding_dim: int = TINY_EMBED_DIM):
    """A ``StableUnCLIPImg2ImgPipeline`` with tiny random components; 32x32 images.

    Its UNet takes ``image_embeds`` of size ``embedding_dim`` (the real one takes 768, ViT-L/14's).
    """
    from transformers import CLIPImageProcessor

    tokenizer = tiny_clip_tokenizer()
    with _seeded(seed):
        pipe = random_unclip_pipeline(
            tokenizer,
            text=clip_text_sizes(tokenizer, projection_dim=embedding_dim),
            vision=model_sizes(num_hidden_layers=1, image_size=32, patch_size=4, projection_dim=embedding_dim),
            embedding_dim=embedding_dim,
            unet_channels=(32, 64),
            attention_heads=(2, 4),
            cross_attention_dim=32,
            latent_size=16,
            vae_channels=(32, 64),
            feature_extractor=CLIPImageProcessor(crop_size={"height": 32, "width": 32}, size={"shortest_edge": 32}),
        )
    pipe.register_to_config(_name_or_path="pds-hf/tiny-random-unclip")
    pipe.fingerprint = f"pds-hf/tiny-random-unclip:seed={seed}:dim={embedding_dim}"
    return pipe
