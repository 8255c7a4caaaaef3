"""Multi-GPU steps from `webly run`: training and prediction steps under `torchrun`.

`webly run RECIPE --nproc-per-node 8 [--nnodes 4 --node-rank R --master-addr HOST]` runs every
`pretrain`, `finetune` and `predict` step as `torchrun ... -m webly.app.cli STAGE ...`
with the step's
resolved options (written to `STAGE.launch.yaml` in the step folder and passed with `--config`),
and every other step in-process on node 0. Nodes share the run folder (a shared filesystem): the
other nodes join each launched step's torchrun and otherwise wait for the step's `step.json`.
Killing and rerunning resumes as before: an interrupted training step is relaunched with
`--resume` (the stage resumes from its last checkpoint). Tested with 2 gloo processes on one node
and with two `webly run` processes standing in for two nodes (tests/test_launch.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webly.app.stages import Stage
from webly.core.config import save_config
from webly.core.errors import WeblyError

LAUNCHED = ("pretrain", "finetune", "predict")


@dataclass(frozen=True)
class Launch:
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def distributed(self) -> bool:
        return self.nproc_per_node * self.nnodes > 1

    def launches(self, stage: str) -> bool:
        return self.distributed and stage in LAUNCHED


def command(st: Stage, inputs: dict[str, Any], config_file: Path, out: Path, launch: Launch,
            resume: bool) -> list[str]:
    """The torchrun command line of one step."""
    cmd = [sys.executable, "-m", "torch.distributed.run",
           f"--nproc-per-node={launch.nproc_per_node}", f"--nnodes={launch.nnodes}",
           f"--node-rank={launch.node_rank}", f"--master-addr={launch.master_addr}",
           f"--master-port={launch.master_port}", "-m", "webly.app.cli", st.name]
    for i in st.inputs:
        if i.name not in inputs:
            continue
        values = inputs[i.name] if isinstance(inputs[i.name], list) else [inputs[i.name]]
        flag = [] if i.positional else ["--" + i.name.replace("_", "-")]
        cmd += flag + [str(v) for v in values]
    cmd += ["-o", str(out), "--config", str(config_file)]
    return cmd + (["--resume"] if resume and st.training else [])


def launch_stage(st: Stage, inputs: dict[str, Any], cfg: Any, out: Path, launch: Launch,
                 resume: bool) -> dict[str, Any]:
    """Run one step under torchrun; return the summary rank 0 wrote."""
    folder = out.parent if st.output_file else out
    config_file = save_config(cfg, folder / f"{st.name}.launch.yaml", st.name)
    r = subprocess.run(command(st, inputs, config_file, out, launch, resume))
    if r.returncode:
        raise WeblyError(f"step {folder.name}: torchrun {st.name} exited with {r.returncode}; "
                         "rerun `webly run` to resume")
    summary = folder / f"{st.name}.summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else {}


def wait_for(step_json: Path, step_hash: str, poll_s: float = 5.0) -> None:
    """Another node runs this step: wait until its step.json records this very hash."""
    while True:
        if step_json.is_file() and json.loads(step_json.read_text()).get("hash") == step_hash:
            return
        time.sleep(poll_s)
