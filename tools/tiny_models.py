"""Tiny random stand-ins for every model GDT loads (docs/method.md §1), written in the hub repositories' own
layouts and folder names, so `gdt.py --models-dir DIR` loads them through the same code as the real models:

    python tools/tiny_models.py --out DIR      # DIR/stable-diffusion-v1-5, DIR/control_v11f1p_sd15_depth, ...
    python gdt.py --models-dir DIR --tiny ...

Shapes chosen so that they run in well under a second at 64-128 px with 2 steps on CPU.
The caption model is a tiny BLIP (BLIP-base layout) whichever captioner is asked for: a tiny BLIP-2
needs a tiny OPT and Q-Former for no extra coverage, and both load through the same Auto class.
"""
import os
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tools/ is not a package
import data  # noqa: E402
import gdt  # noqa: E402

TINY_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "car", "street", "road",
              "on", "the", "with", "city", "building", "trees", "parked", "driving", "down", "of"]


def clip_tokenizer():
    """A byte-level CLIP tokenizer built without the hub: a vocab dict and no merges (given file paths, the
    constructor silently builds an empty vocabulary)."""
    from transformers import CLIPTokenizer
    # GPT-2 / CLIP byte-to-symbol table: printable bytes map to themselves, the rest to 256 + n
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in printable]
    symbols = [chr(b) for b in printable] + [chr(256 + n) for n in range(len(extra))]
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def ip_adapter_state_dict(unet, image_embed_dim, tokens=4):
    """An `ip-adapter_sd15.bin`-shaped state dict for `unet`: the image projection to `tokens`
    context tokens and one to_k_ip / to_v_ip pair per cross-attention layer (keys 1, 3, 5, ...:
    the numbering diffusers expects)."""
    dim = unet.config.cross_attention_dim
    image_proj = {"proj.weight": torch.randn(dim * tokens, image_embed_dim) * 0.05,
                  "proj.bias": torch.zeros(dim * tokens), "norm.weight": torch.ones(dim), "norm.bias": torch.zeros(dim)}
    ip_adapter, key = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        hidden = unet.get_submodule(name[: -len(".processor")]).to_k.out_features
        ip_adapter[f"{key}.to_k_ip.weight"] = torch.randn(hidden, dim) * 0.05
        ip_adapter[f"{key}.to_v_ip.weight"] = torch.randn(hidden, dim) * 0.05
        key += 2
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def save_tiny_sd(paths):
    """Tiny SD 1.5 (UNet, VAE, CLIP text encoder + tokenizer, UniPC), ControlNet, IP-Adapter (CLIP
    vision encoder + weights) and LCM-LoRA, saved in hub layouts at paths["sd_model"], ... (gdt.gdt_model_paths)."""
    from diffusers import (AutoencoderKL, ControlNetModel, StableDiffusionPipeline, UNet2DConditionModel,
                           UniPCMultistepScheduler)
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)
    tokenizer = clip_tokenizer()
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(8, 16, 16, 16), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        norm_num_groups=8)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                        num_hidden_layers=2, vocab_size=len(tokenizer), max_position_embeddings=77,
                                        bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1))
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=37, projection_dim=32,
                                                            num_attention_heads=4, num_hidden_layers=2,
                                                            image_size=32, patch_size=8))
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                            scheduler=UniPCMultistepScheduler(steps_offset=1), safety_checker=None,
                            feature_extractor=CLIPImageProcessor(size=32, crop_size=32),
                            requires_safety_checker=False).save_pretrained(paths["sd_model"])
    ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32, 32)).save_pretrained(
        paths["controlnet"])
    weight = os.path.join(paths["ip_adapter"], paths["ip_adapter_weight"])
    vision.save_pretrained(os.path.join(os.path.dirname(weight), "image_encoder"))
    torch.save(ip_adapter_state_dict(unet, vision.config.projection_dim), weight)
    save_tiny_lcm_lora(paths["lcm_lora"], unet)


LCM_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                    "conv2", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv")


def save_tiny_lcm_lora(folder, unet, rank=8, alpha=4.0, seed=0):
    """A random LoRA for the tiny UNet in the layout of `latent-consistency/lcm-lora-sdv1-5`'s file: kohya keys
    (`lora_unet_<module path, '_' for '.'>.lora_down.weight`, `.lora_up.weight`, `.alpha`), UNet only, fp16,
    alpha != rank (the real one: rank 64, alpha 8), on the layers the LCM-LoRA adapts: attention, feed-forward,
    resnet and sampler convolutions, time-embedding projections. A convolution's down matrix has its kernel,
    its up matrix is 1x1. Its up matrices are random, not zero, so it changes the UNet. Returns the state dict."""
    from safetensors.torch import save_file
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        if not name.endswith(LCM_LORA_TARGETS) or not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        key = "lora_unet_" + name.replace(".", "_")
        if isinstance(module, torch.nn.Linear):
            down, up = (rank, module.in_features), (module.out_features, rank)
        else:
            down, up = (rank, module.in_channels, *module.kernel_size), (module.out_channels, rank, 1, 1)
        state[key + ".lora_down.weight"] = torch.randn(down, generator=generator) / down[1] ** 0.5
        state[key + ".lora_up.weight"] = 0.05 * torch.randn(up, generator=generator)
        state[key + ".alpha"] = torch.tensor(alpha)
    state = {k: v.half().contiguous() for k, v in state.items()}
    os.makedirs(folder, exist_ok=True)
    save_file(state, os.path.join(folder, "pytorch_lora_weights.safetensors"))
    return state


def save_tiny_depth(folder):
    """Tiny Depth-Anything (DINOv2 backbone of 4 layers feeding the 4-level DPT head) + processor."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor
    backbone = Dinov2Config(hidden_size=48, num_hidden_layers=4, num_attention_heads=4, intermediate_size=96,
                            patch_size=14, image_size=56, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=48, neck_hidden_sizes=[8, 16, 24, 32],
                                 fusion_hidden_size=16, head_hidden_size=8, patch_size=14)
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      resample=3).save_pretrained(folder)


def save_tiny_blip(folder):
    """Tiny BLIP captioner (BLIP-base layout: vision encoder + text decoder, BERT tokenizer)."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(TINY_WORDS)}, model_max_length=32, bos_token="[DEC]")
    text = dict(vocab_size=len(TINY_WORDS), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=32, bos_token_id=5, pad_token_id=0, sep_token_id=3,
                eos_token_id=3)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=16)
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=32)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)


MARKER = "TINY_MODELS"  # in a folder this script writes: only such folders are ever replaced


def write_models(root):
    """Write every tiny model under `root` in the folders `gdt.py --models-dir root` reads
    (gdt.gdt_model_paths: root/stable-diffusion-v1-5, root/control_v11f1p_sd15_depth, ...), seeded, so
    the same files every time; a finished folder is kept. A model folder this script did not write (real
    downloaded models) is never replaced: ValueError. Returns gdt.gdt_model_paths(root)."""
    root = os.path.abspath(root)
    paths = gdt.gdt_model_paths(root)
    blip2 = gdt.gdt_model_paths(root, captioner="blip2")["caption_model"]
    blip = gdt.gdt_model_paths(root, captioner="blip")["caption_model"]
    folders = [paths[k] for k in gdt.GDT_MODELS] + [blip, blip2]
    present = [f for f in folders if os.path.exists(f)]
    if present and not Path(root, MARKER).exists():
        raise ValueError(f"{root} already holds {', '.join(map(os.path.basename, present))}, not written by "
                         f"tools/tiny_models.py (no {MARKER} file there): real models are never replaced; pass "
                         f"another --out for the tiny ones")
    if Path(root, "complete").exists() and all(map(os.path.isdir, folders)):
        return paths
    Path(root).mkdir(parents=True, exist_ok=True)
    Path(root, MARKER).write_text("random tiny stand-ins of GDT's models, written by tools/tiny_models.py\n")
    Path(root, "complete").unlink(missing_ok=True)
    for folder in folders:  # an interrupted or older write of ours: start again
        shutil.rmtree(folder, ignore_errors=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        save_tiny_sd(paths)
        save_tiny_depth(paths["depth_model"])
        save_tiny_blip(blip)
    shutil.copytree(blip, blip2)  # the tiny BLIP stands in for BLIP-2 as well (one Auto class loads both)
    Path(root, "complete").touch()
    return paths


def main(argv=None):
    parser = data.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="folder to fill (DIR for gdt.py --models-dir DIR)")
    for name, path in write_models(parser.parse_args(argv).out).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    data.run_cli(main, "tiny_models.py")
