"""The local HTML report: built from a small but real output folder, then read back as HTML."""

from __future__ import annotations

import base64
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from runtime.video import decode_mp4
from tests.vidworld.report_fixtures import COMPOUNDING_HEADER, SCRIPT_REASON, make_output, tiny_png
from vidworld.report import (
    HEADLINE_SCALARS,
    build_report,
    cli,
    compounding_verdict,
    headline_scalars,
    headline_sentence,
    judge_compounding,
    read_csv_rows,
    read_headline,
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
    counterfactual = (full_output / "eval" / "counterfactual.mp4").read_bytes()
    assert sources == [rollout, recon, counterfactual]
    assert decode_mp4(sources[1]).shape == (6, 16, 32, 3)
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


class Order(HTMLParser):
    """Where things first appear in a document: text snippets, tags and ids, by character offset."""

    def __init__(self) -> None:
        super().__init__()
        self.text = ""
        self.first: dict[str, int] = {}
        self.details: list[dict[str, str | None]] = []
        self.tables_outside_details = 0
        self._open_details = 0
        self._verdict_end: int | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.first.setdefault(tag, len(self.text))
        if a.get("id"):
            self.first.setdefault("#" + a["id"], len(self.text))
        if tag == "details":
            self.details.append(a)
            self._open_details += 1
        if tag == "table" and not self._open_details:
            self.tables_outside_details += 1

    def handle_endtag(self, tag):
        if tag == "details":
            self._open_details -= 1
        if tag == "section":
            self.first.setdefault("/section", len(self.text))

    def handle_data(self, data):
        self.text += data

    def at(self, snippet: str) -> int:
        i = self.text.find(snippet)
        assert i >= 0, f"{snippet!r} not in the report's text"
        return i


def order(doc: str) -> Order:
    o = Order()
    o.feed(doc)
    o.close()
    return o


def test_page_opens_with_the_verdict_and_headline_figures_before_any_table(tmp_path):
    o = order(build_report(make_output(tmp_path / "run", dynamics_run=True)))
    sentence = o.at("The dynamics model loses to copying the last frame at horizon 3, though it follows")
    figures = [
        o.at("29.88"),  # tokenizer PSNR
        o.at("below the 32 dB target"),
        o.at("loses at horizon 3"),  # beats copy-last: no
        o.at("worst h=3: -1.38 dB"),
        o.at("latent MSE 1.14x copy-last's (h=3)"),
        o.at("+0.50 → +2.00"),  # action sensitivity, first and last horizon
        o.at("ratio 0.44"),  # counterfactual response at the last horizon
        o.at("counterfactual PSNR 22.62 dB"),
        o.at("tokenizer 0:02:00"),  # training time: 600 steps x 0.2 s
        o.at("dynamics 0:02:30"),
    ]
    end_of_verdict = o.first["/section"]
    assert o.first["#verdict"] <= sentence < min(figures) and max(figures) < end_of_verdict
    assert end_of_verdict <= min(o.first["table"], o.first["details"], o.first["video"], o.first["h2"])
    # Then the videos, the curve, the raw tables, in that order.
    assert o.first["video"] < o.at("2. How the error grows") < o.first["svg"] < o.at("3. Raw tables")
    assert o.at("3. Raw tables") < o.first["details"] <= o.first["table"]


def test_raw_tables_are_folded_and_closed_and_nothing_is_dropped(full_output):
    o = order(build_report(full_output))
    assert o.tables_outside_details == 0
    assert o.details and not [d for d in o.details if "open" in d]
    raw = o.text[o.at("3. Raw tables") :]
    for shown in (
        "31.25",  # compounding_error.csv
        "1.25",  # action_sensitivity.csv
        "0.4375",  # counterfactual.csv
        "recon_ssim",  # tokenizer/eval/metrics.json
        "train/mfu",  # the tokenizer's last logged step
        "task: tokenizer",  # tokenizer/config.yaml
        "clips_filtered",  # curated/stats.json
        "too short (0.4 s < 1 s)",  # curated/manifest.jsonl
        "configs/pipeline.yaml",
        "checkpoint_step",  # eval/eval.json
    ):
        assert shown in raw, shown


def test_missing_counterfactual_says_not_measured_with_the_status(tmp_path):
    out = make_output(tmp_path / "run", counterfactual=False)
    text = "".join(parse(build_report(out)).text)
    assert "not measured" in text and "switched off in the evaluation's config" in text
    assert "Missing: eval/counterfactual" not in text  # optional: not measured is not missing
    assert "reacting to other actions" not in text
    assert len(video_sources(build_report(out))) == 2


def test_counterfactual_without_any_eval_status_is_not_measured_and_does_not_fail(tmp_path):
    out = make_output(tmp_path / "run", counterfactual=False)
    info = json.loads((out / "eval" / "eval.json").read_text())
    del info["counterfactual"], info["action_sensitivity"]
    (out / "eval" / "eval.json").write_text(json.dumps(info))
    text = "".join(parse(build_report(out)).text)
    assert "eval.json records no counterfactual status" in text
    assert "Missing: eval/counterfactual" not in text


def test_counterfactual_rows_are_read_from_eval_json_when_the_csv_is_absent(tmp_path):
    out = make_output(tmp_path / "run")
    rows = read_csv_rows(out / "eval" / "counterfactual.csv")
    (out / "eval" / "counterfactual.csv").unlink()
    info = json.loads((out / "eval" / "eval.json").read_text())
    info["counterfactual"] = {"status": "computed", "rows": rows}
    (out / "eval" / "eval.json").write_text(json.dumps(info))
    assert headline_scalars(read_headline(out))["action_response_ratio_last"] == 0.4375


def test_action_sensitivity_switched_off_is_not_measured_rather_than_missing(tmp_path):
    out = make_output(tmp_path / "run")
    (out / "eval" / "action_sensitivity.csv").unlink()
    info = json.loads((out / "eval" / "eval.json").read_text())
    info["action_sensitivity"] = "skipped: the model takes no actions"
    (out / "eval" / "eval.json").write_text(json.dumps(info))
    text = "".join(parse(build_report(out)).text)
    assert "Not measured: the model takes no actions." in text
    assert "Missing: eval/action_sensitivity.csv" not in text


def test_headline_of_an_empty_folder_says_nothing_was_measured_and_the_report_still_builds(tmp_path):
    text = "".join(parse(build_report(tmp_path)).text)
    assert (
        "The dynamics model is not judged yet (no eval/compounding_error.csv: the dynamics model has" in text
    )
    verdict = text[: text.index("1. What the model imagines")]
    assert verdict.count("not measured") == 4  # tokenizer, copy-last, actions, counterfactual
    assert "tokenizer not trained" in verdict and "dynamics not trained" in verdict


def test_headline_names_the_tokenizer_as_the_bottleneck_when_copying_pixels_beats_it(tmp_path):
    out = make_output(tmp_path / "run")
    (out / "eval" / "compounding_error.csv").write_text(
        COMPOUNDING_HEADER + "\n1,30,36,29,34,0.01,0.02\n2,28,35,27,33,0.01,0.02\n3,26,30,27,33,0.01,0.02\n"
    )
    s = headline_sentence(read_headline(out))
    assert s.startswith("The dynamics model loses to copying the last frame at horizon 3, though it follows")
    assert "the tokenizer is the bottleneck: its reconstruction of these clips (34.0 dB) is further" in s
    assert "than copying the last frame in pixels (36.0 dB) at horizon 1" in s


def test_headline_says_beats_and_follows_when_it_does(tmp_path):
    out = make_output(tmp_path / "run")
    (out / "eval" / "compounding_error.csv").write_text(
        COMPOUNDING_HEADER + "\n1,31,20,20,34,0.01,0.02\n2,30,20,20,34,0.01,0.02\n"
    )
    s = headline_sentence(read_headline(out))
    assert s.startswith("The dynamics model beats copying the last frame at every horizon, and it follows")


def test_worst_horizon_margins_of_the_judgement(tmp_path):
    rows = csv_rows(tmp_path, COMPOUNDING_HEADER + "\n1,30,20,28,34,0.01,0.02\n2,29,20,28.5,34,0.03,0.02\n")
    j = judge_compounding(rows)
    assert j.beats is False and [h for h, _ in j.failing] == [2]
    assert j.worst_margin_db == (2, 0.5) and j.worst_latent_ratio == (2, 1.5)


def test_headline_scalars_of_the_fixture(full_output):
    m = headline_scalars(read_headline(full_output))
    assert list(m) == list(HEADLINE_SCALARS)
    assert m["tokenizer_psnr"] == 29.875 and m["tokenizer_meets_target"] == 0.0
    assert m["tokenizer_natural_psnr"] == 24.0
    assert m["beats_copy_last"] == 0.0 and m["worst_margin_db"] == -1.375
    assert (m["action_sensitivity_first"], m["action_sensitivity_last"]) == (0.5, 2.0)
    assert (m["action_response_ratio_last"], m["counterfactual_psnr_last"]) == (0.4375, 22.625)


def test_training_time_is_the_sum_of_the_logged_step_times(full_output):
    h = read_headline(full_output)
    assert (h.training["tokenizer"].steps, h.training["tokenizer"].seconds) == (600, pytest.approx(120.0))
    assert h.training["dynamics"].steps is None


def test_videos_are_enlarged_by_a_whole_factor_with_nearest_neighbour_pixels(full_output):
    doc = build_report(full_output)
    sizes = [(a.get("width"), a.get("height")) for t, a in parse(doc).tags if t == "video"]
    # rollout 128x64 -> 6x; recon 32x16 -> 8x (the cap); counterfactual 256x64 -> 4x (the page width)
    assert sizes == [("768", "384"), ("256", "128"), ("1024", "256")]
    assert "image-rendering:pixelated" in doc
    assert all(
        {"autoplay", "loop", "muted", "playsinline", "controls"} <= set(a)
        for t, a in parse(doc).tags
        if t == "video"
    )


def test_counterfactual_card_shows_each_game_and_reads_nulls_from_eval_json(full_output):
    text = "".join(parse(build_report(full_output)).text)
    assert "4 branches at 64x64" in text and "by game: ALE/Breakout-v5 0.44, ALE/Pong-v5 0.50" in text
    raw = text[text.index("3. Raw tables") :]
    assert "ALE/Breakout-v5 alone" in raw and "ALE/Pong-v5 alone" in raw  # Pong's h=1 ratio is null


def test_an_undefined_response_ratio_is_said_not_shown_as_a_number(tmp_path):
    out = make_output(tmp_path / "run")
    path = out / "eval" / "counterfactual.csv"
    path.write_text(path.read_text().replace("0.4375,0.5", ",0.5"))  # NaN: identical true futures
    text = "".join(parse(build_report(out)).text)
    assert "ratio undefined" in text and "the true futures are identical in every branch" in text
    assert "action_response_ratio_last" not in headline_scalars(read_headline(out))
    assert "reacting to other actions" not in text


def test_judgement_of_a_table_without_the_latent_columns_checks_psnr_alone(tmp_path):
    rows = csv_rows(tmp_path, "horizon,model_psnr,copy_last_recon_psnr\n1,30,28\n2,29,28.5\n")
    j = judge_compounding(rows)
    assert j.beats is True and j.worst_margin_db == (2, 0.5) and j.worst_latent_ratio is None
    assert j.unchecked == ["model_latent_mse", "copy_last_latent_mse"]
    rows = csv_rows(tmp_path, "horizon,model_latent_mse,copy_last_latent_mse\n1,0.01,0.02\n")
    assert judge_compounding(rows).worst_margin_db is None


def test_headline_says_when_the_model_does_not_follow_the_actions(tmp_path):
    out = make_output(tmp_path / "run")
    (out / "eval" / "action_sensitivity.csv").write_text(
        "horizon,action_sensitivity_psnr\n1,0.5\n2,-0.1\n3,0\n"
    )
    s = headline_sentence(read_headline(out))
    assert s.startswith(
        "The dynamics model loses to copying the last frame at horizon 3, and it does not clearly"
    )
    assert "reacting to other actions" not in s


def test_report_shows_the_latent_action_figures_per_game_and_their_rollouts(full_output):
    text = " ".join(parse(build_report(full_output)).text)
    assert "Latent actions: codes against the true actions" in text
    assert "probe balanced acc." in text and "breakout" in text and "0.8" in text
    assert "latent_sensitivity_psnr" in text and "0.75" in text
    # A chain without a lam stage says so instead of listing the files as missing.
    for rel in ("lam", "eval/latent_actions.csv"):
        path = full_output / rel
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    text = " ".join(parse(build_report(full_output)).text)
    assert "no latent action model was trained" in text and "Missing: lam" not in text


def test_report_says_how_the_ensembles_disagreement_grows_and_tables_it(full_output):
    text = " ".join(parse(build_report(full_output)).text)
    assert "disagreement grows with the horizon (0.0125 at h=1, 0.0625 at h=3)" in text
    assert "Ensemble disagreement per horizon" in text and "0.03125" in text
    # A one-head model: not measured, and not listed as missing.
    (full_output / "eval" / "disagreement.csv").unlink()
    text = " ".join(parse(build_report(full_output)).text)
    assert "Not measured: the dynamics model has one head (model.ensemble=1)." in text
    assert "Uncertainty:" not in text and "Missing: eval/disagreement.csv" not in text
