"""ms-swift's agent loss scales (``--loss_scale react|hermes|qwen|alpha_umi``, swift/loss_scale/config/*.json):
per-token loss weights inside an assistant turn, so that a tool call counts more than the prose around it.

Each weighting splits one piece of an answer (ms-swift's RESPONSE context: an assistant message, or a tool-call
block it joined) into parts and weighs them (swift/loss_scale/utils.py calculate_loss_scale):

- keyword weightings (react, qwen, alpha_umi): the text is cut before each keyword; a keyword and the text after
  it up to the next keyword take the keyword's two weights; text before the first keyword weighs 1;
- pattern weightings (hermes): each match of the pattern takes its weight, the text between weighs 1.

A token's loss is multiplied by its weight and the sum divided by the number of trained tokens, not by the sum
of weights (ms-swift's compute_loss). A weight of 0 untrains its tokens (ms-swift labels them -100).

Worked example (react)::

    "Thought: sunny?\\nAction: get_weather\\nAction Input: {'city': 'Paris'}\\nObservation:"
    -> "Thought:" 1, " sunny?\\n" 1, "Action:" 2, " get_weather\\n" 2, "Action Input:" 2, " {'city': 'Paris'}\\n" 2,
       "Observation:" 2   (and what follows it in the same piece, 0)
"""

from __future__ import annotations

import re

from alignkit.data.agent_templates import Part

# ms-swift's config files: keyword → (weight of the keyword, weight of the text after it); pattern → (weight,).
AGENT_WEIGHTINGS: dict[str, dict[str, tuple[float, ...]]] = {
    "react": {"Action:": (2.0, 2.0), "Action Input:": (2.0, 2.0), "Thought:": (1.0, 1.0),
              "Final Answer:": (1.0, 1.0), "Observation:": (2.0, 0.0)},
    "hermes": {"<tool_call>.+?</tool_call>": (2.0,)},
    "qwen": {"✿FUNCTION✿:": (2.0, 2.0), "✿ARGS✿:": (2.0, 2.0), "✿RETURN✿:": (1.0, 1.0), "✿RESULT✿:": (2.0, 0.0)},
    "alpha_umi": {"Action:": (2.0, 2.0), "Action Input:": (2.0, 2.0), "Thought:": (1.0, 1.0),
                  "Final Answer:": (1.0, 1.0), "Observation:": (2.0, 0.0), "Next:": (2.0, 2.0)},
}


def weigh(text: str, weighting: str) -> list[tuple[str, float]]:
    """``text`` cut into (piece, weight) pairs whose pieces join back to ``text`` (empty pieces left out)."""
    table = AGENT_WEIGHTINGS[weighting]
    keywords = [key for key, weights in table.items() if len(weights) == 2]
    if keywords:
        pieces = re.split("|".join(f"({re.escape(key)})" for key in keywords), text)
        pieces = [piece for piece in pieces if piece is not None]
        out = [(pieces[0], 1.0)]  # before the first keyword
        for key, after in zip(pieces[1::2], pieces[2::2]):
            out += [(key, table[key][0]), (after, table[key][1])]
    else:
        patterns = list(table)
        pieces = re.split("|".join(f"({p})" for p in patterns), text, flags=re.DOTALL)
        out = []
        for piece in pieces:
            if piece:
                matched = next((p for p in patterns if re.match(p, piece, re.DOTALL)), None)
                out.append((piece, table[matched][0] if matched is not None else 1.0))
    return [(piece, weight) for piece, weight in out if piece]


def weighted_spans(parts: list[Part], start: int, weighting: str | None) -> list[tuple[int, int, float]]:
    """(first, end, weight) character spans, from ``start``, of a turn's pieces whose weight is not 1: a part
    that is not trained (a tool's result) weighs 0, the others as ``weigh`` cuts them (each part on its own, as
    ms-swift weighs each response context). Example: parts [Part("Action: f\\n"), Part("21\\n", trained=False)],
    start 10, "react" → [(10, 17, 2.0), (17, 20, 2.0), (20, 23, 0.0)]."""
    spans = []
    for part in parts:
        pieces = weigh(part.text, weighting) if part.trained and weighting else [
            (part.text, 1.0 if part.trained else 0.0)]
        for piece, weight in pieces:
            if weight != 1:
                spans.append((start, start + len(piece), weight))
            start += len(piece)
    return spans
