"""Precomputed reference log-probs equal the live reference; a cache that does not match is never used."""

import pytest
import torch

from alignkit.data.collate import EncodedUnpaired, PairCollator, UnpairedCollator, kl_rows
from alignkit.data.template import IGNORE_INDEX, Encoded
from alignkit.errors import AlignkitError
from alignkit.models.reference import Reference
from alignkit.models.reference_cache import precompute_reference


def rows(seed=0, n=6):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = torch.randint(3, 300, (5 + i % 3,), generator=generator).tolist()
        chosen = torch.randint(3, 300, (2 + i % 2,), generator=generator).tolist()
        rejected = torch.randint(3, 300, (3,), generator=generator).tolist()
        out.append((i, tuple(Encoded(prompt + a, [IGNORE_INDEX] * len(prompt) + a) for a in (chosen, rejected))))
    return out


@pytest.fixture
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


def cached(model, items, tmp_path, **overrides):
    kwargs = {"template": "chatml", "max_length": 64, "precision": "fp32", "cache_dir": tmp_path}
    batches = [items[i : i + 4] for i in range(0, len(items), 4)]
    return precompute_reference(model, batches, PairCollator(0), **{**kwargs, **overrides})


def test_cached_equals_live_reference_and_is_reused(model, tmp_path):
    items = rows()
    reference = cached(model, items, tmp_path)
    live = Reference(model)
    for start in (0, 3):  # other batch compositions than the precompute's
        batch = PairCollator(0)(items[start : start + 3])
        got, got_counts = reference.logps(None, batch)
        want, want_counts = live.logps(None, batch)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert got_counts.tolist() == want_counts.tolist()
        got_mean, _ = reference.logps(None, batch, average=True)
        torch.testing.assert_close(got_mean, want / want_counts, rtol=1e-5, atol=1e-5)

    # The second run reads the file: the model is not run at all.
    def no_forward(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    model.forward = no_forward
    again = cached(model, items, tmp_path)
    assert again.path == reference.path and again.table == reference.table
    assert len(list(tmp_path.glob("*.pt"))) == 1


def test_a_different_model_data_template_length_or_precision_gets_its_own_cache(model, tmp_path):
    items = rows()
    first = cached(model, items, tmp_path).path
    assert cached(model, items, tmp_path, max_length=65).path != first
    assert cached(model, items, tmp_path, template="other").path != first
    assert cached(model, items, tmp_path, precision="bf16").path != first
    assert cached(model, rows(seed=1), tmp_path).path != first
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)
    changed = cached(model, items, tmp_path)
    assert changed.path != first
    batch = PairCollator(0)(items[:2])
    # The new weights' numbers, not the stale file's.
    torch.testing.assert_close(changed.logps(None, batch)[0], Reference(model).logps(None, batch)[0],
                               rtol=1e-5, atol=1e-5)


def test_mismatched_file_and_unknown_sequences_raise(model, tmp_path):
    items = rows()
    reference = cached(model, items, tmp_path)
    stored = torch.load(reference.path, weights_only=True)
    stored["key"]["max_length"] = 999
    torch.save(stored, reference.path)
    with pytest.raises(AlignkitError, match="written for another key"):
        cached(model, items, tmp_path)
    with pytest.raises(AlignkitError, match="no precomputed reference log-prob"):
        reference.logps(None, PairCollator(0)(rows(seed=2)[:1]))


def test_visited_batches_follow_the_loops_data_order():
    from alignkit.data.order import epoch_batches
    from alignkit.models.reference_cache import visited_batches
    from alignkit.training.runner import LoopConfig

    first = epoch_batches(10, 3, seed=42, epoch=0, shuffle=True)
    assert visited_batches(10, LoopConfig(batch_size=3, max_steps=2)) == first[:2]
    assert visited_batches(10, LoopConfig(batch_size=3, max_steps=1, gradient_accumulation_steps=2)) == first[:2]
    assert visited_batches(10, LoopConfig(batch_size=3, max_steps=4)) == first  # one epoch covers all rows
    first4 = epoch_batches(10, 4, seed=42, epoch=0, shuffle=True)
    assert visited_batches(10, LoopConfig(batch_size=4, num_train_epochs=0.5)) == first4[:2]


def test_cached_equals_live_for_ld_dpo_and_for_kto_batches(model, tmp_path):
    items = rows()
    # LD-DPO: a sequence's weighted log-prob depends on its pair's shorter answer, which the digest carries.
    reference = cached(model, items, tmp_path, ld_alpha=0.5)
    batch = PairCollator(0)(items[1:4])
    torch.testing.assert_close(reference.logps(None, batch, ld_alpha=0.5)[0],
                               Reference(model).logps(None, batch, ld_alpha=0.5)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(AlignkitError, match="no precomputed reference log-prob"):
        reference.logps(None, batch)  # unweighted values were never computed
    # KTO: the completions and the mismatched rows of the KL estimate, batched as the loop batches them.
    unpaired = [(i, EncodedUnpaired(pair[i % 2], i % 3 == 0)) for i, pair in items]
    collate = UnpairedCollator(0)
    step = [unpaired[:3], unpaired[3:]]
    kto = precompute_reference(model, step + [kl_rows(unpaired)[:3], kl_rows(unpaired)[3:]], collate,
                               template="t", max_length=64, precision="fp32", cache_dir=tmp_path)
    for micro_batch in step + [kl_rows(unpaired)[1:5]]:
        part = collate(micro_batch).completions
        torch.testing.assert_close(kto.logps(None, part)[0], Reference(model).logps(None, part)[0],
                                   rtol=1e-5, atol=1e-5)


def test_visited_batches_of_each_rank_are_its_shards_of_the_global_batches():
    from alignkit.data.order import epoch_batches
    from alignkit.models.reference_cache import visited_batches
    from alignkit.training.runner import LoopConfig

    config = LoopConfig(batch_size=2, num_train_epochs=1)
    global_batches = epoch_batches(9, 4, seed=42, epoch=0, shuffle=True)  # 4, 4, 1 rows
    rank0 = visited_batches(9, config, world_size=2, rank=0)
    rank1 = visited_batches(9, config, world_size=2, rank=1)
    assert rank0 == [b[:2] for b in global_batches]
    # Rank 1 has no row in the last global batch: the loop runs the batch's first row (weighted 0), which
    # rank 0 already holds, so rank 1 needs it too; dedup keeps it once per rank.
    assert rank1 == [b[2:4] for b in global_batches[:2]] + [global_batches[2][:1]]
    # Every step's global micro-batches, every epoch (KTO's KL rows are formed over a whole step).
    from alignkit.models.reference_cache import visited_steps

    steps = list(visited_steps(9, LoopConfig(batch_size=2, num_train_epochs=2, gradient_accumulation_steps=2),
                               world_size=2))
    second = epoch_batches(9, 4, seed=42, epoch=1, shuffle=True)
    assert steps == [global_batches[:2], global_batches[2:], second[:2], second[2:]]
