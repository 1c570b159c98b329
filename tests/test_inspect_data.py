"""`alignkit data`: the inspector prints formats, counts, token statistics and rows with their trained tokens."""

from __future__ import annotations

from pathlib import Path

from alignkit.cli import main
from alignkit.commands.data import highlighted, stats

FIXTURES = Path(__file__).parent / "fixtures" / "data"
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def inspect(capsys, *args):
    code = main(["data", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_preference_file(tiny_model_dir, capsys):
    path = str(FIXTURES / "hh_rlhf.jsonl")
    code, out, _ = inspect(capsys, "--model", tiny_model_dir, "--dataset", path, "--num_examples", "1")
    assert code == 0
    assert f"  {path}: format 'Anthropic hh-rlhf' → 2 preference rows from 2 records\n" in out
    assert "  tokenised: 2 rows, 0 dropped as longer than --max_length 1024 (--truncation_strategy delete)\n" in out
    assert "trained tokens are shown [[like this]]" in out
    assert (f"-- {path}, row 1 (chosen: " in out) and (f"-- {path}, row 1 (rejected: " in out)
    assert (SYSTEM + "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
            "[[Answer: 5<|im_end|>\n]]\n") in out
    assert "[[Answer: 6<|im_end|>\n]]" in out
    assert f"{path}, row 2" not in out  # --num_examples 1


def test_multi_turn_sft_highlights_every_assistant_turn_or_the_last(tiny_model_dir, capsys):
    path = str(FIXTURES / "llamafactory_sharegpt_sft.json")
    args = ["--model", tiny_model_dir, "--dataset", f"{path}", "--num_examples", "2"]
    code, out, _ = inspect(capsys, *args)
    assert code == 0 and "format 'LLaMA-Factory sharegpt' → 2 sft rows" in out
    assert ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n[[Hello! How can I help?<|im_end|>\n]]"
            "<|im_start|>user\nWhat is 10 - 4?<|im_end|>\n<|im_start|>assistant\n[[Answer: 6<|im_end|>\n]]") in out
    _, out, _ = inspect(capsys, *args, "--loss_scale", "last_round")
    assert ("<|im_start|>assistant\nHello! How can I help?<|im_end|>\n<|im_start|>user\nWhat is 10 - 4?<|im_end|>\n"
            "<|im_start|>assistant\n[[Answer: 6<|im_end|>\n]]") in out


def test_kinds_follow_each_file_and_counts_are_reported(tiny_model_dir, capsys):
    kto, prompts = str(FIXTURES / "llamafactory_alpaca_kto.json"), str(FIXTURES / "trl_prompt_only.jsonl")
    code, out, _ = inspect(
        capsys,
        "--model",
        tiny_model_dir,
        "--dataset",
        kto,
        prompts,
        str(FIXTURES / "broken_rows.jsonl"),
        "--check_dataset_strategy",
        "discard",
        "--max_length",
        "40",
    )
    assert code == 0
    assert f"{kto}: format 'LLaMA-Factory alpaca KTO' → 3 unpaired rows from 3 records" in out
    assert "  KTO labels: 2 desirable, 1 undesirable\n" in out
    assert f"{prompts}: format 'TRL prompt-only' → 2 prompt rows from 2 records" in out
    assert (
        "format 'TRL preference' → 3 preference rows from 8 records; 5 invalid rows dropped; "
        "1 pairs with identical answers"
        in out
    )
    # The multi-turn rows do not fit 40 tokens: the KTO row and the prompt are dropped, the pairs fit.
    assert out.count("  tokenised: 2 rows, 1 dropped as longer than --max_length 40") == 1
    assert out.count("  tokenised: 1 rows, 1 dropped as longer than --max_length 40") == 1
    assert out.count("  tokenised: 3 rows, 0 dropped as longer than --max_length 40") == 1
    assert "sequence trained   min     0  mean     0.0" in out  # prompts train nothing


def test_token_statistics_match_the_encoder(tiny_model_dir, capsys):
    from transformers import AutoTokenizer

    from alignkit.data.loading import load_dataset_spec
    from alignkit.data.template import ChatEncoder

    path = str(FIXTURES / "trl_preference.jsonl")
    encoder = ChatEncoder(AutoTokenizer.from_pretrained(tiny_model_dir), max_length=1024)
    pairs = [encoder.encode_pair(r) for r in load_dataset_spec(path, "preference", seed=0)]
    _, out, _ = inspect(capsys, "--model", tiny_model_dir, "--dataset", path)
    assert f"chosen tokens      {stats([len(c.input_ids) for c, _ in pairs])}" in out
    assert f"rejected trained   {stats([r.num_trained for _, r in pairs])}" in out


def test_stats_and_highlighting():
    assert stats([3, 1, 2, 10]) == "min     1  mean     4.0  median    2.5  p95    10  max    10"

    class Decoder:
        def decode(self, ids, skip_special_tokens):
            return "".join(chr(ord("a") + i) for i in ids)

    from alignkit.data.template import Encoded

    encoded = Encoded([0, 1, 2, 3, 4], [-100, 1, 2, -100, 4])
    assert highlighted(Decoder(), encoded, ("<", ">")) == "a<bc>d<e>"


def test_errors_exit_2_without_a_traceback(tiny_model_dir, capsys):
    code, _, err = inspect(capsys, "--model", tiny_model_dir, "--dataset", str(FIXTURES / "broken_rows.jsonl"))
    assert code == 2 and "row 2: invalid JSON" in err and "Traceback" not in err
    code, _, err = inspect(capsys, "--model", tiny_model_dir)
    assert code == 2 and "pass --dataset" in err
