"""GPU timings of the two model stages of PDS, with random-weight models of the real architectures.

1. **Encode**: CLIP ViT-L/14 (``openai/clip-vit-large-patch14``'s shapes: vision 1024 hidden, 24
   layers, 16 heads, patch 14, 224 px; text 768 hidden, 12 layers, 12 heads; projection 768) in fp16.
   Images/s of ``pds_hf.encode.encode_table`` (reading rows, decoding JPEG/PNG in a background thread,
   the CLIP image processor on the CPU, the forward pass, the checks) against the bare forward on
   the same batches, already preprocessed and on the GPU.
2. **Synthesize**: ``StableUnCLIPImg2ImgPipeline`` with the architecture of
   ``stabilityai/stable-diffusion-2-1-unclip-small``, fp16, 100 steps, guidance 5, noise level 10,
   native 768x768, one image per call (``pds_hf.synthesize.synthesize_unclip``): seconds per image.

Where the synthesis config comes from: the checkpoint was converted by diffusers from Stability AI's
``configs/stable-diffusion/v2-1-stable-unclip-l-inference.yaml`` (github Stability-AI/stablediffusion):
UNet ``model_channels 320, channel_mult [1, 2, 4, 4], num_res_blocks 2, attention_resolutions
[4, 2, 1], num_head_channels 64, use_linear_in_transformer, context_dim 1024, num_classes
"sequential", adm_in_channels 1536``, latent 96x96 (``image_size 96``); VAE ``ch 128, ch_mult
[1, 2, 4, 4], num_res_blocks 2, z_channels 4``; text encoder OpenCLIP ViT-H/14 text tower, penultimate
layer (CLIPTextModel: 1024 hidden, 23 layers, 16 heads, 4096 MLP); image-embedding noise augmentation
``timestep_dim 768``, ``squaredcos_cap_v2`` over 1000 steps; v-prediction, ``linear_start 0.00085,
linear_end 0.012``. diffusers' ``convert_from_ckpt.py`` maps these to the ``UNet2DConditionModel``
arguments below (``attention_head_dim = [5, 10, 20, 20]``, ``class_embed_type="projection"``,
``projection_class_embeddings_input_dim=1536``, ``sample_size=96``); the pipeline's
``model_index.json`` lists the same components (feature_extractor, image_encoder = CLIP ViT-L/14
vision, image_normalizer, image_noising_scheduler, scheduler, text_encoder, tokenizer, unet, vae).
Random weights make meaningless images at the real cost. The tokenizer is a small in-memory one
(``pds_hf.testing``); the text models keep CLIP's 49408-token embedding table so memory matches.

Usage:
    python benchmarks/gpu/bench_gpu.py              # on a CUDA machine: a few minutes
    python benchmarks/gpu/bench_gpu.py --quick      # tiny models on CPU: checks that it runs
Results are printed and appended to benchmarks/gpu/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time

from gpu_results import RESULTS, append_results, markdown_table

CLIP_VOCAB = 49408


def clip_vit_l14(quick: bool):
    """A random-weight CLIPModel with ViT-L/14's shapes (tiny with ``quick``) and its processor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from pds_hf.testing import clip_text_sizes, model_sizes, tiny_clip_tokenizer

    tokenizer = tiny_clip_tokenizer()
    if quick:
        text = clip_text_sizes(tokenizer, 32, 64)
        vision = model_sizes(32, 64, image_size=224, patch_size=14)
        projection = 32
    else:
        text = clip_text_sizes(tokenizer, 768, 3072, 12, 12, vocab_size=CLIP_VOCAB, hidden_act="quick_gelu")
        vision = model_sizes(1024, 4096, 24, 16, image_size=224, patch_size=14, hidden_act="quick_gelu")
        projection = 768
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection)).eval()
    return model, CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer)


def unclip_small(quick: bool, device, dtype):
    """A random-weight StableUnCLIPImg2ImgPipeline with stable-diffusion-2-1-unclip-small's architecture."""
    import torch

    from pds_hf.testing import clip_text_sizes, model_sizes, random_unclip_pipeline, tiny_clip_tokenizer

    tokenizer = tiny_clip_tokenizer()
    if quick:
        embed, channels, heads, context, latent = 32, (32, 64, 64, 64), (2, 4, 4, 4), 32, 8
        text = clip_text_sizes(tokenizer, 32, 64, projection_dim=32)
        vision = model_sizes(32, 64, 1, image_size=224, patch_size=14, projection_dim=embed)
        vae_channels = (32, 32, 64, 64)
    else:
        embed, channels, heads, context, latent = 768, (320, 640, 1280, 1280), (5, 10, 20, 20), 1024, 96
        text = clip_text_sizes(
            tokenizer, 1024, 4096, 23, 16, vocab_size=CLIP_VOCAB, projection_dim=512, hidden_act="gelu"
        )
        vision = model_sizes(
            1024, 4096, 24, 16, image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu"
        )
        vae_channels = (128, 256, 512, 512)
    torch.manual_seed(0)
    # Built directly on the device: random init of ~1.3B parameters on a CPU takes minutes.
    with torch.device(device):
        pipe = random_unclip_pipeline(
            tokenizer,
            text=text,
            vision=vision,
            embedding_dim=embed,
            unet_channels=channels,
            attention_heads=heads,
            cross_attention_dim=context,
            latent_size=latent,
            vae_channels=vae_channels,
            layers_per_block=2,
            clip_sample=False,
        )
    return pipe.to(device, dtype), embed


def sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def bench_encode(args, device, dtype):
    from bench_encode import bare_forward, caption_batches, image_dataset

    from pds_hf.encode import TransformersEncoder, encode_table
    from pds_hf.inputs import load_images, read_pairs

    model, processor = clip_vit_l14(args.quick)
    encoder = TransformersEncoder(model, processor, device=device, dtype=dtype)
    ds = image_dataset(args.images)
    table = read_pairs(ds)
    rows = table.image_rows
    batches = []
    for start in range(0, len(rows), args.batch_size):
        images = load_images(ds, "image", rows[start : start + args.batch_size])
        batches.append(processor(images=images, return_tensors="pt")["pixel_values"].to(device, dtype))

    text_batches = caption_batches(processor, table.texts, args.batch_size, device)

    def bare():
        bare_forward(model, batches, text_batches)
        sync(device)

    def full():
        encode_table(encoder, ds, table, batch_size=args.batch_size)
        sync(device)

    bare()
    timings = {}
    for name, fn in (("bare", bare), ("full", full), ("bare", bare), ("full", full)):
        start = time.perf_counter()
        fn()
        timings[name] = min(timings.get(name, float("inf")), time.perf_counter() - start)
    n = len(rows)
    return [
        [
            "encode: bare forward (preprocessed, on device)",
            f"{n / timings['bare']:.1f} images/s",
            f"{timings['bare']:.2f} s for {n} images + {len(table.texts)} captions",
        ],
        [
            "encode: encode_table (everything)",
            f"{n / timings['full']:.1f} images/s",
            f"{timings['full']:.2f} s for the same; overhead {(timings['full'] / timings['bare'] - 1) * 100:.0f}%",
        ],
    ]


def bench_synthesis(args, device, dtype):
    import numpy as np
    import torch

    from pds_hf.synthesize import synthesize_unclip

    build = time.perf_counter()
    pipe, embed = unclip_small(args.quick, device, dtype)
    sync(device)
    build = time.perf_counter() - build
    rng = np.random.default_rng(0)
    prompts = [f"a photo of a dog on a beach, number {i}" for i in range(args.synth_images)]
    embeds = rng.normal(size=(args.synth_images, embed)).astype(np.float32)
    steps = 2 if args.quick else 100
    synthesize_unclip(pipe, embeds[:1], prompts[:1], num_inference_steps=2, image_size=224)  # warm-up
    sync(device)
    start = time.perf_counter()
    synthesize_unclip(
        pipe,
        embeds,
        prompts,
        num_inference_steps=steps,
        guidance_scale=5.0,
        noise_level=10,
        batch_size=1,
        image_size=224,
    )
    sync(device)
    seconds = (time.perf_counter() - start) / args.synth_images
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    params = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    peak = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device == "cuda" else ""
    return [
        [
            f"synthesize: unCLIP {side}x{side}, {steps} steps, guidance 5, batch 1",
            f"{seconds:.2f} s/image",
            f"UNet {params:.0f}M parameters, built in {build:.0f} s{peak}",
        ]
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models on CPU (a smoke run)")
    parser.add_argument("--images", type=int, help="images to encode (default 1024; 8 with --quick)")
    parser.add_argument("--batch-size", type=int, help="encode batch (default 128; 4 with --quick)")
    parser.add_argument("--synth-images", type=int, help="images to synthesize (default 3; 1 with --quick)")
    parser.add_argument("--skip", choices=["encode", "synthesis"], help="leave one stage out")
    args = parser.parse_args()
    args.images = args.images or (8 if args.quick else 1024)
    args.batch_size = args.batch_size or (4 if args.quick else 128)
    args.synth_images = args.synth_images or (1 if args.quick else 3)

    import torch
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    if args.quick:
        device, dtype = "cpu", torch.float32
    elif not torch.cuda.is_available():
        print(
            "bench_gpu: no CUDA GPU is visible to torch, so there is nothing to time. Run it on a GPU "
            "machine, or pass --quick for a tiny CPU run that checks the script works."
        )
        return 0
    else:
        device, dtype = "cuda", torch.float16
    rows = []
    if args.skip != "encode":
        rows += bench_encode(args, device, dtype)
        print(rows[-2:], flush=True)
    if args.skip != "synthesis":
        rows += bench_synthesis(args, device, dtype)
        print(rows[-1], flush=True)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none (CPU, --quick: tiny models, not real timings)"
    body = markdown_table(["stage", "throughput", "detail"], rows)
    body += (
        f"\n\nGPU: {gpu}; torch {torch.__version__}, CUDA {torch.version.cuda}; dtype {str(dtype).split('.')[-1]}; "
        f"{args.images} images of 500x375 (half JPEG, half PNG), batch {args.batch_size}."
    )
    append_results("GPU stages" + (" (--quick smoke run)" if args.quick else ""), body, path=RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
