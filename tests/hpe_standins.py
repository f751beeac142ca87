"""Small stand-ins for the data (and pretrained models) that HPE's example scripts download.

The fixtures in ``tests/hpe_examples/`` are HPE's scripts with only their data loading
replaced by calls into this module: each node gets its own share of sklearn's digits (shaped
as MNIST), generated look-alikes of the fraud-detection CSVs, generated reviews with a tiny
word-level BERT tokenizer, and a 2-layer BERT built from a config (the same seed on every node,
as a pretrained checkpoint would be). ``HPE_STANDIN_NODE`` / ``HPE_STANDIN_NODES`` say which
share a process gets.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SEED = 1234
FRAUD_FEATURES = 30
WORDS = ("good", "bad", "fine", "awful", "great", "meh", "tasty", "cold", "slow", "fast")


def node() -> int:
    return int(os.environ.get("HPE_STANDIN_NODE", "0"))


def nodes() -> int:
    return int(os.environ.get("HPE_STANDIN_NODES", "1"))


# ------------------------------------------------------------------ MNIST from sklearn's digits


def mnist_arrays() -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """``mnist.load_data()``'s shapes and dtypes: 28x28 uint8 images (digits' 8x8 scaled up
    3x and padded), this node's share of the first 1500 for training, the rest for testing."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    images = np.kron(x.reshape(-1, 8, 8) * (255 / 16), np.ones((3, 3)))
    images = np.pad(images, ((0, 0), (2, 2), (2, 2))).astype(np.uint8)
    labels = y.astype(np.uint8)
    share = np.arange(1500) % nodes() == node()
    train = (images[:1500][share], labels[:1500][share])
    return train, (images[1500:], labels[1500:])


def mnist_torch_datasets() -> tuple[Any, Any]:
    """torchvision's ``datasets.MNIST(..., transform=ToTensor())``: (1, 28, 28) floats in
    [0, 1] and int64 labels, as TensorDatasets."""
    import torch

    (x_train, y_train), (x_test, y_test) = mnist_arrays()

    def dataset(x: Any, y: Any) -> Any:
        images = torch.tensor(x, dtype=torch.float32).unsqueeze(1) / 255.0
        return torch.utils.data.TensorDataset(images, torch.tensor(y, dtype=torch.int64))

    return dataset(x_train, y_train), dataset(x_test, y_test)


# ------------------------------------------------------------------ fraud-detection CSVs


def write_fraud_csvs(directory: Path, node_index: int, rows: int = 600) -> None:
    """``SB19_CCFDUBL_TRAIN.csv`` and ``..._TEST.csv`` as the example reads them: a header row,
    30 float features (Time, V1..V28, Amount) and the 0/1 class last; about 10% frauds,
    which differ from the rest along a few features."""
    rng = np.random.default_rng(SEED + node_index)
    header = ["Time", *(f"V{i}" for i in range(1, 29)), "Amount", "Class"]
    for name, count in (("SB19_CCFDUBL_TRAIN.csv", rows), ("SB19_CCFDUBL_TEST.csv", rows // 3)):
        label = (rng.random(count) < 0.1).astype(float)
        features = rng.normal(size=(count, FRAUD_FEATURES))
        features[:, 1:5] += 2.0 * label[:, None]
        with (directory / name).open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(header)
            writer.writerows(np.column_stack([features, label]).round(6).tolist())


# ------------------------------------------------------------------ Hugging Face


class Dataset:
    """The few ``datasets.Dataset`` calls the examples make: ``map(fn, batched=True)``,
    ``set_format("torch", columns=...)``, then indexing by the Trainer."""

    def __init__(self, rows: Sequence[dict[str, Any]], columns: Sequence[str] = ()) -> None:
        self.rows = list(rows)
        self.columns = list(columns)

    @classmethod
    def from_pandas(cls, rows: Sequence[dict[str, Any]]) -> Dataset:
        """Rows as ``reviews`` makes them, where the example hands over a DataFrame."""
        return cls(rows)

    def map(self, function: Callable[[dict[str, list[Any]]], Any], batched: bool) -> Dataset:
        assert batched
        keys = list(self.rows[0])
        added = function({key: [row[key] for row in self.rows] for key in keys})
        rows = [
            {**row, **{key: values[i] for key, values in added.items()}}
            for i, row in enumerate(self.rows)
        ]
        return Dataset(rows)

    def set_format(self, kind: str, columns: Sequence[str]) -> None:
        assert kind == "torch"
        self.columns = list(columns)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        return {key: torch.tensor(self.rows[index][key]) for key in self.columns}


def reviews(count: int, seed: int) -> list[dict[str, Any]]:
    """Yelp-like rows: ``text`` and ``label`` (stars - 1); a review's words lean to its label."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        label = int(rng.integers(5))
        words = [WORDS[(label * 2 + int(rng.integers(3))) % len(WORDS)] for _ in range(12)]
        rows.append({"text": " ".join(words), "label": label})
    return rows


def tokenizer(directory: Path) -> Any:
    """A word-level BERT tokenizer over the reviews' words (no download)."""
    from transformers import BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return BertTokenizer(vocab_file=str(vocab))


def tiny_bert(num_labels: int) -> Any:
    """``AutoModelForSequenceClassification.from_pretrained("bert-base-cased", ...)`` in
    miniature: 2 layers, hidden size 32, the same weights on every node."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(SEED)
    config = BertConfig(
        vocab_size=len(WORDS) + 5,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    config.num_labels = num_labels
    return BertForSequenceClassification(config)
