"""Goldfish mask: deterministic per h-gram (across rows, positions, processes), rate 1/k, first h-1 kept."""

import hashlib
import os
import subprocess
import sys

import pytest
import torch

from workloads.trainer.data import goldfish_mask


def random_tokens(b, t, seed=0, vocab=50_000):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


def test_same_hgram_gives_same_decision_wherever_it_appears():
    h, k = 13, 3
    passage = random_tokens(1, 300, seed=1)[0]
    rows = random_tokens(3, 400, seed=2)
    rows[0, :300] = passage
    rows[1, 57:357] = passage  # same text, other position, after different context
    rows[2, 100:400] = passage
    mask = goldfish_mask(rows, k, h)
    # Once a full window lies inside the passage, the decisions agree token for token.
    torch.testing.assert_close(mask[1, 57 + h - 1 : 357], mask[0, h - 1 : 300])
    torch.testing.assert_close(mask[2, 100 + h - 1 : 400], mask[0, h - 1 : 300])
    assert (~mask[0, h - 1 : 300]).any()  # and the passage does lose labels


def test_decision_depends_only_on_the_window():
    h = 8
    x = random_tokens(1, 200, seed=3)
    y = x.clone()
    y[0, 50] += 1  # changes the windows that contain position 50: t in [50, 57]
    mx, my = goldfish_mask(x, 2, h), goldfish_mask(y, 2, h)
    same = torch.ones(200, dtype=torch.bool)
    same[50:58] = False
    assert torch.equal(mx[0, same], my[0, same])
    assert not torch.equal(mx[0, 50:58], my[0, 50:58])  # 8 fresh coin flips at k=2: all equal w.p. 1/256


def test_first_h_minus_one_labels_are_never_dropped():
    for h in (1, 5, 50):
        mask = goldfish_mask(random_tokens(16, 256, seed=h), 1, h)  # k=1 drops every full window
        assert mask[:, : h - 1].all()
        assert not mask[:, h - 1 :].any()


@pytest.mark.parametrize("k", [2, 4, 50])
def test_drop_rate_is_one_in_k_on_random_tokens(k):
    h = 13
    mask = goldfish_mask(random_tokens(8, 4096, seed=k), k, h)
    rate = 1 - mask[:, h - 1 :].float().mean().item()
    n = 8 * (4096 - h + 1)
    sigma = (1 / k * (1 - 1 / k) / n) ** 0.5
    assert abs(rate - 1 / k) < 5 * sigma


def test_disabled_and_short_rows_keep_everything():
    x = random_tokens(2, 64)
    for k in (0, None):
        assert goldfish_mask(x, k, 13).all()
    assert goldfish_mask(x, 4, 65).all()  # no full window
    assert goldfish_mask(x, 4, 13).shape == x.shape and goldfish_mask(x, 4, 13).dtype == torch.bool


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        goldfish_mask(random_tokens(1, 10), -1, 3)
    with pytest.raises(ValueError):
        goldfish_mask(random_tokens(1, 10), 4, 0)
    with pytest.raises(TypeError):
        goldfish_mask(torch.rand(1, 10), 4, 3)


def test_int32_and_int64_tokens_give_the_same_mask():
    x = random_tokens(4, 512, seed=5)
    assert torch.equal(goldfish_mask(x, 4, 13), goldfish_mask(x.to(torch.int32), 4, 13))


SCRIPT = """
import hashlib, torch
from workloads.trainer.data import goldfish_mask
x = torch.randint(0, 131072, (4, 2048), generator=torch.Generator().manual_seed(7))
print(hashlib.sha256(goldfish_mask(x, 50, 50).numpy().tobytes()).hexdigest())
"""


def test_mask_is_identical_across_processes_and_hash_seeds():
    x = torch.randint(0, 131072, (4, 2048), generator=torch.Generator().manual_seed(7))
    here = hashlib.sha256(goldfish_mask(x, 50, 50).numpy().tobytes()).hexdigest()
    env = dict(os.environ, PYTHONHASHSEED="12345")  # another process, another salt for Python's hash()
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == here


def test_dropped_positions_are_pinned():
    # The hash is part of the data contract: changing it changes which tokens every run may memorise.
    x = (torch.arange(64) * 7919 % 131072).reshape(2, 32)
    dropped = (~goldfish_mask(x, 3, 4)).nonzero().tolist()
    assert dropped == [
        [0, 9], [0, 13], [0, 20], [0, 25], [0, 26], [1, 3], [1, 4], [1, 5], [1, 8], [1, 12], [1, 13],
        [1, 14], [1, 17], [1, 18], [1, 21], [1, 22], [1, 23], [1, 25], [1, 26], [1, 27], [1, 29], [1, 30],
    ]  # fmt: skip


def test_structured_text_is_dropped_at_the_same_rate():
    x = (torch.arange(100_000) * 7919 % 131072).reshape(4, -1)  # arithmetic runs, not random tokens
    rate = 1 - goldfish_mask(x, 4, 13)[:, 12:].float().mean().item()
    assert abs(rate - 0.25) < 0.01
