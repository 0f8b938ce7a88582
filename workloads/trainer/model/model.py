"""The Apertus decoder (arXiv 2509.14233): pre-RMSNorm, QK-norm, RoPE, GQA, xIELU MLP, untied head.

Read bottom-up: XIELU → Attention → FeedForward → TransformerBlock → Transformer.
Weight names are ours; `export_hf.py` maps them to Hugging Face's `ApertusForCausalLM`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .args import ModelArgs


def softplus_inverse(y: float) -> float:
    """x such that softplus(x) = y."""
    return math.log(math.expm1(y))


class XIELU(nn.Module):
    """xIELU (arXiv 2411.13010) with one learnable (α_p, α_n) pair per layer.

    α_p = softplus(a_p), α_n = β + softplus(a_n);
    f(x) = α_p·x² + β·x                              for x > 0
    f(x) = α_n·expm1(min(x, ε)) − α_n·x + β·x        for x ≤ 0

    The scalars α_p, α_n, β, ε are evaluated in `scalar_dtype` (bf16), as the reference implementation
    (transformers' XIELUActivation, which ApertusForCausalLM uses) keeps them: an exported model then
    computes bit-identical activations. a_p and a_n themselves stay fp32 master weights.
    """

    def __init__(self, alpha_p_init: float = 0.8, alpha_n_init: float = 0.8, beta: float = 0.5,
                 eps: float = -1e-6, scalar_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.alpha_p_init, self.alpha_n_init = alpha_p_init, alpha_n_init
        self.scalar_dtype = scalar_dtype
        self.beta = float(torch.tensor(beta, dtype=scalar_dtype, device="cpu"))
        self.eps = float(torch.tensor(eps, dtype=scalar_dtype, device="cpu"))
        # Shape (1,) like Hugging Face's XIELUActivation so exported weights load as they are.
        self.alpha_p = nn.Parameter(torch.empty(1))
        self.alpha_n = nn.Parameter(torch.empty(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """α_p = α_n = 0.8 at init (a_p = softplus⁻¹(0.8), a_n = softplus⁻¹(0.8 − β))."""
        nn.init.constant_(self.alpha_p, softplus_inverse(self.alpha_p_init))
        nn.init.constant_(self.alpha_n, softplus_inverse(self.alpha_n_init - self.beta))

    def alphas(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(α_p, α_n), each of shape (1,), in scalar_dtype."""
        alpha_p = F.softplus(self.alpha_p.to(self.scalar_dtype))
        alpha_n = self.beta + F.softplus(self.alpha_n.to(self.scalar_dtype))
        return alpha_p, alpha_n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha_p, alpha_n = (a.to(x.dtype) for a in self.alphas())
        positive = alpha_p * x * x + self.beta * x
        negative = (torch.expm1(torch.clamp(x, max=self.eps)) - x) * alpha_n + self.beta * x
        return torch.where(x > 0, positive, negative)


def build_rope_cache(head_dim: int, max_seq_len: int, theta: float,
                     device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each (max_seq_len, head_dim), in float32, for the rotate-half convention."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    t = torch.arange(max_seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)  # (T, hs/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, hs)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, nh, T, hs) by position; cos/sin are (T, hs)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class Attention(nn.Module):
    """Causal grouped-query self-attention with RMSNorm on queries and keys (QK-norm)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.q_norm = nn.RMSNorm(args.head_dim, eps=args.norm_eps)
        self.k_norm = nn.RMSNorm(args.head_dim, eps=args.norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           enable_gqa=self.n_kv_heads != self.n_heads)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, C)
        return self.wo(y)


class FeedForward(nn.Module):
    """Non-gated MLP: up → xIELU → down."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.w_up = nn.Linear(args.dim, args.ffn_dim, bias=False)
        self.act = XIELU()
        self.w_down = nn.Linear(args.ffn_dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(self.act(self.w_up(x)))  # (B, T, C) → (B, T, 5.25·C) → (B, T, C)


class TransformerBlock(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention_norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.feed_forward = FeedForward(args)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    """Token ids (B, T) → logits (B, T, vocab)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        # Derived from args, so never checkpointed (persistent=False).
        self.register_buffer("rope_cos", torch.empty(args.max_seq_len, args.head_dim), persistent=False)
        self.register_buffer("rope_sin", torch.empty(args.max_seq_len, args.head_dim), persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialise every parameter and buffer; also used after building on the meta device.

        Normal(0, 0.02) everywhere; the two residual-stream output projections (wo, w_down) are scaled
        by 1/√(2·n_layers) so the residual variance does not grow with depth (GPT-2, Megatron).
        """
        if self.rope_cos.is_meta:
            return
        cos, sin = build_rope_cache(self.args.head_dim, self.args.max_seq_len, self.args.rope_theta,
                                    device=self.rope_cos.device)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)
        std, out_std = 0.02, 0.02 / math.sqrt(2 * self.args.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                last = name.rsplit(".", 1)[-1]
                nn.init.normal_(module.weight, mean=0.0, std=out_std if last in ("wo", "w_down") else std)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, XIELU):
                module.reset_parameters()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        T = tokens.shape[1]
        assert T <= self.args.max_seq_len, f"sequence length {T} > max_seq_len {self.args.max_seq_len}"
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        h = self.tok_embeddings(tokens)  # (B, T, C)
        for layer in self.layers:
            h = layer(h, cos, sin)
        return self.output(self.norm(h))  # (B, T, vocab)
