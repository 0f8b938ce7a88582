"""Checkpoints: exact round trip, atomic (torn writes never load), asynchronous, shape checks, checked
against their manifest (a damaged one is refused naming the file, or skipped for the newest intact one)."""

import json
import logging
import re
import threading
import time
import zlib

import numpy as np
import pytest
import torch
from trainer_helpers import checkpointer, flip_bit, flip_digit, losses, offset_of, run_trainer, small_run
from trainer_helpers import train_batch as step

from workloads.trainer.components import checkpoint as ckpt_mod
from workloads.trainer.components import manifest as manifest_mod
from workloads.trainer.components.checkpoint import CheckpointManager, latest_path
from workloads.trainer.components.manifest import CheckpointDamaged
from workloads.trainer.components.state_io import flatten_state, unflatten_state
from workloads.trainer.components.train_state import CheckpointError, get_train_state, load_train_state
from workloads.trainer.config import CheckpointConfig
from workloads.trainer.model import ModelArgs, Transformer

ARGS = ModelArgs(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16)
SHAPE = {k: v for k, v in ARGS.shape_dict().items() if k != "max_seq_len"}


def make_trained(seed: int = 0):
    torch.manual_seed(seed)
    model = Transformer(ARGS)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step(model, opt)
    return model, opt


def state_of(model, opt, step_no=1):
    return get_train_state(model, opt, step=step_no, consumed_samples=8 * step_no, model_shape=SHAPE,
                           config={"job": {"name": "t"}})


def test_state_tree_round_trips_exactly():
    tree = {"a": {3: torch.arange(5), "b": (1, 2.5, None)}, "np": np.arange(4, dtype=np.uint32),
            "bf": torch.randn(3).bfloat16(), "l": [True, "x", {"__tensor__": "not a marker"}]}
    skeleton, tensors = flatten_state(tree)
    back = unflatten_state(skeleton, tensors)
    assert back["a"][3] is tree["a"][3] and back["a"]["b"] == (1, 2.5, None)
    assert back["np"].dtype == np.uint32 and back["np"].tolist() == [0, 1, 2, 3]
    assert back["l"] == tree["l"]


def test_checkpointer_is_configured_by_its_section_and_the_run_dir(tmp_path):
    """[checkpoint] alone decides: <run_dir>/checkpoints unless checkpoint.dir, keep, resume, enabled."""
    model, opt = make_trained()
    manager = CheckpointManager(CheckpointConfig(asynchronous=False, keep=1), run_dir=tmp_path)
    assert manager.dir == tmp_path / "checkpoints" and manager.enabled
    manager.save(1, state_of(model, opt, 1))
    manager.save(2, state_of(model, opt, 2))
    assert [p.name for p in manager.dir.glob("step_*")] == ["step_00000002"]  # keep=1
    assert manager.resume_path() == manager.dir / "step_00000002"
    assert CheckpointManager(CheckpointConfig(resume=False), run_dir=tmp_path).resume_path() is None
    assert not CheckpointManager(CheckpointConfig(enabled=False), run_dir=tmp_path).enabled
    elsewhere = CheckpointManager(CheckpointConfig(dir=str(tmp_path / "elsewhere")), run_dir=tmp_path)
    assert elsewhere.dir == tmp_path / "elsewhere" and elsewhere.resume_path() is None
    assert latest_path(tmp_path / "checkpoints") == manager.dir / "step_00000002"  # readers need no manager


def test_save_then_load_restores_weights_position_and_rng(tmp_path):
    model, opt = make_trained()
    manager = checkpointer(tmp_path, asynchronous=False)
    torch.manual_seed(42)
    manager.save(1, state_of(model, opt))
    expected_next_rand = torch.rand(3)
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}

    model2, opt2 = make_trained(seed=1)  # different weights and optimizer state
    train = load_train_state(CheckpointManager.read(manager.latest_path()), model2, opt2, model_shape=SHAPE,
                             path=manager.latest_path())
    assert train == {"step": 1, "consumed_samples": 8}
    assert torch.equal(torch.rand(3), expected_next_rand)  # torch RNG restored
    for name, p in model2.named_parameters():
        assert torch.equal(p, saved[name]), name


def test_resumed_optimizer_continues_bit_for_bit(tmp_path):
    model, opt = make_trained()
    manager = checkpointer(tmp_path, asynchronous=False)
    manager.save(1, state_of(model, opt))
    x = torch.randint(0, 64, (2, 16))

    def one_step(m, o):
        torch.nn.functional.cross_entropy(m(x).flatten(0, 1), x.flatten()).backward()
        o.step()
        o.zero_grad()
        return [p.detach().clone() for p in m.parameters()]

    expected = one_step(model, opt)
    model2, opt2 = make_trained(seed=1)
    load_train_state(CheckpointManager.read(manager.latest_path()), model2, opt2, model_shape=SHAPE,
                     path=manager.latest_path())
    for a, b in zip(one_step(model2, opt2), expected, strict=True):
        assert torch.equal(a, b)


def test_torn_write_is_never_loaded(tmp_path, monkeypatch):
    model, opt = make_trained()
    manager = checkpointer(tmp_path, asynchronous=False)
    manager.save(10, state_of(model, opt, 10))

    def crash(*args, **kwargs):
        raise OSError("disk full")  # dies after the tensors were written, before the rename

    monkeypatch.setattr(ckpt_mod, "write_json", crash)
    with pytest.raises(OSError):
        manager.save(20, state_of(model, opt, 20))
    monkeypatch.undo()
    assert (tmp_path / ".tmp-step_00000020" / "tensors.safetensors").exists()  # the torn write is there
    # a second torn directory that even looks complete, but was never renamed
    (tmp_path / ".tmp-step_00000030").mkdir()
    for name in ("tensors.safetensors", "state.json"):
        (tmp_path / ".tmp-step_00000030" / name).write_bytes((tmp_path / "step_00000010" / name).read_bytes())

    restarted = checkpointer(tmp_path)
    assert restarted.latest_path() == tmp_path / "step_00000010"
    assert CheckpointManager.read(restarted.latest_path())["train"]["step"] == 10
    assert not list(tmp_path.glob(".tmp-*"))  # cleaned up on start


def test_async_save_returns_at_once_and_training_goes_on_while_it_is_written(tmp_path, monkeypatch):
    model, opt = make_trained()
    release = threading.Event()
    real_write = ckpt_mod.write_tensors

    def blocked_write(path, tensors):
        release.wait(timeout=20)
        return real_write(path, tensors)

    monkeypatch.setattr(ckpt_mod, "write_tensors", blocked_write)
    manager = checkpointer(tmp_path, asynchronous=True)
    manager.attach(opt)
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    t0 = time.perf_counter()
    manager.save(5, state_of(model, opt, 5))
    assert time.perf_counter() - t0 < 5  # did not wait for the (blocked) write
    for _ in range(3):  # training goes on and changes the weights while the write is pending
        step(model, opt)
    assert manager._thread.is_alive() and manager.latest_path() is None
    release.set()
    manager.close()
    restored = CheckpointManager.read(manager.latest_path())["model"]
    for name, expected in saved.items():
        assert torch.equal(restored[name], expected), f"{name}: the snapshot saw a later step"


def test_optimizer_step_waits_for_the_background_copy(tmp_path, monkeypatch):
    model, opt = make_trained()
    manager = checkpointer(tmp_path, asynchronous=True)
    manager.attach(opt)
    real_copy, release = manager._copy, threading.Event()

    def held_copy(snapshot):
        release.wait(timeout=20)  # the copy starts only when the test says so
        real_copy(snapshot)

    monkeypatch.setattr(manager, "_copy", held_copy)
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    manager.save(5, state_of(model, opt, 5))
    x = torch.randint(0, 64, (2, 16))
    torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()  # may overlap the copy
    threading.Timer(0.5, release.set).start()
    t0 = time.perf_counter()
    opt.step()
    assert time.perf_counter() - t0 >= 0.45  # the pre-step hook held the update back until the copy ran
    assert manager.consume_stall() >= 0.45  # and the wait is reported as checkpoint stall
    manager.close()
    restored = CheckpointManager.read(manager.latest_path())["model"]
    assert all(torch.equal(restored[n], saved[n]) for n in saved)


def test_auto_interval_follows_youngs_formula_after_measuring_the_save(tmp_path):
    model, opt = make_trained()
    manager = checkpointer(tmp_path, asynchronous=False, interval="auto", mtbf_s=3600.0, auto_first_step=4)
    assert [s for s in range(1, 6) if manager.should_save(s)] == [4, 5]  # first save measures the cost
    cost = manager.save(4, state_of(model, opt, 4), step_time_s=0.05)
    expected = max(round((2 * cost * 3600.0) ** 0.5 / 0.05), 1)
    assert manager.next_auto_step == 4 + expected and expected > 1
    assert not manager.should_save(4 + expected - 1) and manager.should_save(4 + expected)


def test_background_write_error_surfaces_on_next_wait(tmp_path, monkeypatch):
    model, opt = make_trained()
    monkeypatch.setattr(ckpt_mod, "write_json", lambda *a: (_ for _ in ()).throw(OSError("no space")))
    manager = checkpointer(tmp_path, asynchronous=True)
    manager.save(1, state_of(model, opt))
    with pytest.raises(CheckpointError, match="no space"):
        manager.close()


def test_other_model_shape_is_a_clear_error(tmp_path):
    model, opt = make_trained()
    manager = checkpointer(tmp_path, asynchronous=False)
    manager.save(1, state_of(model, opt))
    wider = {**SHAPE, "dim": 64}
    other = Transformer(ModelArgs(**{**wider, "max_seq_len": 16}))
    before = [p.detach().clone() for p in other.parameters()]
    with pytest.raises(CheckpointError, match=r"different model: dim=32 in the checkpoint but 64 now"):
        load_train_state(CheckpointManager.read(manager.latest_path()), other,
                         torch.optim.AdamW(other.parameters()), model_shape=wider, path=manager.latest_path())
    assert all(torch.equal(a, b) for a, b in zip(before, other.parameters(), strict=True))


# ---------------------------------------------------------------------------- checked, not trusted

WQ = "layers.0.attention.wq.weight"


def _truncate(path, keep=0.5):
    path.write_bytes(path.read_bytes()[:int(path.stat().st_size * keep)])


def _drop_manifest_key(step_dir):
    state = json.loads((step_dir / "state.json").read_text())
    del state["__manifest__"]
    (step_dir / "state.json").write_text(json.dumps(state))


TENSORS = "tensors.safetensors"
MISMATCH = "tensors.safetensors: checksum mismatch (file damaged)"


def _flip_in_tensors(step_dir, tensor):
    flip_bit(step_dir / TENSORS, offset_of(step_dir / TENSORS, tensor))


# damage -> (what it does to a step directory, given its state as written; what the refusal says, verbatim)
DAMAGE = {
    "weight bit": (lambda d, s: _flip_in_tensors(d, s["model"][WQ]), MISMATCH),
    "optimizer bit": (lambda d, s: _flip_in_tensors(d, s["optimizer"]["state"][WQ]["exp_avg"]), MISMATCH),
    "state.json digit": (lambda d, s: flip_digit(d / "state.json", b'"consumed_samples"'),
                         "state.json: checksum mismatch (file damaged)"),
    "truncated tensors": (lambda d, s: _truncate(d / TENSORS), "tensors.safetensors: truncated ("),
    "header byte": (lambda d, s: flip_bit(d / TENSORS, 20, bit=3), MISMATCH),  # inside its JSON header
    "missing tensors": (lambda d, s: (d / TENSORS).unlink(), "tensors.safetensors: missing"),
    "manifest digit": (lambda d, s: flip_digit(d / "manifest.json", b'"size"'),
                       "manifest.json: damaged (does not match its own checksum)"),
    "manifest lost": (lambda d, s: (d / "manifest.json").unlink(), "manifest.json: missing"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_checkpoint_is_refused_naming_the_file_or_skipped_for_the_newest_intact_one(tmp_path, damage):
    model, opt = make_trained()
    manager = checkpointer(tmp_path, asynchronous=False)
    manager.save(10, state_of(model, opt, 10))
    step(model, opt)
    manager.save(20, state_of(model, opt, 20))
    damaged = tmp_path / "step_00000020"
    corrupt, says = DAMAGE[damage]
    corrupt(damaged, CheckpointManager.read(damaged))

    with pytest.raises(CheckpointDamaged, match=re.escape(f"checkpoint {damaged}: {says}")):
        CheckpointManager.read(damaged)  # what export-hf and every reader go through
    with pytest.raises(CheckpointError, match=re.escape(f"step_00000020: {says}") + ".*; step_00000010 is intact: "
                       "to resume from it, rerun with --checkpoint.on_damaged=fallback"):
        checkpointer(tmp_path).resume_path()
    fallback = checkpointer(tmp_path, on_damaged="fallback").resume_path()
    assert fallback == tmp_path / "step_00000010"
    assert CheckpointManager.read(fallback)["train"]["step"] == 10


def test_no_intact_checkpoint_is_refused_even_with_fallback(tmp_path):
    model, opt = make_trained()
    manager = checkpointer(tmp_path, asynchronous=False)
    manager.save(10, state_of(model, opt, 10))
    flip_digit(tmp_path / "step_00000010" / "state.json", b'"step"')
    with pytest.raises(CheckpointError, match="state.json: checksum mismatch .*no older checkpoint in .* is intact"):
        checkpointer(tmp_path, on_damaged="fallback").resume_path()


def test_latest_naming_no_checkpoint_falls_back_to_the_newest_intact_one(tmp_path):
    model, opt = make_trained()
    manager = checkpointer(tmp_path, asynchronous=False)
    manager.save(10, state_of(model, opt, 10))
    manager.save(20, state_of(model, opt, 20))
    (tmp_path / "latest").write_bytes(b"step_0000\xff020")
    with pytest.raises(CheckpointError, match=r"latest names .* not a checkpoint directory.*step_00000020 is intact"):
        manager.resume_path()
    assert checkpointer(tmp_path, on_damaged="fallback").resume_path() == tmp_path / "step_00000020"


def test_checkpoint_from_before_checksums_loads_with_a_warning(tmp_path):
    model, opt = make_trained()
    manager = checkpointer(tmp_path, asynchronous=False)
    manager.save(10, state_of(model, opt, 10))
    old = tmp_path / "step_00000010"
    (old / "manifest.json").unlink()
    _drop_manifest_key(old)  # as every checkpoint was before manifests
    unverified: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: unverified.append(record.getMessage())  # the trainer's logger may not propagate
    ckpt_mod.logger.addHandler(handler)
    try:
        assert manager.resume_path() == old
        assert CheckpointManager.read(old)["train"]["step"] == 10
    finally:
        ckpt_mod.logger.removeHandler(handler)
    assert len(unverified) == 2 and all("has no manifest" in m and "unverified" in m for m in unverified)
    # a damaged header in such a checkpoint is still one clear error, not a safetensors traceback
    flip_bit(old / TENSORS, 3, bit=6)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        CheckpointManager.read(old)


def test_checksums_are_computed_by_the_background_writer(tmp_path, monkeypatch):
    model, opt = make_trained()
    release, real_checksum = threading.Event(), manifest_mod.file_checksum

    def held_checksum(path):
        release.wait(timeout=20)
        return real_checksum(path)

    monkeypatch.setattr(manifest_mod, "file_checksum", held_checksum)
    manager = checkpointer(tmp_path, asynchronous=True)
    manager.attach(opt)
    t0 = time.perf_counter()
    manager.save(5, state_of(model, opt, 5))
    for _ in range(2):  # training is not held up by the hashing
        step(model, opt)
    assert time.perf_counter() - t0 < 5
    assert manager._thread.is_alive() and manager.latest_path() is None  # not committed before the manifest
    release.set()
    manager.close()
    written = manager.latest_path()
    manifest = json.loads((written / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["state.json", TENSORS] and manifest["step"] == 5
    for name, info in manifest["files"].items():
        data = (written / name).read_bytes()
        assert info == {"size": len(data), "crc32": f"{zlib.crc32(data):08x}"}


def test_resume_refuses_a_damaged_checkpoint_in_one_line_or_falls_back_when_told(tmp_path, sample_prefix):
    args = small_run(tmp_path, sample_prefix, **{"training.max_steps": 4, "checkpoint.interval": 2})
    first = run_trainer(args)
    assert first.returncode == 0, first.stdout
    damaged = tmp_path / "checkpoints" / "step_00000004"
    flip_bit(damaged / TENSORS, offset_of(damaged / TENSORS, CheckpointManager.read(damaged)["model"][WQ]))
    more = [*args, "--training.max_steps=6"]

    refused = run_trainer(more)
    assert refused.returncode == 1 and "Traceback" not in refused.stdout, refused.stdout
    errors = [line for line in refused.stdout.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, refused.stdout
    assert re.search(r"\] error: checkpoint \S+/step_00000004: tensors.safetensors: checksum mismatch \(file "
                     r"damaged\); step_00000002 is intact: to resume from it, rerun with "
                     r"--checkpoint.on_damaged=fallback$", errors[0]), errors[0]
    assert [s for s, _ in losses(tmp_path)] == [1, 2, 3, 4]  # refused before anything was written

    resumed = run_trainer([*more, "--checkpoint.on_damaged=fallback"])
    assert resumed.returncode == 0, resumed.stdout
    assert "step_00000004: tensors.safetensors: checksum mismatch" in resumed.stdout
    assert "step_00000002 at step 2" in resumed.stdout and "Traceback" not in resumed.stdout
    assert [s for s, _ in losses(tmp_path)] == [1, 2, 3, 4, 5, 6]
    assert CheckpointManager.read(damaged)["train"]["step"] == 4  # written again, intact
