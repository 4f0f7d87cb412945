"""One model object serving several threads at once gives each the results it gets alone; resident memory
settles over a long run of varied shapes (no growth from caches keyed on shapes)."""
import threading

import torch
from model_common import make_hf, max_diff, ragged

import fastbert


def test_threads_share_one_model():
    hf = make_hf(num_hidden_layers=2)
    fb = fastbert.from_hf(hf)
    batches = [ragged(3 + i % 3, 9 + 3 * i, hf.config.vocab_size, seed=i, types=2) for i in range(6)]
    with torch.no_grad():
        alone = [fb(ids, attention_mask=m, token_type_ids=t).last_hidden_state for ids, m, t in batches]
    errors, results = [], {}

    def worker(k):
        try:
            for r in range(5):
                i = (k + r) % len(batches)
                ids, m, t = batches[i]
                with torch.no_grad():
                    out = fb(ids, attention_mask=m, token_type_ids=t).last_hidden_state
                results.setdefault(k, []).append((i, out))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert sum(len(v) for v in results.values()) == 20
    for outs in results.values():
        for i, out in outs:
            assert max_diff(out, alone[i]) <= 1e-5


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os
    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def test_memory_settles_over_varied_shapes():
    hf = make_hf(num_hidden_layers=2, hidden_size=128, intermediate_size=256, max_position_embeddings=64)
    fb = fastbert.from_hf(hf)
    g = torch.Generator().manual_seed(0)

    def step(i):
        B = int(torch.randint(1, 9, (1,), generator=g))
        L = int(torch.randint(1, 65, (1,), generator=g))
        ids, m, _ = ragged(B, L, hf.config.vocab_size, seed=i)
        with torch.no_grad():
            fb(ids, attention_mask=m)

    for i in range(60):
        step(i)
    before = _rss_mb()
    for i in range(60, 180):
        step(i)
    after = _rss_mb()
    assert after - before < 32, f"resident memory grew {after - before:.1f} MiB over 120 varied forwards"
