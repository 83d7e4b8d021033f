"""The whole chain (issue: end to end) on real services: in-process, under `ray job submit` to a real
Ray head, and as `sbatch slurm/pretrain.sbatch` on a real single-node SLURM.

Each runs jobs/demo.yaml on a few built-in sample videos with a handful of training steps, then
checks every stage's outputs through the files the stages write (and the upstream tools).
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.samples import SamplesConfig, write_samples
from runtime.config import load_yaml
from runtime.trained import trained_step
from tests.runtime.train_helpers import read_wandb_history

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
STEPS = 4
# Tiny training and evaluation; everything else as jobs/demo.yaml has it.
TINY = [
    f"tokenizer.trainer.max_steps={STEPS}",
    f"tokenizer.trainer.save_every={STEPS}",
    f"tokenizer.trainer.eval_every={STEPS}",
    "tokenizer.trainer.progress_interval=5",
    f"lam.trainer.max_steps={STEPS}",
    f"lam.trainer.save_every={STEPS}",
    f"dynamics.trainer.max_steps={STEPS}",
    f"dynamics.trainer.save_every={STEPS}",
    f"dynamics.trainer.eval_every={STEPS}",
    "dynamics.trainer.progress_interval=5",
    "dynamics.trainer.micro_batch_size=4",
    "evaluate.max_clips=2",
]
STAGE_FOLDERS = ("curated", "tokenizer", "latents", "lam", "dynamics", "eval")


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw") / "samples"
    # Breakout alone keeps the chain small; one branch per game exercises the counterfactual stage.
    cfg = SamplesConfig(
        synthetic=2, natural=0, atari=3, atari_games=["ALE/Breakout-v5"], atari_max_frames=200, branches=1
    )
    write_samples(root, cfg)
    return root


def check_outputs(out: Path) -> None:
    """Every stage left complete outputs, readable by the tools downstream of it."""
    stats = json.loads((out / "curated" / "stats.json").read_text())
    assert stats["complete"] and stats["inputs_by_status"]["ok"] == 5 and stats["clips"] > 0
    assert sorted(stats["sources_by_split"]) == ["heldout", "train"]
    for stage in ("tokenizer", "lam", "dynamics"):
        assert trained_step(out / stage) == STEPS, f"{stage} did not export weights at step {STEPS}"
        assert (out / "configs" / f"{stage}.yaml").is_file()
    tok_eval = json.loads((out / "tokenizer" / "eval" / "metrics.json").read_text())
    assert tok_eval["step"] == STEPS and 0 < tok_eval["recon_psnr"] < 100 and tok_eval["split"] == "heldout"
    latents = json.loads((out / "latents" / "stats.json").read_text())
    assert latents["complete"] and latents["clips"] == stats["clips"]
    with open(out / "eval" / "compounding_error.csv") as f:
        rows = list(csv.DictReader(f))
    horizon = load_yaml(REPO / "jobs" / "demo.yaml")["evaluate"]["horizon"]
    assert [int(r["horizon"]) for r in rows] == list(range(1, horizon + 1))
    assert {"model_psnr", "copy_last_psnr", "copy_last_recon_psnr", "recon_psnr", "model_latent_mse",
            "copy_last_latent_mse"} <= set(rows[0])  # fmt: skip
    lam = json.loads((out / "lam" / "eval" / "metrics.json").read_text())
    assert lam["lam_step"] == STEPS and lam["games"]["breakout"]["n"] > 0
    assert 0 <= lam["games"]["breakout"]["nmi"] <= 1
    ev = json.loads((out / "eval" / "eval.json").read_text())
    assert ev["checkpoint_step"] == STEPS and ev["data"]["split"] == "heldout"
    # The dynamics model trained on every clip (the synthetic ones have no actions) and was
    # evaluated under its latent action model's codes too.
    dyn = load_yaml(out / "configs" / "dynamics.yaml")
    assert dyn["model"]["lam"] == str(out / "lam")
    assert dyn["data"]["optional"] == ["actions", "rewards", "terminals"]
    assert ev["latent_actions"]["status"] == "computed" and (out / "eval" / "latent_actions.csv").is_file()
    html = (out / "report.html").read_text()
    assert "data:video/mp4;base64," in html and "Missing:" not in html


def wandb_train_steps(run_dir: Path) -> list[int]:
    """Steps of the train/loss rows in a stage's offline W&B run (its transaction log, read back)."""
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    return [int(r["train/step"]) for r in read_wandb_history(log) if "train/loss" in r]


def test_the_chain_runs_end_to_end_and_a_rerun_skips_every_stage(samples, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vidworld.cli", "run", str(REPO / "jobs" / "demo.yaml"), f"input={samples}",
           f"output={out}", "train_launcher=local", *TINY]  # fmt: skip
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    check_outputs(out)
    assert "rollout.mp4" in first.stdout and "report.html" in first.stdout
    # W&B's own logs are left out: its background service may still append to them after the run.
    mtimes = {
        p: p.stat().st_mtime_ns
        for d in STAGE_FOLDERS
        for p in (out / d).rglob("*")
        if p.is_file() and "wandb" not in p.relative_to(out).parts
    }

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-4000:]
    for stage in ("curate", "tokenizer", "tokenize", "lam", "dynamics", "evaluate"):
        assert f"stage '{stage}' skipped" in again.stdout
    changed = [p for p, t in mtimes.items() if p.exists() and p.stat().st_mtime_ns != t]
    assert changed == []


def test_ray_job_submit_runs_the_chain_on_the_cluster(samples, tmp_path, ray_cluster):
    out = tmp_path / "out"
    ray_bin = str(Path(sys.executable).with_name("ray"))
    workers = ["dynamics.launcher.num_workers=2", "tokenizer.launcher.num_workers=2"]
    entry = [sys.executable, "-m", "vidworld.cli", "run", "jobs/demo.yaml", f"input={samples}",
             f"output={out}", *workers, *TINY]  # fmt: skip
    env = {**ray_cluster.env, "RAY_ADDRESS": ray_cluster.dashboard_url}

    def ray_job(*args: str) -> str:
        res = subprocess.run(
            [ray_bin, "job", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
        return f"exit {res.returncode}\n{res.stdout}{res.stderr}"

    # A head that has just started may not have its job agent up yet ("try again later").
    for _ in range(12):
        submitted = ray_job("submit", "--no-wait", "--working-dir", ".", "--", *entry)
        if "No available agent" not in submitted:
            break
        time.sleep(5)
    assert submitted.startswith("exit 0"), submitted
    job_id = re.search(r"Job '([^']+)' submitted", submitted).group(1)
    deadline, status = time.monotonic() + 900, ""
    while time.monotonic() < deadline:
        status = ray_job("status", job_id)
        if re.search(r"succeeded|failed|stopped", status, re.IGNORECASE):
            break
        time.sleep(5)
    logs = ray_job("logs", job_id)
    assert re.search(r"Job '[^']+' succeeded", status), status + logs[-6000:]
    assert "pipeline finished" in logs  # `ray job logs` shows the driver's output
    check_outputs(out)
    # Training ran as Ray Train jobs with 2 workers: both ranks took part.
    for stage in ("tokenizer", "dynamics"):
        meta = json.loads(next((out / stage / "checkpoints").glob("step_*/COMPLETE")).read_text())
        assert meta["world_size"] == 2
    for stage in ("tokenizer", "dynamics"):
        assert wandb_train_steps(out / stage)[-1] == STEPS


@pytest.mark.slurm
def test_sbatch_pretrain_chains_every_stage_as_dependent_jobs(samples, tmp_path, slurm_cluster):
    out = tmp_path / "out"
    log = tmp_path / "pretrain.log"
    args = [str(REPO / "jobs" / "demo.yaml"), f"input={samples}", f"output={out}", *TINY]
    stage_log = tmp_path / "stage-%j.log"
    env = {"VIDWORLD_SBATCH_ALL": f"--output={stage_log} --chdir={REPO}",
           "VIDWORLD_SBATCH_TOKENIZER": "--ntasks-per-node=2 --cpus-per-task=1",
           "VIDWORLD_SBATCH_DYNAMICS": "--ntasks-per-node=2 --cpus-per-task=1"}  # fmt: skip
    job = slurm_cluster.sbatch(REPO / "slurm" / "pretrain.sbatch", args, options=[f"--output={log}"], env=env)
    info = slurm_cluster.wait_for_finish(job, timeout_s=120)
    assert info["JobState"] == "COMPLETED", log.read_text()
    ids = [int(i) for i in re.search(r"jobs ([\d ]+)", log.read_text()).group(1).split()]
    assert len(ids) == 7
    for stage_job in ids:
        done = slurm_cluster.wait_for_finish(stage_job, timeout_s=900)
        logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in tmp_path.glob("stage-*.log"))
        assert done["JobState"] == "COMPLETED" and done["ExitCode"] == "0:0", f"{done}\n{logs}"
    check_outputs(out)
    for stage in ("tokenizer", "dynamics"):  # srun started one training process per task
        meta = json.loads(next((out / stage / "checkpoints").glob("step_*/COMPLETE")).read_text())
        assert meta["world_size"] == 2
