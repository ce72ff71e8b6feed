"""A tiny aMUSEd pipeline with random weights, saved as diffusers saves the real ones.

The adapter's tests need an aMUSEd folder and may not download one: this builds every part
from configs (diffusers' UVit2DModel, VQModel and AmusedScheduler; transformers'
CLIPTextModelWithProjection; a CLIP tokenizer over a small vocabulary of single characters,
built here) and saves each with `save_pretrained` into the layout of the amused-256
repository: a 16x16 grid of a 64-token codebook, 256x256 images. It renders noise, fast.
"""

from __future__ import annotations

import importlib
import json
import string
from pathlib import Path
from typing import Any, Final

import torch

CODEBOOK: Final = 64
GRID: Final = 16
HIDDEN: Final = 32
TEXT_HIDDEN: Final = 32
MAX_TEXT: Final = 77


def _tokenizer(folder: Path) -> Any:
    """A CLIP tokenizer whose vocabulary is printable characters (as words' last letters too)."""
    transformers: Any = importlib.import_module("transformers")  # untyped, as in libs.model.amused
    letters = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    words = letters + [f"{c}</w>" for c in letters] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(words)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_TEXT, pad_token="<|endoftext|>"
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_tiny_amused(folder: Path, seed: int = 0, layers: int = 1, hidden: int = HIDDEN) -> Path:
    """Writes a tiny random aMUSEd pipeline folder and answers its path.

    Args:
        folder: Where to save it (created).
        seed: Seed of the random weights.
        layers: Transformer layers; with `hidden`, what a pass costs (the e2e tests want
            passes slow enough to kill a decoder between two).
        hidden: The transformer's width.
    """
    diffusers: Any = importlib.import_module("diffusers")  # untyped, as in libs.model.amused
    transformers: Any = importlib.import_module("transformers")

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(folder / "tokenizer")
    vocab = len(tokenizer)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    bos = tokenizer.convert_tokens_to_ids("<|startoftext|>")
    text = transformers.CLIPTextModelWithProjection(
        transformers.CLIPTextConfig(
            vocab_size=vocab,
            hidden_size=TEXT_HIDDEN,
            intermediate_size=2 * TEXT_HIDDEN,
            projection_dim=TEXT_HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=MAX_TEXT,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    )
    text.save_pretrained(folder / "text_encoder")
    # Five blocks: a 16x downsampling, so 256x256 images over a 16x16 grid, as amused-256.
    vqvae = diffusers.VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 5,
        up_block_types=("UpDecoderBlock2D",) * 5,
        block_out_channels=(8, 8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=4,
        num_vq_embeddings=CODEBOOK,
        vq_embed_dim=4,
        norm_num_groups=4,
        mid_block_add_attention=False,
        lookup_from_codebook=True,
        force_upcast=True,
        sample_size=GRID * 16,
    )
    vqvae.save_pretrained(folder / "vqvae")
    mask_id = CODEBOOK + 1  # as aMUSEd: the transformer's vocabulary runs past the codebook
    transformer = diffusers.UVit2DModel(
        hidden_size=hidden,
        cond_embed_dim=TEXT_HIDDEN,
        micro_cond_encode_dim=4,
        micro_cond_embed_dim=5 * 4,
        encoder_hidden_size=TEXT_HIDDEN,
        vocab_size=mask_id + 1,
        codebook_size=CODEBOOK,
        in_channels=16,
        block_out_channels=16,
        num_res_blocks=1,
        block_num_heads=2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        sample_size=GRID,
    )
    transformer.save_pretrained(folder / "transformer")
    diffusers.AmusedScheduler(mask_token_id=mask_id).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "AmusedPipeline",
                "_diffusers_version": "0.42.1",
                "scheduler": ["diffusers", "AmusedScheduler"],
                "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "transformer": ["diffusers", "UVit2DModel"],
                "vqvae": ["diffusers", "VQModel"],
            },
            indent=2,
        )
    )
    return folder


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-amused-256")
    print(f"amused:{build_tiny_amused(target).resolve()}")
