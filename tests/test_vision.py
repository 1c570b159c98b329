"""Vision-language preference training on tiny random VLMs of two families (LLaVA, Idefics3): image loading
errors, exact image-token counts and labels, pixel collation, freeze flags and LoRA targets, over-long rows,
and DPO (LoRA and full, step-1 loss = ln 2) plus the other objectives end to end."""

import base64
import json
import math
from pathlib import Path

import pytest
import torch
from tiny_vlms import BUILDERS, IMAGE_TOKENS, write_images

from alignkit.cli import main
from alignkit.data.rows import PreferenceRow, RowSource
from alignkit.data.template import IGNORE_INDEX
from alignkit.errors import DataError
from alignkit.models.logprobs import forward_logps
from alignkit.vision.collate import VisionPairCollator
from alignkit.vision.encode import VisionEncoder, encode_vision_rows, image_token_id
from alignkit.vision.images import load_image
from alignkit.vision.model import load_processor, load_vision_model, part_of, vision_lora_targets

FAMILIES = sorted(BUILDERS)


@pytest.fixture(scope="session")
def vlm_dirs(tmp_path_factory):
    return {name: build(tmp_path_factory.mktemp(f"tiny-{name}")) for name, build in BUILDERS.items()}


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"))


def encoder_for(model_dir, **kw):
    processor = load_processor(model_dir)
    model = load_vision_model(model_dir)
    return VisionEncoder(processor, image_token_id(processor, model.config), max_length=kw.pop("max_length", 256),
                         **kw), model


def pair(content, images, source_row=1, rejected_images=None, chosen="5", rejected="6 6"):
    extras = {"images": images}
    if rejected_images is not None:
        extras["rejected_images"] = rejected_images
    return PreferenceRow([{"role": "user", "content": content}], [{"role": "assistant", "content": chosen}],
                         [{"role": "assistant", "content": rejected}], source=RowSource("pairs.jsonl", source_row),
                         extras=extras)


# ------------------------------------------------------------------ images


def test_images_load_from_path_base64_data_url_and_bytes(images):
    raw = Path(images[0]).read_bytes()
    b64 = base64.b64encode(raw).decode()
    reference = load_image(images[0], None, "images[0]")
    for item in (f"data:image/png;base64,{b64}", b64, raw, {"bytes": raw, "path": None}, {"path": images[0]}):
        assert list(load_image(item, None, "images[0]").getdata()) == list(reference.getdata())
    # A relative path is looked up next to the data file.
    relative = load_image(Path(images[0]).name, RowSource(str(Path(images[0]).parent / "d.jsonl"), 1), "images[0]")
    assert relative.size == reference.size == (30, 40)


@pytest.mark.parametrize("item, message", [
    ("nope.png", "pairs.jsonl, row 4, field 'images[0]': image file 'nope.png' not found"),
    ("data:image/png;base64,@@@", "pairs.jsonl, row 4, field 'images[0]': invalid base64 image data"),
    (b"not an image", "pairs.jsonl, row 4, field 'images[0]': cannot decode the image"),
    ("http://127.0.0.1:9/cat.png", "pairs.jsonl, row 4, field 'images[0]': cannot download image http://127.0.0.1:9"),
])
def test_unreadable_images_are_row_errors(item, message):
    with pytest.raises(DataError) as caught:
        load_image(item, RowSource("pairs.jsonl", 4), "images[0]")
    assert str(caught.value).startswith(message)


def test_downloads_are_capped(images, monkeypatch):
    """An http(s) image is read up to MAX_DOWNLOAD_BYTES: under it the picture loads, over it a row error."""
    import functools
    import http.server
    import threading

    from alignkit.vision import images as image_module

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(Path(images[0]).parent))
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{site.server_address[1]}/{Path(images[0]).name}"
    try:
        size = Path(images[0]).stat().st_size
        monkeypatch.setattr(image_module, "MAX_DOWNLOAD_BYTES", size)
        assert load_image(url, None, "images[0]").size == (30, 40)
        monkeypatch.setattr(image_module, "MAX_DOWNLOAD_BYTES", size - 1)
        with pytest.raises(DataError, match="row 4, field 'images\\[0\\]': image .* is larger than"):
            load_image(url, RowSource("pairs.jsonl", 4), "images[0]")
    finally:
        site.shutdown()


# ------------------------------------------------------------------ encoding


@pytest.mark.parametrize("family", FAMILIES)
def test_image_tokens_match_features_and_labels_are_the_answer(vlm_dirs, images, family):
    encoder, model = encoder_for(vlm_dirs[family])
    tokenizer = encoder.processor.tokenizer
    chosen, rejected = encoder.encode_pair(pair("two <image> and <image>: what?", images[:2]))
    for sequence, answer in ((chosen, "5"), (rejected, "6 6")):
        assert sequence.image_tokens == 2 * IMAGE_TOKENS[family]
        assert sequence.input_ids.count(encoder.image_token) == sequence.image_tokens
        # The model's own image features (LLaVA lists them per image, Idefics3 per sequence): one per image token.
        features = model.model.get_image_features(**sequence.pixels).pooler_output
        assert sum(f.shape[0] for f in features) == sequence.image_tokens
        trained = [label for label in sequence.labels if label != IGNORE_INDEX]
        first = sequence.labels.index(trained[0])
        assert all(label == IGNORE_INDEX for label in sequence.labels[:first])
        assert sequence.labels[first:] == sequence.input_ids[first:]
        assert tokenizer.decode(trained) == f"{answer}<|im_end|>\n"
        assert encoder.image_token not in trained
    assert torch.equal(chosen.pixels["pixel_values"], rejected.pixels["pixel_values"])


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_without_placeholder_get_images_first_and_rejected_images_differ(vlm_dirs, images, family):
    encoder, _ = encoder_for(vlm_dirs[family])
    chosen, rejected = encoder.encode_pair(pair("what?", images[:1], rejected_images=images[2:3]))
    text = encoder.processor.tokenizer.decode(chosen.input_ids)
    assert text.index("<image>") < text.index("what?")
    assert chosen.image_tokens == rejected.image_tokens == IMAGE_TOKENS[family]
    assert not torch.equal(chosen.pixels["pixel_values"], rejected.pixels["pixel_values"])


def test_placeholder_count_must_match_images(vlm_dirs, images):
    encoder, _ = encoder_for(vlm_dirs["llava"])
    with pytest.raises(DataError, match=r"pairs.jsonl, row 7, field 'messages': the messages hold 2 '<image>' "
                                        r"placeholders but the row has 1 images"):
        encoder.encode_pair(pair("<image><image>", images[:1], source_row=7))


@pytest.mark.parametrize("family", FAMILIES)
def test_over_long_rows_are_refused_or_dropped_never_cut(vlm_dirs, images, family):
    raising, _ = encoder_for(vlm_dirs[family], max_length=20, truncation_strategy="raise")
    with pytest.raises(DataError, match=r"pairs.jsonl, row 3: \d+ tokens \(prompt \d+, of which "
                                        rf"{IMAGE_TOKENS[family]} image tokens\) exceed --max_length 20; a "
                                        "vision-language model's rows are never truncated"):
        raising.encode_pair(pair("<image>what?", images[:1], source_row=3))
    for strategy in ("delete", "left", "right"):
        dropping, _ = encoder_for(vlm_dirs[family], max_length=30, truncation_strategy=strategy)
        short = PreferenceRow([{"role": "user", "content": "hi"}], [{"role": "assistant", "content": "5"}],
                              [{"role": "assistant", "content": "6"}], extras={})
        items, dropped = encode_vision_rows(dropping, [pair("<image>what?", images[:1]), short])
        assert dropped == 1 and [i for i, _ in items] == [1]


# ------------------------------------------------------------------ batching and forward


def test_idefics3_batches_pad_missing_images_with_zero_images_the_model_skips(vlm_dirs, images):
    encoder, model = encoder_for(vlm_dirs["idefics3"])
    one, two = pair("<image>a", images[:1]), pair("<image><image>b", images[1:3])
    batch = VisionPairCollator(encoder.processor.tokenizer.pad_token_id)(
        [(0, encoder.encode_pair(one)), (1, encoder.encode_pair(two))])
    assert batch.model_inputs["pixel_values"].shape == (4, 2, 3, 28, 28)  # chosen 0, chosen 1, rejected 0, rejected 1
    assert batch.model_inputs["pixel_values"][0, 1].abs().sum() == 0
    # Each pair's log-probs in the padded batch equal those of the pair alone.
    together, _ = forward_logps(model, batch)
    alone, _ = forward_logps(model, VisionPairCollator(encoder.processor.tokenizer.pad_token_id)(
        [(0, encoder.encode_pair(two))]))
    assert together[[1, 3]].tolist() == pytest.approx(alone.tolist(), abs=1e-4)


def count_encoded_images(model, family) -> list[int]:
    """Records how many images each call of the vision encoder encodes."""
    tower = model.model.vision_tower if family == "llava" else model.model.vision_model
    seen = []
    tower.register_forward_pre_hook(lambda module, args, kwargs: seen.append(
        (args[0] if args else kwargs["pixel_values"]).shape[0]), with_kwargs=True)
    return seen


@pytest.mark.parametrize("family", FAMILIES)
def test_a_pair_sharing_its_images_runs_the_vision_encoder_once_with_the_same_logps_and_grads(vlm_dirs, images,
                                                                                             family):
    from alignkit.vision.shared_images import enable_shared_images

    encoder, model = encoder_for(vlm_dirs[family])
    assert enable_shared_images(model)
    seen = count_encoded_images(model, family)
    items = [(0, encoder.encode_pair(pair("<image>a", images[:1]))),
             (1, encoder.encode_pair(pair("<image><image>b", images[1:3])))]
    pad = encoder.processor.tokenizer.pad_token_id
    results = {}
    for share in (True, False):
        batch = VisionPairCollator(pad, share_images=share)(items)
        assert list(batch.model_inputs) == (
            ["shared_pixels"]
            if share
            else ["pixel_values"] + (["pixel_attention_mask"] if family == "idefics3" else [])
        )
        model.zero_grad()
        logps, _ = forward_logps(model, batch)
        logps.sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if part_of(n) == "vit" and p.grad is not None}
        results[share] = logps.detach(), grads
    # Three images in the two pairs: encoded once each when shared, twice (chosen and rejected) when not.
    assert seen == [3, 6]
    assert results[True][0].tolist() == pytest.approx(results[False][0].tolist(), abs=1e-5)
    assert results[True][1] and results[True][1].keys() == results[False][1].keys()
    for name, grad in results[True][1].items():
        assert torch.allclose(grad, results[False][1][name], atol=1e-6, rtol=1e-4), name


def test_rejected_images_that_differ_keep_the_unshared_path(vlm_dirs, images):
    from alignkit.vision.shared_images import enable_shared_images

    encoder, model = encoder_for(vlm_dirs["llava"])
    enable_shared_images(model)
    seen = count_encoded_images(model, "llava")
    collate = VisionPairCollator(encoder.processor.tokenizer.pad_token_id, share_images=True)
    shared = encoder.encode_pair(pair("<image>a", images[:1]))
    different = encoder.encode_pair(pair("<image>b", images[1:2], rejected_images=images[2:3]))
    batch = collate([(0, shared), (1, different)])  # one pair with other rejected images: the batch is not shared
    assert list(batch.model_inputs) == ["pixel_values"] and batch.model_inputs["pixel_values"].shape[0] == 4
    forward_logps(model, batch)
    assert seen == [4]
    assert collate([(0, shared)]).model_inputs.keys() == {"shared_pixels"}


# ------------------------------------------------------------------ parameters that train


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_default_targets_the_language_model_and_all_adds_the_rest(vlm_dirs, family):
    model = load_vision_model(vlm_dirs[family])
    default = vision_lora_targets(model, ["DEFAULT"], {"vit", "aligner"})
    assert default and {part_of(n) for n in default} == {"llm"}
    assert {n.split(".")[-1] for n in default} == {"q_proj", "k_proj", "v_proj"}
    every = vision_lora_targets(model, ["ALL"], set())
    assert {part_of(n) for n in every} == {"llm", "vit", "aligner"}
    assert {part_of(n) for n in vision_lora_targets(model, ["ALL"], {"vit", "aligner"})} == {"llm"}


# ------------------------------------------------------------------ end to end


def write_dataset(folder: Path, images: list[str]) -> str:
    """ms-swift rows: `<image>` in the user turn, `images` relative to the file, one row with rejected_images."""
    for path in images:
        (folder / Path(path).name).write_bytes(Path(path).read_bytes())
    names = [Path(p).name for p in images]
    rows = []
    for i in range(4):
        row = {"messages": [{"role": "user", "content": f"<image>What is {i} + 1?"},
                            {"role": "assistant", "content": f"Answer: {i + 1}"}],
               "rejected_response": f"Answer: {i + 2}", "images": [names[i % len(names)]]}
        if i == 3:
            row["rejected_images"] = [names[0]]
        rows.append(row)
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run_rlhf(model_dir, folder: Path, images, rlhf_type: str, *flags: str) -> list[dict]:
    data = write_dataset(folder, images)
    out = folder / "out"
    assert main(["rlhf", "--rlhf_type", rlhf_type, "--model", model_dir, "--dataset", data, "--max_steps", "2",
                 "--batch_size", "2", "--logging_steps", "1", "--learning_rate", "1e-2", "--output_dir", str(out),
                 "--dtype", "fp32", "--report_to", "none", "--dataset_shuffle", "false", "--save_steps", "2",
                 *flags]) == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()], run_dir


@pytest.mark.parametrize("train_type", ["lora", "full"])
@pytest.mark.parametrize("family", FAMILIES)
def test_dpo_step_one_loss_is_ln2_and_training_moves_the_model(vlm_dirs, images, tmp_path, family, train_type):
    logged, run_dir = run_rlhf(vlm_dirs[family], tmp_path, images, "dpo", "--train_type", train_type)
    steps = [r for r in logged if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert math.isfinite(steps[1]["loss"]) and steps[1]["loss"] != pytest.approx(math.log(2), abs=1e-6)
    checkpoint = run_dir / "checkpoint-2"
    assert (checkpoint / "processor_config.json").is_file() or (checkpoint / "preprocessor_config.json").is_file()
    if train_type == "full":
        from safetensors.torch import load_file

        trained, initial = load_file(checkpoint / "model.safetensors"), load_file(Path(vlm_dirs[family]) /
                                                                                  "model.safetensors")
        changed = {part_of(k) for k in initial if not torch.equal(initial[k], trained[k])}
        assert changed == {"llm"}  # --freeze_vit and --freeze_aligner default to true


@pytest.mark.parametrize("rlhf_type", ["orpo", "cpo", "simpo", "kto", "rm"])
def test_other_objectives_train_on_a_vlm(vlm_dirs, images, tmp_path, rlhf_type):
    logged, _ = run_rlhf(vlm_dirs["llava"], tmp_path, images, rlhf_type)
    assert all(math.isfinite(r["loss"]) for r in logged if "loss" in r)
    if rlhf_type == "kto":  # policy = reference at step 1: KL 0, rewards 0, loss = (1 - σ(0)) = 0.5
        assert logged[0]["loss"] == pytest.approx(0.5, abs=1e-5)


def test_missing_image_in_the_data_names_the_row(vlm_dirs, images, tmp_path, capsys):
    data = write_dataset(tmp_path, images)
    rows = Path(data).read_text().splitlines()
    broken = json.loads(rows[1])
    broken["images"] = ["gone.png"]
    rows[1] = json.dumps(broken)
    Path(data).write_text("\n".join(rows) + "\n")
    code = main(["rlhf", "--model", vlm_dirs["llava"], "--dataset", data, "--max_steps", "1",
                 "--output_dir", str(tmp_path / "out"), "--report_to", "none"])
    assert code == 2
    assert "row 2, field 'images[0]': image file 'gone.png' not found" in capsys.readouterr().err


def test_trl_conversational_rows_with_image_parts_train(vlm_dirs, images, tmp_path):
    # TRL's vision format: content parts with {"type": "image"}, the image in the `images` column.
    (tmp_path / "a.png").write_bytes(Path(images[0]).read_bytes())
    row = {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
           "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "red"}]}],
           "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "blue"}]}],
           "images": ["a.png"]}
    data = tmp_path / "trl.jsonl"
    data.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    from alignkit.data.loading import load_dataset_spec

    (loaded, _) = load_dataset_spec(str(data), "preference", seed=0)
    assert loaded.prompt == [{"role": "user", "content": "<image>Colour?"}] and loaded.extras["images"] == ["a.png"]
    encoder, _ = encoder_for(vlm_dirs["llava"])
    chosen, _ = encoder.encode_pair(loaded)
    assert chosen.image_tokens == IMAGE_TOKENS["llava"]


def test_freeze_flags_choose_what_full_training_changes(vlm_dirs, images, tmp_path):
    from safetensors.torch import load_file

    _, run_dir = run_rlhf(vlm_dirs["llava"], tmp_path, images, "dpo", "--train_type", "full", "--freeze_vit", "false",
                          "--freeze_llm", "true")
    trained = load_file(run_dir / "checkpoint-2" / "model.safetensors")
    initial = load_file(Path(vlm_dirs["llava"]) / "model.safetensors")
    assert {part_of(k) for k in initial if not torch.equal(initial[k], trained[k])} == {"vit"}


def test_resume_of_a_vlm_run_equals_the_uninterrupted_run(vlm_dirs, images, tmp_path):
    import shutil

    data = write_dataset(tmp_path, images)
    flags = ["rlhf", "--model", vlm_dirs["llava"], "--dataset", data, "--max_steps", "3", "--batch_size", "1",
             "--logging_steps", "1", "--learning_rate", "1e-2", "--dtype", "fp32", "--report_to", "none",
             "--save_steps", "1", "--output_dir", str(tmp_path / "out")]
    assert main(flags) == 0
    (run_dir,) = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]

    def losses():
        lines = (run_dir / "logging.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]

    uninterrupted = losses()
    shutil.rmtree(run_dir / "checkpoint-3")
    shutil.rmtree(run_dir / "checkpoint-2")
    assert main([*flags, "--resume_from_checkpoint", str(run_dir / "checkpoint-1")]) == 0
    assert losses() == uninterrupted and len(uninterrupted) == 3


def test_dummy_trains_the_vlm_as_loaded_and_lisa_and_llamapro_are_text_only(vlm_dirs, images, tmp_path, capsys):
    from safetensors.torch import load_file

    # ms-swift's dummy tuner applies no --freeze_* (freeze_vit and freeze_aligner default to true for full).
    _, run_dir = run_rlhf(vlm_dirs["llava"], tmp_path, images, "dpo", "--train_type", "dummy")
    trained = load_file(run_dir / "checkpoint-2" / "model.safetensors")
    initial = load_file(Path(vlm_dirs["llava"]) / "model.safetensors")
    assert {part_of(k) for k in initial if not torch.equal(initial[k], trained[k])} == {"vit", "aligner", "llm"}
    (tmp_path / "refused").mkdir()
    data = write_dataset(tmp_path / "refused", images)
    for flags in (["--train_type", "llamapro"], ["--train_type", "full", "--lisa_activated_layers", "1"]):
        assert main(["rlhf", "--rlhf_type", "dpo", "--model", vlm_dirs["llava"], "--dataset", data, "--output_dir",
                     str(tmp_path / "refused" / "out"), "--report_to", "none", *flags]) == 2
        assert "text models only" in capsys.readouterr().err
