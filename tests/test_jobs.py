"""Every YAML under jobs/ loads against its schema (a config nobody loads is a bug waiting for a user).

The chain files (demo.yaml, worldmodel.yaml, pretrain.yaml) are composed stage by stage with `vidworld run
prepare_only=true`, which validates every section against its stage's schema; demo.yaml and the
stage files also run at debug size in tests/test_chain.py and the stages' own tests."""

import subprocess
import sys
from pathlib import Path

import pytest

from dynamics.evaluate import EvaluateConfig
from dynamics.plan import PlanConfig
from dynamics.play import PlayConfig
from dynamics.rollout import RolloutConfig
from pipeline.curate import CurateConfig
from runtime.config import load_config, load_yaml
from runtime.train import load_train_config
from tokenizer.tokenize import TokenizeConfig

JOBS = Path(__file__).resolve().parents[1] / "jobs"
CHAINS = {"demo.yaml", "worldmodel.yaml", "pretrain.yaml"}
SCHEMAS = {"curate.yaml": CurateConfig, "tokenize.yaml": TokenizeConfig, "evaluate.yaml": EvaluateConfig,
           "rollout.yaml": RolloutConfig, "play.yaml": PlayConfig, "plan.yaml": PlanConfig}  # fmt: skip
REQUIRED = [
    "input=x",
    "output=y",
    "tokenizer=t",
    "checkpoint=c",
    "shards=s",
    "clips=c",
    "clip=k",
    "actions=[0]",
]


@pytest.mark.parametrize("name", sorted(p.name for p in JOBS.glob("*.yaml") if p.name not in CHAINS))
def test_every_job_file_loads_against_its_schema(name):
    path = JOBS / name
    if "task" in load_yaml(path):
        cfg = load_train_config(path)
        assert cfg.trainer.max_steps >= 1
        return
    assert name in SCHEMAS, f"jobs/{name}: no schema known for it; add it to this test"
    schema = SCHEMAS[name]
    fields = set(schema.__dataclass_fields__)
    load_config(schema, path, [o for o in REQUIRED if o.split("=")[0] in fields])


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_chain_files_compose_every_stage(name, tmp_path):
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "vidworld.cli", "run", str(JOBS / name), f"input={tmp_path}", f"output={out}",
         "prepare_only=true"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    for stage in ("curate", "tokenizer", "tokenize", "lam", "dynamics", "evaluate"):
        assert f"stage-config {stage} " in res.stdout
        assert (out / "configs" / f"{stage}.yaml").is_file()
