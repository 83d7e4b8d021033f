import subprocess
import sys

from vidworld.cli import COMMANDS, main


def test_help_lists_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "vidworld.cli", "--help"], capture_output=True, text=True, check=True
    )
    for name in COMMANDS:
        assert name in out.stdout


def test_config_error_exits_2_with_the_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("nonsense_key: 1\n")
    assert main(["curate", str(cfg), "input=x", "output=y"]) == 2
    assert "nonsense_key" in capsys.readouterr().err


def test_the_deepspeed_launchers_local_rank_flag_is_ignored(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("nonsense_key: 1\n")
    # Reaches the config check (exit 2 naming the key), not an argparse error about --local_rank.
    assert main(["curate", str(cfg), "input=x", "output=y", "--local_rank=1"]) == 2
    assert "nonsense_key" in capsys.readouterr().err
