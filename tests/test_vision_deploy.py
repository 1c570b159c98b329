"""`alignkit deploy` of a tiny random LLaVA, driven with the official `openai` client: image_url parts as data:,
http:// and (inside --allowed_local_media_path) local URLs get the answers alignkit's own generation gives;
unreadable images and local paths outside the allowed folder get 400s; requests with and without images are
batched together (both families) with the answers each gets alone."""

from __future__ import annotations

import base64
import functools
import http.server
import threading
from pathlib import Path

import pytest

openai = pytest.importorskip("openai", reason="the openai client is a test dependency: pip install -e '.[dev]'")
pytest.importorskip("fastapi", reason="deploy needs the serve extra: pip install -e '.[serve]'")
httpx = pytest.importorskip("httpx")

from servers import free_port, start_server  # noqa: E402
from tiny_vlms import BUILDERS, build_all, greedy_answer, load_for_generation, write_images  # noqa: E402

from alignkit.generation.answers import generate  # noqa: E402
from alignkit.vision.images import load_image  # noqa: E402

QUESTION = "What is this?"


@pytest.fixture(scope="module")
def vlms(tmp_path_factory):
    return build_all(tmp_path_factory, "served")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("served-pictures"))


@pytest.fixture(scope="module")
def server(vlms, images, tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("vlm-deploy") / "server.log"
    process = start_server(["deploy", "--model", vlms["llava"], "--served_model_name", "vlm", "--port", str(port),
                            "--dtype", "fp32", "--max_new_tokens", "8",
                            "--allowed_local_media_path", str(Path(images[0]).parent)],
                           log_path, f"http://127.0.0.1:{port}/v1/models", {})
    yield f"http://127.0.0.1:{port}/v1"
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def picture_site(images):
    """The pictures over http on loopback."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(Path(images[0]).parent))
    handler.log_message = lambda *args: None
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{site.server_address[1]}"
    site.shutdown()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server, api_key="none", max_retries=0, timeout=120)


def expected_answer(model_dir, image_paths, text=QUESTION, max_new_tokens=8) -> str:
    model, encoder = load_for_generation(model_dir)
    messages = [{"role": "user", "content": "<image>" * len(image_paths) + text}]
    return greedy_answer(model, encoder, messages, image_paths, max_new_tokens=max_new_tokens)


def data_url(path: str) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def ask(client, *urls: str, text: str = QUESTION, **kwargs):
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in urls] + [{"type": "text", "text": text}]
    return client.chat.completions.create(model="vlm", messages=[{"role": "user", "content": parts}], max_tokens=8,
                                          temperature=0, **kwargs)


def test_image_parts_as_data_http_and_local_urls_get_alignkits_answer(client, vlms, images, picture_site):
    expected = expected_answer(vlms["llava"], images[:1])
    for url in (data_url(images[0]), f"{picture_site}/{Path(images[0]).name}", images[0], f"file://{images[0]}"):
        reply = ask(client, url)
        assert reply.choices[0].message.content == expected, url
    # Four image tokens (LLaVA, 2×2 patches) count as prompt tokens; another image gives another answer.
    assert ask(client, data_url(images[1])).choices[0].message.content != expected
    two = ask(client, data_url(images[0]), data_url(images[1]))
    assert two.choices[0].message.content == expected_answer(vlms["llava"], images[:2])
    assert two.usage.prompt_tokens == reply.usage.prompt_tokens + 4


def test_streaming_with_an_image_equals_the_whole_answer(client, images):
    whole = ask(client, data_url(images[2])).choices[0].message.content
    chunks = ask(client, data_url(images[2]), stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole


@pytest.mark.parametrize("url, message", [
    ("data:image/png;base64,@@@", "messages[0].content[0].image_url': invalid base64 image data"),
    ("data:image/png;base64," + base64.b64encode(b"not a picture").decode(),
     "messages[0].content[0].image_url': cannot decode the image"),
    ("http://127.0.0.1:9/cat.png", "messages[0].content[0].image_url': cannot download image http://127.0.0.1:9"),
    ("/etc/hostname", "messages[0].content[0].image_url: /etc/hostname is outside --allowed_local_media_path"),
])
def test_unreadable_or_forbidden_images_get_400(client, url, message):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, url)
    assert message in caught.value.body["message"]
    assert caught.value.body["param"] == "messages[0].content[0].image_url"


def test_placeholder_text_that_does_not_match_the_image_parts_gets_400(client, images):
    with pytest.raises(openai.BadRequestError, match="placeholders but the row has 1 images"):
        ask(client, data_url(images[0]), text="<image> and <image>?")


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_requests_with_and_without_images_share_a_batch_with_their_alone_answers(vlms, images, family):
    from alignkit.generation.batch_engine import BatchEngine, Delta, SamplingParams

    model, encoder = load_for_generation(vlms[family])
    prompts = [encoder.encode_prompt([{"role": "user", "content": f"<image>{QUESTION}"}],
                                     [load_image(images[0], None, "images")]),
               encoder.encode_prompt([{"role": "user", "content": "Hello"}], []),
               encoder.encode_prompt([{"role": "user", "content": "<image> and <image>"}],
                                     [load_image(p, None, "images") for p in images[1:3]])]
    alone = [generate(model, encoder, [p], max_new_tokens=6)[0] for p in prompts]
    engine = BatchEngine(model, encoder, batch_wait_s=0.5)
    jobs = [engine.submit(p.input_ids, SamplingParams(max_tokens=6), pixels=p.pixels) for p in prompts]
    engine.start()
    try:
        answers = ["".join(e.text for e in job.events() if isinstance(e, Delta)) for job in jobs]
    finally:
        engine.stop()
    assert engine.batch_sizes == [3]
    assert answers == alone
