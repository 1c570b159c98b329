"""A second OpenAI-compatible client library, LangChain's ChatOpenAI (langchain-openai, a test-only extra), gets
from `alignkit deploy` the answer the official openai client gets, the same answer streamed, and n > 1 choices."""

from __future__ import annotations

import pytest

openai = pytest.importorskip("openai")
langchain_openai = pytest.importorskip(
    "langchain_openai", reason="the second client library is a test extra: pip install -e '.[dev]'")
pytest.importorskip("fastapi", reason="deploy needs the serve extra: pip install -e '.[serve]'")

from servers import free_port, start_server  # noqa: E402

API_KEY = "sk-langchain-test"
QUESTION = "What is 12 + 30?"


@pytest.fixture(scope="module")
def base_url(tiny_chat_model_dir, tmp_path_factory):
    port = free_port()
    process = start_server(
        ["deploy", "--model", tiny_chat_model_dir, "--served_model_name", "tiny", "--port", str(port), "--api_key",
         API_KEY, "--dtype", "fp32", "--max_new_tokens", "12"],
        tmp_path_factory.mktemp("deploy-langchain") / "server.log", f"http://127.0.0.1:{port}/v1/models",
        {"Authorization": f"Bearer {API_KEY}"},
    )
    yield f"http://127.0.0.1:{port}/v1"
    process.terminate()
    process.wait(timeout=30)


def chat_model(base_url: str, **kwargs):
    return langchain_openai.ChatOpenAI(base_url=base_url, api_key=API_KEY, model="tiny", max_retries=0, timeout=120,
                                       max_tokens=12, **kwargs)


def openai_answer(base_url: str) -> str:
    client = openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=120)
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTION}],
                                           max_tokens=12, temperature=0)
    return reply.choices[0].message.content


def test_langchain_gets_the_answer_the_openai_client_gets(base_url):
    expected = openai_answer(base_url)
    assert expected  # a non-empty greedy answer, so equality means something
    answer = chat_model(base_url, temperature=0).invoke(QUESTION)
    assert answer.content == expected
    assert answer.response_metadata["model_name"] == "tiny"
    assert answer.usage_metadata["output_tokens"] > 0


def test_langchain_streams_the_same_answer_in_pieces(base_url):
    pieces = [chunk.content for chunk in chat_model(base_url, temperature=0, streaming=True).stream(QUESTION)]
    assert len([p for p in pieces if p]) > 1
    assert "".join(pieces) == openai_answer(base_url)


def test_langchain_gets_n_choices(base_url):
    from langchain_core.messages import HumanMessage

    result = chat_model(base_url, temperature=1.0, n=3, seed=7).generate([[HumanMessage(QUESTION)]])
    answers = [generation.text for generation in result.generations[0]]
    assert len(answers) == 3 and all(answers)
    assert len(set(answers)) > 1  # sampled choices differ (random weights at temperature 1)
