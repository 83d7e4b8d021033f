import fsspec
import numpy as np
import pandas as pd
import pytest

from pipeline.inputs import InputItem, list_inputs, load_array


@pytest.fixture()
def tree(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.mp4").write_bytes(b"v")
    np.save(tmp_path / "a" / "x.actions.npy", np.arange(3))
    np.save(tmp_path / "a" / "x.rewards.npy", np.zeros(3, np.float32))
    (tmp_path / "a" / "b").mkdir()
    (tmp_path / "a" / "b" / "y.mkv").write_bytes(b"v")
    (tmp_path / "a" / "readme.txt").write_text("not a video")
    (tmp_path / "a" / ".hidden.mp4").write_bytes(b"v")
    return tmp_path


def test_a_folder_lists_every_file_recursively_with_sidecars_but_not_hidden_files(tree):
    items = list_inputs(str(tree / "a"))
    assert [i.source for i in items] == [str(tree / "a" / n) for n in ("b/y.mkv", "readme.txt", "x.mp4")]
    x = items[2]
    assert x.actions == str(tree / "a" / "x.actions.npy") and x.rewards == str(tree / "a" / "x.rewards.npy")
    assert load_array(x.actions).tolist() == [0, 1, 2]
    assert items[0].actions is None


def test_a_glob_lists_the_matching_files(tree):
    items = list_inputs(str(tree / "a" / "**" / "*.mkv"))
    assert [i.source for i in items] == [str(tree / "a" / "b" / "y.mkv")]


def test_list_files_resolve_relative_urls_and_carry_captions(tree):
    (tree / "list.txt").write_text("# videos\na/x.mp4\n\na/b/y.mkv\n")
    assert [i.source for i in list_inputs(str(tree / "list.txt"))] == [
        str(tree / "a/b/y.mkv"),
        str(tree / "a/x.mp4"),
    ]
    pd.DataFrame({"url": ["a/x.mp4", "a/b/y.mkv"], "caption": ["ball", None]}).to_parquet(
        tree / "list.parquet"
    )
    items = list_inputs(str(tree / "list.parquet"))
    assert items == [
        InputItem(str(tree / "a/b/y.mkv"), name="a/b/y.mkv"),
        InputItem(
            str(tree / "a/x.mp4"),
            "ball",
            str(tree / "a/x.actions.npy"),
            str(tree / "a/x.rewards.npy"),
            name="a/x.mp4",
        ),
    ]
    pd.DataFrame({"url": ["a/x.mp4"], "actions": ["other.npy"]}).to_csv(tree / "list.csv", index=False)
    assert list_inputs(str(tree / "list.csv"))[0].actions == str(tree / "other.npy")


def test_a_list_file_without_a_url_column_names_the_fix(tree):
    pd.DataFrame({"path": ["a/x.mp4"]}).to_csv(tree / "bad.csv", index=False)
    with pytest.raises(ValueError, match="no 'url' column"):
        list_inputs(str(tree / "bad.csv"))


def test_an_fsspec_url_folder_lists_its_files_with_sidecars():
    fs = fsspec.filesystem("memory")
    fs.pipe({"/vw-inputs/v1.mp4": b"v", "/vw-inputs/v1.actions.npy": b"a", "/vw-inputs/v2.mp4": b"v"})
    try:
        items = list_inputs("memory://vw-inputs/")
        assert [i.source for i in items] == ["memory:///vw-inputs/v1.mp4", "memory:///vw-inputs/v2.mp4"]
        assert items[0].actions == "memory:///vw-inputs/v1.actions.npy" and items[1].actions is None
    finally:
        fs.rm("/vw-inputs", recursive=True)


def test_a_missing_input_is_an_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match="does-not-exist"):
        list_inputs(str(tmp_path / "does-not-exist"))
    with pytest.raises(ValueError, match="matched no files"):
        list_inputs(str(tmp_path / "*.mp4"))


def test_source_ids_are_stable_hashes_of_the_source():
    assert (
        InputItem("a.mp4").source_id
        == InputItem("a.mp4", "caption").source_id
        != InputItem("b.mp4").source_id
    )
    assert len(InputItem("a.mp4").source_id) == 16


def test_one_file_named_two_ways_is_one_input_with_one_id(tmp_path, monkeypatch):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"v")
    (tmp_path / "link").symlink_to(tmp_path / "videos")
    monkeypatch.chdir(tmp_path)
    ids = {
        InputItem(p).source_id
        for p in ("videos/a.mp4", "./videos/a.mp4", str(tmp_path / "videos" / "a.mp4"), "link/a.mp4")
    }
    assert len(ids) == 1
    assert InputItem("videos/b.mp4").source_id not in ids
    # A list file naming the same file twice (relative and absolute) gives one input.
    (tmp_path / "list.txt").write_text(f"videos/a.mp4\n{tmp_path}/videos/a.mp4\n./videos/a.mp4\n")
    assert len(list_inputs(str(tmp_path / "list.txt"))) == 1


def test_names_are_relative_to_the_input_so_the_split_ignores_where_it_lies(tmp_path):
    for root in ("here", "deep/elsewhere"):
        for rel in ("atari/pong/p1.mp4", "natural/n1.mp4"):
            (tmp_path / root / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / root / rel).write_bytes(b"v")
    for spec in (tmp_path / "here", tmp_path / "deep" / "elsewhere", "file://" + str(tmp_path / "here")):
        assert [i.name for i in list_inputs(str(spec))] == ["atari/pong/p1.mp4", "natural/n1.mp4"]
    assert [i.name for i in list_inputs(str(tmp_path / "here" / "**" / "*.mp4"))] == [
        "atari/pong/p1.mp4",
        "natural/n1.mp4",
    ]
    assert [i.name for i in list_inputs(str(tmp_path / "here/atari/pong/p1.mp4"))] == ["p1.mp4"]
    (tmp_path / "here" / "list.txt").write_text("atari/pong/p1.mp4\nnatural/n1.mp4\n")
    assert [i.name for i in list_inputs(str(tmp_path / "here" / "list.txt"))] == [
        "atari/pong/p1.mp4",
        "natural/n1.mp4",
    ]
    ids = {
        i.source_id
        for spec in ("here", "deep/elsewhere")
        for i in list_inputs(str(tmp_path / spec))
        if i.source.endswith(".mp4")
    }
    assert len(ids) == 4  # different files: different ids, though their names are the same
