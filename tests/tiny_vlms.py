"""Tiny randomly initialised vision-language models of two families (LLaVA, Idefics3/SmolVLM), each saved with
a processor assembled locally (small image processor + the tiny ChatML tokenizer with image tokens added)."""

from __future__ import annotations

from conftest import build_tiny_tokenizer

# ChatML that renders content parts; `image_marker` is the family's placeholder the processor expands.
VLM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512)
IMAGE_SIZE = 28  # pixels; 14-pixel patches → a 2×2 grid

# Image tokens each image expands to: LLaVA one per patch (4); Idefics3 (2×2 patches) / scale_factor² = 1,
# wrapped as <fake_token_around_image><global-img><image><fake_token_around_image>.
IMAGE_TOKENS = {"llava": 4, "idefics3": 1}


def spread_weights(model, init_std: float | None) -> None:
    """Redraw the linear and embedding weights with a larger std, so that greedy answers depend on the prompt and
    its images rather than repeating one token (needed to tell generations apart)."""
    import torch

    if init_std is None:
        return
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.normal_(module.weight, std=init_std)


def build_llava(path, seed: int = 0, init_std: float | None = None):
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = build_tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=VLM_TEMPLATE)
    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=IMAGE_SIZE, patch_size=14, projection_dim=16),
        text_config=LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id, **TEXT),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    model = LlavaForConditionalGeneration(config)
    spread_weights(model, init_std)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def build_idefics3(path, seed: int = 0, init_std: float | None = None):
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    tokenizer = build_tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [
        "<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]})
    image_processor = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": IMAGE_SIZE},
                                             max_image_size={"longest_edge": IMAGE_SIZE})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=1,
                                  chat_template=VLM_TEMPLATE)
    torch.manual_seed(seed)
    config = Idefics3Config(
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=IMAGE_SIZE, patch_size=14),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, **TEXT),
        scale_factor=2, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    model = Idefics3ForConditionalGeneration(config)
    spread_weights(model, init_std)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


BUILDERS = {"llava": build_llava, "idefics3": build_idefics3}


def write_images(folder, count: int = 3) -> list[str]:
    """Distinct solid-colour PNGs of different sizes; returns their paths."""
    from PIL import Image

    paths = []
    for i in range(count):
        path = folder / f"img{i}.png"
        Image.new("RGB", (30 + 7 * i, 40 - 5 * i), (60 * i % 256, 200 - 50 * i, 30 + 70 * i)).save(path)
        paths.append(str(path))
    return paths


def build_all(tmp_path_factory, prefix: str) -> dict[str, str]:
    """Every family with larger random weights (std 0.3), so greedy answers depend on the prompt and its images."""
    return {name: build(tmp_path_factory.mktemp(f"{prefix}-{name}"), init_std=0.3) for name, build in BUILDERS.items()}


def load_for_generation(model_dir: str, adapters=(), max_length: int = 512):
    """(model, VisionEncoder) of a saved tiny VLM (plus adapters), fp32, as alignkit's inference loads it."""
    from alignkit.vision.encode import VisionEncoder, image_token_id
    from alignkit.vision.model import load_vision_for_inference

    model, processor = load_vision_for_inference(model_dir, list(adapters), None, "fp32")
    return model, VisionEncoder(processor, image_token_id(processor, model.config), max_length=max_length)


def greedy_answer(model, encoder, messages, image_paths, max_new_tokens: int = 8) -> str:
    """alignkit's own greedy answer to ``messages`` with the images at ``image_paths``."""
    from alignkit.generation.answers import generate
    from alignkit.vision.images import load_image

    pictures = [load_image(p, None, "images") for p in image_paths]
    return generate(model, encoder, [encoder.encode_prompt(messages, pictures)],
                                   max_new_tokens=max_new_tokens)[0]
