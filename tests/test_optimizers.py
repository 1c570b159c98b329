"""Optimizers and learning-rate schedules by transformers' and ms-swift's names (--optim, --optim_args,
--optimizer muon, --lr_scheduler_type, --lr_scheduler_kwargs), NEFTune, and resumes that stay bit-identical."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import build_tiny_model, build_tiny_tokenizer
from test_resume import assert_bit_identical, checkpoint_names, log_records, only_run_dir
from test_run_strategies import data, dpo, eval_records, train_records  # noqa: F401  (data is a fixture)

from alignkit.cli import main
from alignkit.training.optimizers import SCHEDULES, Combined, make_optimizer, make_scheduler
from alignkit.training.runner import LoopConfig

SCHEDULE_KWARGS = {
    "cosine_with_restarts": {"num_cycles": 2}, "polynomial": {"power": 2.0, "lr_end": 1e-4},
    "inverse_sqrt": {"timescale": 3}, "cosine_with_min_lr": {"min_lr": 1e-3},
    "cosine_warmup_with_min_lr": {"min_lr_rate": 0.1}, "warmup_stable_decay": {"num_decay_steps": 4},
}


@pytest.mark.parametrize("kind", [k for k in SCHEDULES if k != "reduce_lr_on_plateau"])
def test_every_schedule_is_transformers_and_continues_from_its_state(kind):
    from transformers import get_scheduler

    def make(builder):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        return optimizer, builder(optimizer)

    kwargs = SCHEDULE_KWARGS.get(kind, {})
    ours = make(lambda o: make_scheduler(o, kind=kind, warmup=2, total=12, kwargs=kwargs))
    theirs = make(lambda o: get_scheduler("constant_with_warmup" if kind == "constant" else kind, o, 2, 12,
                                          scheduler_specific_kwargs=kwargs))
    lrs = []
    for optimizer, scheduler in (ours, theirs):
        seen = []
        for _ in range(12):
            seen.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        lrs.append(seen)
    assert lrs[0] == lrs[1]
    assert len(set(lrs[0])) > 1 or kind == "constant_with_warmup" and lrs[0][0] == 0.0
    # A scheduler rebuilt from a saved state goes on exactly where it was (what resume does).
    optimizer, scheduler = make(lambda o: make_scheduler(o, kind=kind, warmup=2, total=12, kwargs=kwargs))
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    again = make(lambda o: make_scheduler(o, kind=kind, warmup=2, total=12, kwargs=kwargs))
    again[1].load_state_dict(scheduler.state_dict())
    assert again[1].get_last_lr()[0] == lrs[0][5]


@pytest.mark.parametrize(("kind", "kwargs"), [("cosine_with_min_lr", {"min_lr": 1e-3}),
                                              ("warmup_stable_decay", {"num_decay_steps": 3})])
def test_a_schedule_with_kwargs_resumes_bit_identically(tiny_model_dir, data, tmp_path, kind, kwargs):  # noqa: F811
    def argv(out: str, *extra: str) -> list[str]:
        return dpo(tiny_model_dir, data, tmp_path / out, "--num_train_epochs", "2", "--logging_steps", "1",
                   "--lr_scheduler_type", kind, "--lr_scheduler_kwargs", json.dumps(kwargs), "--warmup_steps", "1",
                   *extra, val=False)

    assert main(argv("a", "--save_steps", "3")) == 0
    baseline = only_run_dir(tmp_path / "a")
    lrs = [r["learning_rate"] for r in train_records(baseline)]
    assert min(lrs[1:]) >= kwargs.get("min_lr", 0.0) and len(set(lrs)) > 2
    assert main(argv("b", "--resume_from_checkpoint", str(baseline / "checkpoint-3"))) == 0
    resumed = only_run_dir(tmp_path / "b")
    assert_bit_identical(baseline / "checkpoint-8", resumed / "checkpoint-8")
    assert log_records(resumed) == log_records(baseline)


def test_reduce_lr_on_plateau_steps_on_the_evaluation_metric(tiny_model_dir, data, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    kwargs = {"mode": "max", "factor": 0.5, "patience": 0}  # a falling loss never improves in "max" mode
    assert main(dpo(tiny_model_dir, data, out, "--max_steps", "5", "--eval_steps", "1", "--logging_steps", "1",
                    "--lr_scheduler_type", "reduce_lr_on_plateau", "--lr_scheduler_kwargs", json.dumps(kwargs))) == 0
    run_dir = only_run_dir(out)
    # torch's own ReduceLROnPlateau fed the logged evaluations gives the logged learning rates.
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **kwargs)
    expected = []
    for record in eval_records(run_dir):
        expected.append(optimizer.param_groups[0]["lr"])
        reference.step(record["eval_loss"])
    logged = [r["learning_rate"] for r in train_records(run_dir)]
    assert logged == pytest.approx(expected) and logged[-1] < logged[0]


# ------------------------------------------------------------------------------ optimizers


def tiny_model():
    torch.manual_seed(0)
    return build_tiny_model(build_tiny_tokenizer())


def one_step(optimizer, model) -> None:
    loss = sum((p.float() ** 2).sum() for p in model.parameters())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


@pytest.mark.parametrize(("optim", "optim_args"), [
    ("adamw_torch_fused", None), ("adamw_torch", None), ("sgd", "momentum=0.9,nesterov=true"), ("adafactor", None),
    ("adagrad", "lr_decay=0.01"), ("rmsprop", "alpha=0.9"), ("adamw_8bit", None), ("lion_32bit", None),
])
def test_optimizers_by_transformers_name_are_transformers_own(optim, optim_args):
    from transformers import Trainer, TrainingArguments

    model = tiny_model()
    optimizer = make_optimizer(model, LoopConfig(optim=optim, optim_args=optim_args, weight_decay=0.1))
    expected_cls, expected_kwargs = Trainer.get_optimizer_cls_and_kwargs(
        TrainingArguments(output_dir="unused", optim=optim, optim_args=optim_args, learning_rate=1e-4,
                          weight_decay=0.1, adam_beta2=0.999, report_to=[]))
    assert type(optimizer) is expected_cls
    for key, value in expected_kwargs.items():
        if key in optimizer.defaults:  # bitsandbytes keeps optim_bits and is_paged elsewhere
            assert optimizer.defaults[key] == value, key
    decayed = [g["weight_decay"] for g in optimizer.param_groups]
    assert decayed == [0.1, 0.0]  # matrices decay, 1-D parameters (norms) do not
    one_step(optimizer, model)
    if optim == "adamw_8bit":  # 8-bit state for the matrices: bitsandbytes' kernels ran on this CPU
        dtypes = {t.dtype for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)}
        assert torch.uint8 in dtypes


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest_and_its_state_round_trips():
    model = tiny_model()
    optimizer = make_optimizer(model, LoopConfig(optimizer="muon", optim_args="momentum=0.9,ns_steps=3"))
    assert isinstance(optimizer, Combined)
    muon, adamw = optimizer.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon_names = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    assert muon_names == {n for n, p in model.named_parameters() if p.ndim == 2 and "embed_tokens" not in n}
    assert "model.embed_tokens.weight" in {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert muon.defaults["momentum"] == 0.9 and muon.defaults["ns_steps"] == 3
    assert muon.defaults["adjust_lr_fn"] == "match_rms_adamw"  # Moonlight's Muon, which ms-swift uses
    # One schedule drives both: their groups are the combined optimizer's.
    scheduler = make_scheduler(optimizer, kind="linear", warmup=0, total=4, kwargs={})
    one_step(optimizer, model)
    scheduler.step()
    assert {g["lr"] for g in muon.param_groups + adamw.param_groups} == {1e-4 * 0.75}
    state = optimizer.state_dict()
    again = make_optimizer(model, LoopConfig(optimizer="muon", optim_args="momentum=0.9,ns_steps=3"))
    again.load_state_dict(state)
    assert torch.equal(again.optimizers[0].state[muon.param_groups[0]["params"][0]]["momentum_buffer"],
                       muon.state[muon.param_groups[0]["params"][0]]["momentum_buffer"])


def test_muon_run_resumes_bit_identically(tiny_model_dir, data, tmp_path):  # noqa: F811
    argv = ["rlhf", "--model", tiny_model_dir, "--dataset", str(data / "pairs.jsonl"), "--dtype", "fp32",
            "--report_to", "none", "--batch_size", "2", "--num_train_epochs", "2", "--logging_steps", "1",
            "--lora_dropout", "0", "--optimizer", "muon", "--learning_rate", "1e-2"]
    assert main([*argv, "--output_dir", str(tmp_path / "a"), "--save_steps", "3"]) == 0
    baseline = only_run_dir(tmp_path / "a")
    assert main([*argv, "--output_dir", str(tmp_path / "b"),
                 "--resume_from_checkpoint", str(baseline / "checkpoint-3")]) == 0
    resumed = only_run_dir(tmp_path / "b")
    assert checkpoint_names(resumed) == ["checkpoint-8"]
    assert_bit_identical(baseline / "checkpoint-8", resumed / "checkpoint-8")
    assert log_records(resumed) == log_records(baseline)


@pytest.mark.parametrize(("extra", "message"), [
    (["--optim", "adamw_hf"], "--optim adamw_hf: not available (transformers 5 removed adamw_hf"),
    (["--optim", "galore_adamw"], "alignkit builds adamw_torch_fused, adamw_torch, adafactor, sgd"),
    (["--optimizer", "adamw_x"], "--optimizer adamw_x: not available; alignkit has: default, muon, muonclip"),
    (["--optim", "sgd", "--optim_args", "momentum"], "expected key=value pairs"),
    (["--optimizer", "muon", "--optim_args", "betas=1"], "--optimizer muon --optim_args: unknown betas"),
    (["--lr_scheduler_type", "cosine_with_min_lr"], "--lr_scheduler_type cosine_with_min_lr --lr_scheduler_kwargs {}"),
    (["--lr_scheduler_kwargs", "{not json"], "--lr_scheduler_kwargs '{not json': not a JSON object or file"),
])
def test_optimizers_and_schedules_alignkit_cannot_build_stop_before_loading(tiny_model_dir, tmp_path, capsys, extra,
                                                                            message):
    assert main(["sft", "--model", tiny_model_dir, "--output_dir", str(tmp_path / "out"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ NEFTune


def test_neftune_is_transformers_hook_in_training_mode_only():
    from alignkit.training.neftune import activate_neftune

    model = tiny_model()
    ids = torch.tensor([[5, 6, 7, 8]])
    clean = model.get_input_embeddings()(ids)
    activate_neftune(model, 5.0)
    model.eval()
    assert torch.equal(model.get_input_embeddings()(ids), clean)
    model.train()
    torch.manual_seed(3)
    noisy = model.get_input_embeddings()(ids)
    bound = 5.0 / math.sqrt(ids.shape[1] * clean.shape[-1])
    assert 0 < (noisy - clean).abs().max() <= bound
    torch.manual_seed(3)
    expected = clean + torch.zeros_like(clean).uniform_(-bound, bound)
    assert torch.allclose(noisy, expected)


def test_neftune_changes_training_but_not_evaluation(tiny_model_dir, data, tmp_path):  # noqa: F811
    runs = {}
    # NEFTune runs padded batches (its noise scales with the padded length): compare with a padded plain run.
    for name, extra in (("plain", ["--padding_free", "false"]), ("neftune", ["--neftune_noise_alpha", "15"])):
        out = tmp_path / name
        assert main(["sft", "--model", tiny_model_dir, "--dataset", "arith-sft#4", "--val_dataset", "arith-sft#2",
                     "--output_dir", str(out), "--dtype", "fp32", "--report_to", "none", "--max_steps", "1",
                     "--logging_steps", "1", "--lora_dropout", "0", "--learning_rate", "0", *extra]) == 0
        runs[name] = log_records(only_run_dir(out))
    assert runs["plain"][0]["loss"] != runs["neftune"][0]["loss"]  # noisy embeddings in the training forward
    # A learning rate of 0 leaves the weights alone: the evaluation, without noise, is the same.
    assert eval_records_of(runs["plain"]) == eval_records_of(runs["neftune"])


def eval_records_of(records: list[dict]) -> list[float]:
    return [r["eval_loss"] for r in records if "eval_loss" in r]
