"""``world``: the generated default corpus (people, organisations, products) and its planted defects."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from fluxforge.config.base import DOMAINS, Fraction, NonNegInt, PosInt, Strict


class GeneralWorld(Strict):
    people: PosInt = 90
    orgs: PosInt = 20
    places: PosInt = 14
    new_people_per_year: NonNegInt = 14
    change_fraction: Fraction = 0.25  # share of mutable facts (employer, CEO) that change each year
    docs_per_new_fact_entity: PosInt = 5  # docs for an entity that is new or changed in a slice
    docs_per_known_entity: NonNegInt = 1  # re-coverage of unchanged entities in later slices


class CyberWorld(Strict):
    products_per_year: PosInt = 30
    vendors: PosInt = 14
    docs_per_product: PosInt = 6


class DefectRates(Strict):
    """Share of clean documents that receive each planted defect (labels kept aside)."""

    boilerplate: Fraction = 0.05
    repetition: Fraction = 0.02
    symbols: Fraction = 0.02
    short: Fraction = 0.02
    lorem: Fraction = 0.02
    toxic: Fraction = 0.02
    exact_dup: Fraction = 0.03
    near_dup: Fraction = 0.03
    foreign: Fraction = 0.02        # a document in German, Spanish or French
    blocked_url: Fraction = 0.02    # a clean paraphrase served from a blocked host
    pii: Fraction = 0.02            # emails, phone numbers and IPs inserted into a clean document


class WorldConfig(Strict):
    seed: int = 1234
    years: list[int] = Field(default_factory=lambda: [2021, 2022, 2023, 2024], min_length=1)
    general: GeneralWorld = GeneralWorld()
    cyber: CyberWorld = CyberWorld()
    # entities whose Q/A form is in training; the others are evaluated (both groups must exist)
    qa_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.5
    defects: DefectRates = DefectRates()

    @model_validator(mode="after")
    def _years_sorted(self) -> WorldConfig:
        if sorted(set(self.years)) != list(self.years):
            raise ValueError("years must be strictly increasing")
        return self

    def slices(self) -> list[str]:
        return [f"{d}-{y}" for d in DOMAINS for y in self.years]
