"""Transformer building blocks shared by the AIMv2 encoder and decoder (paper Section 2.2)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def swiglu_hidden_dim(dim: int, multiple_of: int = 256) -> int:
    """SwiGLU width of the released checkpoints: 2/3 of 4*dim, rounded up to a multiple of 256 (1024 -> 2816)."""
    return multiple_of * math.ceil(int(8 * dim / 3) / multiple_of)


class RMSNorm(nn.Module):
    """`torch.nn.RMSNorm`, the layer of Apple's released code (ml-aim `aim/v2/torch/layers.py`) and of timm's AIMv2:
    the same outputs under CPU and CUDA autocast, without torch's "Mismatch dtype" warning on the CPU."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype or x.device.type != "cpu":
            # CUDA autocast itself runs rms_norm in fp32, so input and weight meet in one dtype there.
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        # CPU autocast leaves rms_norm alone, so a bf16 input meets the fp32 weight: torch then warns and falls back
        # to computing in the promoted dtype and rounding to the input's. The same values, on torch's fused path.
        # (Casting the weight to bf16 instead would round it, and the product, differently: another model.)
        dtype = torch.promote_types(x.dtype, self.weight.dtype)
        return F.rms_norm(x.to(dtype), (x.shape[-1],), self.weight.to(dtype), self.eps).to(x.dtype)


class SwiGLU(nn.Module):
    """fc2(silu(fc1 x) * fc3 x), no biases; names follow Apple's checkpoints."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc3 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under autocast fc1 and fc3 would each cast the same fp32 input to the low dtype: cast it once (same values).
        if x.dtype == torch.float32 and torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        return self.fc2(F.silu(self.fc1(x)) * self.fc3(x))


def prefix_attention_mask(prefix_len: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Boolean mask (B, 1, N, N), True = may attend.

    The first M tokens of sample b (M = prefix_len[b]) attend bidirectionally among themselves; every later
    token attends causally (to all earlier tokens, the prefix included).
    """
    idx = torch.arange(seq_len, device=prefix_len.device)
    causal = idx[None, :] <= idx[:, None]  # (N, N): key j <= query i
    in_prefix = idx[None, None, :] < prefix_len[:, None, None]  # (B, 1, N): key j inside the prefix
    return (causal[None] | in_prefix)[:, None]


class Attention(nn.Module):
    """Multi-head self-attention through `F.scaled_dot_product_attention`, fused qkv, no biases."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + swiglu(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm_1 = RMSNorm(dim, eps)
        self.attn = Attention(dim, num_heads)
        self.norm_2 = RMSNorm(dim, eps)
        self.mlp = SwiGLU(dim, mlp_hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.norm_1(x), mask, is_causal)
        return x + self.mlp(self.norm_2(x))
