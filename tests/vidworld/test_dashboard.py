"""The W&B dashboard spec reads exactly the keys that the runtime and ``publish`` log."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.config import ConfigError
from runtime.tracking import read_metrics
from tests.runtime.train_helpers import read_wandb_history, run_train
from tests.vidworld.report_fixtures import make_output
from vidworld.dashboard import (
    PUBLISHED_KEYS,
    RUNTIME_TRAIN_KEYS,
    STEP_KEY,
    TASK_TERMS_REGEX,
    WARNINGS_REGEX,
    build_workspace,
    cli,
    dashboard_spec,
    load_dashboard_config,
    published_metrics,
    referenced_keys,
)


def test_spec_references_exactly_the_runtime_and_published_keys():
    assert referenced_keys(dashboard_spec()) == {STEP_KEY, *RUNTIME_TRAIN_KEYS, *PUBLISHED_KEYS}


def test_task_terms_panel_matches_task_terms_and_no_runtime_key():
    r = re.compile(TASK_TERMS_REGEX)
    assert not [k for k in (STEP_KEY, *RUNTIME_TRAIN_KEYS) if r.match(k)]
    assert all(
        r.match(k) for k in ("train/rec", "train/kl", "train/psnr_float", "train/loss_extra", "train/lrx")
    )
    assert not r.match("eval/recon_psnr")


def test_published_metrics_of_a_full_folder_cover_every_published_key(tmp_path):
    m = published_metrics(make_output(tmp_path / "run", png=True))
    horizon_rows = m.pop("compounding/horizon")
    keys = set(m) | {"compounding/horizon"} | {k for row in horizon_rows for k in row}
    assert keys == set(PUBLISHED_KEYS)
    assert [r["compounding/horizon"] for r in horizon_rows] == [1.0, 2.0, 3.0]
    assert horizon_rows[2]["compounding/model_psnr"] == 22.125
    assert horizon_rows[1]["compounding/action_sensitivity_psnr"] == 1.25
    assert horizon_rows[2]["compounding/latent_sensitivity_psnr"] == 0.75 and m["lam/nmi"] == 0.4
    assert [r["compounding/ensemble_disagreement"] for r in horizon_rows] == [0.0125, 0.03125, 0.0625]
    assert m["data/inputs_failed"] == 1.0 and m["eval/recon_ssim"] == 0.8125
    assert m["data/clips_filtered"]["data"] == [["static", 7]]
    assert [r[1] for r in m["data/inputs_not_ok"]["data"]] == ["failed", "skipped"]


def test_published_metrics_of_an_empty_folder_is_empty(tmp_path):
    assert published_metrics(tmp_path) == {}


def test_cli_without_a_key_exits_nonzero_naming_the_local_report(monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert cli("pipe1", ["output=/data/runs/pipe1", "entity=me"]) == 2
    err = capsys.readouterr().err
    assert "WANDB_API_KEY" in err and "/data/runs/pipe1/report.html" in err


def test_group_and_output_come_from_the_pipeline_yaml(tmp_path):
    y = tmp_path / "demo.yaml"
    y.write_text("output: /x/run7\nwandb:\n  project: vw\n  group: run7\n  mode: offline\ncurate: {}\n")
    cfg = load_dashboard_config(str(y), ["entity=team"])
    assert (cfg.group, cfg.project, cfg.entity, cfg.output) == ("run7", "vw", "team", "/x/run7")
    y.write_text("wandb:\n  project: vw\n")
    with pytest.raises(ConfigError, match="no W&B group"):
        load_dashboard_config(str(y), [])
    with pytest.raises(ConfigError, match="colour"):
        load_dashboard_config("g", ["colour=red"])


@pytest.mark.filterwarnings("ignore:Pydantic V1 style")
def test_workspace_filters_to_the_group_and_carries_the_panel_keys():
    pytest.importorskip("wandb_workspaces", reason="optional extra: pip install 'vidworld[dashboard]'")
    model = build_workspace(dashboard_spec(), "ent", "proj", "pipe-42")._to_model()
    (runset,) = model.spec.section.run_sets
    filters = runset.model_dump()["filters"]["filters"]
    assert [(f["key"], f["op"], f["value"]) for f in filters] == [
        ({"section": "run", "name": "group"}, "=", "pipe-42")
    ]
    view = model.model_dump()
    panels = [p for s in view["spec"]["section"]["panel_bank_config"]["sections"] for p in s["panels"]]
    line_keys = {k for p in panels if "metrics" in p["config"] for k in (p["config"]["metrics"] or [])}
    assert {"train/loss", "train/mfu", "compounding/model_psnr"} <= line_keys
    assert any(p["config"].get("metric_regex") == TASK_TERMS_REGEX for p in panels)
    assert len(panels) == sum(len(s.panels) for s in dashboard_spec())


@pytest.mark.integration
def test_runtime_logs_exactly_the_runtime_keys_plus_task_terms(tmp_path):
    run_dir = tmp_path / "ref"
    proc = run_train(run_dir, ["trainer.max_steps=2", "wandb.mode=disabled"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = read_metrics(run_dir)
    keys = set().union(*rows.values()) - {STEP_KEY}
    task_terms = {k for k in keys if re.match(TASK_TERMS_REGEX, k)}
    warnings = {k for k in keys if re.match(WARNINGS_REGEX, k)}  # a loaded CI machine may see one
    assert keys - task_terms - warnings == set(RUNTIME_TRAIN_KEYS)
    assert task_terms == {"train/accuracy"}  # the reference task's one extra loss-dict entry


@pytest.mark.integration
def test_publish_offline_logs_exactly_the_published_keys(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = make_output(tmp_path / "run", png=True)
    # In a process of its own, as the chain's report stage runs it: W&B keeps per-process state
    # (its service, the active run) that other in-process tests of the suite leave behind.
    code = (
        "import sys; from vidworld.dashboard import publish; from runtime.tracking import WandbConfig; "
        "publish(sys.argv[1], WandbConfig(mode='offline', group='pipe-1'))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (log,) = out.glob("wandb/offline-run-*/run-*.wandb")
    keys = {k for row in read_wandb_history(log) for k in row if not k.startswith("_")}
    # Media and tables arrive flattened ("eval/recon_video/_type": "video-file", ...).
    typed = {k.rsplit("/", 1)[0]: k for k in keys if k.endswith("/_type")}
    top = {k for k in keys if "/".join(k.split("/")[:2]) not in typed} | set(typed)
    assert top == set(PUBLISHED_KEYS)
    types = {p: row[k] for row in read_wandb_history(log) for p, k in typed.items() if k in row}
    assert types["eval/recon_video"] == "video-file" and types["eval/compounding_error"] == "table-file"


def test_published_keys_are_unique_and_namespaced():
    assert len(set(PUBLISHED_KEYS)) == len(PUBLISHED_KEYS)
    assert all(Path(k).parts[0] in ("headline", "eval", "data", "compounding", "lam") for k in PUBLISHED_KEYS)
