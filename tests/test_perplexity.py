import math

import torch

from harness.evaluation.perplexity import perplexity, windows
from harness.models.tiny import tiny_model


def test_windows_drop_last_partial():
    w = windows(torch.arange(10), 4)
    assert w.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_perplexity_equals_hand_computed_value():
    model = tiny_model("llama")
    ids = torch.randint(0, 256, (50,), generator=torch.Generator().manual_seed(0))
    # by hand: every window predicts its own next tokens, token by token
    total, count = 0.0, 0
    for w in windows(ids, 16):
        logprobs = torch.log_softmax(model(w[None]).logits[0].double(), -1)
        for t in range(15):
            total -= logprobs[t, w[t + 1]].item()
            count += 1
    res = perplexity(model, ids, seq_len=16, batch_size=2, progress=False)
    assert res["predicted"] == count == 3 * 15
    assert res["tokens"] == 48
    assert math.isclose(res["ppl"], math.exp(total / count), rel_tol=1e-5)


def test_perplexity_independent_of_batch_size():
    model = tiny_model("qwen2")
    ids = torch.randint(0, 256, (200,), generator=torch.Generator().manual_seed(1))
    a = perplexity(model, ids, seq_len=32, batch_size=1, progress=False)["ppl"]
    b = perplexity(model, ids, seq_len=32, batch_size=6, progress=False)["ppl"]
    assert math.isclose(a, b, rel_tol=1e-5)


def test_bos_conditions_every_window_but_is_not_scored():
    """Gemma's windows get a BOS first (the adapter's needs_bos): same targets, other context."""
    from harness.models.adapters import adapter_for

    model = tiny_model("gemma3")
    assert adapter_for(model).needs_bos and not adapter_for(tiny_model("llama")).needs_bos
    ids = torch.randint(3, 256, (50,), generator=torch.Generator().manual_seed(2))
    total, count = 0.0, 0
    for w in windows(ids, 16):
        row = torch.cat([torch.tensor([1]), w])  # BOS (id 1) + window
        logprobs = torch.log_softmax(model(row[None]).logits[0].double(), -1)
        for t in range(1, 16):  # position t predicts window token t (the BOS -> w[0] is not scored)
            total -= logprobs[t, row[t + 1]].item()
            count += 1
    res = perplexity(model, ids, seq_len=16, batch_size=2, progress=False, bos_id=1)
    plain = perplexity(model, ids, seq_len=16, batch_size=2, progress=False)
    assert res["predicted"] == plain["predicted"] == count and res["tokens"] == plain["tokens"]
    assert math.isclose(res["ppl"], math.exp(total / count), rel_tol=1e-5)
    assert not math.isclose(res["ppl"], plain["ppl"], rel_tol=1e-3)


def test_bootstrap_over_windows_brackets_the_ppl_and_matches_a_by_hand_resample():
    from harness.evaluation.perplexity import BOOT_SAMPLES, BOOT_SEED

    model = tiny_model("llama")
    ids = torch.randint(0, 256, (16 * 20,), generator=torch.Generator().manual_seed(2))
    res = perplexity(model, ids, seq_len=16, batch_size=4, progress=False)
    assert res["boot_lo"] < res["ppl"] < res["boot_hi"] and res["boot_std"] > 0
    # by hand: each window's NLL sum, resampled with the same generator
    nll = []
    for w in windows(ids, 16):
        logprobs = torch.log_softmax(model(w[None]).logits[0].double(), -1)
        nll.append(-sum(logprobs[t, w[t + 1]].item() for t in range(15)))
    nll = torch.tensor(nll, dtype=torch.float64)
    g = torch.Generator().manual_seed(BOOT_SEED)
    picks = torch.randint(0, len(nll), (BOOT_SAMPLES, len(nll)), generator=g)
    std = torch.exp(nll[picks].mean(1) / 15).std().item()
    assert math.isclose(res["boot_std"], std, rel_tol=1e-4)
    same = perplexity(model, ids, seq_len=16, batch_size=4, progress=False)
    assert same["boot_std"] == res["boot_std"]  # fixed seed: reproducible
