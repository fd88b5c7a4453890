"""What every params section shares: the strict base model, the annotated number types and the error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from fluxforge.errors import FluxForgeError

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
DOMAINS = ("general", "cyber")
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
