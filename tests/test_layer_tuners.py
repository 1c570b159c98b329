"""ms-swift's tuners that change which decoder layers train: LISA (N drawn layers at a time, drawn again every K
steps), LLaMA-Pro (new zero-output blocks, only they train) and the dummy tuner (the model as loaded). Each trains
what it says on a tiny 4-layer Llama, its checkpoints show it, and the clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_tokenizer
from safetensors.torch import load_file

from alignkit.cli import main
from alignkit.training.lisa import LayerSwitch, LisaSettings, drawn_layers
from alignkit.training.loop_config import LoopConfig
from alignkit.training.optimizers import make_optimizer

LAYERS = 4


def tiny_llama(seed: int = 0, layers: int = LAYERS, vocab: int = 400):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                        tie_word_embeddings=False))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama-4")
    tokenizer = build_tiny_tokenizer()
    model = tiny_llama(vocab=len(tokenizer))
    model.config.update({"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
                         "bos_token_id": tokenizer.bos_token_id})
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def sft(model: str, out: Path, *extra: str, steps: int = 4) -> list[str]:
    return ["sft", "--model", model, "--dataset", "arith-sft#8", "--max_steps", str(steps), "--save_steps", "1",
            "--logging_steps", "1", "--learning_rate", "1e-2", "--output_dir", str(out), "--report_to", "none",
            "--dtype", "fp32", "--seed", "3", "--eval_strategy", "no", *extra]


def checkpoints(out: Path) -> dict[int, dict[str, torch.Tensor]]:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return {int(p.name.split("-")[1]): load_file(p / "model.safetensors") for p in run_dir.glob("checkpoint-*")}


def changed_layers(a: dict, b: dict) -> set[int]:
    return {int(k.split(".")[2]) for k in a if k.startswith("model.layers.") and not torch.equal(a[k], b[k])}


def changed_outside_layers(a: dict, b: dict) -> set[str]:
    return {k for k in a if not k.startswith("model.layers.") and not torch.equal(a[k], b[k])}


# ------------------------------------------------------------------------------------------- LISA


def test_lisa_draws_n_layers_per_interval_from_seed_and_step():
    settings = LisaSettings(activated_layers=2, step_interval=3)
    draws = [drawn_layers(LAYERS, settings, seed=3, step=s) for s in range(12)]
    assert all(len(d) == 2 and len(set(d)) == 2 for d in draws)
    for start in range(0, 12, 3):  # the same layers within an interval
        assert draws[start] == draws[start + 1] == draws[start + 2]
    assert len({tuple(d) for d in draws}) > 1  # and others at later intervals
    assert draws == [drawn_layers(LAYERS, settings, seed=3, step=s) for s in range(12)]  # a function of seed+step


def test_lisa_frozen_layers_get_no_update_nor_decay_and_keep_their_adam_state():
    model = tiny_llama()
    optimizer = make_optimizer(model, LoopConfig(optim="adamw_torch", learning_rate=1e-2, weight_decay=0.1))
    switch = LayerSwitch(model, LisaSettings(activated_layers=1, step_interval=1), seed=3)
    ids = torch.randint(0, 400, (2, 8))

    def step(at: int) -> tuple[set[int], set[str]]:
        switch.at_step(at)
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        after = model.state_dict()
        return changed_layers(before, after), changed_outside_layers(before, after)

    first = drawn_layers(LAYERS, switch.settings, seed=3, step=0)
    at = next(s for s in range(1, 20) if drawn_layers(LAYERS, switch.settings, seed=3, step=s) != first)
    layers, others = step(0)
    assert layers == set(first)  # exactly the drawn layer; weight decay did not touch the others
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= others
    moments = optimizer.state[model.model.layers[first[0]].mlp.down_proj.weight]["exp_avg"].clone()
    layers, _ = step(at)
    assert layers == set(switch.active) and switch.active != first  # the next draw trains, the first rests
    kept = optimizer.state[model.model.layers[first[0]].mlp.down_proj.weight]
    assert torch.equal(kept["exp_avg"], moments) and kept["step"] == 1


def test_lisa_run_trains_exactly_the_drawn_layers_and_resumes_to_the_same_weights(model_dir, tmp_path):
    flags = ("--tuner_type", "full", "--lisa_activated_layers", "1", "--lisa_step_interval", "2")
    assert main(sft(model_dir, tmp_path / "a", *flags)) == 0
    saved = checkpoints(tmp_path / "a")
    settings = LisaSettings(activated_layers=1, step_interval=2)
    draws = [drawn_layers(LAYERS, settings, seed=3, step=s) for s in range(4)]
    assert draws[0] != draws[2]  # the seed draws another layer at the interval
    for step in (1, 2, 3):  # checkpoint-s holds the weights after s steps; step s (0-based) ran from s to s + 1
        assert changed_layers(saved[step], saved[step + 1]) == set(draws[step])
        assert "model.embed_tokens.weight" in changed_outside_layers(saved[step], saved[step + 1])
    assert main([*sft(model_dir, tmp_path / "b", *flags),
                 "--resume_from_checkpoint", str(next((tmp_path / "a").iterdir()) / "checkpoint-2")]) == 0
    resumed = checkpoints(tmp_path / "b")
    assert all(torch.equal(resumed[4][k], saved[4][k]) for k in saved[4])


# ------------------------------------------------------------------------------------------- LLaMA-Pro


def test_llamapro_expanded_model_is_identical_at_init():
    from alignkit.models.llama_pro import expand_blocks

    model = tiny_llama().eval()
    ids = torch.randint(0, 400, (2, 9))
    before = model(input_ids=ids).logits
    assert expand_blocks(model, 4, 2) == [2, 3, 6, 7]  # two groups of 2 layers, two new blocks after each
    assert torch.equal(model(input_ids=ids).logits, before)
    assert model.config.num_hidden_layers == 8
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(8))
    trainable = {n.split(".")[2] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"2", "3", "6", "7"}


def test_llamapro_run_trains_only_new_blocks_and_its_checkpoint_reloads(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    assert main(sft(model_dir, tmp_path / "out", "--tuner_type", "llamapro", "--llamapro_num_new_blocks", "2",
                    steps=2)) == 0
    saved = checkpoints(tmp_path / "out")
    base = load_file(Path(model_dir) / "model.safetensors")
    # layers 0 1 1' 2 3 3': original layer i sits at [0, 1, 3, 4][i]
    for old, new in enumerate([0, 1, 3, 4]):
        for key in [k for k in base if k.startswith(f"model.layers.{old}.")]:
            assert torch.equal(saved[2][key.replace(f"layers.{old}.", f"layers.{new}.")], base[key])
    assert changed_layers(saved[1], saved[2]) == {2, 5}
    assert not changed_outside_layers(saved[1], saved[2])
    (run_dir,) = (tmp_path / "out").iterdir()
    assert json.loads((run_dir / "checkpoint-2" / "config.json").read_text())["num_hidden_layers"] == 6
    reloaded = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoint-2")
    assert len(reloaded.model.layers) == 6
    assert all(torch.equal(reloaded.state_dict()[k], saved[2][k]) for k in saved[2])


def test_llamapro_sequence_classifier_trains_its_new_head_too():
    import dataclasses

    from transformers import LlamaConfig, LlamaForSequenceClassification

    from alignkit.config.run import RunArguments
    from alignkit.models.tuners import TunerSettings
    from alignkit.training.model_setup import make_trainable

    model = LlamaForSequenceClassification(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                       num_hidden_layers=2, num_attention_heads=4, num_labels=2))
    args = dataclasses.replace(RunArguments(), train_type="llamapro", llamapro_num_new_blocks=1)
    model = make_trainable(model, args, settings=TunerSettings(task_type="SEQ_CLS"), targets=None)
    trainable = {n.rsplit(".", 1)[0].split(".")[0] if n.startswith("score") else n.split(".")[2]
                 for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"score", "2"}


# ------------------------------------------------------------------------------------------- dummy


def test_dummy_trains_the_model_as_loaded(model_dir, tmp_path, caplog):
    import dataclasses

    from alignkit.config.run import RunArguments
    from alignkit.training.model_setup import make_trainable

    with caplog.at_level("INFO", logger="alignkit"):
        assert main(sft(model_dir, tmp_path / "dummy", "--tuner_type", "dummy", steps=1)) == 0
    assert "--tuner_type dummy: the model trains as loaded" in caplog.text
    base, trained = load_file(Path(model_dir) / "model.safetensors"), checkpoints(tmp_path / "dummy")[1]
    assert all(not torch.equal(base[k], trained[k]) for k in base)  # a plain transformers model: every weight trains
    model = tiny_llama()
    model.model.layers[0].requires_grad_(False)  # what a loader (ms-swift's model plugin) left frozen stays so
    args = dataclasses.replace(RunArguments(), train_type="dummy")
    model = make_trainable(model, args, settings=None, targets=None)
    assert not any(p.requires_grad for p in model.model.layers[0].parameters())
    assert all(p.requires_grad for p in model.model.layers[1].parameters())


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("argv, message", [
    (["--tuner_type", "lora", "--lisa_activated_layers", "2"], "LISA is a way of full fine-tuning"),
    (["--tuner_type", "full", "--lisa_activated_layers", "9"], "the model has 4 decoder layers"),
    (["--tuner_type", "full", "--lisa_activated_layers", "1", "--lisa_step_interval", "0"],
     "an interval of 1 or more steps"),
    (["--tuner_type", "llamapro", "--llamapro_num_new_blocks", "3"], "must both split evenly into 3 groups"),
    (["--tuner_type", "llamapro", "--deepspeed", "zero2"], "--tuner_type llamapro with --deepspeed"),
    (["--tuner_type", "llamapro", "--new_special_tokens", "<x>"], "the new tokens' embeddings would stay random"),
])
def test_errors(model_dir, tmp_path, capsys, argv, message):
    assert main(sft(model_dir, tmp_path / "out", *argv, steps=1)) == 2
    assert message in capsys.readouterr().err
