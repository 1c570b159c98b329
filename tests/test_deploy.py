"""`alignkit deploy` on loopback, driven with the official `openai` client: answers equal alignkit's own
generation, streaming equals non-streaming, adapters are served by name, errors are 4xx JSON, and
concurrent clients are answered in batches with the same answers as one at a time."""

from __future__ import annotations

import json
import threading

import pytest

openai = pytest.importorskip("openai", reason="the openai client is a test dependency: pip install -e '.[dev]'")
pytest.importorskip("fastapi", reason="deploy needs the serve extra: pip install -e '.[serve]'")
httpx = pytest.importorskip("httpx")

from conftest import save_random_lora  # noqa: E402
from servers import free_port, start_server  # noqa: E402

API_KEY = "sk-alignkit-test"
QUESTION = [{"role": "user", "content": "What is 12 + 30?"}]


@pytest.fixture(scope="module")
def adapters(tiny_chat_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {"math": save_random_lora(tiny_chat_model_dir, root / "math", seed=1),
            "chat": save_random_lora(tiny_chat_model_dir, root / "chat", seed=2)}


@pytest.fixture(scope="module")
def server(tiny_chat_model_dir, adapters, tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("deploy") / "server.log"
    process = start_server(
        ["deploy", "--model", tiny_chat_model_dir, "--adapters", f"math={adapters['math']}", f"chat={adapters['chat']}",
         "--served_model_name", "tiny", "--port", str(port), "--api_key", API_KEY, "--dtype", "fp32",
         "--max_new_tokens", "16"],
        log_path, f"http://127.0.0.1:{port}/v1/models", {"Authorization": f"Bearer {API_KEY}"},
    )
    yield {"base_url": f"http://127.0.0.1:{port}/v1", "log": log_path}
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server["base_url"], api_key=API_KEY, max_retries=0, timeout=120)


def reference_answers(model_dir: str, adapter: str | None, prompts: list[list[dict]], max_new_tokens: int) -> list[str]:
    """What `alignkit infer` answers, computed in this process, one prompt at a time."""
    from alignkit.data.template import ChatEncoder
    from alignkit.generation.answers import generate_answers
    from alignkit.models.load import load_for_inference

    model, tokenizer = load_for_inference(model_dir, [adapter] if adapter else [], None, "fp32")
    encoder = ChatEncoder(tokenizer, max_length=512)
    return [generate_answers(model, encoder, [p], max_new_tokens=max_new_tokens)[0] for p in prompts]


def test_models_lists_the_base_and_each_named_adapter(client):
    assert [m.id for m in client.models.list()] == ["tiny", "math", "chat"]


@pytest.mark.parametrize("name", ["tiny", "math"])
def test_chat_answer_equals_alignkit_generation(client, tiny_chat_model_dir, adapters, name):
    reply = client.chat.completions.create(model=name, messages=QUESTION, max_tokens=12, temperature=0)
    expected = reference_answers(tiny_chat_model_dir, adapters.get(name), [QUESTION], 12)[0]
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 12
    assert reply.object == "chat.completion" and reply.model == name


def test_adapters_answer_differently_from_the_base(client):
    answers = {name: client.chat.completions.create(model=name, messages=QUESTION, max_tokens=8, temperature=0)
               .choices[0].message.content for name in ("tiny", "math", "chat")}
    assert len(set(answers.values())) == 3, answers


def test_streaming_chat_equals_the_non_streaming_answer(client):
    whole = client.chat.completions.create(model="math", messages=QUESTION, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model="math", messages=QUESTION, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 1  # it really streams, token by token
    assert "".join(deltas) == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_stop_string_ends_the_answer_before_it_also_when_streaming(client):
    whole = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=16, temperature=0)
    text = whole.choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    expected = text[: text.find(stop)]
    stopped = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=16, temperature=0, stop=[stop])
    assert stopped.choices[0].message.content == expected
    assert stopped.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=16, temperature=0,
                                              stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected


def test_completions_streaming_equals_non_streaming(client, tiny_chat_model_dir):
    from transformers import AutoTokenizer

    prompt = "The quick brown fox"
    whole = client.completions.create(model="chat", prompt=prompt, max_tokens=10, temperature=0)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="chat", prompt=prompt, max_tokens=10, temperature=0, stream=True))
    assert streamed == whole.choices[0].text and whole.choices[0].text
    assert whole.usage.prompt_tokens == len(AutoTokenizer.from_pretrained(tiny_chat_model_dir)(prompt)["input_ids"])
    two = client.completions.create(model="chat", prompt=[prompt, "hello"], max_tokens=10, temperature=0)
    assert [c.index for c in two.choices] == [0, 1] and two.choices[0].text == whole.choices[0].text


def test_wrong_or_missing_api_key_gets_401(server):
    for key in ("sk-wrong", ""):
        wrong = openai.OpenAI(base_url=server["base_url"], api_key=key or "x", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            wrong.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=2)
        assert caught.value.status_code == 401
        assert caught.value.body["code"] == "invalid_api_key"
    assert httpx.get(f"{server['base_url']}/models").status_code == 401  # no Authorization header at all


@pytest.mark.parametrize("body, status, message", [
    ('{"model": "tiny", "messages": [', 400, "not valid JSON"),
    ('{"model": "tiny"}', 400, "messages: Field required"),
    ('{"model": "tiny", "messages": [{"role": "robot", "content": "hi"}]}', 400, "messages.0.role"),
    ('{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}', 400, "max_tokens"),
    ('{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}', 400, "context"),
    ('{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 0}', 400, "n: Input should be"),
    ('{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}', 400,
     "set logprobs to true"),
    ('{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "logit_bias": {}}', 400,
     "unsupported parameter 'logit_bias'"),
    ('{"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}', 404, "the model 'gpt-5' does not exist"),
    ('[1, 2]', 400, "valid dictionary"),
])
def test_bad_requests_get_4xx_with_an_openai_error_body(server, body, status, message):
    response = httpx.post(f"{server['base_url']}/chat/completions", content=body,
                          headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"
    assert "Traceback" not in response.text


def test_the_openai_client_raises_its_4xx_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=QUESTION)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="tiny", messages=[])


def test_eight_concurrent_clients_are_batched_with_the_same_answers(server):
    jobs = [(["tiny", "math", "chat"][i % 3], [{"role": "user", "content": f"What is {i} + {3 * i}?"}], 4 + i % 4)
            for i in range(8)]

    def ask(model, messages, max_tokens):
        client = openai.OpenAI(base_url=server["base_url"], api_key=API_KEY, max_retries=0, timeout=120)
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
        return reply.choices[0].message.content, reply.usage.completion_tokens, reply.choices[0].finish_reason

    alone = [ask(*job) for job in jobs]
    logged_before = server["log"].read_text().count("Generating a batch")
    together: dict[int, tuple] = {}
    barrier = threading.Barrier(len(jobs))

    def worker(index):
        barrier.wait()
        together[index] = ask(*jobs[index])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert [together[i] for i in range(len(jobs))] == alone
    # Each row stopped on its own: at its own max_tokens, or at its end-of-turn token.
    assert all(
        tokens == job[2] or (reason == "stop" and tokens < job[2]) for job, (_, tokens, reason) in zip(jobs, alone)
    )
    sizes = [int(line.split("batch of ")[1].split()[0]) for line in server["log"].read_text().splitlines()
             if "Generating a batch of" in line][logged_before:]
    assert sum(sizes) == len(jobs) and max(sizes) > 1, sizes  # fewer generate calls than requests


def test_deploy_refuses_a_second_unnamed_adapter(tiny_chat_model_dir, adapters, capsys):
    from alignkit.cli import main

    assert main(["deploy", "--model", tiny_chat_model_dir, "--adapters", adapters["math"], adapters["chat"]]) == 2
    assert "name all but one adapter as NAME=DIR" in capsys.readouterr().err


def test_sse_lines_are_openai_chunks(server):
    body = {"model": "tiny", "messages": QUESTION, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{server['base_url']}/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1


def test_an_image_part_sent_to_a_text_model_gets_400(client):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", max_tokens=2, messages=[
            {"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}])
    assert caught.value.body["code"] == "image_input_not_supported"
    assert caught.value.body["message"] == ("messages[0].content[1].image_url: the model 'tiny' is a text-only model "
                                            "and takes no images")


def test_an_empty_completion_prompt_starts_from_the_bos_token(client):
    reply = client.completions.create(model="tiny", prompt="", max_tokens=4, temperature=0)
    assert reply.usage.prompt_tokens == 1  # the beginning-of-sequence token alone
    assert reply.usage.completion_tokens <= 4 and reply.choices[0].finish_reason in ("stop", "length")
    two = client.completions.create(model="tiny", prompt=["", "hello"], max_tokens=4, temperature=0)
    assert two.choices[0].text == reply.choices[0].text


def test_the_openapi_spec_names_both_endpoints(server):
    spec = httpx.get(f"{server['base_url'].removesuffix('/v1')}/openapi.json",
                     headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert {"/v1/models", "/v1/chat/completions", "/v1/completions"} <= set(spec["paths"])


def test_n_answers_are_sampled_rows_and_a_seed_repeats_them(client):
    def ask(seed):
        return [c.message.content for c in client.chat.completions.create(
            model="tiny", messages=QUESTION, max_tokens=8, temperature=1.0, n=3, seed=seed).choices]

    first = ask(7)
    assert len(first) == 3 and len(set(first)) > 1, first  # three draws, not one answer copied
    assert ask(7) == first
    assert ask(8) != first
    greedy = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=8, temperature=0, n=2)
    assert [c.index for c in greedy.choices] == [0, 1]
    assert greedy.choices[0].message.content == greedy.choices[1].message.content
    assert greedy.usage.prompt_tokens == client.chat.completions.create(
        model="tiny", messages=QUESTION, max_tokens=8, temperature=0).usage.prompt_tokens  # the prompt counts once


def test_max_completion_tokens_wins_over_max_tokens(client):
    reply = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=10, max_completion_tokens=3,
                                           temperature=0)
    assert reply.usage.completion_tokens == 3 and reply.choices[0].finish_reason == "length"


def reference_logprobs(model_dir: str, prompt_ids: list[int], steps: int):
    """Greedy tokens and the log-softmax of the model's logits at each step, computed here."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=steps, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, eos_token_id=None, pad_token_id=0)
    logprobs = torch.log_softmax(torch.stack(out.logits, 1)[0].float(), -1)  # (steps, V)
    tokens = out.sequences[0, len(prompt_ids):].tolist()
    return tokens, logprobs


def test_chat_logprobs_are_the_models_log_softmax(client, tiny_chat_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    reply = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=6, temperature=0,
                                           logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    prompt_ids = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True, return_dict=True)
    tokens, expected = reference_logprobs(tiny_chat_model_dir, prompt_ids["input_ids"], len(content))
    for step, (entry, token) in enumerate(zip(content, tokens)):
        assert entry.token == tokenizer.decode([token])
        assert abs(entry.logprob - expected[step, token].item()) < 1e-4
        top = expected[step].topk(3)
        assert [t.token for t in entry.top_logprobs] == [tokenizer.decode([i]) for i in top.indices.tolist()]
        assert max(abs(t.logprob - v) for t, v in zip(entry.top_logprobs, top.values.tolist())) < 1e-4
    plain = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=6, temperature=0)
    assert plain.choices[0].logprobs is None
    streamed = list(client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=6, temperature=0,
                                                   logprobs=True, stream=True))
    assert [e.logprob for c in streamed if c.choices and c.choices[0].logprobs
            for e in c.choices[0].logprobs.content] == [e.logprob for e in content]


def test_completion_logprobs_and_streamed_usage(client):
    reply = client.completions.create(model="tiny", prompt=["The quick brown fox", "hello"], max_tokens=5,
                                      temperature=0, logprobs=2, n=2)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    for choice in reply.choices:
        lp = choice.logprobs
        assert "".join(lp.tokens) == choice.text and len(lp.token_logprobs) == len(lp.tokens)
        assert all(len(top) <= 2 and max(top.values()) >= logprob - 1e-6
                   for top, logprob in zip(lp.top_logprobs, lp.token_logprobs))
        assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    chunks = list(client.completions.create(model="tiny", prompt=["The quick brown fox", "hello"], max_tokens=5,
                                            temperature=0, n=2, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == reply.usage.model_dump()
    texts = ["".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i) for i in range(4)]
    assert texts == [c.text for c in reply.choices]


def test_streamed_chat_usage_covers_every_answer(client):
    whole = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=5, temperature=0, n=2)
    chunks = list(client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=5, temperature=0, n=2,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1}


def test_a_vanishing_temperature_decodes_greedily_instead_of_failing(client):
    # The fuzz test's find: temperature 1e-178 made the sampler's probabilities NaN (a 500). As vLLM does,
    # temperatures below 1e-5 decode greedily.
    greedy = client.completions.create(model="tiny", prompt="What is 2 + 3?", max_tokens=6, temperature=0)
    tiny = client.completions.create(model="tiny", prompt="What is 2 + 3?", max_tokens=6, temperature=1e-178, n=2)
    assert [c.text for c in tiny.choices] == [greedy.choices[0].text] * 2
