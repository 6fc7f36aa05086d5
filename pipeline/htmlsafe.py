"""Putting data into our HTML pages safely: JSON inside a ``<script>`` element, and one-pass templates.

Why not ``json.dumps`` alone: inside ``<script>`` the HTML tokenizer, not the JSON parser, decides
where the element ends. ``</script`` ends it, and ``<!--`` followed by ``<script`` switches the
tokenizer into a state where the page's own closing tag no longer closes the element, so a row whose
text holds ``<!--<script>`` swallowed the whole report. Escaping ``<``, ``>`` and ``&`` as JSON
``\\u`` escapes (they can only occur inside JSON strings) leaves nothing the tokenizer reacts to, and
the data reads back unchanged. U+2028/U+2029 are escaped too, for scripts that embed JSON as a
JavaScript literal rather than parse it.
"""
from __future__ import annotations

import json
import re
from typing import Any

_SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_SCRIPT_UNSAFE_RE = re.compile("[<>&\u2028\u2029]")


def script_json(value: Any) -> str:
    """``value`` as JSON that can sit inside any ``<script>`` element (data island or code)."""
    text = json.dumps(value, default=str, ensure_ascii=False)
    return _SCRIPT_UNSAFE_RE.sub(lambda m: _SCRIPT_UNSAFE[m.group(0)], text)


def fill(template: str, **values: str) -> str:
    """Replace each ``__NAME__`` placeholder with ``values[NAME]`` in one pass, so a value that happens
    to contain another placeholder's name (a job folder called ``__DATA__``) is never expanded."""
    pattern = re.compile("|".join(f"__{re.escape(name)}__" for name in values))
    return pattern.sub(lambda m: values[m.group(0)[2:-2]], template)
