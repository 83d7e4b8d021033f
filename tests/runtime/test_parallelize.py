"""runtime.parallelize: the model is built on meta, checkpointed, compiled and given its attention
backend from outside, then materialised and initialised by the runtime."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from train_helpers import REFERENCE_YAML

from dynamics import DiffusionDynamics, DynamicsConfig, DynamicsHead, MaskGITDynamics
from dynamics.task import DynamicsTask
from runtime.parallelize import (
    apply_activation_checkpointing,
    build_on_meta,
    is_checkpointed,
    materialize,
    parallelize,
)
from runtime.reference_task import ReferenceModelConfig, ReferenceTask, TinyTransformer
from runtime.train import TrainerConfig, eval_media, load_train_config
from tokenizer.config import TokenizerLossConfig
from tokenizer.task import TokenizerTask, TokenizerTaskConfig

TOKENIZER = TokenizerTaskConfig(
    base_channels=8,
    channel_multipliers=[1, 2],
    clip_size=[16, 16],
    spatial_compression=8,
    temporal_compression=4,
    bottleneck="fsq",
    loss=TokenizerLossConfig(discriminator=True, disc_channels=8, disc_layers=2),
)


def _tasks() -> dict[str, object]:
    train = SimpleNamespace(trainer=SimpleNamespace(micro_batch_size=2), data=None)
    return {
        "reference": ReferenceTask(ReferenceModelConfig(width=32, heads=2), train),
        "diffusion": DynamicsTask(DynamicsConfig(head="diffusion", depth=2), train),
        "maskgit": DynamicsTask(DynamicsConfig(head="maskgit", depth=2, factorized=True), train),
        "tokenizer": TokenizerTask(TOKENIZER, train),
    }


def _trainer(**kw) -> TrainerConfig:
    return dataclasses.replace(TrainerConfig(), **kw)


@pytest.mark.parametrize("name", ["reference", "diffusion", "maskgit", "tokenizer"])
def test_every_task_model_is_built_on_meta_and_materialised_like_a_plain_build(name):
    task = _tasks()[name]
    meta = build_on_meta(task)
    assert all(t.is_meta for t in (*meta.parameters(), *meta.buffers()))
    torch.manual_seed(5)
    placed = parallelize(task, _trainer(), "cpu")
    plain = task.build_model()  # on the CPU, constructed with PyTorch's default initialisation
    torch.manual_seed(5)
    plain.init_weights()
    assert not any(t.is_meta for t in (*placed.parameters(), *placed.buffers()))
    # init_weights sets every parameter and buffer: storage from to_empty() would otherwise differ.
    want = plain.state_dict(keep_vars=True)
    got = placed.state_dict(keep_vars=True)
    assert list(got) == list(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    assert all(torch.isfinite(p).all() for p in placed.parameters())
    for module in plain.modules():  # buffers that are not saved (the FSQ grid) too
        for key, value in module._buffers.items():
            assert value is None or torch.isfinite(value.float()).all(), key


def test_the_reference_model_from_meta_equals_a_plain_build_for_the_same_seed():
    cfg = ReferenceModelConfig(width=32, heads=2)
    torch.manual_seed(0)
    plain = TinyTransformer(cfg)
    torch.manual_seed(0)
    with torch.device("meta"):
        meta = TinyTransformer(cfg)
    placed = materialize(meta, "cpu")
    for (key, a), b in zip(plain.state_dict().items(), placed.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


def test_materialize_needs_init_weights_and_says_so():
    with torch.device("meta"):
        bare = torch.nn.Linear(2, 2)
    with pytest.raises(TypeError, match="init_weights"):
        materialize(bare, "cpu")


def test_activation_checkpointing_hooks_blocks_without_patching_them_and_keeps_loss_and_gradients():
    task = _tasks()["reference"]
    torch.manual_seed(1)
    plain = parallelize(task, _trainer(), "cpu")
    torch.manual_seed(1)
    wrapped = parallelize(task, _trainer(activation_checkpointing=True, checkpoint_blocks=[0]), "cpu")
    blocks = list(wrapped.blocks)
    assert is_checkpointed(blocks[0]) and not is_checkpointed(blocks[1])
    # No wrapper module, no instance-level forward: names, types and code are the model's own.
    for block, original in zip(blocks, plain.blocks, strict=True):
        assert type(block) is type(original) and "forward" not in vars(block)
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    calls = []
    blocks[0].qkv.register_forward_hook(lambda *_: calls.append(1))
    batch = task.make_batch(seed=0, index=0)
    losses = []
    for model in (plain, wrapped):
        out = task.loss(model, batch)
        out["loss"].backward()
        losses.append(out["loss"].detach())
    assert len(calls) == 2  # the block ran forward, then again in backward (recomputed)
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    for (name, p), q in zip(plain.named_parameters(), wrapped.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    assert apply_activation_checkpointing(blocks, []) == len(blocks)  # idempotent on hooked blocks


@pytest.mark.parametrize("head", ["diffusion", "maskgit"])
def test_activation_checkpointing_of_dynamics_blocks_keeps_the_loss(head):
    task = _tasks()[head]
    results = []
    for checkpointed in (False, True):
        torch.manual_seed(2)
        model = parallelize(task, _trainer(activation_checkpointing=checkpointed), "cpu")
        cfg = task.cfg
        g = torch.Generator().manual_seed(0)
        if cfg.is_discrete:
            x = torch.randint(0, cfg.codebook_size, (2, 3, 8, 8), generator=g)
        else:
            x = torch.randn(2, cfg.latent_channels, 3, 8, 8, generator=g)
        actions = torch.randint(0, cfg.num_actions, (2, 3), generator=g)
        torch.manual_seed(3)
        loss = model(x, actions)["loss"]
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b)


def _compile_works_on_cpu() -> str | None:
    """None when torch.compile can build a CPU kernel here, else why not."""
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(2))
    except Exception as e:  # inductor needs a C++ compiler and Python headers
        return f"torch.compile cannot build CPU kernels here: {type(e).__name__}: {str(e)[:200]}"
    return None


@pytest.mark.slow
def test_trainer_compile_compiles_each_block_in_place_and_trains_a_step():
    reason = _compile_works_on_cpu()
    if reason:
        pytest.skip(reason)
    assert load_train_config(REFERENCE_YAML, ["trainer.compile=true"]).trainer.compile is True
    task = _tasks()["reference"]
    torch.manual_seed(4)
    eager = parallelize(task, _trainer(), "cpu")
    torch.manual_seed(4)
    compiled = parallelize(task, _trainer(compile=True, activation_checkpointing=True), "cpu")
    assert all(b._compiled_call_impl is not None for b in compiled.blocks)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # compiled in place: same names
    batch = task.make_batch(seed=0, index=0)
    opt = torch.optim.SGD(compiled.parameters(), lr=0.1)
    first = task.loss(compiled, batch)["loss"]
    torch.testing.assert_close(first, task.loss(eager, batch)["loss"], rtol=1e-4, atol=1e-5)
    first.backward()
    opt.step()
    assert float(task.loss(compiled, batch)["loss"]) < float(first)


def test_both_dynamics_heads_share_one_base_class_and_only_add_their_own_parts():
    assert issubclass(DiffusionDynamics, DynamicsHead) and issubclass(MaskGITDynamics, DynamicsHead)
    shared = ("blocks", "forward", "init_weights", "flops_per_sample", "rollout")
    for head in (DiffusionDynamics, MaskGITDynamics):
        assert not set(shared) & set(vars(head)), head.__name__
        for name in ("loss", "check_input", "sampling_options", "sample_frame", "write_cache"):
            assert name in vars(head), (head.__name__, name)


def test_eval_media_gets_the_plain_model_not_the_engine():
    seen = {}

    class Engine:
        module = torch.nn.Linear(2, 2)
        mode = []

        def eval(self):
            self.mode.append("eval")

        def train(self):
            self.mode.append("train")

    class Task:
        def eval_media(self, model, batch):
            seen["model"] = model
            return {}

    engine = Engine()
    eval_media(engine, Task(), None)
    assert seen["model"] is Engine.module and engine.mode == ["eval", "train"]
