"""The doctor as a PyTorch Lightning callback: ``Trainer(callbacks=[TrickLabDoctor()])``.

It runs a :class:`~tricklab.diagnostics.anywhere.Doctor` over ``trainer.fit``, driven by Lightning's own hooks:

=============================  ======================================================================================
Lightning hook                 the doctor
=============================  ======================================================================================
``on_train_start``             hooks the LightningModule (or its submodule ``module``) and reads the optimizer's LR
``on_before_backward``         the loss's autograd graph, read for a loss that broadcast output and target
``on_before_optimizer_step``   after backward, before the update (and before Lightning's gradient clipping): the
                               global gradient norm, the first non-finite value, the weights before the update
``on_train_batch_end``         the step's end (update ratios), and the batch loss from ``training_step``'s output
``on_validation_epoch_end``    ``val_loss`` / ``val_acc`` when logged (``self.log("val_loss", ...)``)
``on_train_end``               removes the hooks, prints the verdicts (rank 0), writes the report to ``save_dir``
=============================  ======================================================================================

The probes hook the forward of the module they watch: ``training_step`` must call it (``self(x)`` for the
LightningModule itself; with ``module="net"``, ``self.net(x)``). A run where it is never called fails at the
first step, in one line, rather than looking healthy.

Example::

    doctor = TrickLabDoctor(every=10, save_dir="runs/doctor")
    lightning.Trainer(max_epochs=1, callbacks=[doctor]).fit(lit_model, train_loader)
    [v.name for v in doctor.verdicts()]          # ['vanishing_gradients', 'saturation']
    doctor.prescription()["init.scheme"]         # the fix in PyTorch terms
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from tricklab.diagnostics.anywhere import Doctor
from tricklab.diagnostics.probes import is_class_labels
from tricklab.diagnostics.verdicts import Verdict
from tricklab.errors import TrickLabError
from tricklab.metrics import VAL_ACC, VAL_LOSS

try:
    import lightning.pytorch as pl
except ImportError:  # one line, naming the extra (the base install does not need Lightning)
    raise ImportError(
        "tricklab.integrations.lightning needs PyTorch Lightning: pip install 'tricklab[lightning]'"
    ) from None


class TrickLabDoctor(pl.Callback):
    """Diagnose a Lightning run: the verdicts of ``tricklab doctor``, with the fix in PyTorch terms.

    ``every``: sample the per-layer statistics every ``every`` optimizer steps. ``module``: the attribute name
    of the submodule that ``training_step`` calls (default: the LightningModule, called as ``self(x)``).
    ``save_dir``: write the HTML report there at the end. ``verbose``: print the report at the end (rank 0).
    ``val_loss`` / ``val_acc``: the logged metric names read after each validation epoch.
    """

    def __init__(
        self,
        every: int = 10,
        *,
        module: str | None = None,
        save_dir: str | Path | None = None,
        verbose: bool = True,
        val_loss: str = VAL_LOSS,
        val_acc: str = VAL_ACC,
    ):
        self.every, self.module, self.verbose = every, module, verbose
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.val_loss, self.val_acc = val_loss, val_acc
        self.doctor: Doctor | None = None
        self.page: Path | None = None  # the report's index.html once written
        self._stepped = False

    # --- Lightning's hooks ------------------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        watched = self._watched(pl_module)
        optimizers = trainer.optimizers
        optimizer = optimizers[0] if len(optimizers) == 1 else None  # several (GANs): no LR in the settings
        self.doctor = Doctor(watched, optimizer, self.every, driven=True).attach()

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        if self.doctor is not None:
            self.doctor.before_backward(loss)  # its graph: a loss that broadcast output and target

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self.doctor is not None:
            self.doctor.after_backward()
            self._stepped = True

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.doctor is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, Tensor) and loss.numel() == 1:
            self.doctor.observe(loss=loss, labels=_labels(batch))
        if self._stepped:  # not on the batches that only accumulate gradients
            self._stepped = False
            self.doctor.after_step()
            if self.doctor.steps == 0 and not self.doctor.forward_steps:  # an eval-mode forward is a verdict
                name = f"{type(pl_module).__name__}.{self.module}" if self.module else type(pl_module).__name__
                raise TrickLabError(
                    f"TrickLabDoctor: training_step did not call {name}'s forward; call it there (self(x)), or "
                    "pass TrickLabDoctor(module='net') naming the submodule that training_step calls"
                )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.doctor is None or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        seen = {
            k: metrics[name] for k, name in (("val_loss", self.val_loss), ("val_acc", self.val_acc)) if name in metrics
        }
        if seen:
            self.doctor.observe(**seen)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.doctor is None:
            return
        self.doctor.detach()
        if not trainer.is_global_zero:
            return
        if self.verbose:
            print(self.doctor.report())
        if self.save_dir is not None:
            self.page = self.doctor.save(self.save_dir)
            if self.verbose:
                print(f"report: {self.page}")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.doctor is not None:
            self.doctor.detach()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.doctor is not None:
            self.doctor.detach()  # idempotent: the hooks are gone however fit ended

    # --- what it found (after fit) ----------------------------------------------------------------------------

    def verdicts(self) -> list[Verdict]:
        return self._doctor().verdicts()

    def prescription(self) -> dict[str, str]:
        """The fix in PyTorch terms: tricklab override key → what to change in your code."""
        return self._doctor().prescription()

    def report(self) -> str:
        return self._doctor().report()

    def _doctor(self) -> Doctor:
        if self.doctor is None:
            raise TrickLabError("TrickLabDoctor: no run yet; pass it to lightning.Trainer(callbacks=[...]) and fit")
        return self.doctor

    def _watched(self, pl_module: pl.LightningModule) -> nn.Module:
        if self.module is None:
            return pl_module
        watched = getattr(pl_module, self.module, None)
        if not isinstance(watched, nn.Module):
            children = ", ".join(name for name, _ in pl_module.named_children()) or "none"
            raise TrickLabError(
                f"TrickLabDoctor(module={self.module!r}): {type(pl_module).__name__} has no such submodule "
                f"(its submodules: {children})"
            )
        return watched


def _labels(batch: Any) -> Tensor | None:
    """The class labels of an ``(x, y)`` batch (a 1-D integer ``y``), for the label-prior check; else None."""
    if isinstance(batch, tuple | list) and len(batch) == 2 and is_class_labels(batch[1]):
        return batch[1]
    return None
