"""The embedded default world: a generated corpus whose every fact is known.

Why generate instead of download: the platform must run offline, and every stage
(filters, dedup, training, continual updates, evaluation) needs ground truth to be
*measured* rather than eyeballed. The world has two domains (general encyclopedic
facts; cyber advisories), time slices in which facts change and entities appear,
planted defects whose labels live in a side table (never in the text), and
evaluation sets built from the same facts with phrasings that training never shows.

Design choices that make tiny models learn measurable facts (see
``shared/reference/world-notes.md``): each fact recurs in many paraphrases, and
question/answer documents are in the training mix for a ``qa_fraction`` of the
entities; multiple-choice evaluation asks about the *other* entities, whose Q/A
form was never seen.
"""

from __future__ import annotations

import json
import random
import re
import zlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from fluxforge.config import WorldConfig
from fluxforge.io import atomic_dir, write_jsonl
from fluxforge.world import templates as T

HOSTS = {
    "encyclopedia": "wiki.fluxworld.org",
    "news": "news.fluxworld.net",
    "advisories": "advisories.secfeed.example",
    "forum": "forum.chatterbox.example",
}

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "th", "tr", "gr", "pl"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
_CODAS = ["", "", "n", "r", "l", "s", "x", "th", "nd", "rk"]


@dataclass
class Fact:
    subject: str
    relation: str
    object: str
    domain: str
    year_from: int
    year_to: int  # inclusive; last year the fact holds
    split: str  # "train" = Q/A form seen in training, "eval" = held out for questions
    previous: str = ""  # the value it replaced, for facts that changed


@dataclass
class Doc:
    doc_id: str
    text: str
    url: str
    timestamp: str
    domain: str
    source: str
    slice: str
    defect: str = "none"
    cluster_id: str = ""
    jaccard: float = 0.0  # word 5-gram Jaccard with the cluster's original (duplicates only)
    facts: list[str] = field(default_factory=list)


class _Names:
    """Unique pronounceable names from a seeded RNG."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: tuple[int, int] = (2, 3)) -> str:
        while True:
            n = self.rng.randint(*syllables)
            w = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(n)) + self.rng.choice(_CODAS)
            w = w.capitalize()
            if w not in self.used and 4 <= len(w) <= 11:
                self.used.add(w)
                return w

    def person(self) -> str:
        return f"{self.word((1, 2))} {self.word((2, 3))}"

    def org(self) -> str:
        return f"{self.word()} {self.rng.choice(T.ORG_SUFFIX)}"

    def product(self) -> str:
        return f"{self.word()} {self.rng.choice(T.PRODUCT_KINDS)}"


class WorldBuilder:
    def __init__(self, cfg: WorldConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.names = _Names(self.rng)
        self.facts: list[Fact] = []
        self.docs: list[Doc] = []
        self._doc_counter = 0
        self._prev: dict[tuple[str, str, int], str] = {}  # (subject, relation, year) -> replaced value

    # ------------------------------------------------------------------ facts
    def _split(self) -> str:
        return "train" if self.rng.random() < self.cfg.qa_fraction else "eval"

    def build_facts(self) -> None:
        g, years = self.cfg.general, self.cfg.years
        first, last = years[0], years[-1]
        places = [self.names.word() for _ in range(g.places)]
        orgs = [self.names.org() for _ in range(g.orgs)]
        self.places, self.orgs = places, orgs
        people_by_year: dict[int, list[str]] = {}
        people: list[str] = []
        split: dict[str, str] = {}
        employer: dict[str, str] = {}
        for y in years:
            count = g.people if y == first else g.new_people_per_year
            new = [self.names.person() for _ in range(count)]
            for p in new:
                split[p] = self._split()
                self.facts.append(Fact(p, "born_in", self.rng.choice(places), "general", y, last, split[p]))
                self.facts.append(Fact(p, "profession", self.rng.choice(T.PROFESSIONS), "general", y, last, split[p]))
                employer[p] = self.rng.choice(orgs)
            people += new
            people_by_year[y] = list(people)
        self.people = people
        for o in orgs:
            split[o] = self._split()
            self.facts.append(Fact(o, "hq_in", self.rng.choice(places), "general", first, last, split[o]))
            self.facts.append(Fact(o, "industry", self.rng.choice(T.INDUSTRIES), "general", first, last, split[o]))
        # mutable facts: employer of each person, CEO of each org; a share changes every year
        intro = {p: y for y in reversed(years) for p in people_by_year[y]}
        current_emp = {p: (employer[p], intro[p]) for p in people}
        ceo = {o: (self.rng.choice(people_by_year[first]), first) for o in orgs}
        for prev, y in zip(years, years[1:]):  # years need not be consecutive
            for p in people_by_year[prev]:
                if self.rng.random() < g.change_fraction:
                    old, since = current_emp[p]
                    self.facts.append(Fact(p, "works_for", old, "general", since, prev, split[p],
                                           self._prev.get((p, "works_for", since), "")))
                    new = self.rng.choice([o for o in orgs if o != old])
                    current_emp[p] = (new, y)
                    self._prev[(p, "works_for", y)] = old
            for o in orgs:
                if self.rng.random() < g.change_fraction:
                    old, since = ceo[o]
                    self.facts.append(Fact(o, "ceo", old, "general", since, prev, split[o], self._prev.get((o, "ceo", since), "")))
                    new = self.rng.choice([p for p in people_by_year[prev] if p != old])
                    ceo[o] = (new, y)
                    self._prev[(o, "ceo", y)] = old
        for p, (org, since) in current_emp.items():
            self.facts.append(Fact(p, "works_for", org, "general", since, last, split[p], self._prev.get((p, "works_for", since), "")))
        for o, (person, since) in ceo.items():
            self.facts.append(Fact(o, "ceo", person, "general", since, last, split[o], self._prev.get((o, "ceo", since), "")))
        # cyber: products appear each year with static facts
        c = self.cfg.cyber
        vendors = [self.names.org() for _ in range(c.vendors)]
        groups = sorted({f"{a} {n}" for a in T.THREAT_ADJ for n in T.THREAT_NOUN})
        self.rng.shuffle(groups)
        self.vendors, self.groups = vendors, groups[:16]
        self.products: dict[int, list[str]] = {}
        for y in years:
            self.products[y] = [self.names.product() for _ in range(c.products_per_year)]
            for prod in self.products[y]:
                s = self._split()
                self.facts.append(Fact(prod, "vendor", self.rng.choice(vendors), "cyber", y, last, s))
                self.facts.append(Fact(prod, "weakness", self.rng.choice(T.WEAKNESSES), "cyber", y, last, s))
                self.facts.append(Fact(prod, "exploited_by", self.rng.choice(self.groups), "cyber", y, last, s))
                self.facts.append(Fact(prod, "mitigation", self.rng.choice(T.MITIGATIONS), "cyber", y, last, s))

    def pool(self, relation: str) -> list[str]:
        return {
            "born_in": self.places, "hq_in": self.places, "profession": T.PROFESSIONS,
            "works_for": self.orgs, "industry": T.INDUSTRIES, "ceo": self.people,
            "vendor": self.vendors, "weakness": T.WEAKNESSES, "exploited_by": self.groups,
            "mitigation": T.MITIGATIONS,
        }[relation]

    def facts_at(self, year: int) -> dict[str, list[Fact]]:
        by_subject: dict[str, list[Fact]] = {}
        for f in self.facts:
            if f.year_from <= year <= f.year_to:
                by_subject.setdefault(f.subject, []).append(f)
        return by_subject

    # ------------------------------------------------------------------ documents
    def _stamp(self, year: int) -> str:
        start = datetime(year, 1, 1, tzinfo=UTC)
        return (start + timedelta(seconds=self.rng.randrange(365 * 86400))).isoformat()

    def _new_doc(self, text: str, source: str, domain: str, year: int, path: str, **kw) -> Doc:
        self._doc_counter += 1
        did = f"w{self.cfg.seed}-{self._doc_counter:07d}"
        url = f"https://{HOSTS[source]}/{path}/{did}"
        doc = Doc(did, text, url, self._stamp(year), domain, source, f"{domain}-{year}", **kw)
        self.docs.append(doc)
        return doc

    def _render(self, subject: str, facts: list[Fact], heldout: bool = False, variant: int | None = None) -> str:
        """One document about ``subject``. Documents ``variant`` 0, 1, 2... of the same entity use
        different phrasings of each fact, so they are paraphrases rather than near duplicates."""
        domain = facts[0].domain
        filler = T.CYBER_FILLER if domain == "cyber" else T.GENERAL_FILLER
        sentences = []
        for f in self.rng.sample(facts, len(facts)):
            train, held, _ = T.RELATIONS[f.relation]
            if heldout:
                tpl = held
            elif variant is None:
                tpl = self.rng.choice(train)
            else:
                tpl = train[(variant + self._offset(subject, f.relation)) % len(train)]
            sentences.append(tpl.format(s=f.subject, o=f.object))
        body = sentences + self.rng.sample(filler, 3)
        self.rng.shuffle(body)
        title = f"Security advisory: {subject}" if domain == "cyber" else subject
        body = [_ARTICLE.sub(r"an \1", s) for s in body]
        return title + "\n" + " ".join(body[:3]) + "\n" + " ".join(body[3:])

    def _offset(self, subject: str, relation: str) -> int:
        return zlib.crc32(f"{self.cfg.seed}|{subject}|{relation}".encode())

    def _render_qa(self, subject: str, facts: list[Fact]) -> str:
        lines = [f"Frequently asked questions about {subject}."]
        for f in self.rng.sample(facts, len(facts)):
            lines.append(f"Question: {T.RELATIONS[f.relation][2].format(s=subject)}\nAnswer: {f.object}.")
        filler = T.CYBER_FILLER if facts[0].domain == "cyber" else T.GENERAL_FILLER
        lines.append(" ".join(self.rng.sample(filler, 2)))
        return "\n".join(lines)

    def build_docs(self) -> list[tuple[str, str, str, str]]:
        """Training documents per slice; returns held-out (domain, slice, subject, text) for perplexity."""
        g, c, years = self.cfg.general, self.cfg.cyber, self.cfg.years
        heldout: list[tuple[str, str, str, str]] = []
        seen: set[str] = set()
        for y in years:
            now = self.facts_at(y)
            for subject, facts in now.items():
                domain = facts[0].domain
                fresh = subject not in seen or any(f.year_from == y for f in facts)
                if domain == "cyber":
                    if not any(f.year_from == y for f in facts):
                        continue
                    n = c.docs_per_product
                else:
                    n = g.docs_per_new_fact_entity if fresh else g.docs_per_known_entity
                seen.add(subject)
                for k in range(n):
                    source = "advisories" if domain == "cyber" else self.rng.choice(["encyclopedia"] * 7 + ["news"] * 3)
                    doc = self._new_doc(self._render(subject, facts, variant=k + y), source, domain, y, "wiki" if source == "encyclopedia" else "a")
                    doc.facts = [f"{f.subject}|{f.relation}|{f.object}" for f in facts]
                if n and facts[0].split == "train" and fresh:
                    src = "advisories" if domain == "cyber" else "encyclopedia"
                    self._new_doc(self._render_qa(subject, facts), src, domain, y, "faq")
                if fresh and self.rng.random() < 0.5:
                    heldout.append((domain, f"{domain}-{y}", subject, self._render(subject, facts, heldout=True)))
        return heldout

    # ------------------------------------------------------------------ defects
    def plant_defects(self) -> None:
        rates = self.cfg.defects
        clean = [d for d in self.docs]
        lex = [w for w in _lexicon() if not w.endswith("s")]
        n = len(clean)

        def pick(rate: float) -> list[Doc]:
            return self.rng.sample(clean, min(len(clean), round(rate * n)))

        for d in pick(rates.boilerplate):
            if d.defect == "none":
                lines = d.text.split("\n")
                lines.insert(1, self.rng.choice(T.BOILERPLATE_LINES))
                lines.append(self.rng.choice(T.BOILERPLATE_LINES))
                d.text, d.defect = "\n".join(lines), "boilerplate"
        for d in pick(rates.toxic):
            if d.defect == "none":
                a, b = self.rng.sample(lex, 2)
                d.text += f"\nOnly a {a} would believe this, what a {b}."
                d.defect = "toxic"
        for d in pick(rates.blocked_url):  # the same clean text, served from a blocked host
            if d.defect == "none":
                d.url = f"https://{self.rng.choice(T.BLOCKED_HOSTS)}/{d.url.split('/', 3)[3]}"
                d.defect = "blocked_url"
        for d in pick(rates.pii):  # kept, but these strings must be redacted
            if d.defect == "none":
                line = self.rng.choice(T.PII_LINES).format(email=self.rng.choice(T.PII_EMAILS),
                                                           phone=self.rng.choice(T.PII_PHONES), ip=self.rng.choice(T.PII_IPS))
                d.text += "\n" + line
                d.defect = "pii"
        for _ in range(round(rates.foreign * n)):
            base = self.rng.choice(clean)
            lang = self.rng.choice(sorted(T.FOREIGN_SENTENCES))
            sents = T.FOREIGN_SENTENCES[lang]
            body = " ".join(self.rng.sample(sents, len(sents)))  # all eight, in a random order: ~100 words
            self._new_doc(body, "news", base.domain, int(base.slice.rsplit("-", 1)[1]), "intl", defect="foreign")
        for kind, rate in (("repetition", rates.repetition), ("symbols", rates.symbols), ("short", rates.short), ("lorem", rates.lorem)):
            for _ in range(round(rate * n)):
                base = self.rng.choice(clean)
                domain, year = base.domain, int(base.slice.rsplit("-", 1)[1])
                self._new_doc(self._junk(kind, base), "forum", domain, year, "t", defect=kind)
        originals = [d for d in clean if d.defect == "none"]
        for kind, rate in (("exact_dup", rates.exact_dup), ("near_dup", rates.near_dup)):
            for orig in self.rng.sample(originals, min(len(originals), round(rate * n))):
                text = orig.text if kind == "exact_dup" else self._perturb(orig.text)
                year = int(orig.slice.rsplit("-", 1)[1])
                src = "news" if orig.domain == "general" else "forum"
                dup = self._new_doc(text, src, orig.domain, year, "mirror", defect=kind, cluster_id=orig.doc_id)
                dup.jaccard = jaccard(text, orig.text)
                dup.facts = orig.facts
                orig.cluster_id = orig.doc_id

    def _junk(self, kind: str, base: Doc) -> str:
        if kind == "repetition":
            line = self.rng.choice(["Great post, thanks for sharing!", "Does anyone have the link?", "Same problem here, any update?"])
            return base.text.split("\n")[0] + "\n" + "\n".join([line] * self.rng.randint(8, 14)) + "\nAnyway, that is all I have to say about it."
        if kind == "symbols":
            spam = " ".join(self.rng.choice(["###", "$$$", "#win", "#free", ">>>", "###!!!"]) for _ in range(30))
            return f"{spam}\nBest deals on {base.text.split(chr(10))[0]} ### click ### now ###\n{spam}"
        if kind == "short":
            return self.rng.choice(T.SHORT_DOCS)
        return T.LOREM + "\n" + T.LOREM

    def _perturb(self, text: str) -> str:
        """A near duplicate: one word in the middle replaced (word 5-gram Jaccard about (n-5)/(n+5))."""
        words = text.split(" ")
        i = self.rng.randrange(5, max(6, len(words) - 5))
        words[i] = self.rng.choice(["also", "now", "still", "then"])
        return " ".join(words)

    # ------------------------------------------------------------------ evaluation sets
    def build_mcq(self) -> list[dict]:
        questions: list[dict] = []
        eval_facts = [f for f in self.facts if f.split == "eval"]
        positions: list[int] = []
        for f in eval_facts:
            pool = [o for o in self.pool(f.relation) if o not in (f.object, f.previous) and o != f.subject]
            distract = ([f.previous] if f.previous else []) + self.rng.sample(pool, 3 - bool(f.previous))
            if not positions:
                positions = [0, 1, 2, 3]
                self.rng.shuffle(positions)
            pos = positions.pop()
            options = list(distract)
            self.rng.shuffle(options)
            options.insert(pos, f.object)
            q = T.RELATIONS[f.relation][2].format(s=f.subject)
            questions.append({
                "id": f"mcq-{len(questions):05d}", "domain": f.domain, "slice": f"{f.domain}-{f.year_from}",
                "relation": f.relation, "subject": f.subject, "question": f"Question: {q}\nAnswer:",
                "options": options, "answer": pos, "changed": bool(f.previous),
                "valid_until": f.year_to,
            })
        return questions


_ARTICLE = re.compile(r"\ba ([aeiou])")
_NOT_WORD = re.compile(r"[^\w\s]")


def jaccard(a: str, b: str, n: int = 5) -> float:
    """Word n-gram Jaccard of two texts, lowercased and without punctuation: the similarity a near
    duplicate is planted with (labels' ``jaccard``). The world's own measure, kept independent of the
    dedup it grades; it is the definition of ``fluxforge.data.dedup.jaccard``, the reference MinHash estimates."""
    def shingles(text: str) -> set[str]:
        words = _NOT_WORD.sub(" ", text.lower()).split()
        return {" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}

    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / max(1, len(sa | sb))
_LEXICON: list[str] | None = None


def _lexicon() -> list[str]:
    global _LEXICON
    if _LEXICON is None:
        path = Path(__file__).resolve().parent.parent / "data" / "assets" / "toxic_lexicon.txt"
        _LEXICON = [w.strip() for w in path.read_text().splitlines() if w.strip() and not w.startswith("#")]
    return _LEXICON


def generate_world(cfg: WorldConfig, out: Path | str) -> dict:
    """Write the world to ``out`` (atomically) and return its summary."""
    b = WorldBuilder(cfg)
    b.build_facts()
    heldout = b.build_docs()
    b.plant_defects()
    mcq = b.build_mcq()
    b.rng.shuffle(b.docs)  # sources are not sorted by slice or defect
    summary = {
        "seed": cfg.seed,
        "years": cfg.years,
        "documents": len(b.docs),
        "facts": len(b.facts),
        "mcq": len(mcq),
        "heldout_docs": len(heldout),
        "defects": pd.Series([d.defect for d in b.docs]).value_counts().to_dict(),
        "docs_per_slice": pd.Series([d.slice for d in b.docs]).value_counts().sort_index().to_dict(),
        "mcq_per_slice": pd.Series([q["slice"] for q in mcq]).value_counts().sort_index().to_dict(),
    }
    with atomic_dir(Path(out)) as tmp:
        (tmp / "sources").mkdir()
        for source in HOSTS:
            rows = [
                {"doc_id": d.doc_id, "text": d.text, "url": d.url, "timestamp": d.timestamp, "domain": d.domain}
                for d in b.docs if d.source == source
            ]
            write_jsonl(tmp / "sources" / f"{source}.jsonl", rows)
        pd.DataFrame(
            [{"doc_id": d.doc_id, "source": d.source, "slice": d.slice, "defect": d.defect, "cluster_id": d.cluster_id, "jaccard": d.jaccard,
              "facts": "\n".join(d.facts)} for d in b.docs]
        ).to_parquet(tmp / "labels.parquet", index=False)
        pd.DataFrame([asdict(f) for f in b.facts]).to_parquet(tmp / "facts.parquet", index=False)
        (tmp / "eval").mkdir()
        write_jsonl(tmp / "eval" / "mcq.jsonl", mcq)
        write_jsonl(tmp / "eval" / "heldout.jsonl",
                    [{"domain": d, "slice": s, "subject": subj, "text": t} for d, s, subj, t in heldout])
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
