"""The serving engine's per-row bookkeeping, token by token, with a byte-level toy tokenizer."""

from __future__ import annotations

from alignkit.generation.batch_engine import Delta, Finished, Job, SamplingParams

EOS = 0


class ByteTokenizer:
    """Token t (1..256) is byte t - 1; token 0 is EOS. Decodes like a byte-level BPE: an unfinished UTF-8
    character shows as U+FFFD until its last byte arrives."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(i - 1 for i in ids if i != EOS).decode("utf-8", errors="replace")


def tokens(text: str) -> list[int]:
    return [b + 1 for b in text.encode("utf-8")]


def run(job: Job, ids: list[int]) -> tuple[list[str], Finished | None]:
    for token in ids:
        if job.done:
            break
        job.advance(token, ByteTokenizer(), {EOS})
    events = []
    while not job._events.empty():
        events.append(job._events.get())
    deltas = [e.text for e in events if isinstance(e, Delta)]
    finished = [e for e in events if isinstance(e, Finished)]
    return deltas, (finished[0] if finished else None)


def test_each_token_is_emitted_and_eos_stops_without_being_counted():
    deltas, finished = run(Job([7, 7, 7], SamplingParams(max_tokens=10)), [*tokens("hi!"), EOS, *tokens("junk")])
    assert deltas == ["h", "i", "!"]
    assert finished == Finished("stop", prompt_tokens=3, completion_tokens=3)


def test_max_tokens_ends_the_row_with_length():
    deltas, finished = run(Job([1], SamplingParams(max_tokens=4)), tokens("abcdefgh"))
    assert "".join(deltas) == "abcd" and finished.reason == "length" and finished.completion_tokens == 4


def test_a_stop_string_is_never_streamed_and_a_false_start_is_released():
    # "Ans" could begin the stop string "Answer:"; it is held back, then released when "Anx" rules it out.
    deltas, finished = run(Job([1], SamplingParams(max_tokens=50), stop=("Answer:",)), tokens("So Anx. Answer: 42"))
    assert "".join(deltas) == "So Anx. " and finished.reason == "stop"
    assert deltas[:3] == ["S", "o", " "] and "Anx" in deltas  # "A", "An" held back, released with "x"


def test_a_multibyte_character_is_emitted_whole():
    deltas, _ = run(Job([1], SamplingParams(max_tokens=20)), tokens("é€"))  # 2 + 3 bytes
    assert deltas == ["é", "€"]


def test_a_cancelled_job_finishes_at_its_next_token():
    job = Job([1], SamplingParams(max_tokens=20))
    run(job, tokens("ab"))
    job.cancelled = True
    deltas, finished = run(job, tokens("cd"))
    assert deltas == [] and finished.reason == "cancelled" and finished.completion_tokens == 2
