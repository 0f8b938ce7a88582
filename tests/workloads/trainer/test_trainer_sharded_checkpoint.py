"""FSDP2 checkpoints are sharded (every rank writes only its own shards, DCP) and still read whole anywhere:
a single process resumes from them, export_hf converts them; each rank checksums its own files, and a
damaged one is refused naming the file (or skipped for the newest intact checkpoint)."""

import json
import math
import re
import threading
import time

import pytest
import torch
import torch.distributed as dist
import transformers
from trainer_helpers import flip_bit, flip_digit, losses, offset_of, run_trainer, small_run, start_ranks
from trainer_helpers import checkpointer, start_two_ranks
from trainer_helpers import train_batch as step

from workloads.trainer.components import checkpoint as ckpt_mod
from workloads.trainer.components.checkpoint import CheckpointManager
from workloads.trainer.components.manifest import file_checksum
from workloads.trainer.components.train_state import CheckpointError, get_train_state, load_train_state
from workloads.trainer.components.sharded import _reader
from workloads.trainer.export_hf import export_checkpoint
from workloads.trainer.model import ModelArgs, Transformer


def test_fsdp2_checkpoint_is_one_shard_file_per_rank_and_resumes_on_one_process_and_exports(tmp_path, sample_prefix):
    opts = {"training.max_steps": 8, "checkpoint.interval": 4, "parallel.data_parallel": "fsdp"}
    procs = start_two_ranks(tmp_path, small_run(tmp_path, sample_prefix, **opts))
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    step_dir = tmp_path / "checkpoints" / "step_00000004"  # the asynchronous one (step 8: the final, blocking)
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_00000008"
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))

    # One data file per rank, each about half of all model + optimizer bytes: no rank held the full state.
    state = CheckpointManager.read(step_dir)
    full_bytes = sum(t.numel() * t.element_size() for t in state["model"].values())
    full_bytes += sum(t.numel() * t.element_size() for s in state["optimizer"]["state"].values() for t in s.values())
    files = sorted(p.name for p in step_dir.iterdir())
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp", "manifest.json", "state.json",
                     "tensors.safetensors"], files
    # the manifest covers every file, both ranks' shards included (each rank hashed its own)
    manifest = json.loads((step_dir / "manifest.json").read_text())["files"]
    assert sorted(manifest) == [f for f in files if f != "manifest.json"]
    assert all(info["crc32"] == file_checksum(step_dir / name) for name, info in manifest.items())
    for rank in (0, 1):
        share = (step_dir / f"__{rank}_0.distcp").stat().st_size / full_bytes
        assert 0.4 < share < 0.6, (rank, share)
    assert (step_dir / "tensors.safetensors").stat().st_size < 0.01 * full_bytes  # rank 0's part: RNG states
    # DCP's index: each weight matrix is two row chunks, one in each rank's file.
    metadata = _reader(step_dir).read_metadata()
    wq = "/model/layers.0.attention.wq.weight"
    chunks = {tuple(i.offset): metadata.storage_data[i].relative_path for i in metadata.storage_data if i.fqn == wq}
    rows = state["model"]["layers.0.attention.wq.weight"].shape[0]
    assert chunks == {(0, 0): "__0_0.distcp", (rows // 2, 0): "__1_0.distcp"}

    # read() gives the full state, like a DDP checkpoint: global shapes, both ranks' RNG states, position.
    args = ModelArgs(**state["model_shape"], max_seq_len=32)
    model = Transformer(args)
    assert {n: p.shape for n, p in model.named_parameters()} == {n: t.shape for n, t in state["model"].items()}
    assert set(state["optimizer"]["state"]) == set(state["model"])
    assert len(state["rng"]) == 2 and state["train"] == {"step": 4, "consumed_samples": 32}

    # Rank 1's shard of step 8 damaged: both ranks refuse it, in one line each, naming the file and step 4.
    final = tmp_path / "checkpoints" / "step_00000008"
    flip_bit(final / "__1_0.distcp", (final / "__1_0.distcp").stat().st_size // 2)
    procs = start_two_ranks(tmp_path, small_run(tmp_path, sample_prefix, **{**opts, "training.max_steps": 10}))
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [1, 1], outs
    for out in outs:
        errors = [line for line in out.splitlines() if "error" in line.lower()]
        assert "Traceback" not in out and len(errors) == 1, out
        assert re.search(r"step_00000008: __1_0.distcp: checksum mismatch \(file damaged\); step_00000004 is "
                         r"intact", errors[0]), errors[0]

    # A single process (plain, WORLD_SIZE=1, --parallel.data_parallel=ddp) resumes from step 4 and keeps learning;
    # 2 micro-batches per step keep the global batch of the 2-rank run (8 samples).
    (tmp_path / "checkpoints" / "latest").write_text(step_dir.name)
    resumed = run_trainer(small_run(tmp_path, sample_prefix, **{**opts, "parallel.data_parallel": "ddp",
                                                                 "training.grad_accum_steps": 2}))
    assert resumed.returncode == 0, resumed.stdout
    assert "resumed from" in resumed.stdout and "at step 4" in resumed.stdout
    curve = losses(tmp_path)
    assert [s for s, _ in curve] == list(range(1, 9))
    after = [loss for _, loss in curve[4:]]
    assert all(math.isfinite(v) for v in after) and after[-1] < curve[3][1], curve
    assert not (tmp_path / "checkpoints" / "step_00000008" / ".metadata").exists()  # single process: plain format

    # export_hf from the sharded step: transformers computes the same logits as our model with those weights.
    model.load_state_dict(state["model"])
    out = export_checkpoint(step_dir, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokens = torch.randint(0, args.vocab_size, (1, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model.eval()(tokens) - hf(tokens).logits).abs().max().item() <= 1e-5


def test_fsdp2_resumes_on_another_world_size_each_rank_reading_its_new_shards(tmp_path, sample_prefix):
    """2-rank FSDP2 checkpoint → 3-rank FSDP2 run: DCP reshards (each new rank reads the byte ranges of
    its own rows from both old files). With lr 0 after the resume, the 3-rank run's own checkpoint (three
    shard files) must hold exactly the weights of the 2-rank one: every row came back where it belongs.
    (lr 0: the resumed run's one step is the last of the WSD schedule, which decays to 0.)"""
    opts = {"training.max_steps": 4, "checkpoint.interval": 4, "parallel.data_parallel": "fsdp",
            "training.micro_batch_size": 3}
    procs = start_two_ranks(tmp_path, small_run(tmp_path, sample_prefix, **opts))
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    before = CheckpointManager.read(tmp_path / "checkpoints" / "step_00000004")

    # 3 ranks x 2 micro-batches of 1 keep the global batch (6 samples)
    more = {**opts, "training.max_steps": 5, "training.micro_batch_size": 1, "training.grad_accum_steps": 2,
            "checkpoint.keep": 3}
    procs = start_ranks(tmp_path, small_run(tmp_path, sample_prefix, **more), 3)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert "at step 4" in outs[0] and "resumed from" in outs[0], outs[0]
    after_dir = tmp_path / "checkpoints" / "step_00000005"
    assert sorted(p.name for p in after_dir.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp", "__2_0.distcp"]
    after = CheckpointManager.read(after_dir)
    assert after["train"] == {"step": 5, "consumed_samples": 30} and len(after["rng"]) == 3
    assert set(after["model"]) == set(before["model"])
    for name, t in before["model"].items():
        assert torch.equal(after["model"][name], t), name
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and rows[-1]["lr"] == 0.0
    assert all(math.isfinite(r["loss"]) for r in rows)


# ------------------------------------------------------------------ in-process: FSDP2 on a 1-rank gloo group

ARGS = ModelArgs(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16)
SHAPE = {k: v for k, v in ARGS.shape_dict().items() if k != "max_seq_len"}


@pytest.fixture
def one_rank_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def fsdp_trained(seed: int):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(seed)
    model = Transformer(ARGS)
    mesh = init_device_mesh("cpu", (1,))
    for block in model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step(model, opt)
    return model, opt


def full_params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().full_tensor().clone() for n, p in model.named_parameters()}


def state_of(model, opt, step_no):
    return get_train_state(model, opt, step=step_no, consumed_samples=8 * step_no, model_shape=SHAPE,
                           config={"job": {"name": "t"}})


def test_sharded_save_is_asynchronous_atomic_and_loads_back_exactly(tmp_path, monkeypatch, one_rank_group):
    model, opt = fsdp_trained(0)
    manager = checkpointer(tmp_path, asynchronous=True)
    manager.attach(opt)
    release, real_write = threading.Event(), ckpt_mod.write_shards

    def held_write(directory, tensors):
        release.wait(timeout=20)
        real_write(directory, tensors)

    monkeypatch.setattr(ckpt_mod, "write_shards", held_write)
    saved = full_params(model)
    t0 = time.perf_counter()
    manager.save(1, state_of(model, opt, 1))
    assert time.perf_counter() - t0 < 5  # did not wait for the (held) write
    for _ in range(2):  # training goes on while the shards are written
        step(model, opt)
    assert manager.latest_path() is None
    release.set()
    manager.wait()
    assert sorted(p.name for p in manager.latest_path().iterdir()) == [
        ".metadata", "__0_0.distcp", "manifest.json", "state.json", "tensors.safetensors"]
    restored = CheckpointManager.read(manager.latest_path())["model"]
    assert all(torch.equal(restored[n], saved[n]) for n in saved), "the snapshot saw a later step"

    # A crash after every shard and .metadata are durable, before the commit: latest stays at step 1.
    monkeypatch.setattr(ckpt_mod, "write_json", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        manager.save(2, state_of(model, opt, 2), block=True)
    monkeypatch.undo()
    assert (tmp_path / ".tmp-step_00000002" / ".metadata").is_file()
    restarted = checkpointer(tmp_path)
    assert restarted.latest_path() == tmp_path / "step_00000001" and not list(tmp_path.glob(".tmp-*"))

    # Shard by shard into a fresh FSDP2 model: weights and optimizer continue bit for bit.
    other, other_opt = fsdp_trained(1)
    wider = {**SHAPE, "dim": 64}
    with pytest.raises(CheckpointError, match="dim=32 in the checkpoint but 64 now"):
        load_train_state(CheckpointManager.read(restarted.latest_path(), shards=False), other, other_opt,
                         model_shape=wider, path=restarted.latest_path())
    train = load_train_state(CheckpointManager.read(restarted.latest_path(), shards=False), other, other_opt,
                             model_shape=SHAPE, path=restarted.latest_path())
    assert train == {"step": 1, "consumed_samples": 8}
    assert all(torch.equal(p, saved[n]) for n, p in full_params(other).items())
    reference, reference_opt = fsdp_trained(0)  # the state that was saved, rebuilt
    torch.manual_seed(7)
    step(reference, reference_opt)
    torch.manual_seed(7)
    step(other, other_opt)
    expected = full_params(reference)
    assert all(torch.equal(p, expected[n]) for n, p in full_params(other).items())


WQ = "layers.0.attention.wq.weight"
SHARD = "__0_0.distcp"
# damage -> (what it does to a sharded step directory, given its full state as written; the refusal, verbatim)
SHARD_DAMAGE = {
    "weight bit": (lambda d, s: flip_bit(d / SHARD, offset_of(d / SHARD, s["model"][WQ])),
                   "__0_0.distcp: checksum mismatch (file damaged)"),
    "optimizer bit": (lambda d, s: flip_bit(d / SHARD, offset_of(d / SHARD, s["optimizer"]["state"][WQ]["exp_avg"])),
                      "__0_0.distcp: checksum mismatch (file damaged)"),
    "state.json digit": (lambda d, s: flip_digit(d / "state.json", b'"consumed_samples"'),
                         "state.json: checksum mismatch (file damaged)"),
    "truncated shard": (lambda d, s: (d / SHARD).write_bytes((d / SHARD).read_bytes()[:1000]),
                        "__0_0.distcp: truncated (1000 bytes, "),
    "metadata byte": (lambda d, s: flip_bit(d / ".metadata", 40, bit=2), ".metadata: checksum mismatch (file damaged)"),
    "missing shard": (lambda d, s: (d / SHARD).unlink(), "__0_0.distcp: missing"),
}


@pytest.mark.parametrize("damage", list(SHARD_DAMAGE))
def test_damaged_sharded_checkpoint_is_refused_naming_the_file_or_skipped(tmp_path, damage, one_rank_group):
    model, opt = fsdp_trained(0)
    manager = checkpointer(tmp_path, asynchronous=True)
    manager.attach(opt)
    manager.save(1, state_of(model, opt, 1))
    saved = full_params(model)
    step(model, opt)
    manager.save(2, state_of(model, opt, 2))
    manager.close()
    damaged = tmp_path / "step_00000002"
    corrupt, says = SHARD_DAMAGE[damage]
    corrupt(damaged, CheckpointManager.read(damaged))

    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {damaged}: {says}") + ".*; step_00000001 is "
                       "intact: to resume from it, rerun with --checkpoint.on_damaged=fallback"):
        manager.resume_path()  # collective (a 1-rank group): the path every FSDP2 rank takes
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {damaged}: {says}")):
        CheckpointManager.read(damaged, shards=False)
    fallback = checkpointer(tmp_path, on_damaged="fallback").resume_path()
    assert fallback == tmp_path / "step_00000001"
    other, other_opt = fsdp_trained(1)
    train = load_train_state(CheckpointManager.read(fallback, shards=False, verify=False), other, other_opt,
                             model_shape=SHAPE, path=fallback)
    assert train == {"step": 1, "consumed_samples": 8}
    assert all(torch.equal(p, saved[n]) for n, p in full_params(other).items())
