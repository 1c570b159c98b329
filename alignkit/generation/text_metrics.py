"""ROUGE and BLEU of generated answers against reference answers, as ms-swift computes them for
``--predict_with_generate`` (its ``swift/metrics/nlg.py:compute_rouge_bleu``), with the packages it uses:
jieba splits both texts into words (Chinese word by word, other text at spaces and punctuation), the ``rouge``
package scores ROUGE-1, ROUGE-2 and ROUGE-L (F1), nltk scores sentence BLEU-4 with smoothing method 3.
Each metric is the mean over the answer-reference pairs, × 100, rounded to 6 places; a pair whose answer
or reference has no word is left out (0 when none is left), as is one whose text is only full stops, where
the rouge package finds no sentence and raises (ms-swift's evaluation would stop there).

The ``rouge`` package counts n-grams as sets (a repeated n-gram once) and ROUGE-L as the union LCS over
sentences split at ".". Worked example, answer "the cat sat on the mat", reference "the cat is on the mat"::

    ROUGE-1: words {the cat sat on mat} vs {the cat is on mat}: 4 of 5 each way, F1 0.8 -> 80.0
    ROUGE-2: 3 of 5 bigrams (the cat, on the, the mat) -> 60.0
    ROUGE-L: LCS "the cat on the mat" as a set {the cat on mat}: 4 of 5 distinct words -> 80.0
    BLEU-4:  p1..p4 = 5/6, 3/5, 1/4, 0/3 -> 1/(2·3) (method 3), brevity 1: (1/48)^(1/4) -> 37.991784
"""

from __future__ import annotations

import logging

from alignkit.errors import AlignkitError

METRICS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")
PACKAGES = {"jieba": "jieba", "nltk": "nltk", "rouge": "rouge"}  # module -> pip name


def check_available() -> None:
    """Stop before any loading when the packages the metrics need are missing."""
    import importlib.util

    missing = [pip for module, pip in PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise AlignkitError(f"--predict_with_generate scores answers with ms-swift's ROUGE/BLEU, which need "
                            f"{', '.join(missing)}: pip install {' '.join(missing)} (or alignkit[nlg])")


def words(text: str) -> list[str]:
    """jieba's words of ``text``, spaces stripped and empty pieces dropped (ms-swift's tokenisation)."""
    import jieba

    return [w.strip(" ") for w in jieba.cut(text) if w.strip(" ")]


def rouge_bleu(answers: list[str], references: list[str]) -> dict[str, float]:
    """{"rouge-1", "rouge-2", "rouge-l", "bleu-4"}: means over the pairs × 100 (module docstring)."""
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge import Rouge

    jieba.setLogLevel(logging.WARNING)  # not its "Building prefix dict" lines at every first use
    sums, count = dict.fromkeys(METRICS, 0.0), 0
    for answer, reference in zip(answers, references, strict=True):
        hypothesis, truth = words(answer), words(reference)
        if not hypothesis or not truth:
            continue
        try:
            scores = Rouge().get_scores(" ".join(hypothesis), " ".join(truth))[0]
        except ValueError:  # only "." in a text: no sentence is left to score, so the pair counts as empty
            continue
        for key in ("rouge-1", "rouge-2", "rouge-l"):
            sums[key] += scores[key]["f"]
        sums["bleu-4"] += sentence_bleu([truth], hypothesis, smoothing_function=SmoothingFunction().method3)
        count += 1
    return {key: round(total / count * 100, 6) if count else 0.0 for key, total in sums.items()}
