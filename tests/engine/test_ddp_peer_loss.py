"""A rank of a torchrun job killed for good (no restarts): the surviving rank stops with one line naming the lost
rank, not gloo's C++ and Python traceback. Two CPU processes under torchrun (gloo), as in test_ddp.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_ddp import OVERRIDES, TIMEOUT, env

from tricklab.engine.distributed import PeerLost, peer_lost

GLOO = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
    "[127.0.0.1]:927. This is typically caused by a remote worker crashing. Check the logs of the remote worker"
)


def allowing(tmp: Path) -> dict[str, str]:
    """The DDP tests' environment, with the module this test's config file names allowed (the trust rule)."""
    return {**env(tmp), "TRICKLAB_ALLOW_MODULES": "peer_loss_hooks"}


def test_a_survivor_of_a_killed_rank_stops_with_one_line_naming_it(tmp_path: Path):
    config = tmp_path / "kill.yaml"
    hook = {"name": "peer_loss_hooks:kill_at", "kwargs": {"rank": 1, "step": 5}}  # rank 1, mid-epoch 1
    config.write_text(json.dumps({"callbacks": [hook]}))
    sets = [a for o in OVERRIDES for a in ("--set", o)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=0"]
    cmd += ["--monitor-interval=2", "-m", "tricklab", "train", "--config", str(config), *sets, "--out", "run"]
    # --monitor-interval: torchrun notices the lost rank (and stops the survivor) at most that late; the survivor
    # notices at once, at its next all-reduce
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=allowing(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=TIMEOUT,
    )  # fmt: skip
    assert proc.returncode != 0
    errors = [line for line in proc.stdout.splitlines() if "error: " in line]
    assert len(errors) == 1, proc.stdout
    assert errors[0].startswith("error: rank 0 of 2: lost rank 1 of this run mid-training ("), errors[0]
    assert "pair.cc" not in proc.stdout and "[rank0]: Traceback" not in proc.stdout, proc.stdout


def test_gloo_errors_of_a_lost_peer_become_one_line_and_others_do_not():
    lost = peer_lost(RuntimeError(GLOO))
    assert isinstance(lost, PeerLost)
    assert "(Connection closed by peer [127.0.0.1]:927)" in str(lost) and "pair.cc" not in str(lost)
    assert "\n" not in str(lost)
    assert peer_lost(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert peer_lost(ValueError("Connection closed by peer")) is None


@pytest.mark.parametrize("text", ["Read error [127.0.0.1]:15285: Connection reset by peer", "Broken pipe"])
def test_other_lost_connection_messages_are_recognised(text):
    assert peer_lost(RuntimeError(text)) is not None
