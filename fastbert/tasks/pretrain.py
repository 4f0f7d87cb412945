"""``pretrain``: BERT pretraining (masked LM + next-sentence prediction) from raw text on fastbert's
BertForPreTraining, with transformers' Trainer (fastbert/tasks/run.py: checkpoints, ``--resume``, bf16, an
output written whole). The data is made as BERT's recipe makes it (fastbert/tasks/pretrain_data.py).

Tokenizer: the one in ``model`` (continued pretraining, or a new model with ``config``), else a WordPiece
vocabulary trained on the corpus (``tokenizers``' trainer, BERT's normalization, ``vocab_size``, ``lowercase``),
saved with the model so the output is a complete folder. Model: ``model``'s weights, or a new model from
``config``: a preset (tiny, mini, small, medium, base, large: the sizes of Google's BERT releases) or a
config.json. The MLM decoder runs on masked positions only. Batches are grouped by length (transformers'
``train_sampling_strategy="group_by_length"``), so they carry little padding, or, with ``max_tokens``, cut by a
token budget (fastbert/tasks/pretrain_trainer.py: pairs x the longest pair at most ``max_tokens``).
``validation_share`` of the pairs (at least one) is held out: ``metrics.json`` reports their MLM loss and accuracy
and NSP accuracy, each measured on the same masks every time.

Memory: the corpus is read as a stream (twice when a vocabulary is trained on it) and its pairs are made
``window`` documents at a time (fastbert/tasks/pair_store.py) into a folder beside the output
(``OUTPUT.pairs/rank-N``: the pairs' tokens, 4 bytes each, memory-mapped, and an index of 17 bytes a pair, read
into memory; one per process under torchrun), cleared when a run starts and removed when it ends. While training,
memory grows with the number of pairs only through that index and the batch sampler's lists (tens of bytes a
pair), not with the text. The same seed makes the same pairs, so ``--resume`` rebuilds them as they were.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..batch.files import InputError
from . import pretrain_data
from .pair_store import PairStore, write_pairs
from .run import RunOptions, build_trainer, new_output, require_trainer, train_into, training_arguments

PRESETS = {  # (layers, hidden, heads); intermediate = 4 x hidden
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _train_tokenizer(sentences: Iterable[str], vocab_size: int, lowercase: bool) -> Any:
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    wp = BertWordPieceTokenizer(lowercase=lowercase, strip_accents=lowercase)
    wp.train_from_iterator(sentences, vocab_size=vocab_size, special_tokens=SPECIAL)
    # The trainer numbers tokens in an order that varies from run to run (the same tokens, ties broken by hash
    # order): renumber them, special tokens first, the rest sorted, so a seeded run is reproducible.
    from tokenizers.models import WordPiece

    tokens = SPECIAL + sorted(set(wp.get_vocab()) - set(SPECIAL))
    wp._tokenizer.model = WordPiece({t: i for i, t in enumerate(tokens)}, unk_token=SPECIAL[1])
    pad, unk, cls, sep, mask = SPECIAL
    return BertTokenizerFast(
        tokenizer_object=wp._tokenizer,  # the trained tokenizers.Tokenizer (wp only wraps it)
        pad_token=pad,
        unk_token=unk,
        cls_token=cls,
        sep_token=sep,
        mask_token=mask,
        do_lower_case=lowercase,
    )


def new_model_config(config: str, vocab_size: int, max_seq_length: int) -> Any:
    from transformers import BertConfig

    if config in PRESETS:
        layers, hidden, heads = PRESETS[config]
        return BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * hidden,
            max_position_embeddings=max(512, max_seq_length),
        )
    path = Path(config)
    if not path.is_file():
        raise InputError(f"config: {config!r} is neither a preset ({', '.join(PRESETS)}) nor a config.json file")
    try:
        cfg = BertConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise InputError(f"{config}: not a BERT config ({exc})") from None
    cfg.vocab_size = vocab_size
    if cfg.max_position_embeddings < max_seq_length:
        raise InputError(f"{config}: max_position_embeddings {cfg.max_position_embeddings} < max_seq_length")
    return cfg


def evaluate(net: Any, pairs: PairStore, collator: Any, batch_size: int = 64) -> dict[str, float]:
    """MLM loss and accuracy on the masked positions, NSP accuracy, over held-out pairs (masks from the
    collator's own generator, so a fixed seed gives the same masks every time)."""
    import torch

    mlm_loss = mlm_right = n_masked = nsp_right = 0.0
    was_training = net.training
    net.eval()
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            batch = collator([pairs[j] for j in range(i, min(i + batch_size, len(pairs)))])
            batch = {k: v.to(net.device) for k, v in batch.items()}
            labels, nsp = batch.pop("labels"), batch.pop("next_sentence_label", None)
            out = net(**batch)
            logits = out.prediction_logits.float()
            sel = labels != pretrain_data.IGNORE
            mlm_loss += float(torch.nn.functional.cross_entropy(logits[sel], labels[sel], reduction="sum"))
            mlm_right += float((logits[sel].argmax(-1) == labels[sel]).sum())
            n_masked += float(sel.sum())
            if nsp is not None:
                nsp_right += float((out.seq_relationship_logits.argmax(-1) == nsp).sum())
    net.train(was_training)
    metrics = {"mlm_loss": mlm_loss / n_masked, "mlm_accuracy": mlm_right / n_masked}
    if collator.nsp:
        metrics["nsp_accuracy"] = nsp_right / len(pairs)
    return metrics


def pretrain(
    corpus: list[str],
    output: str,
    model: str | None = None,
    config: str | None = None,
    vocab_size: int = 30522,
    lowercase: bool = True,
    max_seq_length: int = 128,
    short_seq_prob: float = 0.1,
    mask_rate: float = 0.15,
    whole_word: bool = False,
    nsp: bool = True,
    text_field: str = "text",
    validation_share: float = 0.02,
    window: int = 5000,
    max_tokens: int | None = None,
    options: RunOptions | None = None,
) -> dict[str, float]:
    """Pretrain on the corpus files; returns the held-out metrics written to ``OUTPUT/metrics.json``. ``model``
    alone continues pretraining that folder; ``config`` (default tiny) makes a new model, with ``model``'s
    tokenizer when given, else one trained on the corpus."""
    opts = options or RunOptions(learning_rate=1e-4)
    opts.check()
    if not 0 < mask_rate < 1:
        raise InputError(f"mask rate: expected a share in (0, 1), got {mask_rate}")
    if max_tokens is not None and max_tokens < max_seq_length:
        raise InputError(f"max tokens: expected at least max_seq_length ({max_seq_length}), got {max_tokens}")
    if not 0 <= short_seq_prob <= 1 or not 0 <= validation_share < 0.5:
        raise InputError("short_seq_prob must be in [0, 1] and validation_share in [0, 0.5)")
    out = new_output(output)
    require_trainer()
    from transformers import AutoTokenizer, set_seed

    from ..hf.heads import BertForPreTraining
    from .pretrain_trainer import PretrainingTrainer

    def documents() -> Iterator[list[str]]:  # read afresh each time: the corpus is never held whole
        for path in corpus:
            yield from pretrain_data.read_documents(path, text_field)

    if next(documents(), None) is None:
        raise InputError(f"corpus: no text in {', '.join(corpus)}")
    set_seed(opts.seed)
    if model is not None:
        tokenizer = AutoTokenizer.from_pretrained(model)
    else:
        tokenizer = _train_tokenizer((s for d in documents() for s in d), vocab_size, lowercase)
    # OUTPUT.pairs/<rank>: this process's pairs, cleared first (a killed run's are not left for good)
    store = out.with_name(out.name + ".pairs") / f"rank-{os.environ.get('RANK', '0')}"
    shutil.rmtree(store, ignore_errors=True)
    try:
        train_pairs, held_out_pairs = write_pairs(
            documents(), tokenizer, store, max_seq_length, opts.seed, short_seq_prob, nsp, validation_share, window
        )
        if model is not None and config is None:  # continued pretraining
            net = BertForPreTraining.from_pretrained(model, sparse_prediction=True)
        else:
            model_config = new_model_config(config or "tiny", len(tokenizer), max_seq_length)
            net = BertForPreTraining(model_config, sparse_prediction=True)
        collator = pretrain_data.PretrainingCollator(tokenizer, mask_rate, whole_word, nsp)

        def make_trainer(checkpoints: Path) -> PretrainingTrainer:
            args = training_arguments(
                checkpoints,
                opts,
                train_sampling_strategy="group_by_length",
                remove_unused_columns=False,
                include_num_input_tokens_seen="non_padding",  # logs train_tokens_per_second
            )
            return build_trainer(
                checkpoints,
                PretrainingTrainer,
                model=net,
                args=args,
                train_dataset=train_pairs,
                data_collator=collator,
                max_tokens=max_tokens,
            )

        def finish(trainer: PretrainingTrainer, result: Any, staging: Path) -> dict[str, float]:
            trainer.save_model(str(staging))
            if trainer.is_world_process_zero():
                tokenizer.save_pretrained(str(staging))
            held_out = pretrain_data.PretrainingCollator(tokenizer, mask_rate, whole_word, nsp, seed=opts.seed + 1)
            metrics = evaluate(net, held_out_pairs, held_out) if len(held_out_pairs) else {}
            metrics.update(
                train_loss=float(result.training_loss), pairs=len(train_pairs), held_out_pairs=len(held_out_pairs)
            )
            return metrics

        return train_into(out, opts, make_trainer, finish)
    finally:
        shutil.rmtree(store, ignore_errors=True)
        with contextlib.suppress(OSError):
            store.parent.rmdir()  # the last process out removes the folder
