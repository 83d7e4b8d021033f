"""bench/capacity.py: the capacity plan's arithmetic, at small sizes (the debug tokenizer, the small
dynamics preset) except one run of the defaults."""

import dataclasses

import pytest

from bench.capacity import (
    CURATE_BENCH_OUTPUT_PX,
    CURATE_BENCH_RATE,
    CURATE_BENCH_SOURCE_PX,
    CURATE_BENCH_VIDEO_S,
    H100_BF16_DENSE_TFLOPS,
    CapacityError,
    Job,
    Row,
    curate_core_seconds,
    main,
    plan,
)
from dynamics import DynamicsConfig, build_dynamics

SMALL = Job(hours=10, source="640x360", size=128, clip_frames=17, tokenizer="debug", dynamics=("small",),
            cpu_nodes=2, cores_per_node=4, gpus=2)  # fmt: skip


def rows(job: Job) -> dict[str, Row]:
    return {r.stage.split()[0]: r for r in plan(job).rows}


def test_curation_split_gives_back_the_measured_rate_on_the_benchmarks_own_input():
    per_s = curate_core_seconds(
        CURATE_BENCH_SOURCE_PX / CURATE_BENCH_VIDEO_S, CURATE_BENCH_OUTPUT_PX / CURATE_BENCH_VIDEO_S
    )
    assert 1 / per_s == pytest.approx(CURATE_BENCH_RATE)
    # Bigger sources and bigger clips both cost more per second of video.
    assert curate_core_seconds(2e7, 1e6) > curate_core_seconds(1e7, 1e6)
    assert curate_core_seconds(1e7, 2e6) > curate_core_seconds(1e7, 1e6)


def test_doubling_cpu_nodes_halves_curation_wall_time_and_keeps_its_core_hours():
    one, two = rows(SMALL)["curate"], rows(dataclasses.replace(SMALL, cpu_nodes=4))["curate"]
    assert two.wall_s == pytest.approx(one.wall_s / 2)
    assert two.core_hours == pytest.approx(one.core_hours)


def test_dynamics_gpu_hours_are_tokens_times_flops_per_token_over_peak_times_mfu():
    job = dataclasses.replace(SMALL, mfu=0.3, epochs=2)
    dyn = rows(job)["dynamics"]
    # Independently: the small preset over the debug tokenizer's 16x16x4 latents of 128x128 clips.
    cfg = DynamicsConfig.preset("small", latent_height=16, latent_width=16, latent_channels=4, max_frames=5)
    per_token = build_dynamics(cfg, device=None).flops_per_sample(5) / (5 * cfg.tokens_per_frame)
    tokens = 2 * 10 * 3600 * 24.0 / 17 * 5 * cfg.tokens_per_frame
    assert dyn.gpu_hours == pytest.approx(tokens * per_token / (H100_BF16_DENSE_TFLOPS * 1e12 * 0.3) / 3600)
    assert dyn.wall_s == pytest.approx(dyn.gpu_hours * 3600 / job.gpus)
    assert "30% MFU (given)" in dyn.source and "40% MFU (assumed)" in rows(SMALL)["dynamics"].source


def test_tokenize_is_never_faster_than_its_encoder_and_a_second_actor_per_gpu_helps():
    job = dataclasses.replace(SMALL, tokenizer_peak_tflops=1.0)  # slow GPU: decode and encode comparable
    one, two = rows(job)["tokenize"], rows(dataclasses.replace(job, actors_per_gpu=2))["tokenize"]
    many = rows(dataclasses.replace(job, actors_per_gpu=64))["tokenize"]
    assert many.wall_s <= two.wall_s < one.wall_s
    assert one.gpu_hours == pytest.approx(one.wall_s * job.gpus / 3600)
    assert one.core_hours == pytest.approx(two.core_hours)  # the same clips decoded either way


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (dict(gpus=0), "--gpus"),
        (dict(cpu_nodes=-1), "--cpu-nodes"),
        (dict(keep=1.5), "--keep"),
        (dict(mfu=40.0), "--mfu"),
        (dict(dynamics=("no-such",)), "--dynamics"),
        (dict(tokenizer="no-such"), "--tokenizer"),
        (dict(source="big"), "--source"),
        (dict(clip_frames=16), "--clip-frames"),
        (dict(latent_frames=99), "--latent-frames"),
    ],
)
def test_a_bad_argument_is_refused_with_its_name(change, named):
    with pytest.raises(CapacityError, match=named):
        plan(dataclasses.replace(SMALL, **change))


def test_command_line_refuses_an_unknown_preset_listing_those_that_exist(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--dynamics", "no-such"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--dynamics" in err and "100m" in err


def test_default_plan_prints_every_stage_and_says_what_is_assumed(capsys):
    main([])
    out = capsys.readouterr().out
    for stage in ("| curate |", "| tokenize (cv4x8x8) |", "| dynamics 100m, 1 epoch |"):
        assert stage in out
    assert "measured 94.1" in out and "40% MFU (assumed) of 989 TFLOP/s (H100 bf16 dense)" in out
