"""CLIP evaluation: zero-shot classification with prompt ensembles, and image<->text retrieval (R@1, R@5).

In transformers 5 ``get_text_features`` / ``get_image_features`` return an output object whose
``pooler_output`` is the projected embedding (older releases returned the tensor itself); :func:`projected`
accepts both and refuses anything else, so a silent change of the API cannot feed hidden states to the scores.

Zero-shot: each concept's class embedding is the normalised mean of its prompts' normalised text embeddings
(the prompts are the world's caption variants of the concept), and an image is assigned the concept whose
class embedding is nearest (cosine). The label space is every world concept, so chance is 1 / concepts.

Retrieval counts a hit when a retrieved item carries the *same caption* as the query's pair: the world
repeats captions, and a different image with an identical caption is as right as the paired one. Chance is
computed exactly for each query from how many gallery items share its caption.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import comb
from pathlib import Path

import numpy as np
import torch
from transformers import CLIPModel, PreTrainedTokenizerBase

from fluxforge.errors import DataError

RECALL_AT = (1, 5)


def projected(output: object) -> torch.Tensor:
    """The projected embedding from a ``get_*_features`` result (an output object in transformers 5, a tensor before)."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if not isinstance(pooled, torch.Tensor):
        raise TypeError(f"{type(output).__name__} has no tensor pooler_output: not a CLIP features result")
    return pooled


def normalised(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x, dim=-1).numpy()


def image_embeddings(model: CLIPModel, pixels: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """L2-normalised projected image embeddings ``(N, D)``, in eval mode, without gradients."""
    x = torch.as_tensor(pixels)
    was = model.training
    model.eval()
    with torch.no_grad():
        out = [projected(model.get_image_features(pixel_values=x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    model.train(was)
    return normalised(torch.cat(out))


def text_embeddings(model: CLIPModel, tok: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 1024) -> np.ndarray:
    """L2-normalised projected text embeddings ``(N, D)`` of ``texts`` written with ``tok`` (padded to its limit)."""
    was = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tok(list(texts[i : i + batch_size]), padding="max_length", max_length=tok.model_max_length,
                      truncation=False, return_tensors="pt")
            out.append(projected(model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])))
    model.train(was)
    return normalised(torch.cat(out))


def class_embeddings(model: CLIPModel, tok: PreTrainedTokenizerBase, concepts: Sequence[str],
                     prompts: Callable[[str], list[str]]) -> np.ndarray:
    """``(C, D)``: per concept, the renormalised mean of its prompts' embeddings (the prompt ensemble)."""
    texts = [p for c in concepts for p in prompts(c)]
    sizes = [len(prompts(c)) for c in concepts]
    emb = text_embeddings(model, tok, texts)
    means = np.stack([chunk.mean(axis=0) for chunk in np.split(emb, np.cumsum(sizes)[:-1])])
    return means / np.linalg.norm(means, axis=1, keepdims=True)


@dataclass(frozen=True)
class ZeroShot:
    accuracy: float
    n: int
    chance: float
    predictions: list[str]
    per_concept: dict[str, float]

    def confusion(self, labels: Sequence[str], concepts: Sequence[str]) -> dict:
        """Counts of (true concept, predicted concept): rows the concepts present in ``labels``, columns all."""
        rows = list(dict.fromkeys(labels))
        col = {c: j for j, c in enumerate(concepts)}
        counts = np.zeros((len(rows), len(concepts)), dtype=int)
        for t, p in zip(labels, self.predictions):
            counts[rows.index(t), col[p]] += 1
        return {"rows": rows, "columns": list(concepts), "counts": counts.tolist()}

    def summary(self) -> dict:
        return {"accuracy": self.accuracy, "n": self.n, "chance": self.chance,
                "over_chance": self.accuracy / self.chance, "per_concept": self.per_concept}


def zero_shot(image_emb: np.ndarray, class_emb: np.ndarray, labels: Sequence[str], concepts: Sequence[str]) -> ZeroShot:
    """Nearest class embedding per image; accuracy over ``labels`` (each must be one of ``concepts``)."""
    unknown = sorted(set(labels) - set(concepts))
    if unknown:
        raise ValueError(f"labels outside the label space: {unknown[:5]}")
    pred = [concepts[j] for j in (image_emb @ class_emb.T).argmax(axis=1)]
    right = np.array([p == t for p, t in zip(pred, labels)])
    per = {c: float(right[[t == c for t in labels]].mean()) for c in dict.fromkeys(labels)}
    return ZeroShot(float(right.mean()), len(labels), 1 / len(concepts), pred, per)


def recall_at(similarity: np.ndarray, query_keys: Sequence[str], gallery_keys: Sequence[str], k: int) -> tuple[float, float]:
    """(recall@k, its chance): a query hits when one of its top-k gallery items has the query's key."""
    gallery = np.asarray(gallery_keys)
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    hits = np.array([np.any(gallery[t] == q) for t, q in zip(top, query_keys)])
    n = len(gallery)
    matches = [int((gallery == q).sum()) for q in query_keys]
    chance = float(np.mean([1 - comb(n - m, k) / comb(n, k) for m in matches]))
    return float(hits.mean()), chance


def retrieval(image_emb: np.ndarray, text_emb: np.ndarray, captions: Sequence[str]) -> dict:
    """Image->text and text->image R@1 and R@5 (keys ``R1``, ``R5``: MLflow refuses "@"; with chance) over paired embeddings of one held-out set."""
    sim = image_emb @ text_emb.T
    out = {}
    for name, s in (("image_to_text", sim), ("text_to_image", sim.T)):
        for k in RECALL_AT:
            r, chance = recall_at(s, captions, captions, k)
            out[f"{name}.R{k}"], out[f"{name}.R{k}_chance"] = r, chance
    return out


def load_clip(path: Path | str) -> tuple[CLIPModel, PreTrainedTokenizerBase]:
    """A CLIP directory written by ``clip_pretrain`` (weights + caption tokenizer), in eval mode; the text tower
    must pool at the tokenizer's EOS (else a DataError: the scores would be silently wrong)."""
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if not (path / "config.json").exists():
        raise DataError(f"{path}: no CLIP model here (run the clip_pretrain stage)")
    model = CLIPModel.from_pretrained(path).eval()
    tok = PreTrainedTokenizerFast.from_pretrained(path)
    if model.text_model.eos_token_id != tok.eos_token_id or tok.eos_token_id == 2:
        raise DataError(f"{path}: the text tower pools at id {model.text_model.eos_token_id} but the tokenizer's EOS "
                        f"is {tok.eos_token_id} (id 2 selects HF's legacy argmax pooling)")
    return model, tok
