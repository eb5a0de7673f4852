"""Checkpoints: the complete training state, written atomically, verified before it is read, never pickled.

A checkpoint is a folder in ``<run>/checkpoints/`` (``<run>/checkpoints/member<k>/`` for ensemble members)::

    epoch0003/                  after epoch 3 (``epoch0003-batch00017/``: 17 batches into epoch 4)
        tensors.safetensors     every tensor: model, optimizer, callbacks (EMA, SWA, best weights), RNG states
        meta.json               everything else (position, history, versions, config hash), tensors by name
        MANIFEST.json           format, size and sha256 of the two files above, written last
    best-epoch0002/             the same, for the epoch with the best monitored metric

It holds the model, the optimizer, every trick callback's ``state_dict()`` (LR schedule, early stopping,
EMA, SWA), the python/numpy/torch/CUDA RNG states, the data-order generator (as it was at the start of the
running epoch for a checkpoint taken mid-epoch), the position (epoch, batches done, optimizer steps), the
history so far, the config hash and the library versions: enough for a resumed run to end with weights
bit-identical to an uninterrupted one on CPU.

Writing: a hidden ``.tmp-*`` folder beside the target, each file flushed and fsynced, then ``os.replace``
into place and the parent folder fsynced; checkpoints beyond ``keep_last`` are renamed away and deleted only
after the new one is in place. A crash, SIGKILL or full disk during a save leaves the earlier checkpoints
loadable. Reading: the manifest's sizes and sha256 are checked before anything is parsed, and safetensors
and JSON hold data only, so a checkpoint can never run code. There is no pickle anywhere.

Example::

    saver = Checkpointer(run_dir / "checkpoints", callbacks=tricks, generator=g, every=1, keep_last=2)
    fit(model, train, val, callbacks=[*tricks, saver], generator=g)
    path, ckpt, notes = latest_checkpoint(run_dir / "checkpoints")   # later: resume
    state = FitState(model=model, optimizer=opt, epochs=10, device=device)
    saver.restore(ckpt, state); fit(model, train, val, callbacks=[*tricks, saver], generator=g, state=state)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import re
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from tricklab import __version__
from tricklab.errors import ConfigError, TrickLabError, echo
from tricklab.events import ORDER_CHECKPOINT, Callback, EpochTotals, FitState, weights_mismatch
from tricklab.metrics import EPOCH, VAL_ACC

FORMAT = "tricklab-checkpoint/1"
TENSORS, META, MANIFEST = "tensors.safetensors", "meta.json", "MANIFEST.json"
_NAME = re.compile(r"^(best-)?epoch(\d{4,})(?:-batch(\d{5,}))?$")
_TEMP_PREFIXES = (".tmp-", ".trash-")


class CheckpointError(TrickLabError):
    """A checkpoint cannot be written, is missing, corrupt, or does not fit the model or the config."""


class Interrupted(TrickLabError):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint; exit code 128 + signal (130, 143)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


# ------------------------------------------------------------------------------ tensors + JSON, no pickle


def flatten(tree: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state (dicts, lists, tuples, numbers, strings, tensors) into JSON and named tensors.

    Tensors become ``{"$tensor": name}``; tuples ``{"$tuple": [...]}``; dicts whose keys are not all strings
    (optimizer state is keyed by int) ``{"$items": [[k, v], ...]}``; NaN/Inf ``{"$float": "inf"}``; numpy
    arrays ``{"$ndarray": ...}``. Anything else is refused: nothing is ever pickled.
    """
    tensors: dict[str, torch.Tensor] = {}

    def enc(x: Any, path: str) -> Any:
        if isinstance(x, torch.Tensor):
            name = path if path not in tensors else f"{path}#{len(tensors)}"
            tensors[name] = x.detach().to("cpu", copy=True).contiguous()
            return {"$tensor": name}
        if x is None or isinstance(x, bool | int | str):
            return x
        if isinstance(x, float):
            return x if math.isfinite(x) else {"$float": repr(x)}
        if isinstance(x, np.generic):
            return enc(x.item(), path)
        if isinstance(x, np.ndarray):
            return {"$ndarray": {"dtype": str(x.dtype), "shape": list(x.shape), "data": x.ravel().tolist()}}
        if isinstance(x, tuple):
            return {"$tuple": [enc(v, f"{path}/{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [enc(v, f"{path}/{i}") for i, v in enumerate(x)]
        if isinstance(x, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in x):
                return {k: enc(v, f"{path}/{k}") for k, v in x.items()}
            return {"$items": [[enc(k, f"{path}/key"), enc(v, f"{path}/{k}")] for k, v in x.items()]}
        raise CheckpointError(f"cannot checkpoint {path!r}: a {type(x).__name__} is neither a tensor nor plain data")

    return enc(tree, ""), tensors


def unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`flatten`."""
    if isinstance(skeleton, list):
        return [unflatten(v, tensors) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if len(skeleton) == 1:
        ((tag, value),) = skeleton.items()
        if tag == "$tensor":
            if value not in tensors:
                raise CheckpointError(f"checkpoint refers to a tensor {value!r} it does not hold")
            return tensors[value]
        if tag == "$tuple":
            return tuple(unflatten(v, tensors) for v in value)
        if tag == "$items":
            return {unflatten(k, tensors): unflatten(v, tensors) for k, v in value}
        if tag == "$float":
            return float(value)
        if tag == "$ndarray":
            dtype = np.dtype(value["dtype"])
            if dtype.kind not in "biuf":  # flatten writes the numbers of RNG states, nothing else
                raise CheckpointError(f"an array of dtype {echo(value['dtype'])}: only numbers are read")
            return np.array(value["data"], dtype=dtype).reshape(value["shape"])
    return {k: unflatten(v, tensors) for k, v in skeleton.items()}


# ------------------------------------------------------------------------------------- atomic folders


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on some platforms; the files themselves are synced
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Rename ``path`` to a hidden trash name (atomic: it stops counting as a checkpoint), then delete it."""
    trash = path.parent / f".trash-{path.name}-{secrets.token_hex(4)}"
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _install(tmp: Path, path: Path) -> None:
    if path.exists():  # e.g. a corrupt checkpoint of the same position, left by an earlier crash
        _remove(path)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_checkpoint(path: Path, tree: dict[str, Any], *, like: Path | None = None) -> Path:
    """Write ``tree`` atomically as checkpoint folder ``path`` (or hard-link the files of checkpoint ``like``).

    Raises :class:`CheckpointError` naming ``path`` if the disk is full or not writable; the checkpoints
    already there stay as they were.
    """
    path = Path(path)
    tmp = path.parent / f".tmp-{path.name}-{secrets.token_hex(4)}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        if like is not None:
            for name in (TENSORS, META, MANIFEST):
                try:
                    os.link(like / name, tmp / name)
                except OSError:
                    shutil.copyfile(like / name, tmp / name)
        else:
            skeleton, tensors = flatten(tree)
            blobs = {TENSORS: save_safetensors_bytes(tensors), META: json.dumps(skeleton, allow_nan=False).encode()}
            files = {name: {"bytes": len(b), "sha256": _sha256(b)} for name, b in blobs.items()}
            for name, data in blobs.items():
                _write_synced(tmp / name, data)
            _write_synced(tmp / MANIFEST, json.dumps({"format": FORMAT, "files": files}, indent=1).encode())
        _fsync_dir(tmp)
        _install(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"cannot write checkpoint {str(path)!r}: {e.strerror or e}; the earlier checkpoints are intact"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# ------------------------------------------------------------------------------ schemas of what is read
#
# A manifest or meta.json is outside input like a config: a forged one (its sha256 recomputed) must fail with
# one line naming the file, never a traceback. Both are validated as strict pydantic models, extra keys refused.

#: The largest MANIFEST.json read (a real one is about 250 bytes).
MAX_MANIFEST_BYTES = 64 * 1024
#: The largest epoch or position a checkpoint may claim (train.epochs is at most 10⁶).
MAX_POSITION = 2**53


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, arbitrary_types_allowed=True)


class _FileEntry(_Schema):
    bytes: int = Field(ge=0, lt=2**63)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class _Files(_Schema):
    tensors: _FileEntry = Field(alias=TENSORS)
    meta: _FileEntry = Field(alias=META)


class _Manifest(_Schema):
    format: Literal["tricklab-checkpoint/1"]
    files: _Files


class _Position(_Schema):
    epoch: int = Field(ge=0, le=MAX_POSITION)
    batches_done: int = Field(ge=0, le=MAX_POSITION)
    step: int = Field(ge=0, le=MAX_POSITION)


class _Totals(_Schema):
    lr: float
    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int = Field(ge=0)
    elapsed_s: float = Field(ge=0, allow_inf_nan=False)


class _Fit(_Schema):
    history: list[dict[str, int | float | str | bool | None]]
    stop: bool
    stop_reason: str | None
    nonfinite_skipped: int = Field(ge=0)
    totals: _Totals | None


class _Optimizer(_Schema):
    state: dict[int, dict[str, Any]]
    param_groups: list[dict[str, Any]] = Field(min_length=1)

    @field_validator("param_groups")
    @classmethod
    def _params(cls, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for group in groups:
            params = group.get("params")
            if not isinstance(params, list) or not all(type(i) is int for i in params):
                raise ValueError("every parameter group needs 'params': a list of integers")
        return groups


class _Best(_Schema):
    best: float | None
    best_epoch: int | None = Field(ge=0, le=MAX_POSITION)


class _Rng(_Schema):
    python: tuple[Any, ...]
    numpy: dict[str, Any]
    torch: torch.Tensor
    cuda: list[torch.Tensor]
    data_order: torch.Tensor | None

    @model_validator(mode="after")
    def _settable(self) -> _Rng:
        """Each state is set on a throwaway generator of its kind: what would fail on resume fails here."""
        try:
            random.Random().setstate(self.python)
        except Exception as e:  # noqa: BLE001 - whatever a throwaway generator refuses
            raise ValueError(f"python: not a random.getstate() state ({type(e).__name__}: {e})") from None
        try:
            np.random.RandomState().set_state(self.numpy)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"numpy: not a numpy.random.get_state() state ({type(e).__name__}: {e})") from None
        for name, t in (("torch", self.torch), ("data_order", self.data_order), *(("cuda", c) for c in self.cuda)):
            if t is None:
                continue
            if t.dtype != torch.uint8 or t.dim() != 1:
                raise ValueError(f"{name}: not a generator state (a 1-D uint8 tensor)")
            if name != "cuda":
                try:
                    torch.Generator().set_state(t)
                except Exception as e:  # noqa: BLE001
                    raise ValueError(f"{name}: not a torch generator state ({e})") from None
        return self


class _State(_Schema):
    format: Literal["tricklab-checkpoint/1"]
    versions: dict[str, str]
    config_hash: str | None
    position: _Position
    fit: _Fit
    model: dict[str, torch.Tensor]
    optimizer: _Optimizer
    callbacks: dict[str, dict[str, Any]]
    checkpointer: _Best
    rng: _Rng


def _schema_error(err: ValidationError, path: Path, name: str) -> CheckpointError:
    e = err.errors(include_url=False)[0]
    key = ".".join(str(p) for p in e["loc"]) or "(top level)"
    shown = e["type"] != "missing" and not isinstance(e["input"], dict)  # a section's own check names the part
    got = f" = {echo(e['input'])}" if shown else ""
    why = str(e["ctx"]["error"]) if e["type"] == "value_error" else e["msg"]
    return CheckpointError(
        f"checkpoint {str(path)!r} has an invalid {name}: {key}{got}: {why}; it was not written by tricklab "
        "or was modified"
    )


def check_state(tree: dict[str, Any], path: Path) -> dict[str, Any]:
    """``tree`` if it is a complete training state (:meth:`Checkpointer.snapshot`) of the right types and
    ranges, else a one-line :class:`CheckpointError` naming ``path``, the key and the bad value."""
    try:
        _State.model_validate(tree)
    except ValidationError as err:
        raise _schema_error(err, path, META) from None
    return tree


def _verified_blobs(path: Path) -> dict[str, bytes]:
    """The checkpoint's files, after checking sizes and sha256 against its manifest (nothing parsed before)."""
    try:
        with open(path / MANIFEST, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ValueError(f"larger than {MAX_MANIFEST_BYTES} bytes")
        manifest = _Manifest.model_validate(json.loads(raw))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} is incomplete: no {MANIFEST}") from None
    except ValidationError as err:
        raise _schema_error(err, path, MANIFEST) from None
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r} has an unreadable {MANIFEST} ({e})") from None
    blobs = {}
    for name, want in ((TENSORS, manifest.files.tensors), (META, manifest.files.meta)):
        try:
            with open(path / name, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                data = f.read(want.bytes + 1) if size == want.bytes else b""
        except OSError as e:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is incomplete: cannot read {name} ({e.strerror})"
            ) from None
        if size != want.bytes or len(data) != want.bytes or _sha256(data) != want.sha256:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is corrupt: {name} does not match the sha256 in its {MANIFEST} "
                f"({size} bytes, expected {want.bytes}); truncated or modified"
            )
        blobs[name] = data
    return blobs


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Verify checkpoint folder ``path`` against its manifest, then read it (safetensors + JSON only)."""
    path = Path(path)
    blobs = _verified_blobs(path)
    try:
        tensors = load_safetensors_bytes(blobs[TENSORS])
        skeleton = json.loads(blobs[META])
        tree = unflatten(skeleton, tensors)
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: {e}") from None
    except Exception as e:  # safetensors' own error type; a forged $ndarray, $float or $items; nesting too deep
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be parsed ({type(e).__name__}: {e})") from None
    if not isinstance(tree, dict) or tree.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a {FORMAT} checkpoint")
    return tree


def _position(path: Path) -> tuple[int, int, bool]:
    m = _NAME.match(path.name)
    assert m is not None
    return int(m.group(2)), int(m.group(3) or 0), m.group(1) is None


def list_checkpoints(folder: Path) -> list[Path]:
    """The checkpoint folders in ``folder``, oldest position first (best-* before a regular one of the same)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and _NAME.match(p.name)), key=_position)


def latest_checkpoint(
    folder: Path, check: Callable[[dict[str, Any], Path], dict[str, Any]] | None = None
) -> tuple[Path, dict[str, Any], list[str]] | None:
    """The newest checkpoint in ``folder`` that verifies, parses and passes ``check`` (e.g. :func:`check_state`,
    which :meth:`Checkpointer.resume_latest` uses), and notes on newer ones that did not.

    None if ``folder`` holds no checkpoint; :class:`CheckpointError` listing each problem if none is valid.
    """
    problems: list[str] = []
    for path in reversed(list_checkpoints(folder)):
        try:
            tree = read_checkpoint(path)
            if check is not None:
                tree = check(tree, path)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        notes = [f"{p}; skipped it, using the previous checkpoint" for p in problems]
        return path, tree, notes
    if problems:
        raise CheckpointError(f"no valid checkpoint in {str(folder)!r}: " + " | ".join(problems))
    return None


def load_model_weights(model: nn.Module, path: str | Path) -> None:
    """Load a ``model.safetensors`` file into ``model``: safetensors only, keys and shapes checked first."""
    path = Path(path)
    try:
        weights = load_safetensors_bytes(path.read_bytes())
    except OSError as e:
        raise CheckpointError(f"cannot read model weights {str(path)!r}: {e.strerror or e}") from None
    except Exception as e:
        raise CheckpointError(f"{str(path)!r} is not a safetensors file ({type(e).__name__}: {e})") from None
    check_weights(model, weights, str(path))
    model.load_state_dict(weights)


def _listed(keys: Sequence[str], limit: int = 8) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _same_kind(own: Any, saved: Any) -> bool:
    """Whether ``saved`` can stand where an optimizer holds ``own``: a finite number for a number, a flag (or
    None) for a flag or None, a sequence of as many for a sequence, a string for a string."""
    if own is None or isinstance(own, bool):
        return saved is None or isinstance(saved, bool)
    if isinstance(own, int | float):
        return isinstance(saved, int | float) and not isinstance(saved, bool) and math.isfinite(saved)
    if isinstance(own, tuple | list):
        return (
            isinstance(saved, tuple | list)
            and len(saved) == len(own)
            and all(_same_kind(a, b) for a, b in zip(own, saved, strict=True))
        )
    if isinstance(own, str):
        return isinstance(saved, str)
    return True  # a tensor hyper-parameter (a capturable LR): torch checks it


def check_weights(model: nn.Module, weights: dict[str, torch.Tensor], what: str) -> None:
    """Refuse ``weights`` of a different model (keys, shapes, dtypes listed); ``model`` is left untouched."""
    mismatch = weights_mismatch(model.state_dict(), weights)
    if mismatch is not None:
        raise CheckpointError(f"{what} holds {mismatch}")


def optimizer_mismatch(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> str | None:
    """How a saved ``optimizer.state_dict()`` does not fit ``optimizer``, or None.

    Its parameter groups must hold as many parameters each, and every hyper-parameter of this optimizer's groups
    with a value of the same kind (a finite number for a number, a flag for a flag, a pair for betas); its
    per-parameter state must belong to those parameters, and every tensor in it be the step count (one number) or
    a floating tensor of its parameter's shape: what every optimizer of tricklab keeps (SGD's momentum, Adagrad's
    sums, RMSprop's and Adam's moments).
    """
    own_groups, saved_groups = optimizer.param_groups, saved["param_groups"]
    own_sizes, saved_sizes = [len(g["params"]) for g in own_groups], [len(g["params"]) for g in saved_groups]
    if own_sizes != saved_sizes:
        return f"optimizer.param_groups hold {saved_sizes} parameters, this run's optimizer {own_sizes}"
    for k, (own, group) in enumerate(zip(own_groups, saved_groups, strict=True)):
        for key, value in own.items():
            if key == "params":
                continue
            if key not in group:
                return f"optimizer.param_groups.{k}.{key} is missing"
            if not _same_kind(value, group[key]):
                return f"optimizer.param_groups.{k}.{key} = {echo(group[key])}, where this optimizer has {echo(value)}"
    ids = [i for g in saved_groups for i in g["params"]]
    if len(set(ids)) != len(ids):
        return "optimizer.param_groups name a parameter twice"
    params = dict(zip(ids, (p for g in own_groups for p in g["params"]), strict=True))
    for i, entry in saved["state"].items():
        if i not in params:
            return f"optimizer.state.{i}: no parameter {i} in optimizer.param_groups"
        if not isinstance(entry, dict):
            return f"optimizer.state.{i} = {echo(entry)}: not a dict"
        p = params[i]
        for key, value in entry.items():
            if not isinstance(value, torch.Tensor):
                continue
            where = f"optimizer.state.{i}.{key}"
            if key == "step":
                if value.numel() != 1 or not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
                    return f"{where}: a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
                continue
            if tuple(value.shape) != tuple(p.shape):
                return f"{where} has shape {tuple(value.shape)}, its parameter {tuple(p.shape)}"
            if not value.is_floating_point():
                return f"{where} is {str(value.dtype).removeprefix('torch.')}, not floating point"
    return None


# ------------------------------------------------------------------------------------------- RNG states


def rng_state(data_order: torch.Tensor | None) -> dict[str, Any]:
    """Python, numpy, torch (CPU and every CUDA device) RNG states, and the data-order generator's."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(legacy=False),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data_order": data_order,
    }


def set_rng_state(rng: dict[str, Any], generator: torch.Generator | None) -> list[str]:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    notes = []
    if rng["cuda"]:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(rng["cuda"]):
            torch.cuda.set_rng_state_all(rng["cuda"])
        else:
            notes.append(f"the checkpoint has {len(rng['cuda'])} CUDA RNG states; this machine cannot restore them")
    if generator is not None and rng["data_order"] is not None:
        generator.set_state(rng["data_order"])
    return notes


def versions() -> dict[str, str]:
    return {"tricklab": __version__, "torch": torch.__version__, "python": platform.python_version()}


# ------------------------------------------------------------------------------------- stop on signals


class StopSignals:
    """While active, SIGINT/SIGTERM ask training to stop at the next step boundary (see :class:`Checkpointer`).

    The first signal only sets :attr:`signum`; a second one exits at once with 128 + signal. That is safe:
    every file is written atomically, so an interrupted write leaves only a hidden temporary behind.
    Installed only in the main thread (elsewhere this does nothing); the previous handlers come back on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            os.write(2, f"\n{name} again: exiting now; the checkpoints written so far are intact\n".encode())
            os._exit(128 + signum)
        self.signum = signum
        os.write(2, f"\n{name}: stopping after this step, writing a checkpoint ({name} again exits now)\n".encode())


# --------------------------------------------------------------------------------------- the callback


class Checkpointer(Callback):
    """Write checkpoints every ``every`` epochs, at the end, of the best epoch, and on a stop signal.

    Events: ``on_epoch_end`` (runs last, ``ORDER_CHECKPOINT`` = 1100) writes ``epoch<N>`` when
    ``N % every == 0``, at the last epoch or when a callback stopped the run, and ``best-epoch<N>`` when
    ``monitor`` improved (``val_loss`` is minimised, anything else maximised); only the last ``keep_last``
    regular checkpoints and the newest best are kept. ``on_step_end``: if ``signals`` caught SIGINT/SIGTERM,
    writes ``epoch<N-1>-batch<B>`` and raises :class:`Interrupted`. ``on_epoch_start`` remembers the
    data-order ``generator`` state, so a mid-epoch checkpoint replays the same batch order. ``callbacks``: the
    tricks whose ``state_dict()`` is saved. :meth:`restore` puts a checkpoint back into a :class:`FitState`
    for ``fit(state=...)`` once :meth:`check_fit` found that it fits the run; ``steps_per_epoch``: the most batches
    an epoch of the run trains (None: the state's own, if it has one), which bounds a checkpoint's position;
    ``config_file``, the file the config to resume with was read from, is named when it
    no longer matches the checkpoint's config hash (it was edited after the run started). ``write=False`` (the
    ranks other than 0 of a torchrun job): restore only; write nothing, and on a stop signal stop without saving.
    """

    order = ORDER_CHECKPOINT

    def __init__(
        self,
        folder: str | Path,
        *,
        callbacks: Sequence[Callback] = (),
        generator: torch.Generator | None = None,
        every: int = 1,
        keep_last: int = 2,
        monitor: str = VAL_ACC,
        config_hash: str | None = None,
        signals: StopSignals | None = None,
        resume_hint: str = "",
        config_file: str | Path | None = None,
        write: bool = True,
        steps_per_epoch: int | None = None,
    ):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError("checkpoint.every", every, "must be an integer >= 1")
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise ConfigError("checkpoint.keep_last", keep_last, "must be an integer >= 1")
        self.folder, self.callbacks, self.generator = Path(folder), list(callbacks), generator
        self.every, self.keep_last, self.monitor = every, keep_last, monitor
        self.config_hash, self.signals, self.resume_hint = config_hash, signals, resume_hint
        self.config_file = config_file  # where the config to resume with was read from, for the mismatch message
        self.write = write  # DDP: False on ranks other than 0
        self.steps_per_epoch = steps_per_epoch  # at most this many batches an epoch: bounds a checkpoint's position
        self.best: float | None = None
        self.best_epoch: int | None = None
        self._epoch_order: torch.Tensor | None = None  # data-order generator state at the running epoch's start
        self._param_groups: list[dict[str, Any]] | None = None  # restored optimizer hyper-parameters

    # events

    def on_fit_start(self, state: FitState) -> None:
        if self._param_groups is not None:  # callbacks that rebuilt schedulers may have reset LR or betas
            for group, saved in zip(state.optimizer.param_groups, self._param_groups, strict=True):
                group.update({k: v for k, v in saved.items() if k != "params"})
            self._param_groups = None
        if self.write and self.folder.is_dir():  # leftovers of a save that a crash or a second signal cut short
            for p in self.folder.iterdir():
                if p.name.startswith(_TEMP_PREFIXES):
                    shutil.rmtree(p, ignore_errors=True)

    def on_epoch_start(self, state: FitState) -> None:
        if self.generator is not None:
            self._epoch_order = self.generator.get_state()

    def on_step_end(self, state: FitState) -> None:
        if self.signals is not None and self.signals.signum is not None:
            self._interrupt(state, self.save(state) if self.write else None)

    def on_epoch_end(self, state: FitState) -> None:
        improved = self._improved(state)
        signaled = self.signals is not None and self.signals.signum is not None
        saved = None
        if not self.write:  # DDP: rank 0 writes
            if signaled:
                self._interrupt(state, None)
            return
        if state.epoch % self.every == 0 or state.epoch >= state.epochs or state.stop or signaled:
            saved = self.save(state)
        if improved:
            self.save(state, best=True, like=saved)
        if signaled:
            self._interrupt(state, saved)

    # saving

    def _improved(self, state: FitState) -> bool:
        value = state.metrics.get(self.monitor)
        if value is None or not math.isfinite(value):
            return False
        if self.best is not None and not (value < self.best if self.monitor.endswith("loss") else value > self.best):
            return False
        self.best, self.best_epoch = float(value), state.epoch
        return True

    def snapshot(self, state: FitState) -> dict[str, Any]:
        """The complete state as a tree of plain data and tensors."""
        mid = state.batches_done > 0
        t = state.totals
        totals = None
        if mid and t is not None:
            elapsed = time.perf_counter() - t.started
            totals = {"lr": t.lr, "loss_sum": t.loss_sum, "correct": t.correct, "seen": t.seen, "elapsed_s": elapsed}
        order = self._epoch_order if mid else self.generator.get_state() if self.generator is not None else None
        return {
            "format": FORMAT,
            "versions": versions(),
            "config_hash": self.config_hash,
            "position": {"epoch": state.epoch, "batches_done": state.batches_done, "step": state.step},
            "fit": {
                "history": state.history,
                "stop": state.stop,
                "stop_reason": state.stop_reason,
                "nonfinite_skipped": state.nonfinite_skipped,
                "totals": totals,
            },
            "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "callbacks": {self._key(i, cb): cb.state_dict() for i, cb in enumerate(self.callbacks)},
            "checkpointer": {"best": self.best, "best_epoch": self.best_epoch},
            "rng": rng_state(order),
        }

    def save(self, state: FitState, *, best: bool = False, like: Path | None = None) -> Path:
        """Write the state now (``best``: as ``best-epoch<N>``, hard-linking ``like`` if given); prune old ones."""
        if state.batches_done > 0:
            name = f"epoch{state.epoch - 1:04d}-batch{state.batches_done:05d}"
        else:
            name = f"epoch{state.epoch:04d}"
        name = f"best-{name}" if best else name
        path = write_checkpoint(self.folder / name, {} if like else self.snapshot(state), like=like)
        self._prune(best)
        return path

    def _prune(self, best: bool) -> None:
        kind = [p for p in list_checkpoints(self.folder) if p.name.startswith("best-") == best]
        for old in kind[: -1 if best else -self.keep_last]:
            _remove(old)

    def _interrupt(self, state: FitState, path: Path | None) -> None:
        assert self.signals is not None and self.signals.signum is not None
        name = signal.Signals(self.signals.signum).name
        batch = state.batches_done or state.steps_per_epoch
        where = f"batch {batch} of epoch {state.epoch} (step {state.step})"
        hint = f"; continue with: {self.resume_hint}" if self.resume_hint else ""
        saved = f"checkpoint {str(path)!r}" if path is not None else "rank 0 writes the checkpoint"
        raise Interrupted(f"stopped by {name} after {where}; {saved}{hint}", self.signals.signum)

    @staticmethod
    def _key(i: int, cb: Callback) -> str:
        return f"{i}:{type(cb).__name__}"

    # restoring

    def check_fit(self, ckpt: dict[str, Any], state: FitState, path: Path | None = None) -> None:
        """Refuse checkpoint ``ckpt`` (read from ``path``) unless it fits this run: one line naming the file and the
        first mismatch (:class:`CheckpointError`); nothing is loaded.

        A checkpoint passes :func:`check_state` (its types and ranges) and its sha256 even when forged with a
        recomputed manifest, so what it claims is checked against the run it is loaded into: its position against
        the config (``epoch`` ≤ ``state.epochs``; ``batches_done`` ≤ the batches of an epoch; ``step`` no more
        than the batches trained by then), its history (one row per finished epoch, numbered 1, 2, ...), its
        best epoch (one that finished), and every tensor against what it is loaded into: the model's (names,
        shapes, dtypes), the optimizer's (:func:`optimizer_mismatch`) and each callback's
        (:meth:`~tricklab.events.Callback.check_state_dict`).
        """
        problem = self._mismatch(ckpt, state)
        if problem is not None:
            where = f"checkpoint {str(path)!r}" if path is not None else "the checkpoint"
            raise CheckpointError(
                f"{where} does not fit this run: {problem}; it was not written by tricklab for this config, or was "
                "modified"
            )

    def _mismatch(self, ckpt: dict[str, Any], state: FitState) -> str | None:
        pos, fit = ckpt["position"], ckpt["fit"]
        epoch, batches, step = pos["epoch"], pos["batches_done"], pos["step"]
        if epoch > state.epochs:
            return f"position.epoch = {epoch}, but this run trains {state.epochs} epochs (train.epochs)"
        per_epoch = self.steps_per_epoch or state.steps_per_epoch
        if batches > 0 and epoch == 0:
            return f"position.batches_done = {batches} before the first epoch started (position.epoch = 0)"
        if per_epoch is not None and batches > per_epoch:
            return f"position.batches_done = {batches}, but an epoch of this run has {per_epoch} batches"
        finished = epoch - (batches > 0)
        if per_epoch is not None and step > finished * per_epoch + batches:
            return f"position.step = {step}, more than the {finished * per_epoch + batches} batches trained by then"
        epochs = [row.get(EPOCH) for row in fit["history"]]
        if epochs != list(range(1, finished + 1)):
            return (
                f"fit.history holds epochs {_listed([str(e) for e in epochs]) or 'none'}, but position.epoch = "
                f"{epoch} says {finished} finished"
            )
        if batches > 0 and fit["totals"] is None:
            return "fit.totals = None, but a checkpoint taken within an epoch holds the running epoch's totals"
        best_epoch = ckpt["checkpointer"]["best_epoch"]
        if best_epoch is not None and not 1 <= best_epoch <= finished:
            return f"checkpointer.best_epoch = {best_epoch}, but {finished} epochs finished"
        mismatch = weights_mismatch(state.model.state_dict(), ckpt["model"])
        if mismatch is not None:
            return f"model: {mismatch}"
        mismatch = optimizer_mismatch(state.optimizer, ckpt["optimizer"])
        if mismatch is not None:
            return mismatch
        keys = [self._key(i, cb) for i, cb in enumerate(self.callbacks)]
        if list(ckpt["callbacks"]) != keys:
            return f"callbacks: it holds {list(ckpt['callbacks'])}, this run has {keys}"
        for key, cb, saved in zip(keys, self.callbacks, ckpt["callbacks"].values(), strict=True):
            mismatch = cb.check_state_dict(saved, state.model)
            if mismatch is not None:
                return f"callbacks.{key}: {mismatch}"
        return None

    def resume_latest(self, state: FitState) -> tuple[Path, list[str]] | None:
        """Restore the newest valid checkpoint of :attr:`folder` into ``state``; None if there is none.

        Newer checkpoints that failed verification are removed (noted), so that they can neither shadow the
        ones written from here on nor survive pruning in their place.
        """

        def fits(tree: dict[str, Any], path: Path) -> dict[str, Any]:
            tree = check_state(tree, path)
            if not self.config_hash or tree["config_hash"] == self.config_hash:  # else restore says the config changed
                self.check_fit(tree, state, path)
            return tree

        found = latest_checkpoint(self.folder, check=fits)
        if found is None:
            return None
        path, ckpt, notes = found
        try:
            notes += self.restore(ckpt, state, path)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            # a state the schema cannot see into (optimizer or trick state) that does not fit this run
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not fit this run ({type(e).__name__}: {e}); it was not written by "
                "tricklab for this config, or was modified"
            ) from None
        for newer in list_checkpoints(self.folder):
            if _position(newer)[:2] > _position(path)[:2]:
                _remove(newer)
        return path, notes

    def restore(self, ckpt: dict[str, Any], state: FitState, path: Path | None = None) -> list[str]:
        """Put checkpoint ``ckpt`` (read from ``path``) into ``state`` (its model, optimizer), the callbacks, RNGs
        and generator.

        Everything is checked before anything changes: a checkpoint of another config, or one that does not fit
        this run (:meth:`check_fit`), is refused with :class:`CheckpointError` and the model is left untouched.
        Returns notes for the user (e.g. different library versions).
        """
        notes = []
        if self.config_hash and ckpt.get("config_hash") != self.config_hash:
            hashes = f"config hash {self.config_hash}, the checkpoint's {ckpt.get('config_hash')}"
            if self.config_file is not None:
                raise CheckpointError(
                    f"{str(self.config_file)!r} differs from the config the checkpoint was written with ({hashes}): "
                    "it was changed after the run started; put its values back to resume, or train the changed "
                    "config into a new run directory with --out"
                )
            raise CheckpointError(
                f"this config differs from the one the checkpoint was written with ({hashes}); resume with the "
                "config stored in the run directory"
            )
        self.check_fit(ckpt, state, path)
        saved_groups = ckpt["optimizer"]["param_groups"]
        if ckpt["versions"] != versions():
            notes.append(f"checkpoint written with {ckpt['versions']}, resuming with {versions()}")

        state.model.load_state_dict(ckpt["model"])
        state.optimizer.load_state_dict(ckpt["optimizer"])
        self._param_groups = saved_groups
        for cb, saved in zip(self.callbacks, ckpt["callbacks"].values(), strict=True):
            cb.load_state_dict(saved)
        pos, fit = ckpt["position"], ckpt["fit"]
        state.epoch, state.batches_done, state.step = pos["epoch"], pos["batches_done"], pos["step"]
        state.history, state.stop, state.stop_reason = fit["history"], fit["stop"], fit["stop_reason"]
        state.nonfinite_skipped = fit["nonfinite_skipped"]
        if (t := fit["totals"]) is not None:
            state.totals = EpochTotals(
                t["lr"],
                t["loss_sum"].to(state.device),
                t["correct"].to(state.device),
                t["seen"],
                time.perf_counter() - t["elapsed_s"],
            )
        self.best, self.best_epoch = ckpt["checkpointer"]["best"], ckpt["checkpointer"]["best_epoch"]
        self._epoch_order = ckpt["rng"]["data_order"]
        return notes + set_rng_state(ckpt["rng"], self.generator)
