"""Exact loss masks from the chat template, and the prefix check."""

import pytest

from alignkit.data.rows import ConversationRow, PreferenceRow
from alignkit.data.template import IGNORE_INDEX, ChatEncoder
from alignkit.errors import AlignkitError


@pytest.fixture
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def test_single_turn_pair_masks_everything_but_the_answer(tokenizer):
    encoder = ChatEncoder(tokenizer, max_length=512)
    row = PreferenceRow(
        prompt=[{"role": "user", "content": "What is 12 + 30?"}],
        chosen=[{"role": "assistant", "content": "Answer: 42"}],
        rejected=[{"role": "assistant", "content": "Answer: 41"}],
    )
    chosen, rejected = encoder.encode_pair(row)
    prompt = ids(tokenizer, SYSTEM + "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n")
    for encoded, answer in ((chosen, "Answer: 42"), (rejected, "Answer: 41")):
        completion = ids(tokenizer, f"{answer}<|im_end|>\n")
        assert encoded.input_ids == prompt + completion
        assert encoded.labels == [IGNORE_INDEX] * len(prompt) + completion


def test_multi_turn_sft_trains_every_assistant_turn_and_nothing_else(tokenizer):
    encoder = ChatEncoder(tokenizer, max_length=512)
    row = ConversationRow(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hello world"},
            {"role": "user", "content": "What is 1 + 2?"},
            {"role": "assistant", "content": "Answer: 3"},
        ]
    )
    encoded = encoder.encode_conversation(row)
    p1 = ids(
        tokenizer, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    )
    a1 = ids(tokenizer, "hello world<|im_end|>\n")
    p2 = ids(tokenizer, "<|im_start|>user\nWhat is 1 + 2?<|im_end|>\n<|im_start|>assistant\n")
    a2 = ids(tokenizer, "Answer: 3<|im_end|>\n")
    assert encoded.input_ids == p1 + a1 + p2 + a2
    assert encoded.labels == [IGNORE_INDEX] * len(p1) + a1 + [IGNORE_INDEX] * len(p2) + a2

    last_only = ChatEncoder(tokenizer, max_length=512, loss_scale="last_round").encode_conversation(row)
    assert last_only.labels == [IGNORE_INDEX] * len(p1 + a1 + p2) + a2
    every_token = ChatEncoder(tokenizer, max_length=512, loss_scale="all").encode_conversation(row)
    assert every_token.labels == every_token.input_ids == p1 + a1 + p2 + a2


def test_multi_turn_pair_trains_only_the_final_diverging_turn(tokenizer):
    encoder = ChatEncoder(tokenizer, max_length=512)
    history = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hello world"},
        {"role": "user", "content": "What is 1 + 2?"},
    ]
    row = PreferenceRow(prompt=history, chosen=[{"role": "assistant", "content": "Answer: 3"}],
                        rejected=[{"role": "assistant", "content": "Answer: 4"}])
    chosen, _ = encoder.encode_pair(row)
    trained = [t for t in chosen.labels if t != IGNORE_INDEX]
    assert trained == ids(tokenizer, "Answer: 3<|im_end|>\n")


def test_system_flag_replaces_the_templates_default_but_not_a_rows_own(tokenizer):
    encoder = ChatEncoder(tokenizer, max_length=512, system="Only numbers.")
    prompt = encoder.encode_prompt([{"role": "user", "content": "hi"}])
    assert tokenizer.decode(prompt) == (
        "<|im_start|>system\nOnly numbers.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    own = encoder.encode_prompt([{"role": "system", "content": "old"}, {"role": "user", "content": "hi"}])
    assert tokenizer.decode(own).startswith("<|im_start|>system\nold<|im_end|>\n")  # as ms-swift: the row's wins


def test_template_that_breaks_the_prefix_property_raises_a_clear_error(tokenizer):
    # This template writes the number of messages first, so a conversation's beginning renders differently
    # on its own than inside the whole conversation.
    tokenizer.chat_template = (
        "{{ messages|length }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    encoder = ChatEncoder(tokenizer, max_length=512)
    row = ConversationRow(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    with pytest.raises(
        AlignkitError, match="beginning does not tokenize as a prefix of the whole conversation"
    ) as info:
        encoder.encode_conversation(row)
    assert "renders earlier turns differently once later turns follow" in str(info.value)


def test_prompt_longer_than_max_length_is_dropped_or_raises_per_strategy(tokenizer):
    from alignkit.data.template import Truncated
    from alignkit.errors import DataError

    row = PreferenceRow(
        prompt=[{"role": "user", "content": "hello world " * 40}],
        chosen=[{"role": "assistant", "content": "Answer: 3"}],
        rejected=[{"role": "assistant", "content": "Answer: 4"}],
    )
    with pytest.raises(Truncated):
        ChatEncoder(tokenizer, max_length=32).encode_pair(row)
    with pytest.raises(DataError, match="exceed --max_length 32"):
        ChatEncoder(tokenizer, max_length=32, truncation_strategy="raise").encode_pair(row)
    chosen, _ = ChatEncoder(tokenizer, max_length=32, truncation_strategy="left").encode_pair(row)
    assert len(chosen.input_ids) == 32
    assert [t for t in chosen.labels if t != IGNORE_INDEX] == ids(tokenizer, "Answer: 3<|im_end|>\n")
