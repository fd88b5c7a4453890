"""Document filters, transforms and taggers applied to whole batches (datatrove's rules, vectorised).

One step protocol (:mod:`.step`): every step takes a :class:`~.batch.Batch` and returns a
:class:`~.step.Verdict` (a reason per document, "" = keep; new texts; meta tags; counts). One module
per family, each citing its source:

- :mod:`.gopher` Gopher quality and repetition, :mod:`.c4` C4, :mod:`.fineweb` FineWeb quality,
  :mod:`.language` language id, :mod:`.toxicity` lexicon / classifier / inverse toxicity,
  :mod:`.url` URL block list (rules and thresholds as datatrove 0.10 implements them,
  ``huggingface/datatrove`` @ a649de7, ``src/datatrove/pipeline/filters/*``);
- :mod:`.pii` PII redaction, :mod:`.transforms` boilerplate lines and the age tag;
- :mod:`.tokens` and :mod:`.batch` the shared tokenisation: a batch is split into words, lines and
  paragraphs ONCE, and every rule is a numpy / pandas reduction over those flat arrays;
- :mod:`.chain` the chain built from ``data.filters`` (:func:`~.chain.build_chain`), and
  :mod:`.sharded` the same chain over shards of a corpus.

The names below are the package's public face (``toxicity.classifier:
fluxforge.data.filters:lexicon_scores`` names one of them).
"""

from fluxforge.data.filters.batch import Batch, Pieces
from fluxforge.data.filters.c4 import C4, sentences_per_line
from fluxforge.data.filters.chain import Chain, apply_filters, build_chain, each_filter_alone
from fluxforge.data.filters.fineweb import FineWebQuality
from fluxforge.data.filters.gopher import GopherQuality, GopherRepetition
from fluxforge.data.filters.language import LanguageFilter, identify_languages
from fluxforge.data.filters.pii import PIIRedactor
from fluxforge.data.filters.sharded import filter_in_shards
from fluxforge.data.filters.step import FilterError, Step, Verdict
from fluxforge.data.filters.toxicity import Toxicity, lexicon_scores
from fluxforge.data.filters.transforms import AgeTagger, Boilerplate, strip_boilerplate, tag_age
from fluxforge.data.filters.url import URLBlocklist

__all__ = [
    "C4", "AgeTagger", "Batch", "Boilerplate", "Chain", "FilterError", "FineWebQuality", "GopherQuality",
    "GopherRepetition", "LanguageFilter", "PIIRedactor", "Pieces", "Step", "Toxicity", "URLBlocklist", "Verdict",
    "apply_filters", "build_chain", "each_filter_alone", "filter_in_shards", "identify_languages", "lexicon_scores",
    "sentences_per_line", "strip_boilerplate", "tag_age",
]
