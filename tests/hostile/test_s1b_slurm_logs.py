"""``sbatch slurm/pretrain.sbatch`` keeps every job log under the run's output folder.

Runs on the single-node SLURM of tests/cluster_services.py (CI installs it; skipped here without
the binaries). The chain's first stage fails fast on a missing input, which cancels the rest
(afterok): enough to see where each job writes its log, without running the chain.
"""

from __future__ import annotations

import re
import time

import pytest
from omegaconf import OmegaConf

from tests.cluster_services import FINISHED_STATES, REPO, SlurmCluster

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

PRETRAIN = REPO / "slurm" / "pretrain.sbatch"


def _wait_gone_or_finished(cluster: SlurmCluster, job_id: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        res = cluster.command("scontrol", "show", "job", "--oneliner", str(job_id), check=False)
        state = dict(re.findall(r"(\w+)=(\S*)", res.stdout)).get("JobState")
        if res.returncode != 0 or state in FINISHED_STATES:
            return
        time.sleep(0.5)
    pytest.fail(f"job {job_id} still {state} after {timeout_s} s")


def test_pretrain_stage_logs_land_in_the_output_folder_not_the_submission_folder(slurm_cluster, tmp_path):
    submit = tmp_path / "submit"
    submit.mkdir()
    output = tmp_path / "out"
    job_id = slurm_cluster.sbatch(
        PRETRAIN,
        [str(REPO / "jobs" / "pretrain.yaml"), f"input={tmp_path / 'no-such-videos'}", "output=../out"],
        cwd=submit, env={"VIDWORLD_REPO": str(REPO)})
    info = slurm_cluster.wait_for_finish(job_id, timeout_s=60)
    logs = output / "logs"
    own = logs / f"slurm-vidworld-pretrain-{job_id}.out"
    assert info["JobState"] == "COMPLETED", f"{info}\n{own.read_text() if own.exists() else '(no log)'}"
    assert own.is_file(), f"pretrain's own log is not in {logs}: {sorted(p.name for p in submit.iterdir())}"

    stage_ids = {m[0]: int(m[1]) for m in re.findall(r"stage (\w+) -> job (\d+)", own.read_text())}
    # One job per stage that jobs/pretrain.yaml names, in its order.
    assert list(stage_ids) == list(OmegaConf.load(REPO / "jobs" / "pretrain.yaml").stages)
    for stage_id in stage_ids.values():
        _wait_gone_or_finished(slurm_cluster, stage_id, timeout_s=180)

    curate_log = logs / f"slurm-vidworld-curate-{stage_ids['curate']}.out"
    assert curate_log.is_file(), sorted(p.name for p in logs.iterdir())
    assert "stage curate" in curate_log.read_text(errors="replace")  # the stage script's own first line
    assert not list(submit.glob("*.out")), f"logs left in the submission folder: {list(submit.iterdir())}"
    assert not list(REPO.glob(f"slurm-{job_id}.out"))


def test_pretrain_without_an_output_folder_fails_naming_the_fix(slurm_cluster, tmp_path):
    config = tmp_path / "no-output.yaml"
    config.write_text("stages: [curate]\n")
    job_id = slurm_cluster.sbatch(PRETRAIN, [str(config), "input=x"], cwd=tmp_path,
                                  env={"VIDWORLD_REPO": str(REPO)})
    info = slurm_cluster.wait_for_finish(job_id, timeout_s=60)
    assert info["ExitCode"].startswith("2:"), info
    text = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert "pass output=DIR" in text
