"""The SASRec-style user encoder: a causal transformer over a user's item embeddings.

As in the reference and in RecBole: learned positions, LayerNorm after each residual
(post-LN), a feed-forward of width 4d. The two differ in small things that
``UserEncoderConfig.variant`` picks: the reference's bias-free attention projections,
ReLU, LayerNorm eps 1e-6 and xavier-normal init, or RecBole's biased projections, GELU,
eps 1e-12 and normal(0, 0.02) init. Sequences are left-padded; a position attends to
itself and earlier non-padding positions, and the last position's output is the user
vector.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from iisan.config import UserEncoderConfig

MASKED = -1e9  # additive mask; finite so all-padding rows stay defined (and are ignored)


@dataclass(frozen=True)
class Variant:
    bias: bool  # in the attention projections
    activation: type[nn.Module]
    eps: float  # of every LayerNorm
    init: Callable[[torch.Tensor], torch.Tensor]  # of every Linear and Embedding weight


VARIANTS = {
    "reference": Variant(bias=False, activation=nn.ReLU, eps=1e-6, init=nn.init.xavier_normal_),
    "recbole": Variant(bias=True, activation=nn.GELU, eps=1e-12, init=partial(nn.init.normal_, std=0.02)),
}


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float, variant: Variant) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=variant.bias)
        self.out = nn.Linear(dim, dim, bias=variant.bias)
        self.attention_norm = nn.LayerNorm(dim, eps=variant.eps)
        self.feed_forward = nn.Sequential(nn.Linear(dim, 4 * dim), variant.activation(), nn.Linear(4 * dim, dim))
        self.feed_forward_norm = nn.LayerNorm(dim, eps=variant.eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout.p if self.training else 0.0
        )  # [batch, heads, length, head_dim]
        attended = attended.transpose(1, 2).reshape(batch, length, dim)
        x = self.attention_norm(x + self.dropout(self.out(attended)))
        return self.feed_forward_norm(x + self.dropout(self.feed_forward(x)))


class UserEncoder(nn.Module):
    def __init__(self, config: UserEncoderConfig) -> None:
        super().__init__()
        variant = VARIANTS[config.variant]
        self.dim = config.dim
        self.positions = nn.Embedding(config.max_seq_len, config.dim)
        self.input_norm = nn.LayerNorm(config.dim, eps=variant.eps)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config.dim, config.heads, config.dropout, variant)
                                    for _ in range(config.blocks))
        self.apply(partial(_init_weights, init=variant.init))

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``items``: ``[batch, length, d]`` item embeddings; ``mask``: ``[batch, length]`` bool,
        True at real (non-padding) positions. Returns ``[batch, length, d]``."""
        length = items.shape[1]
        positions = torch.arange(length, device=items.device)
        causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=items.device))
        allowed = causal[None] & mask[:, None, :]  # [batch, query, key]
        additive = torch.zeros(allowed.shape, dtype=items.dtype, device=items.device)
        additive = additive.masked_fill(~allowed, MASKED)[:, None]  # [batch, 1, query, key]
        x = self.dropout(self.input_norm(items + self.positions(positions)))
        for block in self.blocks:
            x = block(x, additive)
        return x


def _init_weights(module: nn.Module, init: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Linear and Embedding weights by ``init``, biases zero (LayerNorms keep 1 and 0)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        init(module.weight)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
