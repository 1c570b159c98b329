"""--report_to through accelerate's trackers: TensorBoard, wandb (offline), swanlab (local), all and none;
a tracker whose package is missing is named before anything is loaded."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from test_resume import log_records, only_run_dir

from alignkit.cli import main


def sft(model: str, out: Path, *extra: str) -> list[str]:
    return ["sft", "--model", model, "--dataset", "arith-sft#4", "--output_dir", str(out), "--dtype", "fp32",
            "--max_steps", "3", "--logging_steps", "1", "--batch_size", "2", *extra]


def tensorboard_scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "runs"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def wandb_history(run_dir: Path) -> list[dict]:
    """The metrics of the offline wandb run under ``run_dir``, read back from its ``run-*.wandb`` log: a 7-byte
    file header, then LevelDB-log records (a 7-byte header ``<IHB``: crc32, length, type; FULL=1, FIRST=2,
    MIDDLE=3, LAST=4, never crossing a 32 KiB block) holding wandb's protobuf ``Record``s."""
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (log,) = offline.glob("run-*.wandb")
    # wandb's service process may still be writing when run.finish() returns: wait for the run's exit record.
    deadline = time.monotonic() + 60
    while [r.WhichOneof("record_type") for r in wandb_records(log)][-1:] != ["exit"] and time.monotonic() < deadline:
        time.sleep(0.2)
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for record in wandb_records(log) if record.WhichOneof("record_type") == "history"]


def wandb_records(log: Path) -> list:
    import struct

    from wandb.proto import wandb_internal_pb2

    raw, index, pending, records = log.read_bytes(), 7, b"", []
    assert raw[:4] == b":W&B"
    while index + 7 <= len(raw):
        if 32768 - index % 32768 < 7:  # a block's tail too short for a header is padding
            index += 32768 - index % 32768
            continue
        _, length, kind = struct.unpack("<IHB", raw[index : index + 7])
        if index + 7 + length > len(raw):  # being written
            break
        pending += raw[index + 7 : index + 7 + length]
        index += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_tensorboard_gets_every_logged_scalar(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    assert main(sft(tiny_model_dir, out, "--report_to", "tensorboard")) == 0
    run_dir = only_run_dir(out)
    logged = [(r["step"], r["loss"]) for r in log_records(run_dir) if "loss" in r]
    assert same_points(tensorboard_scalars(run_dir, "loss"), logged)


def same_points(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    """Equal steps, and values equal to the 8 digits logging.jsonl keeps (TensorBoard stores float32)."""
    return [s for s, _ in a] == [s for s, _ in b] and [v for _, v in a] == pytest.approx([v for _, v in b], rel=1e-6)


def test_wandb_offline_run_holds_the_metrics(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "out"
    assert main(sft(tiny_model_dir, out, "--report_to", "wandb", "--run_name", "tiny-sft")) == 0
    run_dir = only_run_dir(out)
    history = wandb_history(run_dir)
    logged = [r for r in log_records(run_dir) if "loss" in r]
    assert same_points([(h["_step"], h["loss"]) for h in history if "loss" in h],
                       [(r["step"], r["loss"]) for r in logged])
    assert not (run_dir / "runs").exists()  # only the trackers asked for
    (run,) = [r.run for r in wandb_records(next((run_dir / "wandb").glob("offline-run-*/run-*.wandb")))
              if r.WhichOneof("record_type") == "run"]
    assert (run.display_name, run.project) == ("tiny-sft", "alignkit")  # --run_name; $WANDB_PROJECT unset


def test_all_means_every_installed_tracker_and_none_means_none(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "all"
    assert main(sft(tiny_model_dir, out, "--report_to", "all", "--swanlab_mode", "local")) == 0
    run_dir = only_run_dir(out)
    assert tensorboard_scalars(run_dir, "loss")  # `all` used to turn TensorBoard off
    assert wandb_history(run_dir)
    assert any((run_dir / "swanlog").iterdir())
    assert main(sft(tiny_model_dir, tmp_path / "none", "--report_to", "none")) == 0
    assert sorted(p.name for p in only_run_dir(tmp_path / "none").iterdir() if p.is_dir()) == ["checkpoint-3"]


@pytest.mark.parametrize("package", ["wandb", "swanlab", "tensorboard"])
def test_a_tracker_whose_package_is_missing_is_named(tiny_model_dir, tmp_path, monkeypatch, capsys, package):
    monkeypatch.setattr("alignkit.training.trackers.installed", lambda name: name != package)
    assert main(sft(tiny_model_dir, tmp_path / "out", "--report_to", package)) == 2
    assert f"--report_to {package}: the {package} package is not installed (pip install {package})" in \
        capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # `all` takes what is installed and says nothing.
    assert main(sft(tiny_model_dir, tmp_path / "all", "--report_to", "all", "--swanlab_mode", "local",
                    "--max_steps", "1")) == 0


@pytest.mark.parametrize(("extra", "message"), [
    (["--report_to", "mlflow"], "--report_to mlflow: not available; choose from tensorboard, wandb, swanlab"),
    (["--report_to", "none", "wandb"], "none cannot be combined"),
    (["--report_to", "swanlab", "--swanlab_notification_method", "email"],
     "--swanlab_notification_method email needs --swanlab_sender_email"),
    (["--report_to", "swanlab", "--swanlab_notification_method", "pager"], "choose from lark, dingtalk, email"),
])
def test_tracker_flags_are_checked_before_loading(tiny_model_dir, tmp_path, capsys, extra, message):
    assert main(sft(tiny_model_dir, tmp_path / "out", *extra)) == 2
    assert message in capsys.readouterr().err


def test_swanlab_local_run_and_its_flags(tiny_model_dir, tmp_path, monkeypatch):
    import swanlab

    seen = {}
    real_init = swanlab.init
    monkeypatch.setattr(swanlab, "init", lambda **kwargs: seen.update(kwargs) or real_init(**kwargs))
    out = tmp_path / "out"
    assert main(sft(tiny_model_dir, out, "--report_to", "swanlab", "--swanlab_mode", "local", "--swanlab_project",
                    "proj", "--swanlab_exp_name", "exp")) == 0
    run_dir = only_run_dir(out)
    assert (seen["project"], seen["name"], seen["mode"], seen["log_dir"]) == ("proj", "exp", "local",
                                                                              str(run_dir / "swanlog"))
    assert seen["config"]["learning_rate"] == 1e-4
    assert any((run_dir / "swanlog").iterdir())
