"""MeCo: metadata conditioning then cooldown (Gao et al., ICML 2025, arXiv 2501.01956).

Most of training sees every document as ``"URL: <host>\\n\\n" + text + EOS`` with no loss on the
metadata tokens; the last 10% of the steps (the cooldown) see the plain streams, so the model
also works without metadata. The paper reports that this reaches the baseline's downstream
accuracy with about a third less data, and that prepending a URL at inference steers the model.

Rules from the official code (princeton-pli/MeCo; ../shared/reference/methods.md section 1):

- ``datatools/mds_pack_data.py``: ``--use_short_url`` host, prefix "URL: ", suffix "\\n\\n",
  metadata encoded in ONE ``tok.encode(prefix+url+suffix)`` call; the mask is 0 over BOS + metadata.
- ``data.py``: ``labels[~mask] = -100``; a sequence with no unmasked token keeps its last 10 labels.
- ``run_configs/*stage2.yaml``: stage 2 resumes from checkpoint-36000 of 40000 (the last 10%),
  optimizer and LR schedule kept, only the data changes.

FluxForge's streams have no BOS: the previous document's EOS plays its part, so a conditioned
stream is ``[meta + doc + EOS] * docs`` with the mask False on ``meta`` only; the first document
token is predicted (from the URL) and so is the EOS.

Alignment used throughout: a batch row holds L+1 tokens; inputs = tokens[:, :-1],
targets = tokens[:, 1:], and the loss mask of the targets is mask[:, 1:].
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from fluxforge.data.tokenize import load_streams, short_url
from fluxforge.errors import DataError

__all__ = [
    "METADATA_PREFIX", "METADATA_SUFFIX", "KEEP_LAST_LABELS", "DEFAULT_COOLDOWN_FRACTION", "IGNORE_INDEX",
    "short_url", "metadata_prefix", "condition_stream", "load_conditioned", "cooldown_start",
    "conditional_prompt", "meco_labels", "masked_causal_lm_loss",
]

# The README's pack command: --add_metadata_prefix "URL: " --add_metadata_suffix "\n\n"
METADATA_PREFIX = "URL: "
METADATA_SUFFIX = "\n\n"
# data.py: "If the mask is all 0 we might get nan loss" -> labels[-10:] are kept
KEEP_LAST_LABELS = 10
# stage 2 starts at checkpoint-36000 of 40000 steps: the last 10% is plain data (methods.md section 1)
DEFAULT_COOLDOWN_FRACTION = 0.1
IGNORE_INDEX = -100  # torch's cross_entropy default, and the label MeCo writes


def metadata_prefix(host: str) -> str:
    """The text put before a document whose URL has host ``host``."""
    return METADATA_PREFIX + host + METADATA_SUFFIX


def conditional_prompt(text: str, url: str) -> str:
    """``text`` conditioned on ``url`` for inference, e.g. ("The", "https://en.wikipedia.org/x") ->
    "URL: en.wikipedia.org\\n\\nThe". Unconditional inference (MeCo's default) is the plain text."""
    host = short_url(url)
    if not host:
        raise ValueError(f"conditional_prompt: url {url!r} has no host to condition on")
    return metadata_prefix(host) + text


def _meta_table(hosts: Sequence[str], eos_id: int, encode: Callable[[str], list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(host index of each doc, flat metadata tokens of the unique hosts, offsets into them).

    Each unique host is encoded once, as one string: MeCo's token boundaries, and a corpus of
    millions of documents from a few thousand hosts costs a few thousand encode calls.
    """
    which, unique = pd.factorize(pd.Series(list(hosts), dtype=object), use_na_sentinel=False)  # hashing, O(docs)
    encoded = []
    for host in unique.tolist():
        ids = list(encode(metadata_prefix(host))) if host else []
        if eos_id in ids:
            raise DataError(f"metadata for host {host!r} encodes to the EOS token {eos_id}; it would split the document")
        encoded.append(ids)
    lengths = np.array([len(x) for x in encoded], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    flat = np.fromiter((t for ids in encoded for t in ids), dtype=np.int64, count=int(lengths.sum()))
    return np.asarray(which, dtype=np.int64), flat, np.stack([offsets, lengths])


def condition_stream(stream: np.ndarray, hosts: Sequence[str], eos_id: int,
                     encode: Callable[[str], list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Rebuild a packed stream as [meta + doc + EOS] per document; return (tokens, loss_mask).

    ``stream`` is the tokenize stage's ``{slice}.bin`` (each document followed by EOS) and
    ``hosts`` the matching ``{slice}.hosts.json``. ``loss_mask`` is False exactly on metadata
    tokens: predicting "URL: host" is not trained, predicting the document from it is.
    Documents with an empty host get no prefix. Vectorised: O(tokens) numpy work, one
    ``encode`` per unique host.
    """
    stream = np.asarray(stream)
    is_eos = stream == eos_id
    n_docs = int(is_eos.sum())
    if n_docs != len(hosts):
        raise DataError(f"the stream holds {n_docs} documents (EOS tokens) but there are {len(hosts)} hosts; "
                        "re-run the tokenize stage (a document whose text contains the EOS string also splits)")
    if len(stream) and not is_eos[-1]:
        raise DataError(f"the stream's last token is {int(stream[-1])}, not EOS {eos_id}: each document must end with EOS")
    if n_docs == 0:
        return stream.copy(), np.ones(len(stream), dtype=bool)
    which, flat, (offsets, lengths) = _meta_table(hosts, eos_id, encode)
    meta_len = lengths[which]  # per document
    shift = np.cumsum(meta_len)  # metadata tokens up to and including each document's
    doc_of = np.concatenate([[0], np.cumsum(is_eos[:-1])])  # document index of each stream token
    dest = np.arange(len(stream), dtype=np.int64) + shift[doc_of]
    total = len(stream) + int(shift[-1])
    out = np.empty(total, dtype=np.result_type(stream.dtype, np.min_scalar_type(int(flat.max(initial=0)))))
    mask = np.zeros(total, dtype=bool)
    out[dest] = stream
    mask[dest] = True
    # metadata token k of document d comes from the unique host's tokens at offsets[which[d]] + k
    doc_rep = np.repeat(np.arange(n_docs), meta_len)
    k = np.arange(len(doc_rep)) - np.repeat(shift - meta_len, meta_len)
    out[~mask] = flat[offsets[which[doc_rep]] + k]
    return out, mask


def _read_hosts(token_dir: Path, name: str, meta: dict) -> list[str]:
    if "hosts" not in meta or not (token_dir / meta["hosts"]).exists():
        raise DataError(f"slice '{name}' in {token_dir} has no hosts file ({name}.hosts.json) for MeCo; "
                        "re-run the tokenize stage")
    path = token_dir / meta["hosts"]
    hosts = json.loads(path.read_text())
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise DataError(f"{path}: expected a JSON list of host strings")
    if len(hosts) != meta["docs"]:
        raise DataError(f"{path}: {len(hosts)} hosts but index.json says the slice has {meta['docs']} documents; "
                        "re-run the tokenize stage")
    return hosts


def load_conditioned(token_dir: Path | str, slices: Sequence[str],
                     tokenizer) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:  # noqa: ANN001 - HF tokenizer
    """Per slice, the URL-conditioned stream and its loss mask: ({slice: tokens}, {slice: mask})."""
    token_dir = Path(token_dir)
    index = json.loads((token_dir / "index.json").read_text())
    streams = load_streams(token_dir, slices)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    tokens, masks = {}, {}
    for name in slices:
        hosts = _read_hosts(token_dir, name, index["slices"][name])
        try:
            tokens[name], masks[name] = condition_stream(streams[name], hosts, index["eos_id"], encode)
        except DataError as e:
            raise DataError(f"slice '{name}' in {token_dir}: {e}") from e
    return tokens, masks


def cooldown_start(steps: int, cooldown_fraction: float = DEFAULT_COOLDOWN_FRACTION) -> int:
    """The first (0-based) step that trains on plain data: steps >= this are the cooldown.

    MeCo: 40000 steps, fraction 0.1 -> 36000. A positive fraction always leaves at least one
    cooldown step and one conditioned step (rounding either away would silently drop a phase);
    0 means no cooldown (every step conditioned).
    """
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise ValueError(f"cooldown_start: steps must be a positive integer, got {steps!r}")
    if not 0.0 <= cooldown_fraction < 1.0:
        raise ValueError(f"cooldown_start: cooldown_fraction must be in [0, 1), got {cooldown_fraction!r} "
                         "(1 would leave no metadata-conditioned steps)")
    n_cool = int(np.floor(steps * cooldown_fraction + 0.5))  # round half up: 40000 * 0.1 -> 4000
    if cooldown_fraction > 0:
        if steps < 2:
            raise ValueError(f"cooldown_start: {steps} step cannot hold both a conditioned phase and a cooldown")
        n_cool = min(max(n_cool, 1), steps - 1)
    return int(steps) - n_cool


def meco_labels(targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``targets`` with IGNORE_INDEX where ``mask`` is False (MeCo data.py).

    A row with no True position keeps its last KEEP_LAST_LABELS targets, as MeCo does, so the
    loss is never a 0/0 NaN (a window entirely inside one long URL prefix).
    """
    if targets.shape != mask.shape:
        raise ValueError(f"targets {tuple(targets.shape)} and mask {tuple(mask.shape)} differ; "
                         "pass mask[:, 1:] for targets = tokens[:, 1:]")
    keep = mask.bool().clone()
    empty = ~keep.any(dim=-1)
    if empty.any():
        keep[empty, -KEEP_LAST_LABELS:] = True
    return targets.masked_fill(~keep, IGNORE_INDEX)


def masked_causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the targets whose mask is True.

    Shapes: logits (B, L, V) from inputs = tokens[:, :-1]; targets = tokens[:, 1:] (B, L);
    mask = loss_mask[:, 1:] (B, L), the mask of the window's tokens shifted like the targets.
    """
    labels = meco_labels(targets, mask)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX)
