"""What every params section shares: the strict base model, the annotated number types and the error."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo

from fluxforge.errors import FluxForgeError

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
DOMAINS = ("general", "cyber")


def _date_text(value: Any, info: ValidationInfo, with_time: bool) -> Any:
    """A YAML date (unquoted 2024-06-01) as the ISO text it was written as; text must parse as ISO."""
    if isinstance(value, dt.date):  # datetime is a date too
        return value.isoformat()
    if not isinstance(value, str):
        return value  # the str type check says what is wrong
    try:
        (dt.datetime if with_time else dt.date).fromisoformat(value)
    except ValueError:
        example = '"2024-06-01" or "2024-06-01T12:00:00Z"' if with_time else '"2024-06-01"'
        raise ValueError(f"{info.field_name} must be an ISO date, quoted: {example} (got {value!r})") from None
    return value


# Every date-like param takes a YAML date or a string. Messages and examples show the quoted form because DVC
# cannot read a date in params.yaml (it stops with "Unsupported value of type 'date'"; config.loader says so first).
IsoDate = Annotated[str, BeforeValidator(lambda v, info: _date_text(v, info, with_time=False))]  # "2024-06-01"
IsoTimestamp = Annotated[str, BeforeValidator(lambda v, info: _date_text(v, info, with_time=True))]  # or with a time
Factory = TypeVar("Factory", bound=Callable[..., Any])
_BUILDERS: dict[type, Callable[..., Any]] = {}


class ParamsError(FluxForgeError, ValueError):
    """A params file that cannot be used; the message names the file and the key."""


class Strict(BaseModel):
    """Base of every section: unknown keys are errors, values are never coerced, sections are immutable.

    Strict because "400" or 400.0 for an int, or true for a number, is a mistake in a params file, not a value;
    ``extra="forbid"`` because a silently ignored key is a silently ignored experiment.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)


    def build(self) -> Any:
        """The component this section describes (a filter section builds its step, ``data.filters`` its chain).

        Components register their factory with :func:`builds` where they are defined, so config, at the bottom
        of the layers, never imports what it configures; importing the component's package is enough.
        """
        for cls in type(self).__mro__:
            if cls in _BUILDERS:
                return _BUILDERS[cls](self)
        raise ParamsError(f"{type(self).__name__} builds nothing yet: import the package that implements it "
                          f"(e.g. fluxforge.data.filters for the filter sections)")


def builds(section: type[Strict]) -> Callable[[Factory], Factory]:
    """Class or function decorator: ``section(...).build()`` calls the decorated factory with the section."""
    def register(factory: Factory) -> Factory:
        _BUILDERS[section] = factory
        return factory

    return register
