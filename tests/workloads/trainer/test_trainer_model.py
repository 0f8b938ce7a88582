"""The Apertus model: xIELU against its formula, preset sizes, shapes."""

import math

import pytest
import torch

from workloads.trainer.model import PRESETS, XIELU, ModelArgs, Transformer, count_params, flops_per_token


def xielu_reference(x: torch.Tensor, alpha_p: float, alpha_n: float, beta: float = 0.5, eps: float = -1e-6):
    """FACTS §5, written out in float64."""
    x = x.double()
    pos = alpha_p * x**2 + beta * x
    neg = alpha_n * torch.expm1(torch.minimum(x, torch.tensor(eps, dtype=torch.float64))) - alpha_n * x + beta * x
    return torch.where(x > 0, pos, neg)


def test_xielu_initial_alphas_are_point_eight():
    alpha_p, alpha_n = XIELU().alphas()
    assert alpha_p.item() == pytest.approx(0.8, abs=4e-3)  # bf16 scalars, as the reference keeps them
    assert alpha_n.item() == pytest.approx(0.8, abs=4e-3)


@pytest.mark.parametrize("a_p, a_n", [(None, None), (0.3, -1.2), (-2.0, 1.5)])
def test_xielu_matches_formula_on_both_branches(a_p, a_n):
    act = XIELU()
    with torch.no_grad():
        if a_p is not None:
            act.alpha_p.fill_(a_p)
            act.alpha_n.fill_(a_n)
    alpha_p, alpha_n = (a.detach().item() for a in act.alphas())
    assert alpha_p == pytest.approx(math.log1p(math.exp(act.alpha_p.item())), rel=1e-2)
    assert alpha_n == pytest.approx(0.5 + math.log1p(math.exp(act.alpha_n.item())), rel=1e-2)
    x = torch.cat([torch.linspace(-8, -1e-3, 500), torch.tensor([-1e-7, 0.0, 1e-7]), torch.linspace(1e-3, 8, 500)])
    got = act(x).detach()
    want = xielu_reference(x, alpha_p, alpha_n, eps=act.eps)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    # the two branches really differ: negative inputs saturate towards -alpha_n + ... instead of growing
    assert (got[x > 0] > 0).all() and got[0] == pytest.approx(alpha_n * math.expm1(-8) + (0.5 - alpha_n) * -8, rel=1e-5)


def test_xielu_gradients_match_formula():
    act = XIELU()
    x = torch.tensor([-3.0, -0.5, -1e-8, 0.25, 2.0], requires_grad=True)
    act(x).sum().backward()
    alpha_p, alpha_n = (a.detach().item() for a in act.alphas())
    xd = x.detach().double()
    dx_pos = 2 * alpha_p * xd + 0.5
    dx_neg = alpha_n * torch.exp(torch.clamp(xd, max=act.eps)) * (xd <= act.eps) - alpha_n + 0.5
    torch.testing.assert_close(x.grad.double(), torch.where(xd > 0, dx_pos, dx_neg), rtol=1e-5, atol=1e-6)
    # d/d a_p = sigmoid(a_p) * sum(x^2 over x > 0): the learnable scalars receive gradient
    sig_p = torch.sigmoid(act.alpha_p.detach().double())
    assert act.alpha_p.grad.item() == pytest.approx((sig_p * (xd[xd > 0] ** 2).sum()).item(), rel=1e-2)
    sig_n = torch.sigmoid(act.alpha_n.detach().double())
    neg = xd[xd <= 0]
    expected_n = (sig_n * (torch.expm1(torch.clamp(neg, max=act.eps)) - neg).sum()).item()
    assert act.alpha_n.grad.item() == pytest.approx(expected_n, rel=1e-2)


@pytest.mark.parametrize("preset, billions", [("8b", 8.05), ("70b", 70.6)])
def test_large_presets_count_the_published_parameters(preset, billions):
    args = PRESETS[preset]
    with torch.device("meta"):
        model = Transformer(args)
    counted = sum(p.numel() for p in model.parameters())
    assert counted == count_params(args)
    assert round(counted / 1e9, 2 if preset == "8b" else 1) == billions


def test_preset_shapes_follow_apertus():
    for name in ("8b", "70b"):
        args = PRESETS[name]
        assert args.ffn_dim == int(5.25 * args.dim) and args.head_dim == 128 and args.n_kv_heads == 8
        assert args.vocab_size == 131_072 and args.norm_eps == 1e-5
    assert PRESETS["8b"].ffn_dim == 21504 and PRESETS["70b"].ffn_dim == 43008


def test_model_is_causal_and_untied_without_biases():
    torch.manual_seed(0)
    args = ModelArgs(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16)
    model = Transformer(args)
    assert model.output.weight.data_ptr() != model.tok_embeddings.weight.data_ptr()
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())
    x = torch.randint(0, 64, (2, 16))
    logits = model(x)
    assert logits.shape == (2, 16, 64)
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % 64  # changing the future must not change the past
    torch.testing.assert_close(model(y)[:, :10], logits[:, :10])
    assert not torch.allclose(model(y)[:, 10:], logits[:, 10:])


def test_flops_per_token_is_six_n_plus_attention():
    args = PRESETS["8b"]
    n = count_params(args, embeddings=False) + args.vocab_size * args.dim
    assert flops_per_token(args, 4096) == 6 * n + 12 * 32 * 32 * 128 * 4096
