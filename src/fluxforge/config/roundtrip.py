"""Edits of the YAML files people write (params.yaml, dvc.yaml) that keep their comments, quotes, order and layout.

``fluxforge source add`` writes into both files; a rewrite that dropped the comments or reflowed the lists
would throw away the documentation they carry. ruamel.yaml's round-trip mode (DVC's own YAML library) keeps
them, and :class:`Document` writes lists back in the layout the file already uses, so an edit changes only the
lines it means to.
"""

from __future__ import annotations

import io
from typing import Any

COMMENT_COLUMN = 34  # where params.yaml's end-of-line comments start


class Document:
    """A YAML file's text as a round-trip document (``data``: mappings and lists that keep their comments), dumped
    back in the file's own list layout (dashes under their key, or indented two more; ruamel guesses which)."""

    def __init__(self, text: str) -> None:
        from ruamel.yaml import YAML
        from ruamel.yaml.util import load_yaml_guess_indent

        _, sequence, offset = load_yaml_guess_indent(text)
        self._yaml = YAML()  # round-trip
        self._yaml.indent(mapping=2, sequence=sequence, offset=offset)
        self._yaml.width = 4096  # never reflow a long line
        self._yaml.preserve_quotes = True
        # null as people write it ("workers: null"), not ruamel's empty value
        self._yaml.representer.add_representer(
            type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
        self.data: Any = self._yaml.load(text)

    def dump(self) -> str:
        out = io.StringIO()
        self._yaml.dump(self.data, out)
        return out.getvalue()


def quoted(text: str) -> Any:
    """``text`` written in double quotes (a date must be, or YAML reads it as a date and DVC cannot read that)."""
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    return DoubleQuotedScalarString(text)


def mapping(items: dict[str, Any], comments: dict[str, str], column: int = COMMENT_COLUMN) -> Any:
    """A round-trip mapping of ``items`` with an end-of-line comment on each key that ``comments`` names."""
    from ruamel.yaml.comments import CommentedMap

    node = CommentedMap(items)
    for key, comment in comments.items():
        if key in node:
            node.yaml_add_eol_comment(comment, key, column=column)
    return node
