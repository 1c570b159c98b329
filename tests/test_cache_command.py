"""`alignkit cache`: reports the caches' sizes; --clear deletes their files, never the built-in model."""

import os
import time

from alignkit.cli import main


def make_cache(root):
    (root / "tokenized").mkdir(parents=True)
    (root / "ref_logps").mkdir()
    (root / "smollm2-135m-instruct").mkdir()
    (root / "smollm2-135m-instruct" / "model.safetensors").write_bytes(b"x" * 10)
    old = root / "tokenized" / "old.npz"
    old.write_bytes(b"a" * 2048)
    ten_days_ago = time.time() - 10 * 86400
    os.utime(old, (ten_days_ago, ten_days_ago))
    (root / "tokenized" / "new.npz").write_bytes(b"b" * 1024)
    (root / "tokenized" / "new.partial-123.npz").write_bytes(b"c")  # a run is writing it
    (root / "ref_logps" / "key.pt").write_bytes(b"d" * 100)
    (root / "ref_logps" / "key.77.tmp").write_bytes(b"e")


def test_reports_sizes_without_deleting(tmp_path, monkeypatch, capsys):
    make_cache(tmp_path)
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path))
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert "tokenized/: 2 files, 3.0 KiB" in out
    assert "ref_logps/: 1 files, 100 B" in out
    assert len(list(tmp_path.rglob("*.*"))) == 6


def test_clear_older_than_keeps_recent_files_and_writes_in_progress(tmp_path, monkeypatch, capsys):
    make_cache(tmp_path)
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path))
    assert main(["cache", "--clear", "true", "--older_than_days", "7"]) == 0
    assert "deleted 1 files older than 7 days, 2.0 KiB freed" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "tokenized").iterdir()) == ["new.npz", "new.partial-123.npz"]
    assert (tmp_path / "ref_logps" / "key.pt").exists()


def test_clear_one_kind_leaves_the_other_and_the_builtin_model(tmp_path, monkeypatch):
    make_cache(tmp_path)
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path))
    assert main(["cache", "--kinds", "ref_logps", "--clear"]) == 0
    assert [p.name for p in (tmp_path / "ref_logps").iterdir()] == ["key.77.tmp"]
    assert len(list((tmp_path / "tokenized").iterdir())) == 3
    assert (tmp_path / "smollm2-135m-instruct" / "model.safetensors").exists()


def test_bad_flags_are_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path))
    assert main(["cache", "--kinds", "models"]) == 2
    assert "--kinds models: no such cache" in capsys.readouterr().err
    assert main(["cache", "--older_than_days", "3"]) == 2
    assert "add --clear true" in capsys.readouterr().err
