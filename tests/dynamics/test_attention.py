"""The attention function: the frame-causal pattern, and every backend against the reference."""

from __future__ import annotations

import logging

import pytest
import torch

from dynamics import DynamicsConfig, build_dynamics
from dynamics.attention import FrameCausalMask, attention
from runtime.parallelize import (
    apply_attention_backend,
    available_attention_backends,
    resolve_attention_backend,
)


def test_frame_causal_mask_is_full_within_frames_and_causal_across():
    m = FrameCausalMask(q_len=6, kv_len=6, tokens_per_frame=2).dense()
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(m, expected)


def test_frame_causal_mask_with_cached_frames_lets_new_frames_see_the_cache():
    # 2 frames cached, 2 new frames of 2 tokens: the new frame 2 sees frames 0-2, frame 3 sees all.
    m = FrameCausalMask(q_len=4, kv_len=8, tokens_per_frame=2, q_offset_frames=2).dense()
    assert m[:2].sum(1).tolist() == [6, 6] and m[2:].sum(1).tolist() == [8, 8]
    assert not m[:2, 6:].any()


def test_frame_causal_mask_rejects_partial_frames_with_a_clear_error():
    with pytest.raises(ValueError, match="whole frames"):
        FrameCausalMask(q_len=5, kv_len=5, tokens_per_frame=2)


@pytest.mark.parametrize("backend", available_attention_backends("cpu"))
@pytest.mark.parametrize(
    "masked,offset,n", [(False, 0, 5), (True, 0, 5), (True, 2, 5), (True, 0, 1), (True, 2, 1)]
)
def test_every_cpu_backend_matches_the_reference_in_fp32(backend, masked, offset, n):
    g = torch.Generator().manual_seed(0)
    new = 3  # new frames of n tokens
    q = torch.randn(2, 3, new * n, 16, generator=g)
    k, v = (torch.randn(2, 3, (new + offset) * n, 16, generator=g) for _ in range(2))
    mask = FrameCausalMask(new * n, (new + offset) * n, n, offset) if masked else None
    ref = attention(q, k, v, mask, "math")
    out = attention(q, k, v, mask, backend)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_masked_reference_ignores_future_keys():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 8, 8, generator=g) for _ in range(3))
    mask = FrameCausalMask(8, 8, 4)
    out = attention(q, k, v, mask, "math")
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 4:] += 5.0
    v2[:, :, 4:] -= 3.0
    out2 = attention(q, k2, v2, mask, "math")
    assert torch.equal(out[:, :, :4], out2[:, :, :4]) and not torch.allclose(out[:, :, 4:], out2[:, :, 4:])


def test_unavailable_backend_error_names_the_backend_and_the_alternatives():
    if "flash-attn" in available_attention_backends("cpu"):
        pytest.skip("flash-attn is never available on CPU")
    with pytest.raises(ValueError, match="flash-attn.*available"):
        resolve_attention_backend("flash-attn", "cpu")


def test_the_runtime_resolves_auto_for_every_attention_module_and_logs_it_once(caplog):
    model = build_dynamics(DynamicsConfig(depth=3))
    modules = [m for m in model.modules() if hasattr(m, "attention_backend")]
    assert len(modules) == 3 and {m.attention_backend for m in modules} == {"auto"}
    with caplog.at_level(logging.INFO, logger="runtime.parallelize"):
        assert apply_attention_backend(model, "cpu") == {"auto": "sdpa"}
    assert {m.attention_backend for m in modules} == {"sdpa"}
    lines = [r for r in caplog.records if "attention backend" in r.getMessage()]
    assert len(lines) == 1 and "sdpa" in lines[0].getMessage()
    x = torch.randn(1, 4, 2, 8, 8)
    assert torch.isfinite(model.loss(x, torch.zeros(1, 2, dtype=torch.long))["loss"])


def test_a_model_without_the_runtime_runs_auto_as_sdpa():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 8, 16, generator=g) for _ in range(3))
    mask = FrameCausalMask(8, 8, 4)
    torch.testing.assert_close(attention(q, k, v, mask, "auto"), attention(q, k, v, mask, "sdpa"))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["sdpa", "flex", "flash-attn"])
@pytest.mark.parametrize("offset", [0, 3])
@pytest.mark.parametrize("n", [64, 1])
def test_every_gpu_backend_matches_the_reference_in_bf16(backend, offset, n):
    if backend not in available_attention_backends("cuda"):
        pytest.skip(f"{backend} is not installed on this GPU machine")
    g = torch.Generator(device="cuda").manual_seed(0)
    new = 4
    q = torch.randn(2, 4, new * n, 64, generator=g, device="cuda", dtype=torch.bfloat16)
    k, v = (
        torch.randn(2, 4, (new + offset) * n, 64, generator=g, device="cuda", dtype=torch.bfloat16)
        for _ in range(2)
    )
    mask = FrameCausalMask(new * n, (new + offset) * n, n, offset)
    ref = attention(q.float(), k.float(), v.float(), mask, "math")
    out = attention(q, k, v, mask, backend).float()
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)


def test_flex_on_cpu_refuses_training_with_an_error_that_names_the_fix():
    if "flex" not in available_attention_backends("cpu"):
        pytest.skip("no FlexAttention in this torch")
    q = torch.randn(1, 1, 4, 8, requires_grad=True)
    with pytest.raises(ValueError, match="attention_backend=sdpa"):
        attention(q, q, q, FrameCausalMask(4, 4, 2), "flex")
