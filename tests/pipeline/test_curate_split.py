"""The held-out split by source, without Ray: which sources ``pack`` holds out."""

from pipeline.curate import split_sources


def _samples_layout(root: str) -> dict[str, bool]:
    """``{source: has actions}`` as ``vidworld samples`` lays its videos out, plus many small folders."""
    sources = {f"{root}/atari/breakout/breakout-{i:02d}.mp4": True for i in range(4)}
    sources |= {f"{root}/atari/pong/pong-{i:02d}.mp4": True for i in range(4)}
    sources |= {f"{root}/natural/{n}.mp4": False for n in "abcdefgh"}
    sources |= {f"{root}/synthetic/scene-{i:02d}.mp4": False for i in range(6)}
    sources |= {f"{root}/lone/only.mp4": False}
    sources |= {f"{root}/pairs/p{k}/v{i}.mp4": False for k in range(10) for i in range(2)}
    return sources


def _folders(sources) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for s in sources:
        out.setdefault(s.rsplit("/", 1)[0], []).append(s)
    return out


def test_every_folder_of_two_or_more_sources_has_a_held_out_source_for_any_seed():
    sources = _samples_layout("/data/samples")
    folders = _folders(sources)
    for seed in range(5):
        split = split_sources(sources, 0.2, seed)
        assert set(split) == set(sources)
        for folder, members in folders.items():
            if len(members) >= 2:
                assert any(split[s] == "heldout" for s in members), (seed, folder)
        # With a fraction that no hash falls below, each folder of >= 2 gives exactly one; a lone one none.
        split = split_sources(sources, 1e-12, seed)
        for folder, members in folders.items():
            assert sum(split[s] == "heldout" for s in members) == (len(members) >= 2), (seed, folder)


def test_videos_with_and_without_actions_in_one_folder_are_held_out_each():
    sources = {f"/d/mixed/a{i}.mp4": True for i in range(3)} | {f"/d/mixed/n{i}.mp4": False for i in range(3)}
    split = split_sources(sources, 0.2, 0)
    assert any(split[s] == "heldout" for s in sources if sources[s])
    assert any(split[s] == "heldout" for s in sources if not sources[s])


def test_the_split_depends_on_sources_and_seed_only_not_on_their_order():
    sources = _samples_layout("s3://bucket/samples")
    split = split_sources(sources, 0.2, 3)
    assert split == split_sources(dict(reversed(list(sources.items()))), 0.2, 3)
    assert split != split_sources(sources, 0.2, 4)
    assert set(split_sources(sources, 0.0, 3).values()) == {"train"}
