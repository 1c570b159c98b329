"""Packed rows for every kind of attention: the subtree intervals behind the mask, flex_attention's block masks
(built without an L × L tensor), flash attention's varlen inputs (position ids alone), and which of them a
run picks on a GPU. Each path gives the padded path's log-probs (and gradients, where the path runs backward
on a CPU) to 1e-5 in fp32."""

import pytest
import torch
from test_packing import encoded, pair_items

from alignkit.config.run import RunArguments
from alignkit.data.collate import PairCollator
from alignkit.models.logprobs import forward_logps
from alignkit.models.packing import FLEX_BLOCK, flex_block_mask, pack, packed_forward_logps, token_logps
from alignkit.training import speedups


def long_pairs(n=6, seed=0):
    """Pairs whose rows span several 128-token tiles: shared prompts, a system prompt common to all."""
    generator = torch.Generator().manual_seed(seed)
    system = torch.randint(3, 300, (40,), generator=generator).tolist()
    items = []
    for i in range(n):
        prompt = system + torch.randint(3, 300, (60 + 17 * i,), generator=generator).tolist()
        chosen = torch.randint(3, 300, (20 + 5 * i,), generator=generator).tolist()
        rejected = chosen[: i % 3] + torch.randint(3, 300, (30,), generator=generator).tolist()
        items.append((i, (encoded(prompt + chosen, len(prompt)), encoded(prompt + rejected, len(prompt)))))
    return items


def dense_from_block_mask(block_mask, ends: torch.Tensor) -> torch.Tensor:
    """What a block mask lets through, element by element: full tiles wholly, partial tiles by its mask_mod."""
    rows, length = ends.shape
    tiles = block_mask.kv_num_blocks.shape[-1]
    out = torch.zeros(rows, tiles * FLEX_BLOCK, tiles * FLEX_BLOCK, dtype=torch.bool)
    q = torch.arange(tiles * FLEX_BLOCK).view(-1, 1)
    k = torch.arange(tiles * FLEX_BLOCK).view(1, -1)
    for r in range(rows):
        element = block_mask.mask_mod(torch.tensor(r), 0, q, k)  # (T·B, T·B)
        for i in range(tiles):
            rows_i = slice(i * FLEX_BLOCK, (i + 1) * FLEX_BLOCK)
            for counts, indices, whole in ((block_mask.kv_num_blocks, block_mask.kv_indices, False),
                                           (block_mask.full_kv_num_blocks, block_mask.full_kv_indices, True)):
                for j in indices[r, 0, i, : counts[r, 0, i]].tolist():
                    cols = slice(j * FLEX_BLOCK, (j + 1) * FLEX_BLOCK)
                    assert not (whole and not element[rows_i, cols].all()), "a full tile hides a masked entry"
                    assert element[rows_i, cols].any(), "a listed tile lets nothing through"
                    out[r, rows_i, cols] = True if whole else element[rows_i, cols]
    return out[:, :length, :length]


@pytest.mark.parametrize("share_prefixes", [True, False])
def test_the_mask_is_each_tokens_ancestors_and_the_block_mask_says_the_same(share_prefixes):
    batch = PairCollator(0)(long_pairs())
    packed = pack(batch, share_prefixes=share_prefixes, row_tokens=700)
    assert packed.input_ids.shape[1] > (3 if share_prefixes else 1) * FLEX_BLOCK  # several tiles, a ragged last
    mask = packed.attention_mask[:, 0]  # (R, L, L)
    # Each token sees exactly the tokens on its path from the root: position p sees p + 1 tokens.
    real = packed.input_ids != 0
    assert (mask.sum(-1)[real] == packed.position_ids[real] + 1).all()
    block_mask = flex_block_mask(packed.ends)
    assert block_mask.shape == (mask.shape[0], 1, mask.shape[1], mask.shape[2])
    assert torch.equal(dense_from_block_mask(block_mask, packed.ends), mask)


def test_the_block_mask_costs_a_small_fraction_of_the_dense_mask():
    """A long packed row: the dense mask holds L² booleans; the block mask holds the intervals (L) and
    per-tile tables ((L/128)², as flex_attention's own causal masks do): at 16k tokens 0.25 MiB against
    256 MiB, and the gap widens with L."""
    sizes = {}
    for length in (2048, 4096, 8192, 16384):
        ends = ((torch.arange(length) // 512 + 1) * 512).unsqueeze(0)  # one row of 512-token sequences
        block_mask = flex_block_mask(ends)
        sizes[length] = sum(t.numel() * t.element_size() for t in (
            ends, block_mask.kv_num_blocks, block_mask.kv_indices, block_mask.full_kv_num_blocks,
            block_mask.full_kv_indices))
    assert sizes[16384] < 300 * 1024
    for length, size in sizes.items():
        assert size * (1000 if length == 16384 else 200) < length * length  # the dense boolean mask's bytes


def eager_flex(monkeypatch):
    """transformers compiles flex_attention on first use; on a CPU inductor's C++ build is slow and fails on
    some shapes here, and flex_attention has no CPU backward: the tests run its eager form, forward only."""
    from torch.nn.attention.flex_attention import flex_attention
    from transformers.integrations import flex_attention as integration

    monkeypatch.setattr(integration, "compile_friendly_flex_attention",
                        lambda query, key, value, training=False, **kwargs: flex_attention(query, key, value, **kwargs))


@pytest.mark.parametrize("share_prefixes", [True, False])
def test_flex_attention_packed_logps_equal_padded(tiny_model_dir, monkeypatch, share_prefixes):
    from transformers import AutoModelForCausalLM

    eager_flex(monkeypatch)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for items in (pair_items(), long_pairs(3)):
        batch = PairCollator(0)(items)
        with torch.no_grad():
            padded, counts = forward_logps(model, batch)
            model.set_attn_implementation("flex_attention")
            packed, packed_counts = packed_forward_logps(model, batch, share_prefixes=share_prefixes)
            model.set_attn_implementation("sdpa")
        assert packed_counts.tolist() == counts.tolist()
        torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)


def test_varlen_inputs_position_ids_alone_equal_padded_with_gradients(tiny_model_dir):
    """What flash attention's varlen kernels receive: packed rows, position ids restarting at 0 per sequence,
    no mask. transformers reads the sequences off the position ids (for sdpa here, cu_seqlens for flash)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = PairCollator(0)(pair_items())
    padded, counts = forward_logps(model, batch)
    (padded * torch.linspace(1, 2, len(padded))).sum().backward()
    padded_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    packed = pack(batch, share_prefixes=False)
    logits = model(input_ids=packed.input_ids, position_ids=packed.position_ids, attention_mask=None,
                   logits_to_keep=packed.keep, use_cache=False).logits
    per_token = token_logps(logits, packed.target_rows, packed.target_ids)
    logps = per_token.new_zeros(len(padded)).index_add(0, packed.target_seqs, per_token)
    (logps * torch.linspace(1, 2, len(padded))).sum().backward()
    torch.testing.assert_close(logps, padded, rtol=1e-5, atol=1e-5)
    for expected, p in zip(padded_grads, model.parameters()):
        torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-5)


def test_flash_attention_gets_no_mask_and_refuses_shared_prefixes(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from alignkit.models.packing import packed_attention_mask

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = PairCollator(0)(pair_items())
    model.config._attn_implementation = "flash_attention_2"
    assert packed_attention_mask(model, pack(batch, share_prefixes=False)) is None
    with pytest.raises(ValueError, match="cannot run prefix-shared rows"):
        packed_attention_mask(model, pack(batch, share_prefixes=True))


class Model(torch.nn.Module):
    def __init__(self, implementation):
        super().__init__()
        # transformers' configs answer get_text_config() with themselves for a text-only model
        self.config = type("Config", (), {"_attn_implementation": implementation,
                                          "get_text_config": lambda self: self})()


@pytest.mark.parametrize(("cuda", "flash", "sharing", "precision", "max_length", "expected"), [
    (False, True, False, "bf16", 32768, None),  # a CPU keeps the dense mask
    (True, False, True, "bf16", 1024, None),  # short rows on a GPU: sdpa's dense mask is small
    (True, False, True, "bf16", 8192, "flex_attention"),
    (True, True, True, "bf16", 8192, "flex_attention"),  # flash cannot share prefixes
    (True, True, False, "bf16", 1024, "flash_attention_2"),
    (True, True, False, "fp32", 1024, None),  # flash attention runs in half precision only
])
def test_which_attention_packed_rows_use_on_a_gpu(monkeypatch, cuda, flash, sharing, precision, max_length,
                                                   expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(speedups.importlib.util, "find_spec", lambda name: object() if flash else None)
    assert speedups.accelerator_attention(Model("sdpa"), prefix_sharing=sharing, precision=precision,
                                          row_tokens=max_length) == expected
    assert speedups.accelerator_attention(Model("eager"), prefix_sharing=sharing, precision=precision,
                                          row_tokens=max_length) is None  # a model loaded otherwise keeps it


def test_prefix_sharing_is_off_with_the_reason_where_the_attention_takes_no_mask():
    model = Model("flash_attention_2")
    layout, reasons = speedups.choose_layout(RunArguments(), "dpo", model)
    assert layout.padding_free and not layout.prefix_sharing
    assert reasons["prompt-prefix sharing"] == "flash_attention_2 takes no mask for a trie of sequences"
