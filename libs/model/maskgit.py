"""The MaskGIT generator: a bidirectional transformer over the 16x16 token grid, conditioned on
the caption, and the caption tokenizer (training masks: libs.modeltools.train.random_mask).

Conditioning: the caption's word tokens are a prefix of the sequence and every position attends
to every other (no causal mask), so image cells read the caption directly at every layer. A
caption is replaced by the empty caption (just the CLS token) for a fraction of training
examples, which gives the unconditional prediction that classifier-free guidance needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from libs.model.scenes import words_of


class CaptionTokenizer:
    """Word-level tokenizer over a fixed vocabulary; unknown words map to UNK.

    Every encoded caption starts with CLS, so even an empty caption (the unconditional input of
    classifier-free guidance) has one token to attend to.
    """

    PAD = 0
    UNK = 1
    CLS = 2
    SPECIALS = ("<pad>", "<unk>", "<cls>")

    def __init__(self, vocabulary: Sequence[str], max_len: int = 40) -> None:
        """Creates a tokenizer.

        Args:
            vocabulary: The known words (their order fixes the ids, after the 3 specials).
            max_len: Encoded length including CLS; longer captions are truncated.
        """
        self.vocabulary = list(vocabulary)
        self.max_len = max_len
        self._ids = {w: i + len(self.SPECIALS) for i, w in enumerate(self.vocabulary)}

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included."""
        return len(self.vocabulary) + len(self.SPECIALS)

    def encode(self, text: str) -> list[int]:
        """Caption -> ids: CLS followed by one id per word, truncated to max_len."""
        ids = [self.CLS] + [self._ids.get(w, self.UNK) for w in words_of(text)]
        return ids[: self.max_len]

    def batch(self, texts: Sequence[str], drop: Sequence[bool] | None = None) -> np.ndarray:
        """Encodes captions into a (B, max_len) int64 array padded with PAD.

        Args:
            texts: Captions.
            drop: Per caption, whether to replace it by the empty caption.

        Returns:
            The id array; the fixed width keeps a job's result independent of its batch mates.
        """
        out = np.full((len(texts), self.max_len), self.PAD, dtype=np.int64)
        for i, text in enumerate(texts):
            ids = [self.CLS] if drop is not None and drop[i] else self.encode(text)
            out[i, : len(ids)] = ids
        return out


@dataclass(frozen=True)
class MaskGITConfig:
    """Hyperparameters of the generator (stored in model.json)."""

    codebook_size: int = 512
    vocab_size: int = 128
    grid_size: int = 16
    max_text_len: int = 40
    dim: int = 256
    depth: int = 6
    heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The config as JSON-ready values."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MaskGITConfig:
        """Inverse of to_json."""
        return cls(**data)


class Block(nn.Module):
    """Pre-norm transformer block with full (bidirectional) attention."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x: (B, S, D); keep: (B, 1, 1, S) bool, False for padding keys."""
        b, s, d = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, s, d)))
        out: torch.Tensor = x + self.drop(self.mlp(self.norm2(x)))
        return out


class MaskGIT(nn.Module):
    """Predicts a distribution over codebook entries for every cell of a (partly masked) grid."""

    def __init__(self, config: MaskGITConfig) -> None:
        super().__init__()
        self.config = config
        d, g = config.dim, config.grid_size
        self.mask_token = config.codebook_size
        self.token_emb = nn.Embedding(config.codebook_size + 1, d)
        # Factorised 2-D position: a row and a column embedding, so "left"/"top" words can bind
        # to whole columns/rows of cells.
        self.row_emb = nn.Parameter(torch.zeros(g, 1, d))
        self.col_emb = nn.Parameter(torch.zeros(1, g, d))
        self.text_emb = nn.Embedding(config.vocab_size, d)
        self.text_pos = nn.Parameter(torch.zeros(config.max_text_len, d))
        self.blocks = nn.ModuleList(
            [Block(d, config.heads, config.mlp_ratio, config.dropout) for _ in range(config.depth)]
        )
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.codebook_size)
        self.apply(self._init)
        for p in (self.row_emb, self.col_emb, self.text_pos):
            nn.init.normal_(p, std=0.02)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Scores every cell.

        Args:
            tokens: (B, G*G) int64 grid, mask_token where masked.
            text: (B, L) int64 caption ids (CaptionTokenizer.batch), L <= max_text_len.

        Returns:
            (B, G*G, codebook_size) logits.
        """
        b, n = tokens.shape
        length = text.shape[1]
        pos = (self.row_emb + self.col_emb).reshape(n, -1)
        x = torch.cat([self.text_emb(text) + self.text_pos[:length], self.token_emb(tokens) + pos], dim=1)
        keep_text = text != CaptionTokenizer.PAD
        keep = torch.cat([keep_text, torch.ones(b, n, dtype=torch.bool, device=text.device)], 1)
        keep = keep[:, None, None, :]
        for block in self.blocks:
            x = block(x, keep)
        out: torch.Tensor = self.head(self.norm(x[:, length:]))
        return out
