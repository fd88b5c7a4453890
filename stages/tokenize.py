"""DVC stage `tokenize`: train a byte-level BPE (or take the base model's tokenizer) and pack each slice."""

import logging

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.data.documents import read_docs
from fluxforge.data.tokenize import pack_corpus, train_tokenizer
from fluxforge.io import write_json
from fluxforge.runtime import stage
from fluxforge.track.runs import stage_run

log = logging.getLogger("fluxforge.stage.tokenize")


@stage
def main(params: Params) -> None:
    docs = read_docs(P.CURATED / "curated.parquet")
    if params.model.from_pretrained:  # a base model only understands its own token ids: its tokenizer packs the data
        from fluxforge.train.model import base_tokenizer

        tok = base_tokenizer(params.model)
    else:
        tok = train_tokenizer(docs["text"].tolist(), params.tokenizer.vocab_size, params.tokenizer.min_frequency)
    metrics = pack_corpus(docs, tok, P.TOKENS, source=params.model.from_pretrained or "trained")
    write_json(P.METRICS / "tokenize.json", metrics)
    with stage_run("tokenize", params, params.tokenizer.model_dump(), inputs={"curated": P.CURATED}) as run:
        run.metrics(metrics)
    log.info("tokenize: vocab %d, %d tokens in %d slices", metrics["vocab_size"], metrics["tokens"],
             len(metrics["tokens_per_slice"]))


if __name__ == "__main__":
    main()
