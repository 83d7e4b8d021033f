"""Opening someone else's run folder imports no code of theirs: a ``config.yaml`` naming a task
``module:Class`` outside vidworld's own tasks is refused unless the caller trusts it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

from runtime.checkpoint import WEIGHTS
from runtime.parallelize import build_on_meta, materialize
from runtime.train import load_train_config, resolve_task_class
from runtime.trained import UntrustedTask, load_trained
from tokenizer import load_tokenizer

EVIL = """
from pathlib import Path
Path({marker!r}).write_text("imported")  # stands in for any code an attacker would run
from runtime.reference_task import ReferenceTask as EvilTask
"""
MODEL = "model: {width: 16, depth: 1, heads: 2, seq_len: 8}\n"


def _run(folder: Path, task: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(f"run_dir: {folder}\ntask: {task}\n{MODEL}")
    return folder


@pytest.fixture
def foreign_run(tmp_path, monkeypatch):
    """A run folder of task ``s4_evil_task:EvilTask`` (importable, with weights that fit it)."""
    marker = tmp_path / "payload-ran"
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "s4_evil_task.py").write_text(EVIL.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    monkeypatch.delitem(sys.modules, "s4_evil_task", raising=False)
    run = _run(tmp_path / "run", "reference")
    _export(run)
    _run(run, "s4_evil_task:EvilTask")
    yield run, marker
    sys.modules.pop("s4_evil_task", None)


def _export(run: Path) -> None:
    """Give a run folder of a vidworld task the weights of its freshly built model."""
    cfg = load_train_config(run / "config.yaml")
    model = materialize(build_on_meta(resolve_task_class(cfg.task)(cfg.model, cfg)), "cpu")
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(run / WEIGHTS), metadata={"step": "1"})


def test_loading_a_run_of_a_foreign_task_is_refused_before_its_module_is_imported(foreign_run):
    run, marker = foreign_run
    with pytest.raises(UntrustedTask, match=r"s4_evil_task:EvilTask.*trust=True"):
        load_trained(run)
    assert not marker.exists()
    assert "s4_evil_task" not in sys.modules


def test_the_tokenizer_loader_refuses_it_too(foreign_run):
    run, marker = foreign_run
    with pytest.raises(UntrustedTask):
        load_tokenizer(run)
    assert not marker.exists()


def test_a_caller_who_trusts_the_run_loads_it(foreign_run):
    run, marker = foreign_run
    cfg, _, model = load_trained(run, trust=True)
    assert marker.read_text() == "imported" and cfg.task == "s4_evil_task:EvilTask"
    assert not model.training


def test_vidworlds_own_tasks_load_by_name_or_by_module_and_class(tmp_path):
    run = _run(tmp_path / "run", "reference")
    _export(run)
    load_trained(run)
    _run(run, "runtime.reference_task:ReferenceTask")
    load_trained(run)
