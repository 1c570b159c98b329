"""ms-swift's registry names: --model_type / --ref_model_type / --reward_model_type resolve to Hugging Face ids
(offline, the error names the id and the offline spelling), 3.x family names need --model, and the seeds'
dataset names resolve to their hub datasets with ms-swift's column mapping (offline: the error says what to pass)."""

from __future__ import annotations

import json

import pytest

from alignkit.cli import main, resolve_legacy_model_flags
from alignkit.data.loading import load_dataset_spec
from alignkit.data.rows import PreferenceRow, RowSource
from alignkit.errors import AlignkitError
from alignkit.models.registry import SWIFT2_MODELS, SwiftModel, lookup_model_type


@pytest.mark.parametrize(
    "name, hf_id, modelscope_id, template",
    [
        ("yi-6b-chat", "01-ai/Yi-6B-Chat", "01ai/Yi-6B-Chat", "chatml"),
        ("llama3-8b-instruct", "meta-llama/Meta-Llama-3-8B-Instruct", "LLM-Research/Meta-Llama-3-8B-Instruct",
         "llama3"),
        ("qwen-7b-chat", "Qwen/Qwen-7B-Chat", "qwen/Qwen-7B-Chat", "qwen"),
        ("llava1_6-mistral-7b-instruct", "llava-hf/llava-v1.6-mistral-7b-hf", "swift/llava-v1.6-mistral-7b-hf",
         "llava-mistral"),
        ("internvl2-2b", "OpenGVLab/InternVL2-2B", "OpenGVLab/InternVL2-2B", "internvl2"),
        ("qwen2_5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct", "qwen/Qwen2.5-7B-Instruct", "qwen2_5"),
    ],
)
def test_seed_model_types_are_in_the_registry(name, hf_id, modelscope_id, template):
    assert lookup_model_type(name) == SwiftModel(name, modelscope_id, hf_id, template)


def test_registry_covers_the_common_families():
    assert len(SWIFT2_MODELS) >= 50
    for family in ("qwen-", "qwen1half-", "qwen2-", "qwen2_5-", "llama2-", "llama3-", "llama3_1-", "mistral-",
                   "mixtral-", "yi-", "gemma-", "gemma2-", "glm4-", "internlm2", "deepseek-", "phi3-", "baichuan2-"):
        assert any(name.startswith(family) for name in SWIFT2_MODELS), family
    for family in ("qwen2_5", "qwen3", "llama3_1", "mistral", "glm4", "internvl2"):
        assert lookup_model_type(family).example_hf_id


def test_a_2x_name_alone_is_its_hugging_face_id():
    values = {"model_type": "llama3-8b-instruct", "ref_model_type": "qwen-7b-chat",
              "reward_model_type": "yi-6b-chat", "reward_model": []}
    resolve_legacy_model_flags(values)
    assert values["model"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert values["ref_model"] == "Qwen/Qwen-7B-Chat"
    assert values["reward_model"] == ["01-ai/Yi-6B-Chat"]


def test_a_name_beside_a_path_only_names_the_family(tmp_path):
    values = {"model_type": "yi-6b-chat", "model": str(tmp_path), "ref_model_type": "yi-6b-chat",
              "reward_model_type": "llama3-8b-instruct", "reward_model": ["rm_dir"]}
    resolve_legacy_model_flags(values)
    assert values["model"] == str(tmp_path) and values["reward_model"] == ["rm_dir"]
    assert "ref_model" not in values  # the seeds' --ref_model_type equal to --model_type: the starting weights
    local = {"model_type": str(tmp_path)}
    resolve_legacy_model_flags(local)
    assert local["model"] == str(tmp_path)


def test_a_3x_family_needs_model_and_an_unknown_name_says_what_to_pass():
    with pytest.raises(AlignkitError) as info:
        resolve_legacy_model_flags({"model_type": "qwen2_5"})
    assert "ms-swift 3.x model family (template qwen2_5)" in str(info.value)
    assert "--model (a Hugging Face id such as Qwen/Qwen2.5-7B-Instruct" in str(info.value)
    with pytest.raises(AlignkitError) as info:
        resolve_legacy_model_flags({"model_type": "my-own-model-7b"})
    assert "--model_type my-own-model-7b is not an ms-swift model registry name alignkit knows" in str(info.value)
    assert "Pass --model with a local model directory" in str(info.value)


def test_offline_the_error_names_the_hub_id_and_the_offline_spelling(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code = main(["rlhf", "--rlhf_type", "dpo", "--model_type", "llama3-8b-instruct", "--use_hf", "true",
                 "--dataset", "arith-pref#4", "--output_dir", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "could not load 'meta-llama/Meta-Llama-3-8B-Instruct' (ms-swift's --model_type llama3-8b-instruct)" in err
    assert "--model_id_or_path DIR --check_model_is_latest false" in err


# ------------------------------------------------------------------------------------------- datasets


def fake_hub(monkeypatch, records):
    import datasets

    calls = []

    def load_dataset(repo, subset, split):
        calls.append((repo, subset, split))
        return datasets.Dataset.from_list(records)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_blossom_math_is_read_as_ms_swift_reads_it(monkeypatch):
    calls = fake_hub(monkeypatch, [{"input": "1+1?", "output": "One and one.", "answer": "2"}] * 3)
    rows = load_dataset_spec("blossom-math-zh#2", "sft", seed=0)
    assert calls == [("Azure99/blossom-math-v2", None, "train")]
    assert len(rows) == 2
    assert rows[0].messages == [{"role": "user", "content": "1+1?"},
                                {"role": "assistant", "content": "One and one.\n\nAnswer: 2"}]


def test_shareai_dpo_by_its_modelscope_id_maps_columns(monkeypatch):
    calls = fake_hub(monkeypatch, [{"question": "hi", "answer_zh": "你好 \u2764\ufe0f", "answer_en": "hello"}])
    (row,) = load_dataset_spec("hjh0119/shareAI-Llama3-DPO-zh-en-emoji", "preference", seed=0)
    assert calls == [("shareAI/DPO-zh-en-emoji", None, "train")]
    source = RowSource("hub:shareAI/DPO-zh-en-emoji", 1)
    assert row == PreferenceRow([{"role": "user", "content": "hi"}], [{"role": "assistant", "content": "你好 \u2764"}],
                                [{"role": "assistant", "content": "hello"}], source=source)


def test_offline_hub_dataset_names_the_id_and_a_local_file(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(AlignkitError) as info:
        load_dataset_spec("AI-ModelScope/alpaca-gpt4-data-en", "sft", seed=0)
    assert "as 'vicgalle/alpaca-gpt4' from the Hugging Face Hub (ConnectionError: no network)" in str(info.value)
    assert "pass the local file (.jsonl, .json, .csv, .parquet) or folder with --dataset" in str(info.value)


@pytest.mark.parametrize("spec, subset", [("hh-rlhf-cn:harmless_base_cn", "harmless_base_cn"),
                                          ("hh-rlhf-cn-harmless-base-cn", "harmless_base_cn"),
                                          ("ultrafeedback-kto", None)])
def test_modelscope_only_datasets_say_how_to_pass_a_copy(spec, subset):
    with pytest.raises(AlignkitError) as info:
        load_dataset_spec(spec, "preference", seed=0)
    message = str(info.value)
    assert "which has no Hugging Face copy that ms-swift names" in message
    assert (f"subset {subset}" in message) == (subset is not None)
    assert "modelscope download --dataset" in message and "with --dataset" in message


def test_a_local_copy_of_hh_rlhf_cn_loads_as_pairs(tmp_path):
    path = tmp_path / "harmless_base_cn.jsonl"
    path.write_text(json.dumps({"context": [{"role": "human", "text": "你好"}, {"role": "assistant", "text": "嗨"},
                                            {"role": "human", "text": "1+1?"}],
                                "chosen": {"role": "assistant", "text": "2"},
                                "rejected": {"role": "assistant", "text": "3"}}, ensure_ascii=False) + "\n")
    (row,) = load_dataset_spec(str(path), "preference", seed=0)
    assert row.prompt == [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "嗨"},
                          {"role": "user", "content": "1+1?"}]
    assert row.chosen == [{"role": "assistant", "content": "2"}] and row.rejected == [{"role": "assistant",
                                                                                         "content": "3"}]
