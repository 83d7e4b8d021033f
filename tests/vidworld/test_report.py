"""The local HTML report: built from a small but real output folder, then read back as HTML."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pipeline.video import decode_mp4
from tests.vidworld.report_fixtures import COMPOUNDING_HEADER, SCRIPT_REASON, make_output, tiny_png
from vidworld.report import (
    build_report,
    cli,
    compounding_verdict,
    read_csv_rows,
    write_report,
)


class Collect(HTMLParser):
    """Every start tag with its attributes, and every text node."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(doc: str) -> Collect:
    p = Collect()
    p.feed(doc)
    p.close()
    return p


@pytest.fixture
def full_output(tmp_path: Path) -> Path:
    return make_output(tmp_path / "run1")


def video_sources(doc: str) -> list[bytes]:
    return [
        base64.b64decode(attrs["src"].split(",", 1)[1])
        for tag, attrs in parse(doc).tags
        if tag == "video" and attrs.get("src", "").startswith("data:video/mp4;base64,")
    ]


def test_report_embeds_the_videos_as_data_uris_that_decode_to_the_same_mp4(full_output):
    path = write_report(full_output)
    assert path == full_output / "report.html"
    doc = path.read_text()
    sources = video_sources(doc)
    recon = (full_output / "tokenizer" / "eval" / "recon.mp4").read_bytes()
    rollout = (full_output / "eval" / "rollout.mp4").read_bytes()
    assert sources == [recon, rollout]
    assert decode_mp4(sources[0]).shape == (6, 16, 32, 3)
    # Self-contained: nothing fetched from elsewhere.
    for _, attrs in parse(doc).tags:
        for key in ("src", "href"):
            assert not (attrs.get(key) or "").startswith(("http:", "https:", "//"))


def test_report_shows_the_table_values_and_names_the_failing_horizon(full_output):
    doc = build_report(full_output)
    text = "".join(parse(doc).text)
    for value in ("31.25", "22.12", "0.035", "29.88", "0.8125", "64x64"):
        assert value in text, value
    verdict = re.search(r"The model does NOT beat copying the last frame at horizon (\d+) ", text)
    assert verdict and verdict.group(1) == "3"
    assert "positive at every horizon and grows" in text
    # Provenance beside the curve (EVALUATION.md: every figure names data, checkpoint, machine, date).
    assert "Figures below: data.shards: curated/shards/shard-000000.tar; data.clips: 4;" in text
    assert "checkpoint_step: 500; tokenizer: tokenizer/model.safetensors; machine: 2-core CPU" in text


def test_failure_reason_with_script_is_escaped(full_output):
    doc = build_report(full_output)
    assert "<script>" not in doc
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in doc
    assert not [t for t, _ in parse(doc).tags if t == "script"]
    assert SCRIPT_REASON in "".join(parse(doc).text)


def test_missing_stages_are_named_as_missing(tmp_path):
    out = tmp_path / "only_curated"
    (out / "curated").mkdir(parents=True)
    (out / "curated" / "stats.json").write_text(json.dumps({"clips": 5}))
    write_report(out)
    text = "".join(parse((out / "report.html").read_text()).text)
    for rel in (
        "tokenizer/eval/recon.mp4",
        "tokenizer/eval/metrics.json",
        "eval/compounding_error.csv",
        "eval/rollout.mp4",
        "eval/eval.json",
        "dynamics",
        "curated/manifest.jsonl",
    ):
        assert f"Missing: {rel} (" in text, rel
    assert "Not in this folder yet" in text
    assert not video_sources((out / "report.html").read_text())


def test_full_folder_reports_no_missing_stage_outputs_except_those_absent(full_output):
    text = "".join(parse(build_report(full_output)).text)
    missing = re.findall(r"Missing: (\S+) \(", text)
    # The fixture has no dynamics run folder, no latents and no PNG (drawn from the CSV instead).
    assert sorted(missing) == ["dynamics", "eval/compounding_error.png", "latents"]


def test_verdict_says_the_tokenizer_loses_when_copying_pixels_beats_reconstruction(tmp_path):
    rows = csv_rows(
        tmp_path,
        COMPOUNDING_HEADER + "\n1,30,36,29,34,0.01,0.02\n2,29,33,28,34,0.01,0.02\n",
    )
    v = compounding_verdict(rows)
    assert v.startswith("The model beats copying the last frame at every horizon 1..2")
    assert "At horizon 1 copying the last real frame" in v and "the tokenizer, not the dynamics" in v


def test_verdict_fails_a_horizon_on_latent_mse_alone(tmp_path):
    rows = csv_rows(
        tmp_path,
        COMPOUNDING_HEADER + "\n1,30,20,20,34,0.01,0.02\n2,29,20,20,34,0.05,0.02\n",
    )
    assert "horizon 2 (" in compounding_verdict(rows)


def csv_rows(tmp_path: Path, text: str) -> list[dict[str, float]]:
    p = tmp_path / "t.csv"
    p.write_text(text)
    return read_csv_rows(p)


def test_cli_exit_codes(tmp_path, full_output, capsys):
    assert cli(str(full_output), []) == 0
    assert (full_output / "report.html").is_file()
    assert cli(str(tmp_path / "nope"), []) == 2
    assert "not a folder" in capsys.readouterr().err
    assert cli(str(full_output), ["x=1"]) == 2


def test_bad_csv_value_names_the_file_and_line(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("horizon,model_psnr\n1,abc\n")
    with pytest.raises(ValueError, match=r"c\.csv line 2"):
        read_csv_rows(p)


def test_compounding_png_is_embedded_when_present(tmp_path):
    out = make_output(tmp_path / "run", png=True)
    imgs = [a["src"] for t, a in parse(build_report(out)).tags if t == "img"]
    assert [base64.b64decode(src.split(",", 1)[1]) for src in imgs] == [tiny_png()]
    assert imgs[0].startswith("data:image/png;base64,")


def test_torn_manifest_line_fails_naming_the_file_and_line(tmp_path, capsys):
    out = make_output(tmp_path / "run")
    with open(out / "curated" / "manifest.jsonl", "a") as f:
        f.write('{"source": "d.mp4", "sta')
    assert cli(str(out), []) == 2
    assert "manifest.jsonl line 4 is not valid JSON" in capsys.readouterr().err
    assert not (out / "report.html").exists()
