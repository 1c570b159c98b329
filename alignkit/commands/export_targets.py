"""Where `alignkit export` also sends its result: an Ollama Modelfile (--to_ollama) and the Hugging Face Hub
(--push_to_hub)."""

from __future__ import annotations

import logging
from pathlib import Path

from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")

SYSTEM, PROMPT = "\x00SYSTEM\x00", "\x00PROMPT\x00"  # markers that no chat template writes itself


def write_modelfile(directory: Path, weights: Path, tokenizer) -> Path:
    """An Ollama Modelfile beside the exported weights: ``FROM`` them, the chat template as Ollama's Go
    template (rendered from the model's own template with marker messages, as ms-swift writes it from its
    template parts), and every end-of-turn string as a ``stop`` parameter."""
    from alignkit.data.template import ChatEncoder

    encoder = ChatEncoder(tokenizer, max_length=1 << 20)
    with_system = encoder.render([{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}],
                                 generation_prompt=True)
    without = encoder.render([{"role": "user", "content": PROMPT}], generation_prompt=True)
    if SYSTEM not in with_system or PROMPT not in without:
        raise AlignkitError("--to_ollama: the chat template does not show the system prompt or the user message "
                            "where alignkit can find them; write the Modelfile's TEMPLATE by hand")
    system_head, after = with_system.split(PROMPT)
    head = without.split(PROMPT)[0]
    stops = [tokenizer.decode([i]) for i in encoder.stop_ids if i is not None]  # the template's, else EOS
    template = ("{{ if .System }}" + system_head.replace(SYSTEM, "{{ .System }}") + "{{ else }}" + head + "{{ end }}"
                + "{{ .Prompt }}" + after + "{{ .Response }}" + (stops[0] if stops else ""))
    lines = [f"FROM {weights.resolve()}", f'TEMPLATE """{template}"""']
    lines += [f'PARAMETER stop "{stop}"' for stop in dict.fromkeys(stops)]
    path = directory / "Modelfile"
    path.write_text("\n".join(lines) + "\n")
    logger.info("Wrote %s: `ollama create NAME -f %s`", path, path)
    return path


