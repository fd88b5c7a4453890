"""The one word tokeniser every filter shares, and the character classes the rules count.

WHY one regex: datatrove re-tokenises every document with spaCy inside every filter, which is most of
its cost. Here :class:`~fluxforge.data.filters.batch.Batch` splits a batch once with :data:`WORD_RE`,
a compiled regex that approximates spaCy's English tokenizer (punctuation split off words,
``n't``/``'s`` split, digits joined by ``-`` kept whole); ``benchmarks/filters_vs_datatrove.py``
measures the agreement.
"""

from __future__ import annotations

import re

# One token regex for the whole batch, emulating spaCy's English tokenizer (which datatrove uses): a
# whitespace chunk loses its leading/trailing punctuation, and is split only at spaCy's infixes: "-" "/" ":"
# "=" "<" ">" between a letter/digit and a letter, "," between letters, "." between lower and upper case,
# "-" "+" "*" "^" between digits, ".." runs. So "CVE-2014" "index.php" "slab.h:554" "2024/01/04" "Op'art" stay
# whole, "read/write" "use-after-free" "end.The" split; "U.S." "e.g." "St." stay whole, ca|n't, it|'s, can|not.
_INFIX = (r"(?<=[^\W_])[-–—:<>=/](?=[^\W\d_])|(?<=[a-z])\.(?=[A-Z])|(?<=[^\W\d_]),(?=[^\W\d_])"
          r"|(?<=\d)[-+*^](?=[\d-])|\.\.|…|n['’]t(?!\w)|['’](?:[sSdDmM]|re|ve|ll|RE|VE|LL)(?!\w)")
WORD_RE = re.compile(
    r"https?://\S+?(?=[.,;:!?)\]\"'”’]*(?:\s|$))"  # URLs, without trailing punctuation
    r"|@[-.,]@"                                   # WikiText's joins
    r"|\.\.+|…"                                    # an ellipsis is one token
    r"|(?<!\w)(?:[^\W\d_]\.)+(?![^\W\d_])"          # H. U.S. e.g.
    r"|(?<!\w)(?:St|Mr|Mrs|Ms|Dr|Jr|Sr|vs|etc|Inc|Ltd|Co|Jan|Feb|Aug|Sept|Oct|Nov|Dec)\.(?=\s|$)"
    r"|(?i:can)(?=not\b)"                          # can|not
    r"|[^\W_]+(?=[.,;:!?)\]\"'”’]*(?:\s|$))"        # fast path: a plain word, maybe with trailing punctuation
    r"|\w+?(?=n['’]t(?!\w))|n['’]t(?!\w)"            # ca|n't
    r"|['’](?:[sSdDmM]|re|ve|ll|RE|VE|LL)(?!\w)"    # it|'s
    rf"|(?:(?<![\w.])[./])?\w(?:(?:(?!{_INFIX})\S)*\w)?\+*"  # a chunk up to an infix; ".NET" "/api" keep the dot/slash
    r"|\S"                                          # any other symbol is its own token
)
SYMBOL_TOKEN = r"[\W_]+"          # a token with no letter or digit ("symbol word" in Gopher)
ALPHA = r"[^\W\d_]"                # one alphabetic character
# Unicode sentence terminals (datatrove's TERMINAL_PUNCTUATION is the Unicode Sentence_Terminal set)
TERMINAL = ".?!\u3002\uff01\uff1f\uff0e\ufe52\ufe56\ufe57\uff61\u0589\u061f\u06d4\u0700\u0701\u0702\u07f9\u0964\u0965" \
    "\u104a\u104b\u1362\u1367\u1368\u166e\u1803\u1809\u1944\u1945\u203c\u203d\u2047\u2048\u2049\u2e2e\u2e3c\ua4ff\ua60e\ua60f"
ENDS_TERMINAL = f"[{re.escape(TERMINAL)}]$"
TERMINAL_SET = frozenset(TERMINAL)
PUNCT_TOKEN = r"[!\"#%&'()*,\-./:;?@\[\\\]_{}¡§«¶·»¿‐‑‒–—―‘’‚“”„†‡•…‰′″‹›※‼‽⁂⁇⁈⁉、。〃〈〉《》「」『』【】〔〕〜・！＂＃％＆＇（）＊，－．／：；？＠［＼］＿｛｝｡｢｣､]+"  # Unicode P*
