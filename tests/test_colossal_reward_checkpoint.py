"""ColossalChat's reward-model checkpoints (backbone + value_head.weight/bias, state dict only) as PPO's reward
model and critic, and --lora_config's PiSSA / lora_train_bias reaching peft (alignkit/models/colossal_checkpoint.py,
alignkit/commands/colossal/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignkit.cli import main
from alignkit.commands.colossal.run import parse_script
from alignkit.commands.colossal.translate import translate

DATA = Path(__file__).parent / "fixtures" / "data"


def save_colossal_rm(model_dir: str, path: Path, *, seed: int, safetensors: bool = True) -> dict[str, torch.Tensor]:
    """What ColossalChat's train_rm.py writes to save_dir/modeling: RewardModel's state dict (``model.*`` = the
    AutoModel backbone, ``value_head.weight``/``bias``) through booster.save_model(shard=True), an index and its
    shard, no config.json, no tokenizer. The backbone is perturbed so that it differs from ``model_dir``'s."""
    from safetensors.torch import save_file
    from transformers import AutoModel

    torch.manual_seed(seed)
    backbone = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
    state = {f"model.{key}": value + 0.05 * torch.randn_like(value) for key, value in backbone.state_dict().items()}
    hidden = backbone.config.hidden_size
    state["value_head.weight"] = torch.randn(1, hidden) / (hidden + 1) ** 0.5
    state["value_head.bias"] = torch.randn(1)
    path.mkdir(parents=True)
    shard = "model-00001.safetensors" if safetensors else "pytorch_model-00001.bin"
    if safetensors:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path / shard))
    else:
        torch.save(state, path / shard)
    index = "model.safetensors.index.json" if safetensors else "pytorch_model.bin.index.json"
    (path / index).write_text(json.dumps({"metadata": {}, "weight_map": {key: shard for key in state}}))
    return state


def hand_rewards(model_dir: str, state: dict, sequences: list[list[int]], pad_id: int) -> torch.Tensor:
    """ColossalChat's RewardModel.forward on a right-padded batch: value_head(h) at max(attention_mask * arange)."""
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
    backbone.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
    length = max(map(len, sequences))
    ids = torch.tensor([s + [pad_id] * (length - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (length - len(s)) for s in sequences])
    with torch.no_grad():
        hidden = backbone(ids, attention_mask=mask).last_hidden_state
    last = torch.max(mask * torch.arange(length), dim=1)[0]
    picked = hidden[torch.arange(len(sequences)), last]
    return picked @ state["value_head.weight"][0] + state["value_head.bias"][0]


@pytest.mark.parametrize("safetensors", [True, False])
def test_a_colossalchat_rm_checkpoint_scores_as_its_reward_model(tiny_model_dir, tmp_path, safetensors):
    from alignkit.models.scalar_model import load_reward_scorer, load_scalar_model, score_token_ids

    state = save_colossal_rm(tiny_model_dir, tmp_path / "modeling", seed=1, safetensors=safetensors)
    model, tokenizer = load_scalar_model(str(tmp_path / "modeling"), adapters=[], base_model=tiny_model_dir)
    sequences = [[5, 17, 42, 9, 101], [7, 3, 250], [11, 12]]
    expected = hand_rewards(tiny_model_dir, state, sequences, tokenizer.pad_token_id)
    for packed in (False, True):
        got = score_token_ids(model, sequences, pad_id=tokenizer.pad_token_id, batch_size=3, packed=packed)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # infer's and eval's --reward_model (with --model, what it was trained from) load the same model.
    scorer = load_reward_scorer(str(tmp_path / "modeling"), model=tiny_model_dir)
    torch.testing.assert_close(scorer.model.head.bias.cpu(), state["value_head.bias"])


def test_colossal_critic_and_rm_flags_become_value_model_and_reward_model(tmp_path):
    base = ["train_ppo", "--pretrain", "m", "--prompt_dataset", "p", "--rm_pretrain", "rmbase"]
    (tmp_path / "epoch-1_step-5" / "modeling").mkdir(parents=True)
    script, given = parse_script([*base, "--rm_checkpoint_path", "rm/modeling",
                                  "--critic_checkpoint_path", str(tmp_path / "epoch-1_step-5")])
    values = translate(script, given).values
    # ColossalChat's load_checkpoint reads the modeling/ of a path without 'modeling' in it.
    assert (values["reward_model"], values["value_model"]) == (["rm/modeling"], str(tmp_path / "epoch-1_step-5" /
                                                                                   "modeling"))
    script, given = parse_script([*base, "--rm_checkpoint_path", "rm/modeling"])
    assert translate(script, given).values["value_model"] == "rmbase"  # Critic(--rm_pretrain): a new head


def test_ppo_scores_with_a_colossalchat_rm_and_its_critic_starts_from_the_critic_checkpoint(
        tiny_model_dir, tmp_path, monkeypatch):
    import alignkit.models.scalar_model as scalar_model

    reward = save_colossal_rm(tiny_model_dir, tmp_path / "rm" / "modeling", seed=1)
    critic = save_colossal_rm(tiny_model_dir, tmp_path / "critic" / "modeling", seed=2)
    started = {}
    make_trainable = scalar_model.trainable_value_model

    def spy(value, *, lora):
        started.update({k: v.detach().clone() for k, v in value.state_dict().items()})
        return make_trainable(value, lora=lora)

    monkeypatch.setattr(scalar_model, "trainable_value_model", spy)
    save = tmp_path / "ppo"
    assert main(["colossal", "train_ppo", "--pretrain", tiny_model_dir, "--rm_pretrain", tiny_model_dir,
                 "--rm_checkpoint_path", str(tmp_path / "rm" / "modeling"),
                 "--critic_checkpoint_path", str(tmp_path / "critic" / "modeling"),
                 "--prompt_dataset", str(DATA / "colossalchat_ppo_prompts.jsonl"), "--num_episodes", "1",
                 "--num_collect_steps", "1", "--experience_batch_size", "2", "--train_batch_size", "2",
                 "--accumulation_steps", "1", "--num_update_steps", "1", "--max_seq_len", "8",
                 "--mixed_precision", "bf16", "--save_path", str(save)]) == 0
    torch.testing.assert_close(started["head.weight"], critic["value_head.weight"])
    torch.testing.assert_close(started["head.bias"], critic["value_head.bias"])
    key = "layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(started[f"backbone.{key}"], critic[f"model.{key}"])
    assert not torch.equal(started[f"backbone.{key}"], reward[f"model.{key}"])
    assert (save / "actor" / "modeling" / "model.safetensors").is_file()
    # The trained critic keeps its bias: the checkpoint's value_model/ saves it beside the weight.
    from safetensors.torch import load_file

    heads = [load_file(str(p)) for p in save.glob("v*/checkpoint-*/value_model/value_head.safetensors")]
    assert heads and all(set(h) == {"weight", "bias"} for h in heads)


@pytest.mark.parametrize("method, bias, init_weights, lora_bias", [
    ("PiSSA", "all", "pissa", "all"), ("kaiming_uniform", "lora", "true", "lora_only"),
    ("kaiming_uniform", "none", "true", "none"),
])
def test_lora_config_pissa_and_train_bias_reach_peft(tmp_path, method, bias, init_weights, lora_bias):
    from alignkit.config.run import RunArguments
    from alignkit.models.tuners import peft_config
    from alignkit.training.model_setup import tuner_settings

    config = tmp_path / "lora.json"
    config.write_text(json.dumps({"r": 4, "lora_alpha": 8, "lora_initialization_method": method,
                                  "lora_train_bias": bias}))
    script, given = parse_script(["train_sft", "--pretrain", "m", "--dataset", "d", "--lora_config", str(config),
                                  "--warmup_steps", "0"])
    values = translate(script, given).values
    assert (values["init_weights"], values["lora_bias"]) == (init_weights, lora_bias)
    peft = peft_config(tuner_settings(RunArguments(**values), total_steps=1), "all-linear", [])
    assert (peft.init_lora_weights, peft.bias) == ({"true": True}.get(init_weights, init_weights), lora_bias)


@pytest.mark.parametrize("key, value", [("lora_initialization_method", "pissa"), ("lora_train_bias", "lora_only")])
def test_lora_config_spellings_colossalchat_lacks_are_refused(tmp_path, key, value):
    from alignkit.errors import AlignkitError

    config = tmp_path / "lora.json"
    config.write_text(json.dumps({"r": 4, key: value}))
    script, given = parse_script(["train_sft", "--pretrain", "m", "--dataset", "d", "--lora_config", str(config),
                                  "--warmup_steps", "0"])
    with pytest.raises(AlignkitError, match=f"{key} '{value}'"):
        translate(script, given)


def test_pissa_lora_trains_an_sft_step_with_peft_pissa(tiny_model_dir, tmp_path):
    config = tmp_path / "lora.json"
    config.write_text(json.dumps({"r": 4, "lora_alpha": 8, "lora_initialization_method": "PiSSA",
                                  "lora_train_bias": "all"}))
    save = tmp_path / "sft"
    assert main(["colossal", "train_sft", "--pretrain", tiny_model_dir, "--dataset",
                 str(DATA / "colossalchat_sft.jsonl"), "--lora_config", str(config), "--batch_size", "2",
                 "--accumulation_steps", "1", "--max_epochs", "1", "--mixed_precision", "bf16",
                 "--save_path", str(save)]) == 0
    adapter = json.loads(next(save.glob("v*/checkpoint-*/adapter_config.json")).read_text())
    assert (adapter["init_lora_weights"], adapter["bias"], adapter["r"]) == ("pissa", "all", 4)


def test_grpo_scores_with_a_colossalchat_rm(tiny_model_dir, tmp_path, monkeypatch):
    import alignkit.models.scalar_model as scalar_model

    save_colossal_rm(tiny_model_dir, tmp_path / "rm" / "modeling", seed=1)
    scored = []
    score = scalar_model.score_conversations

    def spy(model, *args, **kwargs):
        rewards = score(model, *args, **kwargs)
        scored.append((model.head.bias is not None, len(rewards)))
        return rewards

    monkeypatch.setattr(scalar_model, "score_conversations", spy)
    assert main(["colossal", "train_grpo", "--pretrain", tiny_model_dir, "--rm_pretrain", tiny_model_dir,
                 "--rm_checkpoint_path", str(tmp_path / "rm"),  # an epoch-X_step-Y style path: its modeling/
                 "--prompt_dataset", str(DATA / "colossalchat_ppo_prompts.jsonl"), "--num_episodes", "1",
                 "--num_collect_steps", "1", "--experience_batch_size", "2", "--train_batch_size", "4",
                 "--accumulation_steps", "1", "--num_update_steps", "1", "--max_seq_len", "8", "--num_generations",
                 "2", "--kl_coef", "0", "--initial_temperature", "0.9", "--final_temperature", "0.9",
                 "--mixed_precision", "bf16", "--save_path", str(tmp_path / "grpo")]) == 0
    assert scored and all(has_bias for has_bias, _ in scored)


def test_train_rm_starts_colossalchats_value_head_with_its_statistics(tiny_model_dir, tmp_path):
    """ColossalChat's RewardModel: nn.Linear(d, 1) (a bias, torch's default start) with weights N(0, std 1/(d+1));
    `alignkit colossal train_rm` starts the same head and saves its bias."""
    import math

    import torch

    from alignkit.models.reward_model import colossalchat_value_head, load_value_head

    torch.manual_seed(0)
    head = colossalchat_value_head(4095)
    assert head.weight.std().item() == pytest.approx(1 / 4096, rel=0.05)
    assert head.bias is not None and abs(head.bias.item()) <= 1 / math.sqrt(4095)
    from alignkit.cli import main
    from alignkit.commands.colossal.run import parse_script
    from alignkit.commands.colossal.translate import translate

    pairs = str(Path(__file__).parent / "fixtures" / "data" / "colossalchat_preference.jsonl")
    script, given = parse_script(["train_rm", "--pretrain", tiny_model_dir, "--dataset", pairs])
    assert translate(script, given).values["value_head_init"] == "colossalchat"
    out = tmp_path / "rm"
    assert main(["rlhf", "--rlhf_type", "rm", "--model", tiny_model_dir, "--dataset", "arith-pref#4",
                 "--value_head_init", "colossalchat", "--max_steps", "1", "--save_steps", "1", "--output_dir",
                 str(out), "--report_to", "none", "--split_dataset_ratio", "0"]) == 0
    (checkpoint,) = out.glob("*/checkpoint-1")
    assert load_value_head(checkpoint).bias is not None  # trained and saved with its bias
