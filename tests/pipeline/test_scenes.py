import numpy as np

from pipeline.probe import decode_frames
from pipeline.samples import SamplesConfig, synthetic_scene, write_synthetic
from pipeline.scenes import detect_cuts, frame_differences


def test_hard_cuts_are_found_and_pans_and_moving_objects_are_not(tmp_path):
    paths = write_synthetic(tmp_path, SamplesConfig(synthetic=5))
    cuts = {}
    for p in paths:
        frames, _, _ = decode_frames(p, 86, 64)
        cuts[p.name] = detect_cuts(frames)
    assert cuts == {
        "scene-00.mp4": [],  # moving objects only
        "scene-01.mp4": [],  # a pan
        "scene-02.mp4": [45],  # cut at half of 90 frames
        "scene-03.mp4": [96],  # pan then a cut at 0.4 of 240 frames
        "scene-04.mp4": [45],  # slow pan then a cut at 0.6 of 75 frames
    }


def test_a_cut_stands_out_from_object_motion_in_both_pixel_and_histogram_differences():
    rng = np.random.default_rng(3)
    a = synthetic_scene(rng, 10, 64, 64)
    b = 255 - synthetic_scene(rng, 10, 64, 64)  # inverted colours: a different shot
    frames = np.concatenate([a, b])
    pix, hist = frame_differences(frames)
    assert pix[10] > 3 * pix[1:10].max() and hist[10] > 5 * hist[1:10].max()
    assert detect_cuts(frames) == [10]


def test_a_still_video_or_a_single_frame_has_no_cut():
    still = np.full((5, 16, 16, 3), 80, np.uint8)
    assert detect_cuts(still) == []
    assert detect_cuts(still[:1]) == []
