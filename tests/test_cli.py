"""Tests of mmlib.cli (``python -m mmlib``): the embed, verify and clean commands, and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mmlib.data.corpora
import mmlib.models.clip
import mmlib.models.embed as embed
from mmlib import cli
from mmlib.core import artifacts
from mmlib.core.artifacts import load_artifact, save_artifact
from mmlib.core.console import one_line
from mmlib.core.paths import REPO_ROOT
from mmlib.models.clip import build_tiny_clip, save_tiny_clip


@pytest.fixture
def saved_tiny_model(tmp_path, tiny_arch) -> Path:
    path = tmp_path / "tiny-model"
    save_tiny_clip(path, build_tiny_clip(tiny_arch, seed=3), tiny_arch)
    return path


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``(status, stdout, stderr)`` of ``cli.main(argv)`` (argparse exits are caught)."""
    try:
        status = cli.main(argv)
    except SystemExit as exit_info:
        status = exit_info.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_error_line(status: int, err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# ------------------------------------------------------------------------------------------------- the parser

def test_help_lists_the_commands(capsys):
    status, out, _ = run_cli(["--help"], capsys)
    assert status == 0
    for command in ("embed", "verify", "clean", "smoke-data"):
        assert command in out
    status, out, _ = run_cli(["embed", "--help"], capsys)
    assert status == 0 and "--batch-size" in out and "--shard-size" in out and "multiple of --batch-size" in out
    with pytest.raises(SystemExit) as exit_info:  # the old entry point still runs, with the same options
        embed.main(["--help"])
    assert exit_info.value.code == 0 and "--tiny-model" in capsys.readouterr().out


@pytest.mark.parametrize("argv, fragments", [
    ([], ["COMMAND"]),
    (["explode"], ["invalid choice: 'explode'"]),
    (["embed", "--csv", "x.csv"], ["--tiny-model"]),
    (["embed", "--tiny-model", "m"], ["--csv", "--wds"]),
    (["embed", "--csv", "x.csv", "--wds", "y.tar", "--tiny-model", "m"], ["--wds", "not allowed with"]),
    (["embed", "--csv", "x.csv", "--tiny-model", "m", "--batch-size", "0"], ["--batch-size", ">= 1", "got 0"]),
    (["embed", "--csv", "x.csv", "--tiny-model", "m", "--batch-size", "x"], ["--batch-size", "got 'x'"]),
    (["embed", "--csv", "x.csv", "--tiny-model", "m", "--batch-size", "2.5"], ["--batch-size", "got '2.5'"]),
    (["embed", "--csv", "x.csv", "--tiny-model", "m", "--shard-size", "-4"], ["--shard-size", "got -4"]),
    (["embed", "--csv", "x.csv", "--tiny-model", "m", "--num-workers", "-1"], ["--num-workers", ">= 0"]),
    (["embed", "--csv", "x.csv", "--tiny-model", "m", "--device", "gpu"], ["--device", "'gpu'"]),
    (["embed", "--csv", "x.csv", "--tiny-model", "m", "--device", "meta"], ["--device", "'meta'"]),
    (["embed", "--csv", "x.csv", "--tiny-model", "m", "--unknown"], ["unrecognized arguments: --unknown"]),
    (["verify", "--kind"], ["--kind", "expected one argument"]),
])
def test_bad_options_exit_2_with_one_line_naming_the_option(argv, fragments, capsys):
    status, _, err = run_cli(argv, capsys)
    assert_one_error_line(status, err, *fragments)


def test_bad_option_combinations_and_files_are_named(saved_tiny_model, make_csv_corpus, tmp_path, capsys):
    csv_path = make_csv_corpus(4)
    base = ["embed", "--csv", str(csv_path), "--tiny-model", str(saved_tiny_model), "--root", str(tmp_path / "a")]
    cases = [
        (base + ["--batch-size", "2", "--shard-size", "3"],
         ["--shard-size (3) must be a multiple of --batch-size (2): use --shard-size 4"]),
        (base + ["--shard-size", "1000"], ["--shard-size (1000)", "--batch-size (256)", "use --shard-size 1024"]),
        (base + ["--pretrained", "openai"], ["--pretrained applies to --open-clip only"]),
        (base + ["--image-root", str(tmp_path / "nowhere")], ["--image-root", "is not a folder"]),
        (["embed", "--wds", "x.tar", "--image-root", str(tmp_path), "--tiny-model", str(saved_tiny_model)],
         ["--image-root applies to --csv only"]),
        (["embed", "--csv", str(csv_path), "--tiny-model", str(tmp_path), "--root", str(tmp_path / "a")],
         ["--tiny-model", "no config.json"]),
        (["embed", "--csv", str(tmp_path / "missing.csv"), "--tiny-model", str(saved_tiny_model), "--root",
          str(tmp_path / "a")], ["missing.csv"]),
    ]
    for argv, fragments in cases:
        status, _, err = run_cli(argv, capsys)
        assert_one_error_line(status, err, *fragments)
    assert not (tmp_path / "a" / "embeddings").exists()


def test_the_artifact_root_is_checked_before_any_work(saved_tiny_model, make_csv_corpus, tmp_path, capsys,
                                                      monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("work started before the artifact root was checked")

    monkeypatch.setattr(mmlib.data.corpora, "CsvPairs", never)
    monkeypatch.setattr(mmlib.models.clip, "load_tiny_clip", never)
    a_file = tmp_path / "root.txt"
    a_file.write_text("")
    argv = ["embed", "--csv", str(make_csv_corpus(4)), "--tiny-model", str(saved_tiny_model)]
    status, _, err = run_cli(argv + ["--root", str(a_file)], capsys)
    assert_one_error_line(status, err, str(a_file), "is a file")
    status, _, err = run_cli(argv + ["--root", str(a_file / "sub")], capsys)
    assert_one_error_line(status, err, "a parent is a file")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_root_is_refused_before_any_work(saved_tiny_model, make_csv_corpus, tmp_path, capsys):
    root = tmp_path / "read-only"
    root.mkdir()
    root.chmod(0o555)
    try:
        status, _, err = run_cli(["embed", "--csv", str(make_csv_corpus(4)), "--tiny-model", str(saved_tiny_model),
                                  "--root", str(root)], capsys)
    finally:
        root.chmod(0o755)
    assert_one_error_line(status, err, "not writable")


def test_embed_prints_the_artifact_and_a_rerun_is_a_cache_hit(saved_tiny_model, make_csv_corpus, tmp_path, capsys):
    argv = ["embed", "--csv", str(make_csv_corpus(6)), "--tiny-model", str(saved_tiny_model), "--root",
            str(tmp_path / "root"), "--batch-size", "2", "--shard-size", "4", "--device", "cpu", "--no-progress"]
    status, out, err = run_cli(argv, capsys)
    assert status == 0, err
    path = Path(out.strip())
    assert path.parent == tmp_path / "root" / "embeddings"
    assert load_artifact("embeddings", path.name, tmp_path / "root").tensors["image"].shape == (6, 16)
    status, again, _ = run_cli(argv[:-3] + ["--shard-size", "2", "--no-progress"], capsys)
    assert status == 0 and again == out  # another shard size: the same artifact


def test_python_m_mmlib_reports_an_mmlib_error_without_a_traceback(saved_tiny_model, tmp_path):
    a_file = tmp_path / "root.txt"
    a_file.write_text("")
    proc = subprocess.run([sys.executable, "-m", "mmlib", "embed", "--csv", "x.csv", "--tiny-model",
                           str(saved_tiny_model), "--root", str(a_file)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: ") and "is a file" in proc.stderr and "Traceback" not in proc.stderr


def test_one_line_keeps_the_message_of_a_worker_error():
    wrapped = ("Caught InputError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               "  File \"x.py\", line 1, in f\nmmlib.core.errors.InputError: dataset.caption(3) returned a int")
    assert one_line(wrapped) == "dataset.caption(3) returned a int"
    assert one_line("two\nlines  here") == "two lines here"


# ------------------------------------------------------------------------------------------ verify and clean

def store(root: Path) -> dict[str, Path]:
    """Three intact artifacts under ``root``: ``a/k1``, ``a/k2`` and ``b/k3``."""
    return {key: save_artifact(kind, key, {"x": torch.arange(4.0)}, {"note": key}, root)
            for kind, key in (("a", "k1"), ("a", "k2"), ("b", "k3"))}


def test_verify_passes_an_intact_store(tmp_path, capsys):
    store(tmp_path)
    status, out, _ = run_cli(["verify", "--root", str(tmp_path), "-v"], capsys)
    assert status == 0
    assert "ok a/k1" in out and "ok b/k3" in out and "verified 3 artifact(s)" in out and "0 corrupt" in out
    status, out, _ = run_cli(["verify", "--root", str(tmp_path), "--kind", "b"], capsys)
    assert status == 0 and "verified 1 artifact(s)" in out


def test_verify_hashes_every_file_whatever_its_stamp(tmp_path, capsys, monkeypatch):
    """A verification stamp lets a normal load skip the hash; verify must not trust it (bit rot keeps the stat)."""
    import mmlib.cli as cli_module

    store(tmp_path)
    calls, real = [], cli_module.load_artifact
    monkeypatch.setattr(cli_module, "load_artifact", lambda *a, **k: calls.append(k) or real(*a, **k))
    status, _, _ = run_cli(["verify", "--root", str(tmp_path)], capsys)
    assert status == 0 and len(calls) == 3 and all(k.get("full") is True for k in calls)


@pytest.mark.parametrize("damage", ["flip-tensor-byte", "truncate-tensors", "edit-meta", "delete-meta",
                                    "copied-from-another-key", "stray-file"])
def test_verify_reports_each_corrupt_artifact_and_exits_1(tmp_path, capsys, damage):
    folders = store(tmp_path)
    target = folders["k2"]
    name = "a/k2"
    if damage == "flip-tensor-byte":
        data = bytearray((target / "tensors.safetensors").read_bytes())
        data[-3] ^= 0xFF
        (target / "tensors.safetensors").write_bytes(bytes(data))
    elif damage == "truncate-tensors":
        (target / "tensors.safetensors").write_bytes((target / "tensors.safetensors").read_bytes()[:20])
    elif damage == "edit-meta":
        (target / "meta.json").write_text((target / "meta.json").read_text().replace('"k2"', '"k2 "'))
    elif damage == "delete-meta":
        (target / "meta.json").unlink()
    elif damage == "copied-from-another-key":
        for file in folders["k1"].iterdir():
            (target / file.name).write_bytes(file.read_bytes())
    else:
        (tmp_path / "a" / "k9").write_text("")
        name = "a/k9"
    status, out, _ = run_cli(["verify", "--root", str(tmp_path)], capsys)
    assert status == 1
    flagged = [line for line in out.splitlines() if line.split(" ")[0] in ("CORRUPT", "NOT", "UNREADABLE")]
    assert len(flagged) == 1 and name in flagged[0], out
    assert "1 corrupt" in out


def test_verify_names_a_bad_root_or_kind(tmp_path, capsys):
    status, _, err = run_cli(["verify", "--root", str(tmp_path / "nowhere")], capsys)
    assert_one_error_line(status, err, "nowhere", "does not exist")
    (tmp_path / "file").write_text("")
    status, _, err = run_cli(["verify", "--root", str(tmp_path / "file")], capsys)
    assert_one_error_line(status, err, "is a file")
    store(tmp_path / "store")
    status, _, err = run_cli(["verify", "--root", str(tmp_path / "store"), "--kind", "c"], capsys)
    assert_one_error_line(status, err, "--kind 'c'", "found: a, b")


def test_clean_removes_stale_temporaries_and_orphaned_resume_shards(tmp_path, capsys):
    store(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = artifacts._HOST
    stale_dir = tmp_path / "a" / f".k1.{host}.{dead.pid}.{'0' * 32}.tmp"
    stale_dir.mkdir()
    live_dir = tmp_path / "a" / f".k2.{host}.{os.getpid()}.{'1' * 32}.tmp"
    live_dir.mkdir()
    orphan = tmp_path / "a.parts" / "k1-s4"  # resume shards of a finished artifact
    unfinished = tmp_path / "a.parts" / "k7-s4"  # of an extraction still to be resumed
    for folder in (orphan, unfinished):
        folder.mkdir(parents=True)
        (folder / "shard-000000.safetensors").write_bytes(b"x")
    stale_shard = unfinished / f".shard-000001.safetensors.{host}.{dead.pid}.{'2' * 32}.tmp"
    stale_shard.write_bytes(b"partial")

    status, out, _ = run_cli(["clean", "--root", str(tmp_path)], capsys)
    assert status == 0 and "removed 2 stale temporaries" in out
    assert not stale_dir.exists() and not stale_shard.exists() and live_dir.exists()
    assert not orphan.exists() and (unfinished / "shard-000000.safetensors").exists()
    status, out, _ = run_cli(["clean", "--root", str(tmp_path), "--parts"], capsys)
    assert status == 0 and not (tmp_path / "a.parts").exists()
    assert cli.verify(tmp_path) == 0  # the artifacts themselves are untouched
    status, _, err = run_cli(["clean", "--root", str(tmp_path / "nowhere")], capsys)
    assert_one_error_line(status, err, "does not exist")


# ------------------------------------------------------------------------------------------------------ smoke-data
def test_smoke_data_writes_the_formats_and_prints_the_parameters(tmp_path, capsys):
    import json

    from mmlib.data.corpora import open_pairs

    status, out, _ = run_cli(["smoke-data", str(tmp_path / "smoke"), "--n", "6", "--shard-size", "4",
                              "--image-size", "32"], capsys)
    where = json.loads(out)
    assert status == 0
    assert where["n"] == 6 and where["pairs_wds"].endswith("{00000..00001}.tar")
    assert len(open_pairs(where["pairs_csv"])) == len(open_pairs(where["pairs_wds"])) == 6
    status, _, err = run_cli(["smoke-data", str(tmp_path / "smoke")], capsys)  # not a new folder: nothing touched
    assert status == 2 and err.startswith("error: ") and len(open_pairs(where["pairs_csv"])) == 6
