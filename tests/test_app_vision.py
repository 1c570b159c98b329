"""`alignkit app` with a vision-language model (a tiny random LLaVA, as tests/tiny_vlms.py builds it): the page's
handler given an image answers as alignkit's own generation does with that image, later turns keep earlier
images, and in headless Chromium an uploaded image reaches the model."""

from __future__ import annotations

import time

import pytest
from servers import free_port, start_server
from test_app import browser, needs_browser  # noqa: F401  (the browser fixture)
from tiny_vlms import build_llava, greedy_answer, write_images

from alignkit.commands.app import answer_stream, vision_chat
from alignkit.generation.batch_engine import BatchEngine, SamplingParams

QUESTION = "What is this?"
MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return build_llava(tmp_path_factory.mktemp("app-llava"), init_std=0.3)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("app-pictures"))


@pytest.fixture(scope="module")
def loaded(llava):
    from alignkit.generation.loader import load_for_answers

    return load_for_answers(llava, [], None, "fp32")  # as run_app loads it


def expected(loaded, messages, paths) -> str:
    return greedy_answer(loaded.model, loaded.encoder, messages, paths, max_new_tokens=MAX_NEW_TOKENS)


def test_vision_chat_places_each_image_where_the_page_shows_it():
    history = [{"role": "user", "content": [{"type": "file", "file": {"path": "a.png", "mime_type": "image/png"}},
                                            {"type": "text", "text": "What is this?"}]},
               {"role": "assistant", "content": [{"type": "text", "text": "A square."}]},
               {"role": "user", "content": ("b.png",)}, {"role": "user", "content": "and this?"},  # older gradio
               {"role": "assistant", "content": "A circle."}]
    messages, paths = vision_chat({"text": "Compare.", "files": ["c.png", {"path": "d.png"}]}, history, "Be brief.")
    assert messages == [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "<image>What is this?"},
                        {"role": "assistant", "content": "A square."},
                        {"role": "user", "content": "<image>and this?"},
                        {"role": "assistant", "content": "A circle."},
                        {"role": "user", "content": "<image><image>Compare."}]
    assert paths == ["a.png", "b.png", "c.png", "d.png"]


def test_the_handler_answers_with_the_image_and_keeps_earlier_images(loaded, images):
    assert loaded.vision
    engine = BatchEngine(loaded.model, loaded.encoder).start()
    params = SamplingParams(max_tokens=MAX_NEW_TOKENS)
    try:
        answers = [list(answer_stream(engine, loaded.encoder, {"text": QUESTION, "files": [path]}, [], "", params))[-1]
                   for path in images[:2]]
        assert answers == [expected(loaded, [{"role": "user", "content": "<image>" + QUESTION}], [path])
                           for path in images[:2]]
        assert answers[0] != answers[1]  # the pixels reach the model

        history = [{"role": "user", "content": [{"type": "file", "file": {"path": images[0]}},
                                                {"type": "text", "text": QUESTION}]},
                   {"role": "assistant", "content": [{"type": "text", "text": answers[0]}]}]
        follow_up = list(answer_stream(engine, loaded.encoder, {"text": "And this?", "files": [images[1]]}, history,
                                       "", params))[-1]
        assert follow_up == expected(loaded, [{"role": "user", "content": "<image>" + QUESTION},
                                              {"role": "assistant", "content": answers[0]},
                                              {"role": "user", "content": "<image>And this?"}], images[:2])
        with pytest.raises(RuntimeError, match="image"):  # a file that is no image: the page shows the error
            list(answer_stream(engine, loaded.encoder, {"text": QUESTION, "files": [__file__]}, [], "", params))
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def app_url(llava, tmp_path_factory):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    process = start_server(["app", "--model", llava, "--server_port", str(port), "--dtype", "fp32",
                            "--max_new_tokens", str(MAX_NEW_TOKENS)], tmp_path_factory.mktemp("app") / "app.log",
                           url, {})
    yield url
    process.terminate()
    process.wait(timeout=30)


@needs_browser
def test_an_uploaded_image_reaches_the_model_in_the_page(app_url, browser, loaded, images):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    wanted = expected(loaded, [{"role": "user", "content": "<image>" + QUESTION}], images[1:2])
    browser.get(app_url)
    box = WebDriverWait(browser, 60).until(expected_conditions.element_to_be_clickable(
        (By.CSS_SELECTOR, 'textarea[data-testid="textbox"]')))
    browser.find_element(By.CSS_SELECTOR, 'input[type="file"]').send_keys(images[1])
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".thumbnail-item, img"))
    box.send_keys(QUESTION)
    box.send_keys(Keys.ENTER)
    deadline, last = time.monotonic() + 120, None
    while time.monotonic() < deadline:
        replies = [e.text for e in browser.find_elements(By.CSS_SELECTOR, '[data-testid="bot"]')]
        if replies:
            last = replies[-1]
            if last.split() == wanted.split():
                return
        time.sleep(0.25)
    raise AssertionError(f"reply {last!r} never became {wanted!r}")
