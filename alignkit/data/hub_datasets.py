"""ms-swift's dataset names: the hub dataset each stands for, and how ms-swift reads its columns.

ms-swift 2.x named datasets by registry key (``--dataset hh-rlhf-cn:harmless_base_cn``, ``ultrafeedback-kto``),
ms-swift 3.x and 4.x by their ModelScope id (``hjh0119/shareAI-Llama3-DPO-zh-en-emoji``); both download from
ModelScope unless ``--use_hf``. alignkit downloads from the Hugging Face Hub, so a name resolves to the dataset's
Hugging Face id where ms-swift's registry gives one (swift/llm/utils/dataset.py in 2.x,
swift/dataset/dataset/*.py in 4.x), with ms-swift's column mapping and clean-up applied before the format is
detected. A dataset that only ModelScope holds stops with its id and how to pass a downloaded copy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SwiftDataset:
    modelscope_id: str
    hf_id: str | None
    columns: dict[str, str] = field(default_factory=dict)
    """ms-swift's renaming of the hub's columns, e.g. {"question": "query"}."""
    clean: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    """Where ms-swift's preprocessor does more than rename: one record in, one record out."""


def _blossom_math(record: dict[str, Any]) -> dict[str, Any]:
    # ms-swift's BlossomMathPreprocessor: the worked solution, then the final answer.
    return {"query": record["input"], "response": f"{record['output']}\n\nAnswer: {record['answer']}"}


def _alpaca_zh(record: dict[str, Any]) -> dict[str, Any]:
    # ms-swift's AlpacaZhPreprocessor drops the "输入：" ("input:") label some rows begin their input with.
    text = record.get("input")
    return {**record, "input": text[3:]} if isinstance(text, str) and text.startswith("输入：") else record


def _no_variation_selector(record: dict[str, Any]) -> dict[str, Any]:
    # ms-swift's EmojiPreprocessor removes U+FE0F, which follows many emoji in this set.
    return {k: v.replace("\ufe0f", "") if isinstance(v, str) else v for k, v in record.items()}


def _function_calling_chatml(record: dict[str, Any]) -> dict[str, Any]:
    # ms-swift's FunctionCallChatmlPreprocessor: the tools are function_description's paragraphs (one JSON object
    # each); the conversation's own system turn, which lists them in prose, is dropped.
    # ms-swift's MessagesPreprocessor reads any of these names as the messages.
    column = next((c for c in ("conversations", "conversation", "messages") if c in record), "conversations")
    messages = list(record[column])
    if messages and isinstance(messages[0], dict) and messages[0].get("from", messages[0].get("role")) == "system":
        messages = messages[1:]
    described = record.get("function_description")
    return {"messages": messages, **({"tools": described.split("\n\n")} if described else {})}


HH_RLHF_CN = SwiftDataset("AI-ModelScope/hh_rlhf_cn", None)  # context/chosen/rejected with role/text messages
SHAREAI_DPO = SwiftDataset(
    "hjh0119/shareAI-Llama3-DPO-zh-en-emoji", "shareAI/DPO-zh-en-emoji",
    {"question": "query", "answer_zh": "response", "answer_en": "rejected_response"}, _no_variation_selector)
ULTRAFEEDBACK_KTO = SwiftDataset("AI-ModelScope/ultrafeedback-binarized-preferences-cleaned-kto", None,
                                 {"prompt": "query", "completion": "response"})
RLAIF_V = SwiftDataset("swift/RLAIF-V-Dataset", "openbmb/RLAIF-V-Dataset",
                       {"image": "images", "question": "query", "chosen": "response", "rejected": "rejected_response"})
BLOSSOM_MATH = SwiftDataset("AI-ModelScope/blossom-math-v2", "Azure99/blossom-math-v2", clean=_blossom_math)
ALPACA_EN = SwiftDataset("AI-ModelScope/alpaca-gpt4-data-en", "vicgalle/alpaca-gpt4")
ALPACA_ZH = SwiftDataset("AI-ModelScope/alpaca-gpt4-data-zh", "llm-wizard/alpaca-gpt4-data-zh", clean=_alpaca_zh)
FUNCTION_CALLING_CHATML = SwiftDataset("AI-ModelScope/function-calling-chatml", "Locutusque/function-calling-chatml",
                                       clean=_function_calling_chatml)

# name -> (dataset, the subset the name implies); every ModelScope id is a name too.
SWIFT_DATASETS: dict[str, tuple[SwiftDataset, str | None]] = {
    "hh-rlhf-cn": (HH_RLHF_CN, "hh_rlhf"),
    **{f"hh-rlhf-cn-{subset.replace('_', '-')}": (HH_RLHF_CN, subset)
       for subset in ("harmless_base_cn", "harmless_base_en", "helpful_base_cn", "helpful_base_en")},
    "shareai-llama3-dpo-zh-en-emoji": (SHAREAI_DPO, None),
    "ultrafeedback-kto": (ULTRAFEEDBACK_KTO, None),
    "rlaif-v": (RLAIF_V, None),
    "blossom-math-zh": (BLOSSOM_MATH, None),
    "alpaca-en": (ALPACA_EN, None),
    "alpaca-zh": (ALPACA_ZH, None),
    **{d.modelscope_id: (d, None) for d in (HH_RLHF_CN, SHAREAI_DPO, ULTRAFEEDBACK_KTO, RLAIF_V, BLOSSOM_MATH,
                                           ALPACA_EN, ALPACA_ZH, FUNCTION_CALLING_CHATML)},
}


def find_swift_dataset(name: str) -> tuple[SwiftDataset, str | None] | None:
    """``"hh-rlhf-cn:harmless_base_cn"`` -> (HH_RLHF_CN, "harmless_base_cn"); a name it does not know -> None."""
    base, _, subset = name.partition(":")
    found = SWIFT_DATASETS.get(base)
    if found is None:
        return None
    return found[0], subset or found[1]
