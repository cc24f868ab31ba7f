"""`python -m course_utils ...` end to end, as a user types it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from course_utils.labels import CSV_HEADER


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "course_utils", *args], capture_output=True, text=True, cwd=cwd
    )


def test_label_command_writes_chexpert_csv(tmp_path):
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text(
        '"No pneumothorax. Small left pleural effusion."\n"Heart size is normal.\nLungs clear."\n'
    )
    proc = _run("label", str(src), str(dst))
    assert proc.returncode == 0, proc.stderr
    assert "labelled 2 reports" in proc.stdout
    out = pd.read_csv(dst)
    assert ",".join(out.columns) == ",".join(CSV_HEADER)
    assert out.loc[0, "Pleural Effusion"] == 1.0 and out.loc[0, "Pneumothorax"] == 0.0
    assert out.loc[1, "No Finding"] == 1.0 and out.loc[1, "Cardiomegaly"] == 0.0


def test_label_command_rejects_missing_file(tmp_path):
    proc = _run("label", str(tmp_path / "missing.csv"), str(tmp_path / "out.csv"))
    assert proc.returncode != 0
    assert "missing.csv" in proc.stderr


def test_score_command_json(tmp_path):
    refs, hyps = tmp_path / "refs.json", tmp_path / "hyps.json"
    refs.write_text(json.dumps({"a": "the heart is normal.", "b": "no pleural effusion."}))
    hyps.write_text(json.dumps({"a": ["the heart is normal."], "b": "small pleural effusion."}))
    proc = _run("score", "--refs", str(refs), "--hyps", str(hyps), "--json")
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(proc.stdout)
    assert {"BLEU_1", "BLEU_4", "ROUGE_L", "CIDEr", "rouge1", "rouge2", "rougeLsum"} <= set(scores)
    assert 0 < scores["BLEU_1"] < 1


def test_build_data_command_small_subset(tmp_path):
    out = tmp_path / "embedded"
    proc = _run("build-data", "--out", str(out), "--max-studies", "12", "--size", "64")
    assert proc.returncode == 0, proc.stderr
    assert f"embedded dataset: {out}" in proc.stdout
    splits = pd.read_csv(out / "mimic-cxr-2.0.0-split.csv")
    assert splits["study_id"].nunique() == 12 and len(splits) == 24  # PA + lateral per study


def test_release_check_command():
    proc = _run("release", "--check")
    assert proc.returncode == 0, proc.stderr
    assert "in sync" in proc.stdout


@pytest.mark.parametrize("command", ["grade", "download-iu", "serve", "pretrain-encoder"])
def test_subcommands_with_their_own_options_answer_help(command, capsys):
    from course_utils.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out
