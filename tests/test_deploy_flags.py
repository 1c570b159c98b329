"""deploy's --max_length/--truncation_strategy at serving time and app's --stream/--lang, without a server."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="deploy needs the serve extra: pip install -e '.[serve]'")

from alignkit.commands.deploy import Server  # noqa: E402
from alignkit.commands.openai_api import CompletionRequest, RequestError  # noqa: E402
from alignkit.config.commands import DeployArguments  # noqa: E402


class RecordingEngine:
    def __init__(self):
        self.prompts = []

    def submit(self, prompt_ids, params, **kwargs):
        self.prompts.append(list(prompt_ids))
        return object()


class Encoder:
    tokenizer = None


def server(strategy: str) -> tuple[Server, RecordingEngine]:
    engine = RecordingEngine()
    return Server(engine, Encoder(), models={"m": None}, max_length=10,
                  defaults=DeployArguments(truncation_strategy=strategy)), engine


@pytest.mark.parametrize("strategy, kept", [("left", list(range(4, 12))), ("right", list(range(8)))])
def test_a_long_prompt_keeps_its_end_or_its_beginning(strategy, kept):
    srv, engine = server(strategy)
    srv.submit(CompletionRequest(model="m", prompt="x"), list(range(12)), 2, loop=None)
    assert engine.prompts == [kept]  # 10 - max_tokens 2 = 8 prompt tokens


@pytest.mark.parametrize("strategy", ["delete", "raise"])
def test_otherwise_a_long_prompt_is_a_400(strategy):
    srv, engine = server(strategy)
    with pytest.raises(RequestError) as caught:
        srv.submit(CompletionRequest(model="m", prompt="x"), list(range(12)), 2, loop=None)
    assert caught.value.status == 400 and caught.value.body["code"] == "context_length_exceeded"
    assert engine.prompts == []


def test_a_prompt_with_images_is_never_cut():
    srv, _ = server("left")
    with pytest.raises(RequestError):
        srv.submit(CompletionRequest(model="m", prompt="x"), list(range(12)), 2, loop=None, pixels={"x": None})


def test_app_stream_false_shows_the_whole_answer_once_and_lang_zh_labels():
    from alignkit.commands.app import LABELS, final_only

    assert list(final_only(iter(["a", "ab", "abc"]))) == ["abc"]
    assert list(final_only(iter([]))) == [""]  # an empty answer still ends the turn on the page
    assert LABELS["zh"].keys() == LABELS["en"].keys()
