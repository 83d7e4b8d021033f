import io

from runtime.progress import Progress, format_duration


def test_line_has_count_percent_rate_and_eta():
    out = io.StringIO()
    p = Progress("curate", total=4, unit="inputs", interval=0.0, stream=out)
    p.update(1, clips=3)
    p.update(1, clips=2)
    line = out.getvalue().strip().splitlines()[-1]
    assert line.startswith("curate: 2/4 inputs (50%) clips=5")
    assert "inputs/s" in line and "ETA" in line


def test_format_duration():
    assert format_duration(3725.2) == "1:02:05"
    assert format_duration(float("nan")) == "?"
