"""The worked example trains under torchrun with 2 gloo processes and writes a loadable checkpoint."""

import os
import subprocess
import sys

import torch

from moelab.layers import DeepMoE, ExpertConfig, MoEConfig


def test_example_runs_under_torchrun_and_its_checkpoint_loads(tmp_path):
    ckpt = tmp_path / "full.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "moelab.distributed.example", "--steps", "4", "--log-every", "2",
           "--save", str(ckpt)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=80)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "2 rank(s), 4 experts per layer, 2 per rank"
    assert [line.split()[1] for line in lines if line.startswith("step")] == ["2", "4"]  # rank 0 only
    assert any(line.startswith("test mse ") for line in lines)

    model = DeepMoE([16, 32, 1], MoEConfig(num_experts=4, experts=ExpertConfig(hidden=16)))
    model.load_state_dict(torch.load(ckpt), strict=True)
    assert torch.isfinite(model(torch.randn(5, 16))).all()
