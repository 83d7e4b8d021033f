"""Shapes, causality, streaming and input errors of the causal video tokenizer."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.tokenizer.helpers import random_video, randomized, tiny_config
from tokenizer import CausalVideoTokenizer, TokenizerConfig, VideoTokenizer, build_tokenizer
from tokenizer.layers import ResBlock3d

COMPRESSIONS = [(1, 8), (2, 8), (4, 8), (8, 8), (8, 16)]


@pytest.mark.parametrize("temporal,spatial", COMPRESSIONS)
@pytest.mark.parametrize("k", [0, 1, 2])
def test_clip_of_1_plus_k_tau_frames_maps_to_1_plus_k_latents(temporal, spatial, k):
    model = build_tokenizer(tiny_config(temporal, spatial)).eval()
    frames, size = 1 + k * temporal, 2 * spatial
    video = random_video(frames, size, batch=2)
    z = model.encode(video)
    assert z.shape == (2, 4, 1 + k, 2, 2)
    assert model.latent_shape(frames, size, size) == tuple(z.shape[1:])
    recon = model.decode(z)
    assert recon.shape == video.shape
    assert recon.min() >= -1 and recon.max() <= 1


def test_single_image_is_a_one_frame_video():
    model = randomized(tiny_config(4, 8))
    image = random_video(1, 16)[:, :, 0]
    z = model.encode(image.unsqueeze(2))
    assert z.shape == (1, 4, 1, 2, 2)
    # The image's latent is the first latent of any video that starts with it.
    video = torch.cat([image.unsqueeze(2), random_video(4, 16, seed=5)], dim=2)
    torch.testing.assert_close(model.encode(video)[:, :, :1], z, atol=1e-5, rtol=0)


@pytest.mark.parametrize("temporal", [1, 2, 4, 8])
def test_changing_later_frames_leaves_earlier_latents_unchanged(temporal):
    model = randomized(tiny_config(temporal, 8))
    k = 3
    video = random_video(1 + k * temporal, 16)
    z = model.encode(video)
    for j in range(k):
        last_seen = j * temporal  # latent j covers input frames 0 .. j*t
        changed = video.clone()
        changed[:, :, last_seen + 1 :] = random_video(video.shape[2] - last_seen - 1, 16, seed=9 + j)
        z2 = model.encode(changed)
        torch.testing.assert_close(z2[:, :, : j + 1], z[:, :, : j + 1], atol=1e-5, rtol=0)
        # ...and the change is visible right after: the check above is not vacuous.
        assert (z2[:, :, j + 1] - z[:, :, j + 1]).abs().max() > 1e-3


@pytest.mark.parametrize("temporal", [1, 4, 8])
def test_decoded_frames_depend_only_on_past_latents(temporal):
    model = randomized(tiny_config(temporal, 8))
    z = torch.randn(1, 4, 4, 2, 2)
    x = model.decode(z)
    z2 = z.clone()
    z2[:, :, 2:] = torch.randn(1, 4, 2, 2, 2)
    x2 = model.decode(z2)
    upto = 1 + 1 * temporal  # frames decoded from latents 0 and 1
    torch.testing.assert_close(x2[:, :, :upto], x[:, :, :upto], atol=1e-5, rtol=0)
    assert (x2[:, :, upto:] - x[:, :, upto:]).abs().max() > 1e-3


@pytest.mark.parametrize("bottleneck", ["gaussian", "fsq"])
@pytest.mark.parametrize("temporal,spatial,chunk", [(4, 8, 4), (4, 8, 8), (8, 8, 8), (1, 8, 2), (8, 16, 16)])
def test_chunked_encode_and_decode_equal_whole_clip(bottleneck, temporal, spatial, chunk):
    model = randomized(tiny_config(temporal, spatial, bottleneck))
    video = random_video(1 + 3 * temporal, spatial * 2)
    with torch.no_grad():
        z = model.encode(video)
        z_chunked = model.encode(video, chunk_frames=chunk)
        if bottleneck == "fsq":
            # Codes are rounded: a 1e-7 difference at a rounding boundary may flip one code, so
            # compare the pre-quantization features and require the codes to agree almost everywhere.
            h = model.encoder(video)
            cache: dict = {}
            h_chunked = torch.cat([model.encoder(c, cache) for c in _chunks(video, chunk)], dim=2)
            assert (h - h_chunked).abs().max() < 1e-4
            assert (z != z_chunked).float().mean() < 1e-3
        else:
            assert (z - z_chunked).abs().max() < 1e-4
        x = model.decode(z)
        x_chunked = model.decode(z, chunk_frames=chunk)
    assert x.shape == x_chunked.shape == video.shape
    assert (x - x_chunked).abs().max() < 1e-4


def _chunks(video, n):
    out, start, size = [], 0, 1 + n
    while start < video.shape[2]:
        out.append(video[:, :, start : start + size])
        start, size = start + size, n
    return out


def test_streaming_cache_stays_the_same_size_as_the_video_grows():
    model = randomized(tiny_config(4, 8))
    cache: dict = {}
    sizes = []
    chunks = [random_video(1, 16, seed=0)] + [random_video(4, 16, seed=s) for s in range(1, 9)]
    latents = []
    for z in model.stream_encode(chunks, cache):
        latents.append(z)
        sizes.append(sum(v.numel() for v in cache.values() if isinstance(v, torch.Tensor)))
    # After the first real chunk the carried state is constant: memory does not grow with length.
    assert len(set(sizes[1:])) == 1 and sizes[1] > 0
    # A first chunk of one frame (the image) then 4-frame chunks: still the whole-clip result.
    whole = model.encode(torch.cat(chunks, dim=2))
    assert (torch.cat(latents, dim=2) - whole).abs().max() < 1e-4
    dcache: dict = {}
    dsizes = []
    zchunks = [torch.randn(1, 4, 1, 2, 2)] + [torch.randn(1, 4, 2, 2, 2) for _ in range(8)]
    for _ in model.stream_decode(zchunks, dcache):
        dsizes.append(sum(v.numel() for v in dcache.values() if isinstance(v, torch.Tensor)))
    assert len(set(dsizes[1:])) == 1


def test_frame_count_error_names_the_count_and_the_valid_counts():
    model = build_tokenizer(tiny_config(4, 8))
    expected = r"6 frames.*1 \+ k\*4.*1, 5, 9, 13.*trim the clip to 5.*pad it to 9"
    with pytest.raises(ValueError, match=expected):
        model.encode(random_video(6, 16))


def test_spatial_size_and_layout_errors_say_what_to_do():
    model = build_tokenizer(tiny_config(4, 8))
    with pytest.raises(ValueError, match=r"20x16 pixels.*multiples of the spatial compression 8.*16x16"):
        model.encode(torch.zeros(1, 3, 5, 20, 16))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\].*unsqueeze\(2\)"):
        model.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(TypeError, match="uint8"):
        model.encode(torch.zeros(1, 3, 5, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"chunk_frames=6.*multiple of the temporal compression 4"):
        model.encode(random_video(9, 16), chunk_frames=6)
    with pytest.raises(ValueError, match=r"latent must be \[B, 4"):
        model.decode(torch.zeros(1, 3, 2, 2, 2))
    with pytest.raises(ValueError, match="temporal_compression=3"):
        TokenizerConfig(temporal_compression=3)


def test_tokenizer_satisfies_the_downstream_interface():
    cont = build_tokenizer(tiny_config(4, 8))
    disc = build_tokenizer(tiny_config(8, 16, "fsq"))
    assert isinstance(cont, VideoTokenizer) and isinstance(disc, VideoTokenizer)
    assert (cont.temporal_compression, cont.spatial_compression, cont.latent_channels) == (4, 8, 4)
    assert not cont.is_discrete and cont.codebook_size is None and cont.levels is None
    assert disc.is_discrete and disc.codebook_size == 8 * 5 * 5 * 5 and disc.levels == [8, 5, 5, 5]
    with pytest.raises(TypeError, match="discrete"):
        cont.encode_indices(random_video(5, 16))


def test_meta_build_then_init_gives_a_working_model_and_flops_grow_with_frames():
    cfg = tiny_config(4, 8, "fsq")
    model = build_tokenizer(cfg, meta=True)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    video = random_video(5, 16)
    idx = model.encode_indices(video)
    assert idx.dtype == torch.int64 and int(idx.max()) < model.codebook_size
    f5, f9 = model.flops_per_video(5, 16, 16), model.flops_per_video(9, 16, 16)
    assert 0 < f5 < f9 < 2 * f5 * 1.01
    # Conv FLOPs scale with pixels: 4x the area is ~4x the FLOPs.
    assert 3.5 < model.flops_per_video(5, 32, 32) / f5 < 4.5


def test_the_256_to_512_px_preset_has_the_latent_grid_and_cost_its_comment_documents():
    """tokenizer.config.PRESETS["cv8x16x16-p4"], counted on the meta device: 16x16 latents at 256 px,
    32x32 at 512 px, ~200M parameters and ~0.44 TFLOP per frame forward at 512 px, a seventh of
    cv8x16x16's, whose first stage runs at full resolution."""
    with torch.device("meta"):
        model = CausalVideoTokenizer(TokenizerConfig.preset("cv8x16x16-p4"))
        full_res = CausalVideoTokenizer(TokenizerConfig.preset("cv8x16x16"))
    assert model.latent_shape(17, 256, 256) == (16, 3, 16, 16)
    assert model.latent_shape(121, 512, 512) == (16, 16, 32, 32)
    assert model.encoder.conv_in.conv.in_channels == 3 * 4 * 4
    assert 190e6 < sum(p.numel() for p in model.parameters()) < 210e6
    per_frame = model.flops_per_video(9, 512, 512) / 9
    assert 0.40e12 < per_frame < 0.48e12, per_frame
    assert 6 < full_res.flops_per_video(9, 512, 512) / 9 / per_frame < 8


def test_encoder_flops_are_part_of_the_round_trip_and_the_decoder_is_the_rest():
    model = build_tokenizer(tiny_config(4, 8), meta=True)
    both, enc = model.flops_per_video(9, 16, 16), model.flops_per_video(9, 16, 16, decoder=False)
    # The decoder mirrors the encoder, so neither half is negligible.
    assert 0.2 * both < enc < 0.8 * both


def test_blocks_lists_every_residual_block_once_in_order():
    model = build_tokenizer(tiny_config(4, 8))
    blocks = model.blocks()
    resblocks = [m for m in model.modules() if isinstance(m, ResBlock3d)]
    assert {id(b) for b in blocks if isinstance(b, ResBlock3d)} == {id(b) for b in resblocks}
    assert len({id(b) for b in blocks}) == len(blocks)
    # Running the listed blocks in order is the whole encoder between conv_in and conv_out.
    x = model.encoder.conv_in(random_video(5, 16))
    n_enc = sum(len(s) for s in model.encoder.stages) + len(model.encoder.mid)
    for b in blocks[:n_enc]:
        x = b(x)
    assert x.shape[1:3] == (model.encoder.conv_out.conv.in_channels, 2)


@pytest.mark.parametrize("patch,spatial,temporal", [(2, 4, 1), (4, 4, 1), (4, 8, 2)])
def test_patch_size_folds_pixels_into_channels_and_keeps_shapes_and_streaming(patch, spatial, temporal):
    cfg = dataclasses.replace(tiny_config(temporal, spatial), patch_size=patch)
    model = randomized(cfg)
    video = random_video(1 + 2 * temporal, 2 * spatial)
    z = model.encode(video)
    assert z.shape == (1, 4, 3, 2, 2) and model.decode(z).shape == video.shape
    chunked = model.encode(video, chunk_frames=temporal)
    torch.testing.assert_close(chunked, z, atol=1e-5, rtol=1e-5)
    # The first conv sees patch x patch pixel blocks as channels.
    assert model.encoder.conv_in.conv.in_channels == 3 * patch * patch


def test_temporal_kernel_1_codes_each_frame_on_its_own():
    cfg = dataclasses.replace(tiny_config(1, 4), patch_size=4, temporal_kernel=1)
    model = randomized(cfg)
    video = random_video(5, 16)
    other = video.clone()
    other[:, :, 2] = random_video(1, 16, seed=9)[:, :, 0]
    z, z2 = model.encode(video), model.encode(other)
    changed = [(z2[:, :, t] - z[:, :, t]).abs().max().item() > 1e-4 for t in range(5)]
    assert changed == [False, False, True, False, False]
    # With the default temporal kernel, later latents see the change too.
    model3 = randomized(dataclasses.replace(cfg, temporal_kernel=3))
    assert (model3.encode(other)[:, :, 3] - model3.encode(video)[:, :, 3]).abs().max() > 1e-4


def test_patch_size_larger_than_the_compression_is_refused_with_the_valid_values():
    with pytest.raises(ValueError, match=r"patch_size=16: must be a power of two no larger than"):
        dataclasses.replace(tiny_config(1, 8), patch_size=16)
