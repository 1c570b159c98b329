"""ms-swift's ``--model_type`` names: which model (2.x) or which family (3.x, 4.x) each one stands for.

ms-swift 2.x named one model per ``--model_type`` (``llama3-8b-instruct``) and downloaded it from ModelScope, or from
the Hugging Face Hub with ``USE_HF=1``; its ``--model_id_or_path`` pointed the name at local weights instead. ms-swift
3.x and 4.x name a family (``qwen2_5``: a loader and a chat template shared by several models) and always need
``--model`` beside it. The tables below are copied from ms-swift's own registries (2.x:
swift/llm/utils/model.py; 3.x: swift/llm/model/model/*.py), for the families of the example commands and the
most used ones; ``python -m alignkit.models.registry`` prints them.

alignkit downloads from the Hugging Face Hub, so a 2.x name resolves to the model's Hugging Face id::

    >>> lookup_model_type("yi-6b-chat").hf_id
    '01-ai/Yi-6B-Chat'
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SwiftModel:
    """An ms-swift 2.x ``--model_type``: one model, its ModelScope and Hugging Face ids and ms-swift's template."""

    name: str
    modelscope_id: str
    hf_id: str
    template: str


@dataclass(frozen=True)
class SwiftFamily:
    """An ms-swift 3.x/4.x ``--model_type``: a family of models sharing a loader and ms-swift's template."""

    name: str
    template: str
    example_hf_id: str


# name, ModelScope id, Hugging Face id, ms-swift's template (2.x, swift/llm/utils/model.py)
_SWIFT2 = """
qwen-1_8b-chat qwen/Qwen-1_8B-Chat Qwen/Qwen-1_8B-Chat qwen
qwen-7b qwen/Qwen-7B Qwen/Qwen-7B default-generation
qwen-7b-chat qwen/Qwen-7B-Chat Qwen/Qwen-7B-Chat qwen
qwen-14b-chat qwen/Qwen-14B-Chat Qwen/Qwen-14B-Chat qwen
qwen-72b-chat qwen/Qwen-72B-Chat Qwen/Qwen-72B-Chat qwen
qwen1half-0_5b-chat qwen/Qwen1.5-0.5B-Chat Qwen/Qwen1.5-0.5B-Chat qwen
qwen1half-1_8b-chat qwen/Qwen1.5-1.8B-Chat Qwen/Qwen1.5-1.8B-Chat qwen
qwen1half-4b-chat qwen/Qwen1.5-4B-Chat Qwen/Qwen1.5-4B-Chat qwen
qwen1half-7b-chat qwen/Qwen1.5-7B-Chat Qwen/Qwen1.5-7B-Chat qwen
qwen1half-14b-chat qwen/Qwen1.5-14B-Chat Qwen/Qwen1.5-14B-Chat qwen
qwen1half-32b-chat qwen/Qwen1.5-32B-Chat Qwen/Qwen1.5-32B-Chat qwen
qwen1half-72b-chat qwen/Qwen1.5-72B-Chat Qwen/Qwen1.5-72B-Chat qwen
qwen2-0_5b-instruct qwen/Qwen2-0.5B-Instruct Qwen/Qwen2-0.5B-Instruct qwen
qwen2-1_5b-instruct qwen/Qwen2-1.5B-Instruct Qwen/Qwen2-1.5B-Instruct qwen
qwen2-7b qwen/Qwen2-7B Qwen/Qwen2-7B default-generation
qwen2-7b-instruct qwen/Qwen2-7B-Instruct Qwen/Qwen2-7B-Instruct qwen
qwen2-72b-instruct qwen/Qwen2-72B-Instruct Qwen/Qwen2-72B-Instruct qwen
qwen2_5-0_5b-instruct qwen/Qwen2.5-0.5B-Instruct Qwen/Qwen2.5-0.5B-Instruct qwen2_5
qwen2_5-1_5b-instruct qwen/Qwen2.5-1.5B-Instruct Qwen/Qwen2.5-1.5B-Instruct qwen2_5
qwen2_5-3b-instruct qwen/Qwen2.5-3B-Instruct Qwen/Qwen2.5-3B-Instruct qwen2_5
qwen2_5-7b qwen/Qwen2.5-7B Qwen/Qwen2.5-7B default-generation
qwen2_5-7b-instruct qwen/Qwen2.5-7B-Instruct Qwen/Qwen2.5-7B-Instruct qwen2_5
qwen2_5-14b-instruct qwen/Qwen2.5-14B-Instruct Qwen/Qwen2.5-14B-Instruct qwen2_5
qwen2_5-32b-instruct qwen/Qwen2.5-32B-Instruct Qwen/Qwen2.5-32B-Instruct qwen2_5
qwen2_5-72b-instruct qwen/Qwen2.5-72B-Instruct Qwen/Qwen2.5-72B-Instruct qwen2_5
llama2-7b modelscope/Llama-2-7b-ms meta-llama/Llama-2-7b-hf default-generation
llama2-7b-chat modelscope/Llama-2-7b-chat-ms meta-llama/Llama-2-7b-chat-hf llama
llama2-13b-chat modelscope/Llama-2-13b-chat-ms meta-llama/Llama-2-13b-chat-hf llama
llama2-70b-chat modelscope/Llama-2-70b-chat-ms meta-llama/Llama-2-70b-chat-hf llama
llama3-8b LLM-Research/Meta-Llama-3-8B meta-llama/Meta-Llama-3-8B default-generation
llama3-8b-instruct LLM-Research/Meta-Llama-3-8B-Instruct meta-llama/Meta-Llama-3-8B-Instruct llama3
llama3-70b-instruct LLM-Research/Meta-Llama-3-70B-Instruct meta-llama/Meta-Llama-3-70B-Instruct llama3
llama3_1-8b LLM-Research/Meta-Llama-3.1-8B meta-llama/Meta-Llama-3.1-8B default-generation
llama3_1-8b-instruct LLM-Research/Meta-Llama-3.1-8B-Instruct meta-llama/Meta-Llama-3.1-8B-Instruct llama3
llama3_1-70b-instruct LLM-Research/Meta-Llama-3.1-70B-Instruct meta-llama/Meta-Llama-3.1-70B-Instruct llama3
llama3_2-1b-instruct LLM-Research/Llama-3.2-1B-Instruct meta-llama/Llama-3.2-1B-Instruct llama3_2
llama3_2-3b-instruct LLM-Research/Llama-3.2-3B-Instruct meta-llama/Llama-3.2-3B-Instruct llama3_2
mistral-7b AI-ModelScope/Mistral-7B-v0.1 mistralai/Mistral-7B-v0.1 default-generation
mistral-7b-instruct AI-ModelScope/Mistral-7B-Instruct-v0.1 mistralai/Mistral-7B-Instruct-v0.1 llama
mistral-7b-instruct-v2 AI-ModelScope/Mistral-7B-Instruct-v0.2 mistralai/Mistral-7B-Instruct-v0.2 llama
mistral-7b-instruct-v3 LLM-Research/Mistral-7B-Instruct-v0.3 mistralai/Mistral-7B-Instruct-v0.3 llama
mistral-nemo-instruct-2407 AI-ModelScope/Mistral-Nemo-Instruct-2407 mistralai/Mistral-Nemo-Instruct-2407 mistral-nemo
mixtral-moe-7b AI-ModelScope/Mixtral-8x7B-v0.1 mistralai/Mixtral-8x7B-v0.1 default-generation
mixtral-moe-7b-instruct AI-ModelScope/Mixtral-8x7B-Instruct-v0.1 mistralai/Mixtral-8x7B-Instruct-v0.1 llama
yi-6b 01ai/Yi-6B 01-ai/Yi-6B default-generation
yi-6b-chat 01ai/Yi-6B-Chat 01-ai/Yi-6B-Chat chatml
yi-34b-chat 01ai/Yi-34B-Chat 01-ai/Yi-34B-Chat chatml
yi-1_5-6b-chat 01ai/Yi-1.5-6B-Chat 01-ai/Yi-1.5-6B-Chat chatml
yi-1_5-9b-chat 01ai/Yi-1.5-9B-Chat 01-ai/Yi-1.5-9B-Chat chatml
yi-1_5-34b-chat 01ai/Yi-1.5-34B-Chat 01-ai/Yi-1.5-34B-Chat chatml
gemma-2b-instruct AI-ModelScope/gemma-2b-it google/gemma-2b-it gemma
gemma-7b-instruct AI-ModelScope/gemma-7b-it google/gemma-7b-it gemma
gemma2-2b-instruct LLM-Research/gemma-2-2b-it google/gemma-2-2b-it gemma
gemma2-9b-instruct LLM-Research/gemma-2-9b-it google/gemma-2-9b-it gemma
gemma2-27b-instruct LLM-Research/gemma-2-27b-it google/gemma-2-27b-it gemma
glm4-9b ZhipuAI/glm-4-9b THUDM/glm-4-9b chatglm-generation
glm4-9b-chat ZhipuAI/glm-4-9b-chat THUDM/glm-4-9b-chat chatglm4
chatglm3-6b ZhipuAI/chatglm3-6b THUDM/chatglm3-6b chatglm3
internlm2-7b-chat Shanghai_AI_Laboratory/internlm2-chat-7b internlm/internlm2-chat-7b internlm2
internlm2-20b-chat Shanghai_AI_Laboratory/internlm2-chat-20b internlm/internlm2-chat-20b internlm2
internlm2_5-1_8b-chat Shanghai_AI_Laboratory/internlm2_5-1_8b-chat internlm/internlm2_5-1_8b-chat internlm2
internlm2_5-7b-chat Shanghai_AI_Laboratory/internlm2_5-7b-chat internlm/internlm2_5-7b-chat internlm2
deepseek-7b-chat deepseek-ai/deepseek-llm-7b-chat deepseek-ai/deepseek-llm-7b-chat deepseek
deepseek-67b-chat deepseek-ai/deepseek-llm-67b-chat deepseek-ai/deepseek-llm-67b-chat deepseek
deepseek-v2-lite-chat deepseek-ai/DeepSeek-V2-Lite-Chat deepseek-ai/DeepSeek-V2-Lite-Chat deepseek2
phi3-4b-4k-instruct LLM-Research/Phi-3-mini-4k-instruct microsoft/Phi-3-mini-4k-instruct phi3
phi3-small-8k-instruct LLM-Research/Phi-3-small-8k-instruct microsoft/Phi-3-small-8k-instruct phi3
phi3-medium-4k-instruct LLM-Research/Phi-3-medium-4k-instruct microsoft/Phi-3-medium-4k-instruct phi3
baichuan2-7b-chat baichuan-inc/Baichuan2-7B-Chat baichuan-inc/Baichuan2-7B-Chat baichuan
baichuan2-13b-chat baichuan-inc/Baichuan2-13B-Chat baichuan-inc/Baichuan2-13B-Chat baichuan
llava1_6-mistral-7b-instruct swift/llava-v1.6-mistral-7b-hf llava-hf/llava-v1.6-mistral-7b-hf llava-mistral
internvl2-1b OpenGVLab/InternVL2-1B OpenGVLab/InternVL2-1B internvl2
internvl2-2b OpenGVLab/InternVL2-2B OpenGVLab/InternVL2-2B internvl2
internvl2-4b OpenGVLab/InternVL2-4B OpenGVLab/InternVL2-4B internvl2-phi3
internvl2-8b OpenGVLab/InternVL2-8B OpenGVLab/InternVL2-8B internvl2
"""

# name, ms-swift's template, one Hugging Face id of the family (3.x, swift/llm/model/model/*.py)
_SWIFT3 = """
qwen qwen Qwen/Qwen-1_8B-Chat
qwen2 qwen Qwen/Qwen2-7B-Instruct
qwen2_5 qwen2_5 Qwen/Qwen2.5-7B-Instruct
qwen3 qwen3 Qwen/Qwen3-8B
qwen3_moe qwen3 Qwen/Qwen3-30B-A3B
qwq qwq Qwen/QwQ-32B
llama llama meta-llama/Llama-2-7b-chat-hf
llama3 llama3 meta-llama/Meta-Llama-3-8B-Instruct
llama3_1 llama3_2 meta-llama/Meta-Llama-3.1-8B-Instruct
llama3_2 llama3_2 meta-llama/Llama-3.2-1B-Instruct
mistral llama mistralai/Mistral-7B-Instruct-v0.1
mixtral llama mistralai/Mixtral-8x7B-Instruct-v0.1
yi chatml 01-ai/Yi-6B-Chat
gemma gemma google/gemma-2b-it
gemma2 gemma google/gemma-2-2b-it
gemma3_text gemma3_text google/gemma-3-1b-it
glm4 glm4 zai-org/glm-4-9b-chat
chatglm3 glm4 zai-org/chatglm3-6b
internlm2 internlm2 internlm/internlm2-chat-1_8b
deepseek deepseek deepseek-ai/deepseek-llm-7b-chat
deepseek_v2_5 deepseek_v2_5 deepseek-ai/DeepSeek-V2.5
deepseek_r1_distill deepseek_r1 deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B
phi3 phi3 microsoft/Phi-3-mini-4k-instruct
phi4 phi4 microsoft/phi-4
baichuan2 baichuan baichuan-inc/Baichuan2-7B-Chat
minicpm minicpm openbmb/MiniCPM-2B-sft-fp32
llava1_6_mistral_hf llava1_6_mistral_hf llava-hf/llava-v1.6-mistral-7b-hf
internvl2 internvl2 OpenGVLab/InternVL2-2B
qwen2_vl qwen2_vl Qwen/Qwen2-VL-7B-Instruct
qwen2_5_vl qwen2_5_vl Qwen/Qwen2.5-VL-7B-Instruct
"""

SWIFT2_MODELS: dict[str, SwiftModel] = {
    row.split()[0]: SwiftModel(*row.split()) for row in _SWIFT2.strip().splitlines()
}
SWIFT3_FAMILIES: dict[str, SwiftFamily] = {
    row.split()[0]: SwiftFamily(*row.split()) for row in _SWIFT3.strip().splitlines()
}


def lookup_model_type(name: str) -> SwiftModel | SwiftFamily | None:
    """The registry entry of an ms-swift ``--model_type`` (2.x names hold a dash, 3.x ones never do), or None."""
    key = name.strip().lower()
    return SWIFT2_MODELS.get(key) or SWIFT3_FAMILIES.get(key)


def model_type_of_hub_id(hub_id: str) -> SwiftModel | None:
    """The 2.x entry whose Hugging Face or ModelScope id is ``hub_id``, to name it in a download error."""
    for entry in SWIFT2_MODELS.values():
        if hub_id in (entry.hf_id, entry.modelscope_id):
            return entry
    return None


def render_table() -> str:
    lines = ["ms-swift 2.x --model_type (one model): Hugging Face id, ModelScope id, ms-swift template"]
    lines += [f"  {m.name:30} {m.hf_id:44} {m.modelscope_id:46} {m.template}" for m in SWIFT2_MODELS.values()]
    lines += ["", "ms-swift 3.x/4.x --model_type (a family; --model names the model): template, e.g."]
    lines += [f"  {f.name:30} {f.template:22} {f.example_hf_id}" for f in SWIFT3_FAMILIES.values()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_table(), end="")
