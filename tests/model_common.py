"""Shared helpers of the model tests (tests/test_model_*.py): small random HF BERT models with every parameter
moved off its init (LayerNorm weights/biases and Linear biases too, so each one matters), ragged batches."""
import torch
from torch import nn
from transformers import BertConfig, BertModel

TOL = 1e-4  # fp32 max |diff| vs HF eager at real positions (the documented parity bound)

SMALL = dict(vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
             max_position_embeddings=40, type_vocab_size=2)
BASE = dict(vocab_size=1000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
LARGE = dict(vocab_size=1000, hidden_size=1024, num_hidden_layers=3, num_attention_heads=16, intermediate_size=4096)


def hf_config(**kw):
    d = dict(SMALL)
    d.update(kw)
    cfg = BertConfig(**d)
    cfg._attn_implementation = "eager"
    return cfg


def perturb_(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
    return model


def make_hf(cls=BertModel, seed: int = 0, **kw):
    torch.manual_seed(seed)
    cfg = hf_config(**kw)
    return perturb_(cls(cfg), seed).eval()


def ragged(B, L, vocab, seed=0, lengths=None, left=False, holes=False, types=0):
    """ids (B, L) int64, mask (B, L) int64 (1 = real), token_type_ids or None."""
    g = torch.Generator().manual_seed(seed)
    if lengths is None:
        lengths = torch.randint(1, L + 1, (B,), generator=g).tolist()
    ids = torch.randint(1, vocab, (B, L), generator=g)
    mask = torch.zeros(B, L, dtype=torch.long)
    for b, n in enumerate(lengths):
        if left:
            mask[b, L - n:] = 1
        else:
            mask[b, :n] = 1
    if holes:
        hole = torch.rand(B, L, generator=g) < 0.2
        mask = mask.masked_fill(hole, 0)
        mask[:, 0] = 1
    ids = ids * mask
    tt = torch.randint(0, types, (B, L), generator=g) if types else None
    return ids, mask, tt


def max_diff(a, b, keep=None):
    d = (a.float() - b.float()).abs()
    if keep is not None:
        d = d[keep.bool()]
    return float(d.max()) if d.numel() else 0.0


def run_threads(work, n):
    """work(k) in n threads at once; the exceptions they raised, to assert on in the test's own thread."""
    import threading
    errors = []

    def guarded(k):
        try:
            work(k)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(k,)) for k in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return errors
