"""dia-say end to end on the tiny random model: a file per take, durations, reproducible seeds,
voices, and one-line errors (exit 2) for bad input."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from pipeline.config import EXAMPLES_DIR

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def say(pipeline_cache_dir, tmp_path, monkeypatch, capsys):
    """Run dia-say's main() in this process (as the console script does), from tmp_path."""
    import io

    from pipeline.apps.say import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def run(*args: str, stdin: str | None = None) -> SimpleNamespace:
        fake = io.StringIO(stdin or "")
        fake.isatty = lambda: stdin is None  # type: ignore[method-assign]
        monkeypatch.setattr("sys.stdin", fake)
        code = main(["--model", "tiny-random", "--cache-dir", str(pipeline_cache_dir), *args])
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return run


def test_a_script_becomes_a_file_and_its_seed_makes_it_again(say, tmp_path):
    first = say("[S1] Hi there. [S2] Hello! (laughs)", "-o", "hi.flac", "--seed", "3", "--max-seconds", "1")
    assert first.returncode == 0, first.stderr
    assert "noise" in first.stderr and "seed 3" in first.stdout
    audio, sr = sf.read(tmp_path / "hi.flac")
    assert sr == 44100 and len(audio) % 512 == 0 and 0 < len(audio) <= 87 * 512
    assert f"{len(audio) / sr:.2f} s" in first.stdout
    again = say("-o", "again.wav", "--seed", "3", "--max-seconds", "1", stdin="[S1] Hi there. [S2] Hello! (laughs)")
    assert again.returncode == 0, again.stderr
    assert np.allclose(sf.read(tmp_path / "again.wav")[0], audio, atol=1e-4)  # FLAC and WAV both 16-bit


def test_candidates_and_a_voice_clip(say, tmp_path):
    run = say("[S1] Pick the best take. [S2] Sure.", "-o", "take.flac", "--candidates", "2", "--seed", "10",
              "--max-seconds", "1", "--voice-s1", str(EXAMPLES_DIR / "prompt.flac"), "--voice-s1-text",
              "This is a short reference clip.")
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in tmp_path.glob("take-*.flac")) == ["take-1.flac", "take-2.flac"]
    assert "seed 10" in run.stdout and "seed 11" in run.stdout
    named = say("[S1] A named voice.", "-o", "named.flac", "--voice-s1", "example", "--max-seconds", "1")
    assert named.returncode == 0, named.stderr  # configs/voices/example.yaml


@pytest.mark.parametrize(("args", "stdin", "message"), [
    (["[S9] Unknown tag.", "-o", "x.flac"], None, "unknown speaker tag"),
    (["[S1] Hi.", "-o", "x.aiff"], None, "extension must be one of"),
    (["[S1] Hi.", "-o", "x.flac", "--voice-s1", "nobody"], None, "no voice of that name"),
    (["[S1] Hi.", "-o", "x.flac", "--voice-s1", str(EXAMPLES_DIR / "prompt.flac")], None, "needs --voice-s1-text"),
    (["-o", "x.flac"], "   ", "the script is empty"),
    (["[S1] Hi.", "-o", "x.flac", "--cfg-scale", "-1"], None, "cfg_scale=-1.0 must be"),
])
def test_bad_input_is_one_line_and_exit_2(say, tmp_path, args, stdin, message):
    run = say(*args, stdin=stdin)
    assert run.returncode == 2, (run.stdout, run.stderr)
    errors = [line for line in run.stderr.splitlines() if line.startswith("dia-say: error:")]
    assert len(errors) == 1 and message in errors[0], run.stderr
    assert "Traceback" not in run.stderr and not list(tmp_path.glob("x.*"))


def test_the_console_script_runs_as_a_program(tmp_path):
    """One real process: the entry point, argument parsing and exit status as a shell sees them."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "pipeline.say", "[S1] Hi.", "-o", "x.aiff"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and run.stderr.strip().startswith("dia-say: error: -o x.aiff")


# hostile paths: nothing written through a link, no input overwritten, checks before the model loads
def test_an_output_link_is_replaced_never_written_through(say, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "link.wav").symlink_to(victim)
    refused = say("[S1] Hi.", "-o", "link.wav", "--max-seconds", "0.2")
    assert refused.returncode == 2 and "exists; pass --force" in refused.stderr
    forced = say("[S1] Hi.", "-o", "link.wav", "--max-seconds", "0.2", "--force")
    assert forced.returncode == 0, forced.stderr
    assert victim.read_text() == "precious"
    assert not (tmp_path / "link.wav").is_symlink() and sf.info(tmp_path / "link.wav").frames > 0
    assert "replaced" in forced.stderr
    (tmp_path / "take-2.wav").symlink_to(victim)  # a take's name, too
    refused = say("[S1] Hi.", "-o", "take.wav", "--candidates", "2", "--max-seconds", "0.2")
    assert refused.returncode == 2 and "take-2.wav exists" in refused.stderr and not (tmp_path / "take-1.wav").exists()
    assert say("[S1] Hi.", "-o", "take.wav", "--candidates", "2", "--max-seconds", "0.2", "--force").returncode == 0
    assert victim.read_text() == "precious" and not (tmp_path / "take-2.wav").is_symlink()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_an_output_that_is_an_input_is_refused(say, tmp_path):
    clip = tmp_path / "same.flac"
    clip.write_bytes((EXAMPLES_DIR / "prompt.flac").read_bytes())
    before = clip.read_bytes()
    for args in (["-o", "same.flac"], ["-o", "alias.flac"], ["-o", "same.flac", "--force"]):
        if args[1] == "alias.flac" and not (tmp_path / "alias.flac").exists():
            (tmp_path / "alias.flac").symlink_to(clip)
        run = say("[S1] Hi.", *args, "--voice-s1", "same.flac", "--voice-s1-text", "A clip.", "--max-seconds", "0.2")
        assert run.returncode == 2 and "is an input of this run" in run.stderr, run.stderr
    assert clip.read_bytes() == before


@pytest.mark.parametrize("where, message", [
    ("folder", "is a folder"), ("/proc/x.wav", "cannot create files in /proc"),
    ("missing/x.wav", "does not exist"),
])
def test_a_bad_output_place_fails_before_the_model_loads(say, tmp_path, where, message):
    (tmp_path / "folder.wav").mkdir()
    out = "folder.wav" if where == "folder" else where
    # a model that cannot load: the output check must speak first
    run = say("[S1] Hi.", "-o", out, "--model", str(tmp_path / "no-model"))
    errors = [line for line in run.stderr.splitlines() if line.startswith("dia-say: error:")]
    assert run.returncode == 2 and len(errors) == 1 and message in errors[0], run.stderr
    assert "Traceback" not in run.stderr


def test_scripts_are_read_from_regular_files_and_stdin_with_a_cap(say, tmp_path):
    import os

    fifo = tmp_path / "script.fifo"
    os.mkfifo(fifo)
    for source, message in [("/dev/zero", "not a regular file"), (str(fifo), "not a regular file"),
                            (str(tmp_path), "not a regular file"), (str(tmp_path / "none.txt"), "cannot read")]:
        run = say("-f", source, "-o", "x.wav")
        assert run.returncode == 2 and message in run.stderr, (source, run.stderr)
    big = tmp_path / "big.txt"
    big.write_text("[S1] " + "word " * 300_000)
    run = say("-f", str(big), "-o", "x.wav")
    assert run.returncode == 2 and "over 1024 KB" in run.stderr
    run = say("-o", "x.wav", stdin="[S1] " + "word " * 300_000)
    assert run.returncode == 2 and "over 1024 KB" in run.stderr
    assert not list(tmp_path.glob("x.*"))
