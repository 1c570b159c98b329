"""`alignkit app`: the answer stream and the conversation it sends, and the page itself in headless Chromium
(Debian's chromium + chromedriver, driven by Selenium): type a message, read the streamed reply, check it
is the model's answer, continue the conversation, take a screenshot."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time

import pytest
from servers import free_port, start_server

from alignkit.commands.app import answer_stream, chat_messages
from alignkit.generation.batch_engine import BatchEngine, SamplingParams

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
MAX_NEW_TOKENS = 8


def needs_browser(test):
    """The page test runs only where Chromium, its driver, gradio and selenium are all installed."""
    missing = [what for what, present in (
        ("chromium (apt-get install chromium; .ci/run installs it)", CHROMIUM),
        ("chromedriver (apt-get install chromium-driver; .ci/run installs it)", CHROMEDRIVER),
        ("gradio (pip install -e '.[serve]')", importlib.util.find_spec("gradio")),
        ("selenium (pip install -e '.[dev]')", importlib.util.find_spec("selenium")),
    ) if not present]
    return pytest.mark.skipif(bool(missing), reason=f"headless browser test needs {', '.join(missing)}")(test)


def test_chat_messages_put_the_system_prompt_first_and_flatten_gradio_contents():
    history = [{"role": "user", "content": [{"type": "text", "text": "2+3?"}]},
               {"role": "assistant", "content": "5", "metadata": None}]
    assert chat_messages("and 4+4?", history, "Be brief.") == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"},
        {"role": "assistant", "content": "5"}, {"role": "user", "content": "and 4+4?"}]
    assert chat_messages("hi", [], "  ") == [{"role": "user", "content": "hi"}]


def test_answer_stream_grows_to_the_models_answer_with_the_system_prompt(tiny_chat_model_dir):
    from alignkit.data.template import ChatEncoder
    from alignkit.generation.answers import generate_answers
    from alignkit.models.load import load_for_inference

    model, tokenizer = load_for_inference(tiny_chat_model_dir, [], None, "fp32")
    encoder = ChatEncoder(tokenizer, max_length=512)
    engine = BatchEngine(model, encoder).start()
    try:
        for system in ("", "Answer in French."):
            pieces = list(answer_stream(engine, encoder, "What is 2 + 2?", [], system, SamplingParams(max_tokens=10)))
            prompt = chat_messages("What is 2 + 2?", [], system)
            assert pieces[-1] == generate_answers(model, encoder, [prompt], max_new_tokens=10)[0]
            assert len(pieces) > 1 and all(b.startswith(a) for a, b in zip(pieces, pieces[1:]))  # it streams
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def app_url(tiny_chat_model_dir, tmp_path_factory):
    port = free_port()
    directory = tmp_path_factory.mktemp("app")
    url = f"http://127.0.0.1:{port}/"
    process = start_server(["app", "--model", tiny_chat_model_dir, "--server_port", str(port), "--dtype", "fp32",
                            "--max_new_tokens", str(MAX_NEW_TOKENS)], directory / "app.log", url, {})
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                     # the page must work offline: no request may leave the machine
                     "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def expected_answer(model_dir: str, conversation: list[dict]) -> str:
    from alignkit.data.template import ChatEncoder
    from alignkit.generation.answers import generate_answers
    from alignkit.models.load import load_for_inference

    model, tokenizer = load_for_inference(model_dir, [], None, "fp32")
    return generate_answers(model, ChatEncoder(tokenizer, max_length=512), [conversation],
                            max_new_tokens=MAX_NEW_TOKENS)[0]


def bot_replies(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [element.text for element in driver.find_elements(By.CSS_SELECTOR, '[data-testid="bot"]')]


def send(driver, text: str, expected_replies: int, wanted: str) -> str:
    """Type ``text``, press Enter, and wait until the newest reply shows ``wanted`` (whitespace aside)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    # The page is rendered by JavaScript after it loads: wait for the message box.
    box = WebDriverWait(driver, 60).until(expected_conditions.element_to_be_clickable(
        (By.CSS_SELECTOR, 'textarea[data-testid="textbox"]')))
    box.send_keys(text)
    box.send_keys(Keys.ENTER)
    deadline, last = time.monotonic() + 120, None
    while time.monotonic() < deadline:
        replies = bot_replies(driver)
        if len(replies) == expected_replies:
            last = replies[-1]
            if last.split() == wanted.split():
                return last
        time.sleep(0.25)
    raise AssertionError(f"reply {last!r} never became {wanted!r}")


@needs_browser
def test_chat_page_streams_the_models_answer_and_keeps_the_history(app_url, browser, tiny_chat_model_dir, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(app_url)
    first = [{"role": "user", "content": "What is 12 + 30?"}]
    answer = expected_answer(tiny_chat_model_dir, first)
    assert answer.strip()
    send(browser, first[0]["content"], 1, answer)

    # The second turn is answered with the first one in the prompt.
    second = [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "And 5 + 6?"}]
    follow_up = expected_answer(tiny_chat_model_dir, second)
    assert follow_up != expected_answer(tiny_chat_model_dir, second[-1:])  # history changes the answer
    send(browser, "And 5 + 6?", 2, follow_up)
    users = [e.text for e in browser.find_elements(By.CSS_SELECTOR, '[data-testid="user"]')]
    assert users == ["What is 12 + 30?", "And 5 + 6?"]

    screenshot = tmp_path / "alignkit-app.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")


def test_serving_commands_without_their_packages_say_what_to_install(monkeypatch, capsys):
    from alignkit.cli import main

    for command, package in (("deploy", "fastapi"), ("app", "gradio")):
        monkeypatch.setitem(sys.modules, package, None)  # as if not installed
        monkeypatch.delitem(sys.modules, f"alignkit.commands.{command}", raising=False)
        assert main([command]) == 2
        assert f"`alignkit {command}` needs {package}: pip install 'alignkit[serve]'" in capsys.readouterr().err


# ------------------------------------------------------------------ the page as a client of a server (--base_url)


@pytest.fixture(scope="module")
def deploy_url(tiny_chat_model_dir, tmp_path_factory):
    port = free_port()
    process = start_server(["deploy", "--model", tiny_chat_model_dir, "--served_model_name", "tiny", "--port",
                            str(port), "--dtype", "fp32", "--api_key", "k3y"],
                           tmp_path_factory.mktemp("deploy") / "deploy.log", f"http://127.0.0.1:{port}/v1/models",
                           {"Authorization": "Bearer k3y"})
    yield f"http://127.0.0.1:{port}/v1"
    process.terminate()
    process.wait(timeout=30)


def test_server_answers_stream_to_the_served_models_answer(deploy_url, tiny_chat_model_dir):
    from openai import OpenAI

    from alignkit.commands.app import final_only, server_answer_stream

    client = OpenAI(base_url=deploy_url, api_key="k3y", max_retries=0)
    question = "What is 12 + 30?"
    answer = expected_answer(tiny_chat_model_dir, [{"role": "user", "content": question}])
    params = SamplingParams(max_tokens=MAX_NEW_TOKENS)
    pieces = list(server_answer_stream(client, "tiny", question, [], "", params))
    assert pieces[-1].split() == answer.split()
    assert len(pieces) > 1 and all(b.startswith(a) for a, b in zip(pieces, pieces[1:]))  # it streams
    whole = list(server_answer_stream(client, "tiny", question, [], "", params, stream=False))
    assert whole == [pieces[-1]]
    assert list(final_only(iter(pieces))) == [pieces[-1]]
    with pytest.raises(RuntimeError, match="the server at .* answered"):  # a wrong key is the server's 401
        list(server_answer_stream(OpenAI(base_url=deploy_url, api_key="wrong", max_retries=0), "tiny", question, [],
                                  "", params))


def test_the_served_model_is_the_servers_first_unless_named(deploy_url):
    from alignkit.commands.app import server_client
    from alignkit.config.commands import AppArguments

    assert server_client(AppArguments(base_url=deploy_url, api_key="k3y"))[1] == "tiny"
    assert server_client(AppArguments(base_url=deploy_url, api_key="k3y", model="other"))[1] == "other"


def test_base_url_with_a_local_adapter_is_refused(capsys):
    from alignkit.cli import main

    assert main(["app", "--base_url", "http://127.0.0.1:9/v1", "--ckpt_dir", "somewhere"]) == 2
    assert "serve them with `alignkit deploy`" in capsys.readouterr().err


@pytest.fixture(scope="module")
def client_app_url(deploy_url, tmp_path_factory):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    process = start_server(["app", "--base_url", deploy_url, "--api_key", "k3y", "--server_port", str(port),
                            "--max_new_tokens", str(MAX_NEW_TOKENS), "--lang", "zh", "--studio_title", "Tiny 聊天"],
                           tmp_path_factory.mktemp("client-app") / "app.log", url, {})
    yield url
    process.terminate()
    process.wait(timeout=30)


@needs_browser
def test_chat_page_as_a_client_of_deploy_shows_the_served_answer(client_app_url, browser, tiny_chat_model_dir):
    browser.get(client_app_url)
    question = [{"role": "user", "content": "What is 12 + 30?"}]
    send(browser, question[0]["content"], 1, expected_answer(tiny_chat_model_dir, question))
    page = browser.page_source
    assert "Tiny 聊天" in page and "系统提示词" in page  # --studio_title, --lang zh
