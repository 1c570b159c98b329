"""A transformers sequence-classification model with one label as --reward_model (ms-swift's PPO examples pass
Skywork's; ms-swift's own `rm` runs save one): scores equal transformers' forward, PPO trains with it and its
critic starts from it, infer scores with it, and a classifier with several labels is refused by name."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignkit.cli import main
from alignkit.data.template import ChatEncoder
from alignkit.errors import AlignkitError

# ChatML whose turns end at <|im_end|> with no newline after it: with pad = eos = <|im_end|> (Llama-3 style
# tokenizers given eos as pad) a rendered conversation ends in pad ids, which transformers' forward skips.
TEMPLATE_ENDING_IN_EOS = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_classifier(path: Path, tokenizer, num_labels: int = 1) -> str:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         num_labels=num_labels, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, initializer_range=0.3)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def eos_padded_rm(tmp_path_factory) -> str:
    """A reward model whose pad token is its eos and whose template ends each turn with it."""
    from conftest import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.chat_template = TEMPLATE_ENDING_IN_EOS
    return build_classifier(tmp_path_factory.mktemp("eos-padded-rm"), tokenizer)


@pytest.fixture(scope="module")
def policy_rm(tiny_model_dir, tmp_path_factory) -> str:
    """A reward model with the tiny policy's tokenizer, as PPO needs."""
    from transformers import AutoTokenizer

    return build_classifier(tmp_path_factory.mktemp("policy-rm"), AutoTokenizer.from_pretrained(tiny_model_dir))


def transformers_scores(model_dir: str, sequences: list[list[int]], side: str) -> torch.Tensor:
    """transformers' own forward on one batch padded on ``side`` with the config's pad id: (N,)."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    pad, width = model.config.pad_token_id, max(len(s) for s in sequences)
    ids, mask = [], []
    for s in sequences:
        fill = [pad] * (width - len(s))
        ids.append(s + fill if side == "right" else fill + s)
        mask.append([1] * len(s) + [0] * len(fill) if side == "right" else [0] * len(fill) + [1] * len(s))
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.squeeze(-1)


def test_scores_equal_transformers_forward_right_and_left_padded(eos_padded_rm):
    from alignkit.models.scalar_model import load_scalar_model, score_conversations, score_token_ids

    model, tokenizer = load_scalar_model(eos_padded_rm, adapters=[])
    pad = tokenizer.pad_token_id
    encoder = ChatEncoder(tokenizer, max_length=256, truncation_strategy="left")
    conversations = [[{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": answer}]
                     for answer in ("Answer: 2", "It is 3, I think, or 4", "2")]
    sequences = [encoder.tokens(encoder.render(c, generation_prompt=False)) for c in conversations]
    assert all(s[-1] == pad for s in sequences)  # read before the trailing eos, as transformers does
    sequences += [sequences[0][:-3], [7, 9, pad, pad]]  # one not ending in pad, one ending in two
    expected = transformers_scores(eos_padded_rm, sequences, "right")
    torch.testing.assert_close(transformers_scores(eos_padded_rm, sequences, "left"), expected, atol=1e-5, rtol=0)
    assert len(set(expected.tolist())) == len(expected)  # the random head tells every reading position apart
    for packed in (True, False):
        torch.testing.assert_close(score_token_ids(model, sequences, pad_id=pad, batch_size=3, packed=packed),
                                   expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(score_conversations(model, encoder, conversations, batch_size=2, packed=packed),
                                   expected[:3], atol=1e-5, rtol=0)


def test_ppo_trains_a_step_with_a_seq_cls_reward_model_and_a_full_critic(tiny_model_dir, policy_rm, tmp_path,
                                                                         caplog):
    """ms-swift's ppo/full.sh: --tuner_type full trains the critic in full too, starting from the reward model."""
    out = tmp_path / "out"
    with caplog.at_level("INFO", logger="alignkit"):
        code = main(["rlhf", "--rlhf_type", "ppo", "--model", tiny_model_dir, "--reward_model", policy_rm,
                     "--tuner_type", "full", "--dataset", "arith-prompts#2", "--max_completion_length", "4",
                     "--batch_size", "2", "--num_ppo_epochs", "1", "--max_steps", "1", "--learning_rate", "1e-2",
                     "--logging_steps", "1", "--report_to", "none", "--dtype", "fp32", "--output_dir", str(out)])
    assert code == 0
    assert f"PPO's value model: a copy of --reward_model {policy_rm}, its score head as the value head, trained " \
           "in full" in caplog.text
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    (record,) = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()
                 if "loss" in json.loads(line)]
    for key in ("loss/policy_avg", "loss/value_avg", "objective/scores"):
        assert math.isfinite(record[key]), key
    initial = load_file(Path(policy_rm) / "model.safetensors")
    critic_dir = run_dir / "checkpoint-1" / "value_model"
    critic = {k: v for f in critic_dir.glob("model*.safetensors") for k, v in load_file(f).items()}
    name = "layers.0.self_attn.q_proj.weight"
    (key,) = [k for k in critic if k.endswith(name)]
    # One AdamW step of lr 1e-2 moves each weight by about 1e-2: the critic started at the reward model's head
    # (std 0.3 here) and backbone, and trained both (in full: the backbone moved too).
    for trained, start in ((load_file(critic_dir / "value_head.safetensors")["weight"], initial["score.weight"]),
                           (critic[key], initial[f"model.{name}"])):
        assert trained.shape == start.shape and 0 < (trained - start).abs().max() < 0.02


def test_infer_scores_with_a_seq_cls_reward_model(policy_rm, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    result = tmp_path / "scores.jsonl"
    assert main(["infer", "--reward_model", policy_rm, "--val_dataset", "arith-pref-mismatch:test#3",
                 "--result_path", str(result), "--dtype", "fp32"]) == 0
    rows = [json.loads(line) for line in result.read_text().splitlines()]
    assert len(rows) == 3
    encoder = ChatEncoder(AutoTokenizer.from_pretrained(policy_rm), max_length=1024)
    reference = AutoModelForSequenceClassification.from_pretrained(policy_rm).eval()
    for row in rows:
        for answer in ("chosen", "rejected"):
            ids = encoder.tokens(encoder.render(encoder.system_applied(row["messages"] + row[answer]),
                                                generation_prompt=False))
            with torch.no_grad():
                expected = reference(input_ids=torch.tensor([ids])).logits.item()
            assert row[f"{answer}_reward"] == pytest.approx(expected, abs=1e-5)


def test_a_classifier_with_several_labels_is_refused(tiny_model_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    from alignkit.models.scalar_model import load_reward_scorer

    two_labels = build_classifier(tmp_path / "two", AutoTokenizer.from_pretrained(tiny_model_dir), num_labels=2)
    assert main(["rlhf", "--rlhf_type", "ppo", "--model", tiny_model_dir, "--reward_model", two_labels,
                 "--dataset", "arith-prompts#2", "--max_steps", "1", "--report_to", "none",
                 "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"--reward_model {two_labels}: expected an `alignkit rlhf --rlhf_type rm` checkpoint" in err
    assert "it has num_labels 2, a classifier over 2 classes rather than a scalar reward" in err
    with pytest.raises(AlignkitError, match="it has num_labels 2"):
        load_reward_scorer(two_labels, dtype="fp32")
