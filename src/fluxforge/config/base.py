"""What every params section shares: the strict base model, the annotated number types and the error."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from fluxforge.errors import FluxForgeError

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
DOMAINS = ("general", "cyber")


class ParamsError(FluxForgeError, ValueError):
    """A params file that cannot be used; the message names the file and the key."""


class Strict(BaseModel):
    """Base of every section: unknown keys are errors, values are never coerced, sections are immutable.

    Strict because "400" or 400.0 for an int, or true for a number, is a mistake in a params file, not a value;
    ``extra="forbid"`` because a silently ignored key is a silently ignored experiment.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)
