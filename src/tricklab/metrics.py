"""Names of the numbers a run writes: the columns of ``history.jsonl`` and the keys of ``metrics.json``.

Plain strings, shared by the loop and the tricks that write them and the commands, reports and the lab that
read them, so that a column cannot be misspelt in one place only. The values are the names on disk: changing
one breaks every run directory already written.

History row (one per epoch, ``state.history`` and ``history.jsonl``), written by :func:`tricklab.engine.fit`:

==================  =======================================================================================
name                meaning
==================  =======================================================================================
``epoch``           the epoch's number, 1-based (:data:`EPOCH`)
``train_loss``      mean training loss over the epoch's batches, weighted by batch size (:data:`TRAIN_LOSS`)
``train_acc``       training accuracy over the epoch's batches, as the weights were while training
                    (:data:`TRAIN_ACC`)
``val_loss``        validation loss after the epoch, of the evaluated weights (EMA/SWA if set; only with a
                    validation split) (:data:`VAL_LOSS`)
``val_acc``         validation accuracy after the epoch, likewise (:data:`VAL_ACC`)
``lr``              the learning rate of the first parameter group when the epoch started (:data:`LR`)
``epoch_time_s``    wall-clock seconds of the epoch, training and validation (:data:`EPOCH_TIME`)
==================  =======================================================================================

Columns that callbacks add through ``state.epoch_extras``:

==================  =======================================================================================
``grad_norm``       gradient clipping: the epoch's mean global gradient norm before clipping (:data:`GRAD_NORM`)
``grad_norm_max``   gradient clipping: its largest value in the epoch (:data:`GRAD_NORM_MAX`)
``clip_fraction``   gradient clipping: fraction of the epoch's steps where clipping changed a gradient
                    (:data:`CLIP_FRACTION`)
``nonfinite_step``  probes: the step of the first NaN/inf they saw, once one was seen (:data:`NONFINITE_STEP`)
``member``          ensembles: the index of the member the row belongs to (:data:`MEMBER`)
==================  =======================================================================================

Final metrics (``metrics.json``, :attr:`tricklab.runner.RunResult.metrics`):

==========================  =================================================================================
``test_loss``               loss of the final evaluated weights (or the ensemble) on the test split
                            (:data:`TEST_LOSS`)
``test_acc``                their test accuracy (:data:`TEST_ACC`)
``best_val_acc``            the highest ``val_acc`` of any epoch (:data:`BEST_VAL_ACC`)
``val_loss``, ``val_acc``   those of the last epoch
``epochs_run``              epochs trained (summed over ensemble members) (:data:`EPOCHS_RUN`)
``steps``                   training steps taken (:data:`STEPS`)
``wall_time_s``             wall-clock seconds of the whole run (:data:`WALL_TIME`)
``config_hash``             hash of the resolved config the run used (:data:`CONFIG_HASH`)
``best_epoch``              early stopping: the epoch with the best monitored value (:data:`BEST_EPOCH`)
``stopped_epoch``           early stopping: the epoch it stopped the run, or null (:data:`STOPPED_EPOCH`)
``restored_best``           early stopping: whether the best weights were restored (:data:`RESTORED_BEST`)
``stop_reason``             why the run stopped before its last epoch, when it did (:data:`STOP_REASON`)
``diverged``                the run hit a NaN/inf and was recorded as diverged (:data:`DIVERGED`)
``ensemble``                ensembles: the number of members (:data:`ENSEMBLE`)
``member_test_acc_mean``    ensembles: the members' mean test accuracy (:data:`MEMBER_TEST_ACC_MEAN`)
``members``                 ensembles: each member's own final metrics (:data:`MEMBERS`)
``diverged_members``        ensembles: how many members diverged (:data:`DIVERGED_MEMBERS`)
==========================  =================================================================================

Example::

    from tricklab.metrics import VAL_ACC
    best = max(row[VAL_ACC] for row in state.history)
"""

from __future__ import annotations

# --- history row (one per epoch), written by tricklab.engine.fit ------------------------------------------------
EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
TRAIN_ACC = "train_acc"
VAL_LOSS = "val_loss"
VAL_ACC = "val_acc"
LR = "lr"
EPOCH_TIME = "epoch_time_s"

# --- columns that callbacks add through state.epoch_extras ------------------------------------------------------
GRAD_NORM = "grad_norm"  # GradClip: mean pre-clip global gradient norm over the epoch
GRAD_NORM_MAX = "grad_norm_max"  # GradClip: its maximum over the epoch
CLIP_FRACTION = "clip_fraction"  # GradClip: fraction of steps where clipping changed a gradient
NONFINITE_STEP = "nonfinite_step"  # ProbeCallback: step of the first non-finite value seen
MEMBER = "member"  # ensembles: which member a history row belongs to

# --- final metrics (metrics.json) -------------------------------------------------------------------------------
TEST_LOSS = "test_loss"
TEST_ACC = "test_acc"
BEST_VAL_ACC = "best_val_acc"
EPOCHS_RUN = "epochs_run"
STEPS = "steps"
WALL_TIME = "wall_time_s"
CONFIG_HASH = "config_hash"
BEST_EPOCH = "best_epoch"
STOPPED_EPOCH = "stopped_epoch"
RESTORED_BEST = "restored_best"
STOP_REASON = "stop_reason"
DIVERGED = "diverged"
ENSEMBLE = "ensemble"
MEMBER_TEST_ACC_MEAN = "member_test_acc_mean"
MEMBERS = "members"
DIVERGED_MEMBERS = "diverged_members"
