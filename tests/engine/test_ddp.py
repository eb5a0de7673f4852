"""One run on two CPU processes under torchrun (gloo): the same training as one process, written by rank 0 only,
a NaN on one rank stops both, a SIGKILLed rank is restarted from the last checkpoint (``--max-restarts=1``), and a
run continues with another number of processes.

Each torchrun start costs a few seconds on a 2-core machine: five of them (one restarted), the file takes ~60 s. The
tolerance of the equivalence: a 2-process update is the 1-process update up to float32 summation order (DDP
averages the two shards' mean gradients), so after 42 SGD steps the final weights and metrics differ by
< 1e-5 (measured: ~1e-7, see benchmarks/ddp_equivalence.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tricklab.config import load_config
from tricklab.events import Callback
from tricklab.runner import run

HERE = Path(__file__).resolve().parent
OVERRIDES = [
    "data.name=synthetic",
    "data.val_fraction=0.125",  # 448 training examples: 14 global batches of 32, each split 16 + 16
    "data.batch_size=32",
    "model.width=32",
    "model.depth=1",
    "model.dropout=0",  # dropout masks are per-process draws: not comparable bit for bit
    "optim.name=sgd",
    "optim.lr=0.1",
    "train.epochs=3",
    "train.threads=1",
    "train.device=cpu",
]
STEPS_PER_EPOCH = 14
TOLERANCE = 1e-5  # weights and metrics, 2 processes vs 1 (float32 summation order)
TIMEOUT = 120  # seconds a torchrun job may take before the test calls it hung


def env(tmp: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)  # ddp_hooks importable
    return dict(
        os.environ,
        PYTHONPATH=path,
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        TRICKLAB_DATA=str(tmp),
        TRICKLAB_ALLOW_MODULES="ddp_hooks",  # hook_config's files name ddp_hooks:...
    )


def torchrun(cwd: Path, *args: str, restarts: int = 0) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 -m tricklab ARGS`` in ``cwd``; output in ``.stdout``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [f"--max-restarts={restarts}", "--monitor-interval=0.1", "-m", "tricklab", *args]
    return subprocess.run(
        cmd, cwd=cwd, env=env(cwd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT
    )


def train_args(config: Path | None = None) -> list[str]:
    sets = [a for o in OVERRIDES for a in ("--set", o)]
    return ["train", *(["--config", str(config)] if config else []), *sets]


def hook_config(tmp: Path, name: str, **kwargs) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps({"callbacks": [{"name": f"ddp_hooks:{name}", "kwargs": kwargs}]}))
    return path


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model.safetensors")


def max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one(built_once) -> Path:
    """The 1-process run, in this process (once per session: the tests only read it)."""
    return built_once("ddp-one", lambda folder: run(load_config(None, OVERRIDES), folder / "run")) / "run"


def _two(cwd: Path) -> None:
    proc = torchrun(cwd, *train_args(), "--out", "run")
    assert proc.returncode == 0, proc.stdout
    (cwd / "output.txt").write_text(proc.stdout)


@pytest.fixture(scope="module")
def two(built_once) -> tuple[Path, str]:
    """The same config on 2 processes, uninterrupted: its run directory and its output (once per session)."""
    cwd = built_once("ddp-two", _two)
    return cwd / "run", (cwd / "output.txt").read_text()


def test_two_processes_train_what_one_does(one, two):
    run2, _ = two
    assert max_weight_diff(one, run2) < TOLERANCE
    m1, m2 = metrics(one), metrics(run2)
    for key in ("test_loss", "test_acc", "val_loss", "val_acc"):
        assert abs(m1[key] - m2[key]) < TOLERANCE, key
    assert m1["steps"] == m2["steps"] == 3 * STEPS_PER_EPOCH
    for r1, r2 in zip(history(one), history(run2), strict=True):  # train metrics: the global batch's, not a shard's
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert abs(r1[key] - r2[key]) < TOLERANCE, (r1["epoch"], key)


def test_only_rank_0_writes_and_prints(one, two):
    run2, out = two
    assert sorted(p.name for p in run2.iterdir()) == sorted([*(p.name for p in one.iterdir()), "distributed.json"])
    assert json.loads((run2 / "distributed.json").read_text())["world_size"] == 2
    assert [r["epoch"] for r in history(run2)] == [1, 2, 3]  # one row per epoch, not one per rank
    assert sorted(p.name for p in (run2 / "checkpoints").iterdir()) == ["best-epoch0002", "epoch0002", "epoch0003"]
    assert out.count("test_loss") == 1 and out.count("epoch 3 ") == 1


def test_nan_on_one_rank_stops_every_rank(tmp_path):
    proc = torchrun(tmp_path, *train_args(hook_config(tmp_path, "nan_at", rank=1, step=5)), "--out", "run")
    assert proc.returncode != 0
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error: non-finite values")]
    assert len(errors) == 2, proc.stdout  # both ranks stopped on the NaN, at the same step; neither hung
    assert all("epoch 1, step 6" in e and "non-finite on ranks" in e for e in errors)
    assert any(e.split(": ", 2)[2].startswith("rank 1: loss is nan") for e in errors)


def test_sigkilled_rank_restarts_from_checkpoint_and_ends_the_same(two, tmp_path):
    marker = tmp_path / "killed"
    kill = hook_config(tmp_path, "kill_once", rank=1, step=STEPS_PER_EPOCH + 6, marker=str(marker))  # mid-epoch 2
    proc = torchrun(tmp_path, *train_args(kill), "--out", "run", restarts=1)
    assert proc.returncode == 0, proc.stdout
    assert marker.exists() and "resuming from run/checkpoints/epoch0001" in proc.stdout
    run2, _ = two
    assert max_weight_diff(run2, tmp_path / "run") == 0.0  # same world size: bit-identical
    m, m2 = metrics(tmp_path / "run"), metrics(run2)
    assert all(m[k] == m2[k] for k in ("test_loss", "test_acc", "val_loss", "val_acc", "steps"))
    assert [r["epoch"] for r in history(tmp_path / "run")] == [1, 2, 3]


def test_deferred_guard_decides_the_same_on_every_rank(tmp_path):
    """The GPU path's guard (fused Adam's found_inf, no host sync per step), here on CPU: rank 1's loss is NaN at
    step 4; with skip both ranks skip that update and keep equal weights, with stop both stop at the same check."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd.append(str(HERE / "ddp_hooks.py"))
    proc = subprocess.run(cmd, cwd=tmp_path, env=env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = sorted(line for line in proc.stdout.splitlines() if line.startswith("rank "))
    assert lines[:2] == ["rank 0 skip: done steps=16 skipped=1 same_weights=True", "rank 0 stop: NonFiniteError: "
                         "non-finite values at epoch 1, step 4 (found at a deferred check, epoch 1 step 8); every "
                         "update from that step on was skipped on the device: stopped before the update "
                         "(train.nonfinite=stop; allowed: stop, skip)"], proc.stdout + proc.stderr  # fmt: skip
    assert [line.replace("rank 1", "rank 0", 1) for line in lines[2:]] == lines[:2], proc.stdout


class _Cut(BaseException):
    """Stands for a kill of a 1-process run."""


class _CutAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, state):
        if state.step == self.step:
            raise _Cut


def test_resume_with_another_world_size_continues_the_run(one, tmp_path):
    with pytest.raises(_Cut):  # one process, stopped mid-epoch 2: its last checkpoint is epoch 1's
        run(load_config(None, OVERRIDES), tmp_path / "run", callbacks=[_CutAt(STEPS_PER_EPOCH + 6)])
    proc = torchrun(tmp_path, "train", "--resume", "run")
    assert proc.returncode == 0, proc.stdout
    assert "this run was trained by 1 process and continues with 2" in proc.stdout
    assert max_weight_diff(one, tmp_path / "run") < TOLERANCE
    assert abs(metrics(one)["test_loss"] - metrics(tmp_path / "run")["test_loss"]) < TOLERANCE
    assert json.loads((tmp_path / "run" / "distributed.json").read_text())["world_size"] == 2


# ----------------------------------------------------------------------------- in-process, no torchrun


def test_a_restarted_job_resumes_its_run_or_trains_it_again_before_its_first_checkpoint(tmp_path, monkeypatch):
    from tricklab.engine.distributed import JOB_FILE, restart_plan

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("config.yaml", "scaler.json", "history.jsonl"):
        (run_dir / name).write_text("{}")
    (run_dir / JOB_FILE).write_text(json.dumps({"world_size": 2, "run_id": "job-a"}))
    assert restart_plan(run_dir) is None  # not restarted: --out is checked as usual
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")
    assert restart_plan(run_dir) is None  # another job's run: refused as usual
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    (run_dir / "checkpoints" / "epoch0001").mkdir(parents=True)
    assert restart_plan(run_dir) == "resume"
    (run_dir / "checkpoints" / "epoch0001").rmdir()
    assert restart_plan(run_dir) == "fresh"  # killed before its first checkpoint: its files go, the run starts again
    assert sorted(p.name for p in run_dir.iterdir()) == []


def test_shards_of_each_global_batch_are_equal_slices_that_cover_it():
    from tricklab.data.base import TensorBatches
    from tricklab.engine.distributed import ShardedBatches

    x, y = torch.arange(45.0).unsqueeze(1), torch.arange(45)
    batches = [TensorBatches(x, y, 16, shuffle=True, generator=torch.Generator().manual_seed(0)) for _ in range(2)]
    shards = [list(ShardedBatches(b, 2, r)) for r, b in enumerate(batches)]  # each rank its own, same-seeded order
    whole = list(TensorBatches(x, y, 16, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert len(ShardedBatches(batches[0], 2, 0)) == len(shards[0]) == 3
    for (x0, _), (x1, _), (xg, _) in zip(*shards, whole, strict=True):
        assert len(x0) == len(x1) == len(xg) // 2
        assert torch.equal(torch.cat([x0, x1]), xg[: 2 * len(x0)])  # 13 = 6 + 6: the 13th sits the step out
    assert len(ShardedBatches(TensorBatches(x[:33], y[:33], 16), 2, 0)) == 2  # a last batch of 1 < 2 is skipped


def test_sync_bn_on_cpu_is_refused_in_one_line(monkeypatch):
    from tricklab.engine import distributed
    from tricklab.errors import ConfigError

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    with pytest.raises(ConfigError, match=r"model.sync_bn = True: needs CUDA .* use model.sync_bn=false"):
        distributed.prepare_model(model, torch.device("cpu"), sync_bn=True)
    assert distributed.prepare_model(model, torch.device("cpu"), sync_bn=False) is model


def test_sync_bn_off_keeps_the_hashes_runs_and_lab_results_had_before_the_key():
    import hashlib

    from tricklab.config import without_neutral_defaults
    from tricklab.lab.store import config_key

    cfg = load_config(None, OVERRIDES)
    before = without_neutral_defaults(cfg.to_dict())  # as written before model.sync_bn (and other new keys) existed
    assert "sync_bn" not in before["model"]
    assert cfg.hash() == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert config_key(cfg.to_dict()) == config_key(before)
    assert load_config(None, [*OVERRIDES, "model.sync_bn=true"]).hash() != cfg.hash()


def test_a_worker_that_left_its_group_exits_at_once_with_its_code_and_its_output_flushed():
    """leave_process: the exit code and the buffered output survive ``os._exit``; the DDP tests above run it."""
    code = (
        "import sys; from tricklab.engine import distributed as d; d._left_group = True; "
        "sys.stdout.write('written before the exit'); d.leave_process(3); print('not reached')"
    )
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (3, "written before the exit")


def test_leave_process_does_nothing_in_a_process_that_joined_no_group():
    from tricklab.engine import distributed

    assert distributed._left_group is False
    assert distributed.leave_process(0) is None  # still here


def test_the_command_line_entry_exits_with_the_commands_code():
    proc = subprocess.run([sys.executable, "-m", "tricklab", "no-such-command"], capture_output=True, text=True)
    assert proc.returncode == 2 and "no-such-command" in proc.stderr
    scripts = Path(sys.executable).parent / "tricklab"
    if scripts.exists():  # the installed console script goes through the same entry
        proc = subprocess.run([str(scripts), "train", "--set", "nope=1"], capture_output=True, text=True)
        assert proc.returncode != 0 and "nope" in proc.stderr
