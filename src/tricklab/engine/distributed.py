"""One run on several processes: DistributedDataParallel under ``torchrun``.

``torchrun --nproc_per_node=N -m tricklab train ...`` starts N copies of ``tricklab train``; each finds its
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT`` in its environment and joins one
process group (:func:`init_from_env`): gloo for CPU tensors, NCCL for CUDA tensors when CUDA is there. With one
process (no torchrun, or ``--nproc_per_node=1``) nothing here is used and training is exactly the single-process
loop.

How the processes (ranks) share one run, so that N processes train the model one process would:

* every rank builds the same model (same ``train.seed``) and draws the same order of **global** batches of
  ``data.batch_size`` examples (the same data-order generator); rank ``r`` trains on the contiguous slice
  ``r·m … (r+1)·m`` of each global batch, ``m = n // N`` (:class:`ShardedBatches`). DDP averages the gradients,
  so with the mean loss over equal shards each update is the one-process update on the whole global batch, up to
  float summation order (Li et al. 2020, "PyTorch Distributed: Experiences on Accelerating Data Parallel
  Training"). A global batch of ``n`` not divisible by ``N`` loses its last ``n mod N`` examples for that step
  (with ``data.batch_size`` divisible by ``N`` only an epoch's last batch can); a batch smaller than ``N`` is
  skipped;
* the train loss and accuracy of each step are summed over ranks (:meth:`DDP.reduce`): the history shows the
  global batch's numbers, the ones one process would show;
* every rank evaluates the whole validation and test sets itself, on identical weights and (after
  :meth:`DDP.epoch_end` broadcasts rank 0's batch-norm statistics) identical buffers, so every rank gets the same
  metrics and early stopping decides the same everywhere; the stop flag is still all-reduced to be sure;
* the NaN/Inf guard's verdicts are all-reduced before it decides (:meth:`DDP.any_nonfinite`, :meth:`DDP.any_rank`,
  :meth:`DDP.name_ranks`): when one rank sees a NaN, every rank stops with
  :class:`~tricklab.engine.guards.NonFiniteError` (or skips the batch), none hangs;
* only rank 0 writes: history, checkpoints (atomically), metrics, final weights, and only it prints; the others
  read the checkpoint rank 0 chose when resuming.

Batch norm: each rank normalises its own shard unless ``model.sync_bn=true`` converts every BatchNorm layer to
``nn.SyncBatchNorm`` (statistics over the global batch; torch runs it on CUDA only). Dropout draws its masks from
the same seed on every rank, so a run with dropout is not bit-comparable to one process (it is statistically
the same method).

Example::

    torchrun --standalone --nproc_per_node=2 -m tricklab train --set data.name=mnist1d --set data.batch_size=256
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from tricklab.engine.strategy import Batches, StepTotals
from tricklab.errors import ConfigError, TrickLabError
from tricklab.events import FitState
from tricklab.outputs import atomic_write


def launched() -> bool:
    """Whether this process was started by torchrun (or anything else that sets its environment)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE"))


def init_from_env() -> bool:
    """Join the process group torchrun describes in the environment; True if this process joined one now.

    Backend: ``cpu:gloo,cuda:nccl`` when CUDA is available (each process on GPU ``LOCAL_RANK``), else ``gloo``.
    Does nothing outside torchrun or when a process group exists already (a script of one's own made it).
    """
    if not launched() or not dist.is_available() or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        if local_rank() < torch.cuda.device_count():  # more processes than GPUs: see check_device
            torch.cuda.set_device(local_rank())
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # torchrun's own store outlives a restart and still holds the failed try's addresses: a restarted rank
        # could connect to a dead peer's port. Each try gets its own keys.
        world_size, rank_ = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False)
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        prefixed = dist.PrefixStore(f"tricklab/attempt_{attempt}", store)
        dist.init_process_group(backend=backend, store=prefixed, rank=rank_, world_size=world_size)
    else:
        dist.init_process_group(backend=backend)
    return True


_left_group = False  # this process joined torchrun's group and left it: end it with leave_process()


class PeerLost(TrickLabError):
    """Another process of this run died, or its connection dropped, while this one waited on it in a collective (an
    all-reduce of gradients, of the loss, of the stop flag): the run cannot go on on this rank either."""


#: What gloo says when the process at the other end of a connection is gone (its transport's errors).
_GLOO_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out waiting")


def peer_lost(error: BaseException) -> PeerLost | None:
    """The one-line :class:`PeerLost` for ``error`` if it is a collective that failed because a peer went away
    (gloo's transport errors, torch's ``DistError``), else None."""
    if not isinstance(error, RuntimeError):
        return None
    text = str(error).strip()
    if not (isinstance(error, getattr(dist, "DistError", ())) or any(s in text for s in _GLOO_LOST)):
        return None
    what = re.sub(r"^\[[^\]]*\] ", "", text.splitlines()[0] if text else type(error).__name__)  # gloo's [file:line]
    what = what.split(". ")[0].rstrip(".")
    n, r = world(), rank()
    who = f"rank {1 - r}" if n == 2 else "another rank"
    return PeerLost(
        f"rank {r} of {n}: lost {who} of this run mid-training ({what}); this rank stops too. The lost rank's own "
        "output, or torchrun's summary, says why it died; with --max-restarts torchrun restarts the job from its "
        "last checkpoint"
    )


@contextmanager
def session() -> Iterator[None]:
    """Join torchrun's process group for the life of a command, and leave it at the end (``destroy_process_group``).

    A collective that fails because another rank died becomes a one-line :class:`PeerLost` (gloo's own error is a
    long C++ and Python traceback). A process that joined a group here should end through :func:`leave_process`
    (the command line's entry does).
    """
    global _left_group
    joined = init_from_env()
    try:
        yield
    except RuntimeError as e:
        lost = peer_lost(e) if joined else None
        if lost is None:
            raise
        raise lost from None
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()
            _left_group = True


def leave_process(code: int | None) -> None:
    """End a torchrun worker that has left its process group: flush, then exit with ``code`` at once.

    Why not the interpreter's own teardown: once ``DistributedDataParallel`` has wrapped a model, torch keeps the
    gloo process group alive after :func:`~torch.distributed.destroy_process_group`: references to the group
    remain after the wrapper is gone, and its ``pt_gloo_runloop`` and ``gloo_tcp_loop`` threads stay. Those threads
    meet the interpreter's teardown, and now and then the process aborts there ("terminate called without an active
    exception", SIGABRT, on a thread that is not Python's) after its work is done and written (how often it was
    seen is in the git history of this function). ``os._exit``
    skips that teardown. Returns (does nothing) in a process that did not join a group through :func:`session`.
    """
    if not _left_group:
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can reach it
            pass
    os._exit(code or 0)  # None, as sys.exit reads it: success


def is_distributed() -> bool:
    """Whether this process is one of several of a run (a process group of more than one)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0, the one that writes and prints (every process when there is only one)."""
    return rank() == 0


def restarted() -> bool:
    """Whether torchrun restarted this worker group after a failure (``--max-restarts``)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def run_id() -> str | None:
    """torchrun's id of this job, the same across its restarts."""
    return os.environ.get("TORCHELASTIC_RUN_ID")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (plain data: it travels pickled between the run's own processes)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank if ``flag`` is true on any."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sync_buffers(model: nn.Module, src: int = 0) -> None:
    """Rank ``src``'s buffers (batch-norm running statistics) on every rank."""
    if is_distributed():
        for b in model.buffers():
            dist.broadcast(b.data, src=src)


def shard_slice(n: int, world_size: int, rank_: int) -> slice | None:
    """Rows of a global batch of ``n`` that rank ``rank_`` of ``world_size`` trains on; None: too small to share.

    Example::

        shard_slice(32, 2, 1)   # slice(16, 32)
        shard_slice(13, 2, 1)   # slice(6, 12): the 13th example sits this step out
        shard_slice(1, 2, 0)    # None
    """
    m = n // world_size
    return slice(rank_ * m, (rank_ + 1) * m) if m > 0 else None


class ShardedBatches:
    """This rank's shard of every global batch of ``batches`` (see :func:`shard_slice`)."""

    def __init__(self, batches, world_size: int, rank_: int):
        self.batches, self.world, self.rank = batches, world_size, rank_
        self.batch_size = getattr(batches, "batch_size", None)

    def _sizes(self) -> list[int] | None:
        b = self.batches
        if not all(hasattr(b, k) for k in ("y", "batch_size", "drop_last", "merge_single")):
            return None
        n, size, k = len(b.y), b.batch_size, len(b)
        return [size if i < k - 1 or b.drop_last else n - i * size for i in range(k)]

    def __len__(self) -> int:
        sizes = self._sizes()
        if sizes is None:
            return len(self.batches)
        return sum(1 for s in sizes if s >= self.world)

    def __iter__(self):
        for x, y in self.batches:
            rows = shard_slice(len(y), self.world, self.rank)
            if rows is not None:
                yield x[rows], y[rows]


class DDP:
    """The :class:`~tricklab.engine.strategy.Strategy` of one rank of several: what
    :func:`~tricklab.engine.loop.fit` does differently here (its ``ddp`` argument)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.world, self.rank = world(), rank()

    def prepare(self, model: nn.Module, batches: Batches) -> tuple[nn.Module, ShardedBatches]:
        """This rank's shard of every global batch, and the model wrapped to run the forward pass through."""
        return self.wrap(model), self.shard(batches)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model wrapped in ``DistributedDataParallel`` (forward through it: backward averages gradients)."""
        ids = [self.device.index if self.device.index is not None else local_rank()]
        return nn.parallel.DistributedDataParallel(model, device_ids=ids if self.device.type == "cuda" else None)

    def shard(self, batches: Batches) -> ShardedBatches:
        return ShardedBatches(batches, self.world, self.rank)

    def reduce(self, loss_sum: torch.Tensor, correct: torch.Tensor, examples: int) -> StepTotals:
        """This step's loss sum and correct count summed over ranks: the global batch's (on the device, no sync);
        its examples: ``world`` equal shards."""
        t = torch.stack([loss_sum.double(), correct.double()])
        dist.all_reduce(t)
        return t[0], t[1].round().long(), examples * self.world

    def epoch_end(self, model: nn.Module) -> None:
        """Before evaluation: rank 0's buffers everywhere (each rank updated its batch-norm statistics on its shard)."""
        sync_buffers(model)

    def agree_stop(self, state: FitState) -> None:
        """Stop on every rank if any rank's callbacks stopped (they decide on identical metrics; this makes sure)."""
        state.stop = any_rank(state.stop, self.device)

    def any_nonfinite(self, total: torch.Tensor) -> torch.Tensor:
        """The guard's check, NaN on every rank if it is non-finite on any (MAX of "non-finite", all-reduced; on
        CUDA it stays on the device, so the deferred guard keeps its step without a host sync)."""
        bad = (~torch.isfinite(total)).float()
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return torch.where(bad > 0, torch.full_like(total, float("nan")), total)

    def any_rank(self, flag: bool, device: torch.device) -> bool:
        return any_rank(flag, device)

    def name_ranks(self, culprit: str | None, device: torch.device) -> str | None:
        """This rank's culprit and the ranks that found one, e.g. ``rank 0: non-finite on rank 1 of 2``."""
        seen = torch.zeros(world(), device=device)
        seen[rank()] = 1.0 if culprit is not None else 0.0
        dist.all_reduce(seen)
        ranks = [r for r, s in enumerate(seen.tolist()) if s > 0]
        if not ranks:
            return None
        where = f"non-finite on rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} of {world()}"
        return f"rank {rank()}: {culprit}; {where}" if culprit is not None else f"rank {rank()}: {where}"

    def __repr__(self) -> str:
        return f"DDP(rank {self.rank} of {self.world}, {str(self.device)!r})"


def check_device(device: torch.device) -> None:
    """Several ranks training on CUDA need a GPU each on their machine (NCCL refuses two ranks on one GPU)."""
    if not is_distributed() or torch.device(device).type != "cuda":
        return
    gpus = torch.cuda.device_count()
    if local_rank() >= gpus:
        raise TrickLabError(
            f"torchrun started process {local_rank()} of this machine, but it has {gpus} GPU{'s' * (gpus != 1)}: "
            f"each process trains on its own GPU (allowed: --nproc_per_node <= {gpus}, or train.device=cpu)"
        )


def prepare_model(model: nn.Module, device: torch.device, sync_bn: bool) -> nn.Module:
    """``model`` with its BatchNorm layers converted to SyncBatchNorm when ``sync_bn`` and there are several ranks
    (after :func:`check_device`).

    SyncBatchNorm runs on CUDA only (torch's own restriction): asked for on another device it is refused here,
    before training, naming the key.
    """
    check_device(device)
    if not (sync_bn and is_distributed()):
        return model
    if torch.device(device).type != "cuda":
        raise ConfigError(
            "model.sync_bn",
            True,
            f"needs CUDA (torch's SyncBatchNorm runs on GPUs only; this run trains on {torch.device(device).type}): "
            "use model.sync_bn=false (each rank normalises its own shard) or model.norm=layer",
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


#: In a run directory trained by several processes: their number and torchrun's job id (a run trained by one
#: process has none).
JOB_FILE = "distributed.json"


def read_job(run_dir: Path) -> dict[str, Any]:
    """The run's :data:`JOB_FILE` (``{"world_size": 1}`` when there is none, or it cannot be read)."""
    try:
        job = json.loads((Path(run_dir) / JOB_FILE).read_text())
        return job if isinstance(job, dict) and isinstance(job.get("world_size"), int) else {"world_size": 1}
    except (OSError, ValueError):
        return {"world_size": 1}


def record_job(run_dir: Path, resume: bool) -> list[str]:
    """Rank 0: write this job's world size and torchrun id into ``run_dir``; notes for the user on resume.

    A run may continue with a different number of processes: ``data.batch_size`` is the global batch whatever
    the world size, and the checkpoint holds the whole (replicated) training state and the global position, so
    the run continues the same training. Its numbers then differ from an uninterrupted run by float summation
    order, and by which examples a global batch not divisible by the world size leaves out.
    """
    path, notes = Path(run_dir) / JOB_FILE, []
    before = read_job(run_dir)["world_size"] if resume else None
    if before is not None and before != world():
        notes.append(
            f"this run was trained by {before} process{'es' if before > 1 else ''} and continues with {world()}: "
            f"data.batch_size stays the global batch, so it continues the same training (its numbers differ "
            "from an uninterrupted run by float summation order only, and by the examples a global batch not "
            "divisible by the number of processes leaves out)"
        )
    if world() > 1 or path.exists():
        job = {"world_size": world(), "run_id": run_id()}
        atomic_write(path, (json.dumps(job) + "\n").encode())
    return notes


def restart_plan(run_dir: str | Path | None) -> str | None:
    """What a torchrun worker restarted after a failure (``--max-restarts``) does with ``train --out DIR``: None if
    DIR is not this job's own run (DIR's :data:`JOB_FILE` names another job or none: the usual checks apply),
    ``"resume"`` from its newest checkpoint, or ``"fresh"`` when the failed try stopped before its first checkpoint
    (rank 0 then removes that try's files and the run starts again in DIR). Rank 0 decides; every rank gets its
    answer."""
    plan = None
    if is_main() and run_dir is not None and restarted() and run_id() is not None:
        run_dir = Path(run_dir)
        if read_job(run_dir).get("run_id") == run_id():
            from tricklab.engine.rundir import CHECKPOINTS, note, run_checkpoints

            plan = "resume" if run_checkpoints(run_dir) else "fresh"
            if plan == "fresh":  # only what tricklab train wrote before its first checkpoint
                for name in ("history.jsonl", "scaler.json", "config.yaml", JOB_FILE):
                    (run_dir / name).unlink(missing_ok=True)
                shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
                note(f"torchrun restarted the job before its first checkpoint: training {str(run_dir)!r} again")
    return broadcast(plan)
