"""Golden token tests for chat templates (ChatML as SmolLM2 ships it, Llama-3, Qwen2.5), built-in templates
for base models, template config files, and the joins where BOS, EOS or a system prompt could double.

Tokenizers are built locally in a second: byte-level BPE trained on a few chat lines, with each model
family's special tokens and pre-tokenizer. Expected token sequences are written out in full below, trained
tokens in [brackets].
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from alignkit.data.chat_templates import BUILTIN_TEMPLATES, load_template_config, resolve_template
from alignkit.data.rows import ConversationRow, PreferenceRow
from alignkit.data.template import IGNORE_INDEX, ChatEncoder
from alignkit.errors import AlignkitError

TEMPLATES = Path(__file__).parent / "fixtures" / "templates"

# SmolLM2-135M-Instruct's chat template, as shipped.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Meta-Llama-3-8B-Instruct's chat template.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Qwen2.5-Instruct's chat template without its tool-calling branches.
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\n' }}{%- endif %}{%- for message in messages %}{%- if (message.role == 'user') or "
    "(message.role == 'system' and not loop.first) or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
# Llama-3 and Qwen2 split digits and keep runs of newlines together before byte-level BPE.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
CORPUS = [
    "What is 2 + 3? Answer: 5. Answer: 6.\n\n system\n user\n assistant\n Hi Hello! How can I help?\n\n",
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n",
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face\n",
    "system\n\nuser\n\nWhat is 10 - 4?\n\nassistant\n\nAnswer: 7\n",
] * 50
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def build_tokenizer(specials, *, bos, eos, template, split=None, add_bos=False):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    if split is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    if add_bos:  # as Llama-3's tokenizer does when asked for special tokens
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tokenizer.token_to_id(bos))]
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos, eos_token=eos, pad_token=eos)
    fast.chat_template = template
    return fast


@pytest.fixture(scope="module")
def smollm2():
    return build_tokenizer(CHATML_SPECIALS, bos="<|im_start|>", eos="<|im_end|>", template=SMOLLM2_TEMPLATE)


@pytest.fixture(scope="module")
def llama3():
    return build_tokenizer(LLAMA3_SPECIALS, bos="<|begin_of_text|>", eos="<|eot_id|>", template=LLAMA3_TEMPLATE,
                           split=LLAMA3_SPLIT, add_bos=True)


@pytest.fixture(scope="module")
def qwen():
    return build_tokenizer(CHATML_SPECIALS, bos=None, eos="<|im_end|>", template=QWEN25_TEMPLATE, split=LLAMA3_SPLIT)


def marked(tokenizer, encoded) -> str:
    """Tokens separated by spaces, trained ones in [brackets]."""
    tokens = tokenizer.convert_ids_to_tokens(encoded.input_ids)
    return " ".join(f"[{t}]" if label != IGNORE_INDEX else t for t, label in zip(tokens, encoded.labels))


def message(role, text):
    return {"role": role, "content": text}


PAIR = PreferenceRow(
    prompt=[message("user", "What is 2 + 3?")],
    chosen=[message("assistant", "Answer: 5")],
    rejected=[message("assistant", "Answer: 6")],
)
MULTI_TURN = ConversationRow(messages=[
    message("user", "Hi"), message("assistant", "Hello! How can I help?"),
    message("user", "What is 10 - 4?"), message("assistant", "Answer: 6"),
])


# ------------------------------------------------------------------------------------------------ golden


def test_golden_chatml_smollm2(smollm2):
    chosen, rejected = ChatEncoder(smollm2, max_length=512).encode_pair(PAIR)
    prompt = ("<|im_start|> system Ċ You Ġare Ġa Ġhelpful ĠAI Ġassistant Ġnamed ĠSmolLM , Ġtrained Ġby ĠHugging "
              "ĠFace <|im_end|> Ċ <|im_start|> user Ċ What Ġis Ġ2 Ġ+ Ġ3 ? <|im_end|> Ċ <|im_start|> assistant Ċ")
    assert marked(smollm2, chosen) == prompt + " [Answer] [:] [Ġ5] [<|im_end|>] [Ċ]"
    assert marked(smollm2, rejected) == prompt + " [Answer] [:] [Ġ6] [<|im_end|>] [Ċ]"


def test_golden_llama3(llama3):
    chosen, _ = ChatEncoder(llama3, max_length=512).encode_pair(PAIR)
    assert marked(llama3, chosen) == (
        "<|begin_of_text|> <|start_header_id|> user <|end_header_id|> ĊĊ What Ġis Ġ 2 Ġ+ Ġ 3 ? <|eot_id|> "
        "<|start_header_id|> assistant <|end_header_id|> ĊĊ [Answer] [:] [Ġ] [5] [<|eot_id|>]"
    )


def test_golden_llama3_multi_turn_sft_trains_each_assistant_turn_or_the_last(llama3):
    context = ("<|begin_of_text|> <|start_header_id|> user <|end_header_id|> ĊĊ H i <|eot_id|> "
               "<|start_header_id|> assistant <|end_header_id|> ĊĊ")
    first_answer = "H ello ! ĠHow Ġcan ĠI Ġhelp ? <|eot_id|>"
    second = ("<|start_header_id|> user <|end_header_id|> ĊĊ What Ġis Ġ 10 Ġ- Ġ 4 ? <|eot_id|> "
              "<|start_header_id|> assistant <|end_header_id|> ĊĊ")
    last_answer = "[Answer] [:] [Ġ] [6] [<|eot_id|>]"
    every = ChatEncoder(llama3, max_length=512).encode_conversation(MULTI_TURN)
    trained_first = " ".join(f"[{t}]" for t in first_answer.split())
    assert marked(llama3, every) == f"{context} {trained_first} {second} {last_answer}"
    last = ChatEncoder(llama3, max_length=512, loss_scale="last_round").encode_conversation(MULTI_TURN)
    assert marked(llama3, last) == f"{context} {first_answer} {second} {last_answer}"


def test_golden_qwen25(qwen):
    chosen, _ = ChatEncoder(qwen, max_length=512).encode_pair(PAIR)
    assert marked(qwen, chosen) == (
        "<|im_start|> system Ċ You Ġare ĠQwen , Ġcreated Ġby ĠAlibaba ĠCloud . ĠYou Ġare Ġa Ġhelpful "
        "Ġassistant . <|im_end|> Ċ <|im_start|> user Ċ What Ġis Ġ 2 Ġ+ Ġ 3 ? <|im_end|> Ċ "
        "<|im_start|> assistant Ċ [Answer] [:] [Ġ] [5] [<|im_end|>] [Ċ]"
    )


# ------------------------------------------------------------------------------------------------ joins


def test_bos_is_not_doubled(llama3):
    bos = llama3.bos_token_id
    encoder = ChatEncoder(llama3, max_length=512)
    chosen, _ = encoder.encode_pair(PAIR)
    assert chosen.input_ids.count(bos) == 1 and chosen.input_ids[0] == bos
    assert encoder.encode_prompt(PAIR.prompt).count(bos) == 1
    # What a naive tokenizer call would give: the template's BOS plus the tokenizer's own.
    text = encoder.render(PAIR.prompt + PAIR.chosen, generation_prompt=False)
    assert llama3(text)["input_ids"][:2] == [bos, bos]


def test_system_prompt_is_not_doubled(smollm2, qwen):
    row = PreferenceRow([message("system", "Be brief."), *PAIR.prompt], PAIR.chosen, PAIR.rejected)
    for tokenizer in (smollm2, qwen):
        text = tokenizer.decode(ChatEncoder(tokenizer, max_length=512).encode_pair(row)[0].input_ids)
        assert text.count("system") == 1 and text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
        replaced = ChatEncoder(tokenizer, max_length=512, system="Only numbers.").encode_pair(row)[0]
        assert tokenizer.decode(replaced.input_ids).count("<|im_start|>system") == 1


def test_default_template_ends_each_answer_with_one_eos(smollm2, caplog):
    encoder = ChatEncoder(smollm2, max_length=512, template=resolve_template(smollm2, template="default"))
    encoded = encoder.encode_conversation(MULTI_TURN)
    assert smollm2.decode(encoded.input_ids) == (
        "### Human:\nHi\n\n### Assistant:\nHello! How can I help?<|im_end|>\n\n### Human:\nWhat is 10 - 4?"
        "\n\n### Assistant:\nAnswer: 6<|im_end|>"
    )
    eos = smollm2.eos_token_id
    assert encoded.input_ids.count(eos) == 2 and encoded.input_ids[-1] == eos
    trained = [t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    assert smollm2.decode(trained) == "Hello! How can I help?<|im_end|>Answer: 6<|im_end|>"
    assert smollm2.decode(encoder.encode_prompt(MULTI_TURN.messages[:1])) == "### Human:\nHi\n\n### Assistant:\n"


def test_a_tokenizer_that_merges_across_the_join_is_refused():
    # GPT-2's pre-tokenizer keeps "\n\n" whole at the end of a prompt but splits it before "Answer", and this
    # vocabulary merges "\n\n": the prompt's tokens are then no prefix of the conversation's.
    tokenizer = build_tokenizer(LLAMA3_SPECIALS, bos="<|begin_of_text|>", eos="<|eot_id|>", template=LLAMA3_TEMPLATE)
    with pytest.raises(AlignkitError) as info:
        ChatEncoder(tokenizer, max_length=512).encode_pair(PAIR)
    assert "renders it as a text prefix, but this tokenizer tokenizes the text at the join differently " in str(
        info.value
    )
    assert "(it ends with 'eader_id|>\\n\\n')" in str(info.value)


# ------------------------------------------------------------------------------------- built-in templates


def test_builtin_templates_render_like_the_model_families(llama3, qwen, smollm2):
    conversations = [PAIR.prompt + PAIR.chosen, [message("system", "Be brief."), *MULTI_TURN.messages]]
    for tokenizer, name in ((llama3, "llama3"), (qwen, "qwen")):
        builtin = ChatEncoder(tokenizer, max_length=512, template=resolve_template(tokenizer, template=name))
        own = ChatEncoder(tokenizer, max_length=512)
        for conversation in conversations:
            for generation_prompt in (False, True):
                assert builtin.render(conversation, generation_prompt=generation_prompt) == own.render(
                    conversation, generation_prompt=generation_prompt)
    chatml = ChatEncoder(smollm2, max_length=512, template=resolve_template(smollm2, template="chatml"))
    assert chatml.render(PAIR.prompt, generation_prompt=True) == (
        "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_builtin_templates_match_the_ones_trl_ships():
    templates = pytest.importorskip("trl").__path__[0] + "/chat_templates"
    from jinja2 import Environment

    env = Environment(trim_blocks=True, lstrip_blocks=True)
    conversation = [message("system", "Be brief."), *MULTI_TURN.messages]
    for name, file in (("llama3", "llama3.jinja"), ("qwen", "qwen2_5.jinja")):
        shipped = env.from_string(Path(templates, file).read_text())
        ours = env.from_string(BUILTIN_TEMPLATES[name])
        for messages in (conversation, conversation[1:]):
            for generation_prompt in (False, True):
                kwargs = {"messages": messages, "add_generation_prompt": generation_prompt,
                          "bos_token": "<|begin_of_text|>"}
                assert ours.render(**kwargs) == shipped.render(**kwargs), name


def test_base_model_without_template_gets_chatml_and_says_so(caplog):
    tokenizer = build_tokenizer(CHATML_SPECIALS, bos=None, eos="<|endoftext|>", template=None)
    tokenizer.name_or_path = "base-model"
    with caplog.at_level(logging.INFO, logger="alignkit"):
        encoder = ChatEncoder(tokenizer, max_length=512)
    assert encoder.template.name == "chatml"
    assert (
        "The tokenizer of 'base-model' has no chat template (a base model?): using the built-in 'chatml'" in caplog.text
    )
    assert encoder.stop_ids == [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id]
    chosen, _ = encoder.encode_pair(PAIR)
    assert marked(tokenizer, chosen) == (
        "<|im_start|> user Ċ What Ġis Ġ2 Ġ+ Ġ3 ? <|im_end|> Ċ <|im_start|> assistant Ċ "
        "[Answer] [:] [Ġ5] [<|im_end|>] [Ċ]"
    )


def test_unknown_builtin_template(smollm2):
    with pytest.raises(
        AlignkitError, match=r"^--template vicuna: unknown; built-in templates: chatml, qwen, llama3, default$"
    ):
        resolve_template(smollm2, template="vicuna")


# -------------------------------------------------------------------------------------- template config


def test_template_config_adds_its_system_message_and_ends_answers_at_end_of_assistant(smollm2):
    template = resolve_template(smollm2, template_config=str(TEMPLATES / "colossal_chatml.json"))
    assert (template.system_message, template.end_of_assistant, template.stop_ids) == (
        "You are a careful calculator.", "<|im_end|>", (2,)
    )
    encoder = ChatEncoder(smollm2, max_length=512, template=template)
    chosen, _ = encoder.encode_pair(PAIR)
    assert marked(smollm2, chosen).endswith("<|im_start|> assistant Ċ [Answer] [:] [Ġ5] [<|im_end|>] Ċ")
    assert smollm2.decode(chosen.input_ids).startswith("<|im_start|>system\nYou are a careful calculator.<|im_end|>")
    own_system = PreferenceRow([message("system", "Be brief."), *PAIR.prompt], PAIR.chosen, PAIR.rejected)
    assert "careful" not in smollm2.decode(encoder.encode_pair(own_system)[0].input_ids)
    assert encoder.stop_ids == [2]


def test_template_config_without_chat_template_uses_the_tokenizers(smollm2, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"chat_template": None, "system_message": None, "end_of_assistant": "<|im_end|>"}))
    template = load_template_config(str(path), smollm2)
    assert template.source == SMOLLM2_TEMPLATE and template.stop_ids == (smollm2.eos_token_id,)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "file not found"),
        ("{not json", "invalid JSON: Expecting property name enclosed in double quotes (line 1, column 2)"),
        ("[]", "expected a JSON object with keys chat_template, system_message, end_of_assistant, stop_ids"),
        ('{"chat_template": "x", "stop_id": [1]}', "unknown key(s) stop_id; expected chat_template, "),
        ('{"chat_template": 5}', "'chat_template' must be a string, got int"),
        ('{"stop_ids": [1, "2"]}', "'stop_ids' must be a list of token ids, got [1, '2']"),
        ('{"stop_ids": [100000]}', "'stop_ids' [100000] are outside the tokenizer's vocabulary (size 367)"),
    ],
)
def test_template_config_errors(smollm2, tmp_path, content, message):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(AlignkitError) as info:
        load_template_config(str(path), smollm2)
    assert str(info.value).startswith(f"--template_config {path}: {message}")


def test_end_of_assistant_that_never_follows_the_answer_trains_the_answer_only(smollm2, tmp_path):
    """ColossalChat's rule: no end_of_assistant after the answer's text, so its text alone is trained."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"end_of_assistant": "</s>"}))
    encoder = ChatEncoder(smollm2, max_length=512, template=load_template_config(str(path), smollm2))
    chosen, _ = encoder.encode_pair(PAIR)
    assert smollm2.decode([t for t in chosen.labels if t != -100]) == "Answer: 5"


def test_loss_scale_all_is_refused_for_pairs(smollm2):
    with pytest.raises(AlignkitError, match="--loss_scale all trains prompt tokens"):
        ChatEncoder(smollm2, max_length=512, loss_scale="all").encode_pair(PAIR)


def test_training_with_a_named_template_saves_it_in_the_checkpoint(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from alignkit.cli import main

    fixture = str(Path(__file__).parent / "fixtures" / "data" / "trl_preference.jsonl")
    for flags, expected in ((["--template", "default"], BUILTIN_TEMPLATES["default"]),
                            (["--template_config", str(TEMPLATES / "colossal_chatml.json")],
                             json.loads((TEMPLATES / "colossal_chatml.json").read_text())["chat_template"])):
        out = tmp_path / flags[0].strip("-")
        assert main(["rlhf", "--model", tiny_model_dir, "--dataset", fixture, "--max_steps", "1", "--report_to",
                     "none", "--output_dir", str(out), *flags]) == 0
        (checkpoint,) = out.glob("v*/checkpoint-1")
        assert AutoTokenizer.from_pretrained(checkpoint).chat_template == expected
