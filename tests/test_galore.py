"""`--use_galore` (ms-swift's GaLore on galore-torch): which weights are projected, the update of a projected
weight stays in the rank-r subspace, ms-swift's per-parameter doubling, and the clear errors."""

import pytest
import torch

from alignkit.cli import main
from alignkit.errors import AlignkitError
from alignkit.training.galore import GaloreSettings, galore_weights, schedule_stretch
from alignkit.training.loop_config import LoopConfig
from alignkit.training.optimizers import check_optimizer, make_optimizer

pytest.importorskip("galore_torch")


def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


def test_targets_follow_ms_swift(tiny_model_dir):
    model = tiny_model(tiny_model_dir)
    names = {id(m.weight): n for n, m in model.named_modules() if hasattr(m, "weight")}
    every = {names[id(p)] for p in galore_weights(model, GaloreSettings())}
    assert every and all(isinstance(model.get_submodule(n), torch.nn.Linear) for n in every)
    assert "lm_head" not in every  # every linear layer but the head (find_all_linears)
    only_q = {names[id(p)] for p in galore_weights(model, GaloreSettings(target_modules=("q_proj",)))}
    assert only_q and all(n.endswith("q_proj") for n in only_q)
    with_embedding = {id(p) for p in galore_weights(model, GaloreSettings(with_embedding=True))}
    assert id(model.model.embed_tokens.weight) in with_embedding


def test_a_projected_weights_update_has_rank_at_most_r(tiny_model_dir):
    model = tiny_model(tiny_model_dir)
    config = LoopConfig(optim="adamw_torch", learning_rate=1e-2, galore=GaloreSettings(rank=2,
                                                                                      target_modules=("q_proj",)))
    optimizer = make_optimizer(model, config)
    weight = model.model.layers[0].self_attn.q_proj.weight
    before = weight.detach().clone()
    ids = torch.randint(0, 100, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    update = weight.detach() - before
    assert update.abs().sum() > 0
    assert torch.linalg.matrix_rank(update).item() <= 2  # the step lives in the rank-2 projection
    other = model.model.layers[0].self_attn.k_proj.weight  # not a target: a plain AdamW group
    assert "projector" not in optimizer.state[other]


def test_per_parameter_doubles_gap_and_schedule(tiny_model_dir):
    settings = GaloreSettings(rank=2, update_proj_gap=50, optim_per_parameter=True)
    optimizer = make_optimizer(tiny_model(tiny_model_dir), LoopConfig(optim="adamw_torch", galore=settings))
    gaps = {g["update_proj_gap"] for g in optimizer.param_groups if "rank" in g}
    assert gaps == {100} and all(len(g["params"]) == 1 for g in optimizer.param_groups)
    assert schedule_stretch(settings) == 2 and schedule_stretch(GaloreSettings()) == 1


def test_errors(monkeypatch, tmp_path, capsys):
    with pytest.raises(AlignkitError, match="--use_galore with --optim sgd"):
        check_optimizer(LoopConfig(optim="sgd", galore=GaloreSettings()))
    assert main(["sft", "--use_galore", "true", "--galore_quantization", "true"]) == 2
    assert "Q-GaLore" in capsys.readouterr().err
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "galore_torch" else real(n, *a))
    with pytest.raises(AlignkitError, match="pip install galore-torch"):
        check_optimizer(LoopConfig(optim="adamw_torch", galore=GaloreSettings()))


def test_a_tiny_galore_run(tiny_model_dir, tmp_path):
    assert main(["sft", "--model", tiny_model_dir, "--train_type", "full", "--use_galore", "true", "--galore_rank",
                 "4", "--galore_optim_per_parameter", "true", "--optim", "adamw_torch", "--max_steps", "2",
                 "--output_dir", str(tmp_path / "out"), "--report_to", "none", "--dtype", "fp32"]) == 0
