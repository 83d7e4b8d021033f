"""The training runtime: config contract, schedule, and single-process runs of the reference task."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import REFERENCE_YAML, read_wandb_history, run_train

from runtime.checkpoint import load_checkpoint_weights
from runtime.config import ConfigError
from runtime.parallelize import apply_activation_checkpointing
from runtime.reference_task import ReferenceModelConfig, ReferenceTask, TinyTransformer
from runtime.tracking import read_metrics
from runtime.train import TrainConfig, deepspeed_config, load_train_config, lr_lambda
from runtime.trained import load_trained
from runtime.video import decode_mp4
from vidworld.cli import main

JOBS = REFERENCE_YAML.parent


def test_reference_yaml_loads_with_the_task_model_section():
    cfg = load_train_config(REFERENCE_YAML, ["run_dir=/tmp/x", "model.width=32"])
    assert isinstance(cfg, TrainConfig)
    assert isinstance(cfg.model, ReferenceModelConfig) and cfg.model.width == 32
    assert cfg.launcher.kind == "local" and cfg.launcher.num_workers == 2 and cfg.launcher.use_gpu is False
    for key in (
        "max_steps",
        "micro_batch_size",
        "grad_accum",
        "zero_stage",
        "precision",
        "save_every",
        "seed",
    ):
        assert hasattr(cfg.trainer, key)
    assert cfg.data == {} and cfg.wandb.mode in ("online", "offline", "disabled")


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.widht=3", "model.widht"),
        ("trainer.max_step=3", "trainer.max_step"),
        ("wandb.projet=x", "wandb.projet"),
        ("launcher.kindd=ray", "launcher.kindd"),
    ],
)
def test_unknown_key_fails_at_start_naming_it(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_train_config(REFERENCE_YAML, [override])


def test_mistyped_value_fails_naming_the_key():
    with pytest.raises(ConfigError, match=r"model\.width"):
        load_train_config(REFERENCE_YAML, ["model.width=wide"])
    with pytest.raises(ConfigError, match=r"trainer\.precision"):
        load_train_config(REFERENCE_YAML, ["trainer.precision=fp16"])


def test_vidworld_train_exits_2_on_an_unknown_key(capsys):
    assert main(["train", str(REFERENCE_YAML), "trainer.max_stepz=3"]) == 2
    assert "trainer.max_stepz" in capsys.readouterr().err


def test_the_micro_batch_is_one_key_and_fills_the_loader_batch():
    assert load_train_config(REFERENCE_YAML, ["trainer.micro_batch_size=3"]).trainer.micro_batch_size == 3
    dyn = load_train_config(JOBS / "dynamics.yaml", ["trainer.micro_batch_size=3"])
    assert dyn.data.batch_size == 3 and type(dyn.data).__name__ == "LoaderConfig"
    with pytest.raises(ConfigError, match="data.batch_size is not a training key.*trainer.micro_batch_size"):
        load_train_config(JOBS / "dynamics.yaml", ["data.batch_size=3"])


def test_a_task_without_data_class_takes_no_data_section():
    assert load_train_config(REFERENCE_YAML).data == {}
    with pytest.raises(ConfigError, match="data.shards"):
        load_train_config(REFERENCE_YAML, ["data.shards=x"])


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    f = lambda s: lr_lambda(s, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55)
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)


def test_deepspeed_config_carries_the_trainer_settings():
    cfg = load_train_config(
        REFERENCE_YAML,
        [
            "trainer.zero_stage=3",
            "trainer.grad_accum=4",
            "trainer.precision=bf16",
            "trainer.offload_optimizer=true",
        ],
    )
    ds = deepspeed_config(cfg.trainer, world_size=2)
    assert ds["train_batch_size"] == cfg.trainer.micro_batch_size * 4 * 2
    assert ds["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu"}}
    # Buckets: DeepSpeed's 5e8 values whatever the model's size, unless the model is smaller.
    sized = deepspeed_config(cfg.trainer, world_size=2, trainable=3_000_000)["zero_optimization"]
    assert sized["reduce_bucket_size"] == 3_000_000 and "allgather_bucket_size" not in sized  # stage 3
    stage2 = dataclasses.replace(cfg.trainer, zero_stage=2)
    small, large = (deepspeed_config(stage2, 2, trainable=n)["zero_optimization"] for n in (10, 7 * 10**9))
    assert small["allgather_bucket_size"] == small["reduce_bucket_size"] == 1_000_000
    assert large["reduce_bucket_size"] == 5 * 10**8
    assert ds["bf16"]["enabled"] and ds["gradient_clipping"] == cfg.trainer.grad_clip
    with pytest.raises(ConfigError, match="offload_optimizer"):
        load_train_config(REFERENCE_YAML, ["trainer.offload_optimizer=true"])


def test_activation_checkpointing_keeps_outputs_and_gradients():
    torch.manual_seed(0)
    cfg = ReferenceModelConfig(width=32, heads=2, depth=3, seq_len=8)
    plain = TinyTransformer(cfg)
    wrapped = TinyTransformer(cfg)
    wrapped.load_state_dict(plain.state_dict())
    assert apply_activation_checkpointing(list(wrapped.blocks), [0, 2]) == 2
    assert list(wrapped.state_dict()) == list(
        plain.state_dict()
    )  # names unchanged: checkpoints stay compatible
    x = torch.randint(0, cfg.vocab_size, (2, 8))
    for m in (plain, wrapped):
        m(x).square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), wrapped.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    with pytest.raises(ConfigError, match="checkpoint_blocks"):
        apply_activation_checkpointing(list(plain.blocks), [7])


def test_reference_batches_split_one_global_stream_over_ranks():
    cfg = load_train_config(REFERENCE_YAML, [])
    task = ReferenceTask(cfg.model, cfg)
    one = task.batches(0, 1, seed=3, state=None)
    single = [next(one)["tokens"] for _ in range(4)]
    r0, r1 = ReferenceTask(cfg.model, cfg), ReferenceTask(cfg.model, cfg)
    it0, it1 = r0.batches(0, 2, 3, None), r1.batches(1, 2, 3, None)
    a0, b0, a1, b1 = next(it0), next(it1), next(it0), next(it1)
    for got, want in zip((a0, b0, a1, b1), single, strict=True):
        assert torch.equal(got["tokens"], want)
    resumed = ReferenceTask(cfg.model, cfg).batches(0, 2, 3, r0.loader_state())
    assert torch.equal(next(resumed)["tokens"], next(it0)["tokens"])


@pytest.mark.integration
def test_nan_step_is_skipped_and_counted_and_weights_stay_finite(tmp_path):
    # bf16 + ZeRO-1: DeepSpeed's own overflow check skips the update.
    run = tmp_path / "run"
    res = run_train(
        run,
        [
            "trainer.max_steps=6",
            "trainer.debug_nan_steps=[3]",
            "trainer.precision=bf16",
            "trainer.zero_stage=1",
            "wandb.mode=disabled",
        ],
    )
    assert res.returncode == 0, res.stdout + res.stderr
    rows = read_metrics(run)
    assert rows[3]["train/nonfinite_step"] == 1 and rows[3]["train/skipped_steps"] == 1
    assert all(rows[s]["train/nonfinite_step"] == 0 for s in (1, 2, 4, 5, 6))
    assert rows[6]["train/skipped_steps"] == 1 and math.isfinite(rows[6]["train/loss"])
    weights = load_file(run / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


@pytest.mark.integration
def test_nan_steps_in_a_row_stop_the_run_naming_the_step(tmp_path):
    # Stage 0 fp32: the runtime's own gradient check (DeepSpeed has none there).
    run = tmp_path / "run"
    res = run_train(
        run,
        [
            "trainer.max_steps=8",
            "trainer.debug_nan_steps=[2,3,4]",
            "trainer.max_bad_steps=3",
            "wandb.mode=disabled",
            "trainer.save_every=1",
            "trainer.keep_last=10",
        ],
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "step 4: 3 steps in a row had a non-finite loss" in res.stdout
    assert "trainer.lr" in res.stdout  # says what to try
    rows = read_metrics(run)
    assert max(rows) == 4 and rows[4]["train/skipped_steps"] == 3
    assert all(math.isnan(rows[s]["train/loss"]) for s in (2, 3, 4))
    # The skipped steps left the weights as step 1 made them, and nothing non-finite got in.
    after_1 = load_checkpoint_weights(run / "checkpoints" / "step_00000001")
    after_3 = load_checkpoint_weights(run / "checkpoints" / "step_00000003")
    for name, w in after_1.items():
        assert torch.isfinite(w).all(), name
        assert torch.equal(w, after_3[name]), name
    assert not (run / "checkpoints" / "step_00000004").exists()  # stopped before saving a bad step


@pytest.mark.integration
def test_bf16_run_learns_and_exports_loadable_weights(tmp_path):
    run = tmp_path / "run"
    res = run_train(run, ["trainer.max_steps=30", "trainer.precision=bf16", "wandb.mode=disabled"])
    assert res.returncode == 0, res.stdout + res.stderr
    rows = read_metrics(run)
    assert rows[30]["train/loss"] < rows[1]["train/loss"] - 0.5
    for key in (
        "train/samples_per_s",
        "train/tokens_per_s",
        "train/mfu",
        "train/peak_mem_gib",
        "train/grad_norm",
    ):
        assert rows[30][key] > 0, key
    assert "MFU" in res.stdout and "ETA" in res.stderr  # console line and progress line
    cfg, task, model = load_trained(run)
    assert isinstance(model, TinyTransformer) and not model.training
    assert set(model.state_dict()) == set(load_file(run / "model.safetensors"))
    with torch.no_grad():
        loss = task.loss(model.float(), task.make_batch(seed=123, index=0))["loss"]
    assert float(loss) < rows[1]["train/loss"] - 0.5  # the exported weights are the trained ones
    peak = json.loads((run / "peak_flops.json").read_text())
    assert all(v > 1e8 for v in peak.values())  # a measured CPU matmul rate, cached in run_dir


@pytest.mark.integration
def test_wandb_offline_run_holds_the_metrics_and_resumes_the_same_run(tmp_path):
    run = tmp_path / "run"
    overrides = ["trainer.max_steps=4", "trainer.eval_every=2", "wandb.mode=offline", "wandb.tags=[ci,ref]"]
    res = run_train(run, overrides)
    assert res.returncode == 0, res.stdout + res.stderr
    run_id = (run / "wandb_run_id.txt").read_text().strip()
    files = sorted((run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1
    history = read_wandb_history(files[0])
    train_rows = [r for r in history if "train/loss" in r]
    assert [int(r["train/step"]) for r in train_rows] == [1, 2, 3, 4]
    logged = read_metrics(run)
    for row in train_rows:
        assert row["train/loss"] == pytest.approx(logged[int(row["train/step"])]["train/loss"])
        assert {"train/lr", "train/grad_norm", "train/tokens_per_s", "train/mfu"} <= set(row)
    # The task's eval media: numbers beside the losses, its video as an mp4 in run_dir/media and in W&B.
    evals = [r for r in history if "eval/loss" in r]
    videos = [r for r in history if r.get("eval/tokens/_type") == "video-file"]
    assert [int(r["train/step"]) for r in evals] == [2, 4] and len(videos) == 2
    assert logged[4]["eval/loss"] == pytest.approx(evals[1]["eval/loss"])
    clip = decode_mp4(run / "media" / "eval_tokens_step00000004.mp4")
    assert clip.shape == (2, 64, 16, 3)  # [frames, vocab, seq_len, RGB]
    # A rerun with more steps resumes the same W&B run id.
    res = run_train(run, ["trainer.max_steps=5", "wandb.mode=offline"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert (run / "wandb_run_id.txt").read_text().strip() == run_id
    files = sorted((run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 2
    assert [int(r["train/step"]) for r in read_wandb_history(files[-1]) if "train/loss" in r] == [5]
    # Nothing outside run_dir: W&B's folder is inside it.
    assert not (tmp_path / "wandb").exists()


def test_missing_or_unknown_task_fails_naming_it(tmp_path):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("run_dir: x\n")
    with pytest.raises(ConfigError, match="'task'"):
        load_train_config(cfg, [])
    with pytest.raises(ConfigError, match="task 'nosuch'"):
        load_train_config(cfg, ["task=nosuch"])
    with pytest.raises(ConfigError, match="lacks .*'loss'"):
        load_train_config(cfg, ["task=runtime.progress:Progress"])
