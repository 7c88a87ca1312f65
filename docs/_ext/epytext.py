"""
Sphinx reads ockamtw's docstrings, which are written in epytext (as
Twisted's are): this extension turns their markup into reStructuredText
before autodoc renders them.

  - C{code} -> ``code``, I{text} -> *text*, B{text} -> **text**,
    L{name} -> :py:obj:`name` (a cross-reference), U{url} -> <url>,
    braces nested inside any of them kept;
  - @param x: / @type x: / @ivar x: / @cvar x: / @return: / @rtype: /
    @raise E: / @note: / @see: -> the field lists Sphinx knows.
"""

from __future__ import annotations

import re

_FIELDS = {
    "param": "param",
    "type": "type",
    "ivar": "ivar",
    "cvar": "cvar",
    "var": "var",
    "keyword": "keyword",
    "return": "return",
    "returns": "return",
    "rtype": "rtype",
    "raise": "raises",
    "raises": "raises",
}

_FIELD = re.compile(r"^(\s*)@(\w+)(?:\s+([^:]+?))?:(.*)$")


def _markup(text: str) -> str:
    """
    Epytext's inline markup X{...} (braces balanced) as reStructuredText.
    """
    out = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c in "CILBU" and i + 1 < n and text[i + 1] == "{" and (i == 0 or not text[i - 1].isalnum()):
            depth = 0
            j = i + 1
            while j < n:
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if j < n:
                inner = text[i + 2 : j]
                converted = _inline(c, inner)
                if converted != inner:
                    # Inline markup must stand apart from the word around
                    # it ("L{Address}es"): an escaped space joins them.
                    if out and (out[-1][-1:].isalnum() or out[-1][-1:] in "`*"):
                        out.append("\\ ")
                    if j + 1 < n and (text[j + 1].isalnum() or text[j + 1] in "`*"):
                        converted += "\\ "
                out.append(converted)
                i = j + 1
                continue
        out.append(c)
        i += 1
    return "".join(out)


def _inline(kind: str, inner: str) -> str:
    if kind == "C":
        inner = inner.replace("\n", " ")
        if "``" in inner:
            return inner
        return f"``{inner}``" if inner.strip() == inner and inner else f"``{inner.strip()}``"
    inner = _markup(inner)
    if kind == "L":
        target = inner.split()[0] if inner.split() else inner
        return f":py:obj:`{target.strip('`')}`"
    if kind == "U":
        return f"<{inner}>"
    if kind == "I":
        return f"*{inner.strip()}*" if inner.strip() else inner
    if kind == "B":
        return f"**{inner.strip()}**" if inner.strip() else inner
    return inner


def convert(lines):
    """
    The lines of one docstring, converted in place.
    """
    text = _markup("\n".join(lines))
    out = []
    for line in text.split("\n"):
        m = _FIELD.match(line)
        if m and m.group(2) in _FIELDS:
            indent, field, arg, rest = m.group(1), _FIELDS[m.group(2)], m.group(3), m.group(4)
            head = f":{field} {arg.strip()}:" if arg else f":{field}:"
            out.append(f"{indent}{head}{rest}")
        elif m and m.group(2) in ("note", "see"):
            out.append(f"{m.group(1)}{'Note' if m.group(2) == 'note' else 'See'}: {m.group(4).strip()}")
        else:
            out.append(line)
    # A field list must follow a blank line.
    fixed = []
    for line in out:
        if line.lstrip().startswith(":") and re.match(r"^\s*:\w+( [^:]+)?:", line) and fixed and fixed[-1].strip() \
                and not re.match(r"^\s*:\w+( [^:]+)?:", fixed[-1]) and not fixed[-1].startswith((" ", "\t")):
            fixed.append("")
        fixed.append(line)
    lines[:] = fixed


def _process(app, what, name, obj, options, lines):
    convert(lines)


def setup(app):
    app.connect("autodoc-process-docstring", _process)
    return {"parallel_read_safe": True, "version": "1"}
