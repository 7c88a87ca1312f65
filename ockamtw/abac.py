"""
Attribute-based access control: the policy language of Ockam 0.83
(C{ockam_abac} 0.17), as docs section 12 of C{ockam-project-api.md} states it.

A policy is an s-expression such as C{(= resource.project_id
subject.project_id)}.  This module has the four parts of the language:

  - the lexer and parser (L{parse}, L{Policy.parse}): the token rules of the
    C{wast} 55 lexer that 0.83 uses, and the 0.83 parser on top of them.
    Bad text raises L{PolicyError}, saying what is wrong and where.  Unlike
    0.83 (which quietly wraps what came before an extra C{)} or C{]} into a
    list), every unbalanced bracket is an error;
  - the values (L{Str}, L{Int}, L{Float}, L{Bool}, L{Ident}, L{Seq},
    L{List}); C{str(expr)} is 0.83's text form (what C{ockam policy get}
    prints);
  - the evaluator (L{evaluate}, L{equals}, L{compare}) with 0.83's exact
    semantics, quirks included (the last argument of C{and}/C{or} is not
    type-checked, C{!=} has no arity check, C{exists?} does not evaluate its
    arguments).  It raises only the five L{EvalError} kinds: L{Unbound},
    L{Unknown}, L{InvalidType}, L{TypeMismatch}, L{Malformed};
  - the decision (L{subject_env}, L{judge}, L{decide}) and an access policy
    for workers (L{PolicyAccess}, see L{ockamtw.access}).

Display and parsing are inverse (C{parse(str(e)) == e}) for every
expression the parser can produce, with one exception inherited from 0.83:
a string holding NUL displays it as C{\\0}, Rust's form, which the lexer
reads as the start of a two-hex-digit escape.

Everything here is a pure function of its arguments; parsing, evaluation,
display and comparison use explicit stacks (as 0.83 does), so deeply nested
text cannot exhaust Python's recursion limit.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple, Union

from zope.interface import implementer

from .errors import OckamError
from .interfaces import IAccessPolicy

__all__ = [
    "PolicyError",
    "EvalError",
    "Unbound",
    "Unknown",
    "InvalidType",
    "TypeMismatch",
    "Malformed",
    "Expr",
    "Str",
    "Int",
    "Float",
    "Bool",
    "Ident",
    "Seq",
    "List",
    "UNIT",
    "OPERATORS",
    "parse",
    "evaluate",
    "equals",
    "compare",
    "to_expr",
    "Policy",
    "HANDLE_MESSAGE",
    "DEFAULT_POLICY_TEXT",
    "ENROLLER_POLICY_TEXT",
    "default_policy",
    "enroller_policy",
    "resource_env",
    "subject_env",
    "Decision",
    "judge",
    "decide",
    "PolicyAccess",
]

#: The action of every 0.83 access check.
HANDLE_MESSAGE = "handle_message"
#: What a 0.83 member node stores for a portal that has no policy (12.6).
DEFAULT_POLICY_TEXT = "(= resource.project_id subject.project_id)"
#: What the 0.83 authority requires of enroller-only services (6.2).
ENROLLER_POLICY_TEXT = '(and (= resource.project_id subject.project_id) (= subject.ockam-role "enroller"))'
#: The operators the evaluator knows.
OPERATORS = ("and", "or", "not", "if", "<", ">", "=", "!=", "member?", "exists?")

_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1


# --- errors -----------------------------------------------------------------


class PolicyError(OckamError, ValueError):
    """
    Policy text that does not parse (or a value that cannot be a policy
    value).  C{offset} is the character index in the text where the problem
    is, C{line} and C{column} the same place counted from 1 (all C{None}
    when there is no place to point at).
    """

    def __init__(self, message: str, offset: Optional[int] = None, line: Optional[int] = None, column: Optional[int] = None) -> None:
        super().__init__(message)
        self.offset = offset
        self.line = line
        self.column = column


class EvalError(OckamError):
    """
    A policy could not be evaluated.  C{kind} is 0.83's name of the error
    (C{"Unbound"}, C{"Unknown"}, C{"InvalidType"}, C{"TypeMismatch"},
    C{"Malformed"}); the decision denies on every one of them.
    """

    kind = "EvalError"


class Unbound(EvalError):
    """
    An identifier that the environment does not bind (C{name}).
    """

    kind = "Unbound"

    def __init__(self, name: str) -> None:
        super().__init__(f"unbound identifier: {name}")
        self.name = name


class Unknown(EvalError):
    """
    A list whose head names no operator (C{name}).
    """

    kind = "Unknown"

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown operator: {name}")
        self.name = name


class InvalidType(EvalError):
    """
    A value of the wrong kind where an operator needs a particular one
    (C{expr}; C{reason} says what was expected).
    """

    kind = "InvalidType"

    def __init__(self, expr: "Expr", reason: str) -> None:
        super().__init__(f"invalid type of expression {expr}: {reason}")
        self.expr = expr
        self.reason = reason


class TypeMismatch(EvalError):
    """
    Two values of different kinds compared with each other (C{left},
    C{right}).
    """

    kind = "TypeMismatch"

    def __init__(self, left: "Expr", right: "Expr") -> None:
        super().__init__(f"{left} and {right} are not of the same type")
        self.left = left
        self.right = right


class Malformed(EvalError):
    """
    An operator applied to the wrong number of arguments (or, in this
    implementation only, an environment whose bindings refer to themselves,
    on which 0.83 would loop forever).
    """

    kind = "Malformed"

    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed expression: {reason}")
        self.reason = reason


# --- values -------------------------------------------------------------------


class Expr:
    """
    A policy expression (one of L{Str}, L{Int}, L{Float}, L{Bool},
    L{Ident}, L{Seq}, L{List}).  Immutable.

    C{str(expr)} is 0.83's text form.  C{==} is structural identity (the
    same kinds and values, C{nan} equal to itself, C{0.0} not equal to
    C{-0.0}); the language's own equality is L{equals}.
    """

    __slots__ = ()

    def __str__(self) -> str:
        return _display(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {_display(self)}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Expr):
            return NotImplemented
        return _same(self, other)

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._shallow_key()))

    def _shallow_key(self):
        raise NotImplementedError()

    def _atom(self) -> str:
        raise NotImplementedError()


class _Scalar(Expr):
    __slots__ = ("value",)

    def __init__(self, value) -> None:
        object.__setattr__(self, "value", value)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _shallow_key(self):
        return self.value


class Str(_Scalar):
    """
    A string (C{value}: text).
    """

    __slots__ = ()

    def __init__(self, value: str) -> None:
        if type(value) is not str:
            raise PolicyError(f"a Str holds text, not {type(value).__name__}")
        super().__init__(value)

    def _atom(self) -> str:
        return _debug_str(self.value)


class Int(_Scalar):
    """
    A signed 64-bit integer (C{value}).
    """

    __slots__ = ()

    def __init__(self, value: int) -> None:
        if type(value) is not int:
            raise PolicyError(f"an Int holds an integer, not {type(value).__name__}")
        if not _I64_MIN <= value <= _I64_MAX:
            raise PolicyError(f"integer {value} does not fit in 64 bits")
        super().__init__(value)

    def _atom(self) -> str:
        return str(self.value)


class Float(_Scalar):
    """
    A 64-bit float (C{value}).
    """

    __slots__ = ()

    def __init__(self, value: float) -> None:
        if type(value) is not float:
            raise PolicyError(f"a Float holds a float, not {type(value).__name__}")
        super().__init__(value)

    def _atom(self) -> str:
        return _debug_float(self.value)

    def _shallow_key(self):
        return "nan" if math.isnan(self.value) else self.value


class Bool(_Scalar):
    """
    C{true} or C{false} (C{value}).
    """

    __slots__ = ()

    def __init__(self, value: bool) -> None:
        if type(value) is not bool:
            raise PolicyError(f"a Bool holds a bool, not {type(value).__name__}")
        super().__init__(value)

    def _atom(self) -> str:
        return "true" if self.value else "false"


class Ident(_Scalar):
    """
    An identifier (C{value}, also C{name}): an operator at the head of a
    list, else a name looked up in the environment.
    """

    __slots__ = ()

    def __init__(self, name: str) -> None:
        if type(name) is not str or not name:
            raise PolicyError("an Ident holds a non-empty name")
        super().__init__(name)

    @property
    def name(self) -> str:
        return self.value

    def _atom(self) -> str:
        return self.value


class _Compound(Expr):
    __slots__ = ("items",)

    def __init__(self, items: Iterable[Expr] = ()) -> None:
        items = tuple(items)
        for item in items:
            if not isinstance(item, Expr):
                raise PolicyError(f"a {type(self).__name__} holds expressions, not {type(item).__name__}")
        object.__setattr__(self, "items", items)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def __getitem__(self, index):
        return self.items[index]

    def _shallow_key(self):
        return len(self.items)


class Seq(_Compound):
    """
    A sequence C{[a b …]} (C{items}).
    """

    __slots__ = ()


class List(_Compound):
    """
    A list C{(op a b …)} (C{items}): an operation, or C{()} (the unit).
    """

    __slots__ = ()


#: The empty list, what C{()} evaluates to.
UNIT = List()
_TRUE = Bool(True)
_FALSE = Bool(False)


def to_expr(value: Any) -> Expr:
    """
    An L{Expr} for a Python value: an L{Expr} as it is, C{str} as L{Str},
    C{bool} as L{Bool}, C{int} as L{Int}, C{float} as L{Float}, a list or
    tuple as a L{Seq} of its converted elements.  Anything else raises
    L{PolicyError}.
    """
    if isinstance(value, Expr):
        return value
    t = type(value)
    if t is str:
        return Str(value)
    if t is bool:
        return Bool(value)
    if t is int:
        return Int(value)
    if t is float:
        return Float(value)
    if t is list or t is tuple:
        return Seq(to_expr(v) for v in value)
    raise PolicyError(f"{t.__name__} cannot be a policy value")


# --- display (Rust Debug forms) -----------------------------------------------

_SIMPLE_ESCAPES = {"\0": "\\0", "\t": "\\t", "\r": "\\r", "\n": "\\n", "\\": "\\\\", '"': '\\"'}

# Other_Grapheme_Extend (Unicode 15.0 PropList): with the Mn and Me
# categories this is Grapheme_Extend, which Rust's str Debug escapes.
_OTHER_GRAPHEME_EXTEND = frozenset(
    [0x09BE, 0x09D7, 0x0B3E, 0x0B57, 0x0BBE, 0x0BD7, 0x0CC2, 0x0CD5, 0x0CD6, 0x0D3E, 0x0D57,
     0x0DCF, 0x0DDF, 0x1B35, 0x200C, 0x302E, 0x302F, 0xFF9E, 0xFF9F, 0x1133E, 0x11357, 0x114B0,
     0x114BD, 0x115AF, 0x11930, 0x1D165, 0x1D16E, 0x1D16F, 0x1D170, 0x1D171, 0x1D172]
    + list(range(0xE0020, 0xE0080))
)


def _debug_escaped(ch: str) -> bool:
    if ch.isprintable():
        # Rust's "printable" is Python's: not in Cc Cf Cs Co Cn Zl Zp Zs,
        # space excepted.  Grapheme extenders are escaped as well.
        code = ord(ch)
        return code > 0x2FF and (unicodedata.category(ch) in ("Mn", "Me") or code in _OTHER_GRAPHEME_EXTEND)
    return True


def _debug_str(s: str) -> str:
    """
    Rust's C{{:?}} of a string: quoted, C{\\0 \\t \\r \\n \\\\ \\"} escaped,
    non-printable characters and grapheme extenders as C{\\u{hex}}.
    """
    out = ['"']
    for ch in s:
        simple = _SIMPLE_ESCAPES.get(ch)
        if simple is not None:
            out.append(simple)
        elif " " <= ch <= "~" or not _debug_escaped(ch):
            out.append(ch)
        else:
            out.append("\\u{%x}" % ord(ch))
    out.append('"')
    return "".join(out)


def _debug_float(x: float) -> str:
    """
    0.83's text form of a float: C{nan}, C{+inf}, C{-inf}, else Rust's
    C{{:?}} (shortest digits; at least one decimal; exponent form below
    1e-4 and from 1e16 on, as C{1e16} or C{1.5e-5}).
    """
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    text = repr(x)  # the same shortest digits and the same thresholds
    mantissa, e, exponent = text.partition("e")
    if e:
        return f"{mantissa}e{int(exponent)}"
    return text


def _display(expr: Expr) -> str:
    out = []
    stack: list = [expr]
    while stack:
        e = stack.pop()
        if type(e) is str:
            out.append(e)
        elif isinstance(e, _Compound):
            is_list = type(e) is List
            out.append("(" if is_list else "[")
            stack.append(")" if is_list else "]")
            items = e.items
            for i in range(len(items) - 1, -1, -1):
                stack.append(items[i])
                if i:
                    stack.append(" ")
        else:
            out.append(e._atom())
    return "".join(out)


def _same(a: Expr, b: Expr) -> bool:
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, _Compound):
            if len(x.items) != len(y.items):
                return False
            stack.extend(zip(x.items, y.items))
        elif type(x) is Float:
            u, v = x.value, y.value
            if math.isnan(u) or math.isnan(v):
                if not (math.isnan(u) and math.isnan(v)):
                    return False
            elif u != v or math.copysign(1.0, u) != math.copysign(1.0, v):
                return False
        elif x.value != y.value:
            return False
    return True


# --- equality and ordering (12.4) ---------------------------------------------


def equals(a: Expr, b: Expr) -> bool:
    """
    The language's equality: C{a} and C{b} must be of the same kind, else
    L{TypeMismatch} (C{1} and C{1.0} too).  Floats compare as IEEE numbers;
    sequences and lists of different lengths are unequal, else element by
    element, depth first, stopping at the first unequal pair.
    """
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            raise TypeMismatch(x, y)
        if isinstance(x, _Compound):
            if len(x.items) != len(y.items):
                return False
            stack.extend(reversed(list(zip(x.items, y.items))))
        elif x.value != y.value:
            return False
    return True


def _order(u, v) -> Optional[int]:
    if u < v:
        return -1
    if u > v:
        return 1
    if u == v:
        return 0
    return None  # NaN


def compare(a: Expr, b: Expr) -> Optional[int]:
    """
    The language's ordering: -1, 0 or 1, or C{None} when there is no order
    (a NaN).  Same kinds only, else L{TypeMismatch}.  Strings compare
    bytewise on UTF-8, C{false} < C{true}; sequences and lists: the shorter
    first, equal lengths element by element.
    """
    stack = [(a, b)]
    result: Optional[int] = 0
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            raise TypeMismatch(x, y)
        if isinstance(x, _Compound):
            result = _order(len(x.items), len(y.items))
            if result != 0:
                return result
            stack.extend(reversed(list(zip(x.items, y.items))))
            continue
        # Python orders str by code point, which is UTF-8 byte order.
        result = _order(x.value, y.value)
        if result != 0:
            return result
    return result


# --- the lexer (12.1) ---------------------------------------------------------

_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_IDCHARS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&'*+-./:<=>?@\\^_`|~")
_WHITESPACE = frozenset(" \n\r\t")
_CONFUSING = frozenset("\u202a\u202b\u202d\u202e\u2066\u2067\u2068\u2069\u206c")
# 0.83's identifier pattern; the range +-@ in its second class is
# U+002B..U+0040.
_IDENT = re.compile(r"[a-zA-Z!$%&*/<=>?~_^][a-zA-Z0-9!$%&*/<=>?~_^.\x2b-\x40]*\Z")
_STRING_ESCAPES = {'"': 0x22, "'": 0x27, "t": 0x09, "n": 0x0A, "r": 0x0D, "\\": 0x5C}

# Tokens other than values.
_LPAREN, _RPAREN, _LBRACKET, _RBRACKET = "(", ")", "[", "]"


def _excerpt(src: str, limit: int = 40) -> str:
    return repr(src if len(src) <= limit else src[:limit] + "…")


def _describe_char(ch: str) -> str:
    if ch.isprintable() and ch not in "'\\":
        return f"'{ch}'"
    return f"U+{ord(ch):04X}"


class _Lexer:
    """
    The C{wast} 55 lexer as 0.83's parser uses it, yielding brackets and
    values.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def where(self, offset: int) -> Tuple[int, int]:
        """
        The line and column (from 1) of C{offset}.
        """
        line = self.text.count("\n", 0, offset) + 1
        column = offset - (self.text.rfind("\n", 0, offset) + 1) + 1
        return line, column

    def error(self, message: str, offset: int) -> PolicyError:
        line, column = self.where(offset)
        return PolicyError(f"{message} at line {line}, column {column}", offset, line, column)

    def tokens(self):
        """
        Yield C{(token, offset)}: a bracket string or an L{Expr}.
        """
        text = self.text
        n = len(text)
        while self.pos < n:
            start = self.pos
            ch = text[start]
            if ch == "(":
                if text.startswith(";", start + 1):
                    self.block_comment(start)
                    continue
                self.pos += 1
                yield _LPAREN, start
            elif ch == ")":
                self.pos += 1
                yield _RPAREN, start
            elif ch in _WHITESPACE:
                self.pos += 1
                while self.pos < n and text[self.pos] in _WHITESPACE:
                    self.pos += 1
            elif ch in _IDCHARS or ch == '"':
                yield self.reserved(start), start
            elif ch == ";":
                if text.startswith(";", start + 1):
                    end = text.find("\n", start)
                    end = n if end < 0 else end
                    self.check_confusing(start, end)
                    self.pos = end
                    continue
                raise self.error("';' is not valid here", start)
            elif ch == "[":
                self.pos += 1
                yield _LBRACKET, start
            elif ch == "]":
                self.pos += 1
                yield _RBRACKET, start
            elif ch in ",{}":
                raise self.error(f"'{ch}' is not valid in a policy", start)
            else:
                raise self.error(f"unexpected character {_describe_char(ch)}", start)

    def check_confusing(self, start: int, end: int) -> None:
        for i in range(start, end):
            if self.text[i] in _CONFUSING:
                raise self.error(f"bidirectional control character {_describe_char(self.text[i])} in a comment", i)

    def block_comment(self, start: int) -> None:
        text = self.text
        n = len(text)
        level = 1
        i = start + 2
        while i < n:
            ch = text[i]
            if ch == "(" and text.startswith(";", i + 1):
                level += 1
                i += 2
            elif ch == ";" and text.startswith(")", i + 1):
                level -= 1
                i += 2
                if level == 0:
                    self.check_confusing(start, i)
                    self.pos = i
                    return
            else:
                i += 1
        raise self.error("unterminated block comment", start)

    def reserved(self, start: int) -> Expr:
        """
        A maximal run of idchars and strings, classified.
        """
        text = self.text
        n = len(text)
        i = start
        idchars = False
        strings = 0
        value = b""
        while i < n:
            ch = text[i]
            if ch in _IDCHARS:
                idchars = True
                i += 1
            elif ch == '"':
                strings += 1
                value, i = self.string(i + 1)
            else:
                break
        self.pos = i
        src = text[start:i]
        if not idchars and strings == 1:
            try:
                return Str(value.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise self.error(f"string is not valid UTF-8 (byte {e.start} of its value)", start) from None
        if strings:
            raise self.error(f"invalid token {_excerpt(src)} (a string must stand alone)", start)
        number = self.number(src, start)
        if number is not None:
            return number
        if src[0] == "$" and len(src) > 1:
            return Ident(src)
        if src == "true":
            return _TRUE
        if src == "false":
            return _FALSE
        if _IDENT.match(src):
            return Ident(src)
        raise self.error(f"invalid token {_excerpt(src)}", start)

    def string(self, i: int) -> Tuple[bytes, int]:
        """
        The bytes of a string whose opening quote is just before C{i}, and
        the offset after its closing quote.
        """
        text = self.text
        n = len(text)
        out = bytearray()
        while True:
            if i >= n:
                raise self.error("unterminated string", n)
            ch = text[i]
            if ch == '"':
                return bytes(out), i + 1
            if ch == "\\":
                if i + 1 >= n:
                    raise self.error("unterminated string", n)
                esc = text[i + 1]
                simple = _STRING_ESCAPES.get(esc)
                if simple is not None:
                    out.append(simple)
                    i += 2
                elif esc == "u":
                    i = self.unicode_escape(i, out)
                elif esc in _HEX:
                    if i + 2 >= n:
                        raise self.error("unterminated string", n)
                    if text[i + 2] not in _HEX:
                        raise self.error(f"invalid hex digit {_describe_char(text[i + 2])} in a string escape", i + 2)
                    out.append(int(text[i + 1 : i + 3], 16))
                    i += 3
                else:
                    raise self.error(f"invalid string escape {_describe_char(esc)}", i + 1)
            elif ch < " " or ch == "\x7f":
                raise self.error(f"invalid character {_describe_char(ch)} in a string", i)
            elif ch in _CONFUSING:
                raise self.error(f"bidirectional control character {_describe_char(ch)} in a string", i)
            else:
                out += ch.encode("utf-8")
                i += 1

    def unicode_escape(self, i: int, out: bytearray) -> int:
        """
        C{\\u{HEX}} at C{i} (the backslash); returns the offset after it.
        """
        text = self.text
        n = len(text)
        j = i + 2
        if j >= n:
            raise self.error("unterminated string", n)
        if text[j] != "{":
            raise self.error(f"expected '{{' after \\u, found {_describe_char(text[j])}", j)
        j += 1
        if j >= n:
            raise self.error("unterminated string", n)
        if text[j] not in _HEX:
            raise self.error(f"invalid hex digit {_describe_char(text[j])} in a \\u escape", j)
        value = 0
        last_underscore = False
        while j < n:
            ch = text[j]
            if ch == "_":
                last_underscore = True
                j += 1
                continue
            if ch not in _HEX:
                break
            last_underscore = False
            value = value * 16 + int(ch, 16)
            if value > 0xFFFFFFFF:
                raise self.error("number in a \\u escape is too big", i)
            j += 1
        if last_underscore:
            raise self.error("a \\u escape ends with '_'", j - 1)
        if value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
            raise self.error(f"\\u{{{value:x}}} is not a Unicode scalar value", i)
        if j >= n:
            raise self.error("unterminated string", n)
        if text[j] != "}":
            raise self.error(f"expected '}}' to end a \\u escape, found {_describe_char(text[j])}", j)
        out += chr(value).encode("utf-8")
        return j + 1

    def number(self, src: str, start: int) -> Optional[Expr]:
        """
        The number C{src} is, or C{None} if it is none (C{wast}'s rules);
        a number 0.83 cannot convert raises L{PolicyError}.
        """
        num = src
        negative = False
        if src[0] in "+-":
            negative = src[0] == "-"
            num = src[1:]
        if num == "inf":
            return Float(-math.inf if negative else math.inf)
        if num == "nan":
            return Float(math.nan)
        if num.startswith("nan:0x"):
            cursor = _Cursor(num[6:])
            payload = cursor.digits(False, _HEX)
            if payload is None or not cursor.at_end() or int(payload, 16) > 0xFFFFFFFFFFFFFFFF:
                return None  # then an identifier, as in 0.83
            return Float(math.nan)
        if num.startswith("0x"):
            cursor, hexa, good = _Cursor(num[2:]), True, _HEX
        else:
            cursor, hexa, good = _Cursor(num), False, _DIGITS
        integral = cursor.digits(negative, good)
        if integral is None:
            return None
        if cursor.at_end():
            # Leading zeros are fine (Rust's from_str_radix takes them);
            # strip them before int(), which refuses more than 4300 digits.
            magnitude = integral.lstrip("-").lstrip("0") or "0"
            if len(magnitude) > (16 if hexa else 19):
                raise self.error(f"integer {_excerpt(src)} does not fit in 64 bits", start)
            value = int(magnitude, 16 if hexa else 10)
            value = -value if negative else value
            if not _I64_MIN <= value <= _I64_MAX:
                raise self.error(f"integer {_excerpt(src)} does not fit in 64 bits", start)
            return Int(value)
        if cursor.peek() == ".":
            cursor.next()
            ch = cursor.peek()
            if ch is not None and ch in good and cursor.digits(False, good) is None:
                return None
        ch = cursor.next()
        if ch is not None:
            if ch not in ("pP" if hexa else "eE"):
                return None
            sign = cursor.peek()
            if sign == "-" or sign == "+":
                cursor.next()
            if cursor.digits(False, _DIGITS) is None:
                return None
        if not cursor.at_end():
            return None
        # A float token: 0.83 converts its text with Rust's decimal parser,
        # which refuses hex floats and underscores.
        if hexa:
            raise self.error(f"hexadecimal float {_excerpt(src)} is not supported", start)
        if "_" in src:
            raise self.error(f"float {_excerpt(src)} may not contain '_'", start)
        return Float(float(src))


class _Cursor:
    __slots__ = ("s", "i")

    def __init__(self, s: str) -> None:
        self.s = s
        self.i = 0

    def peek(self) -> Optional[str]:
        return self.s[self.i] if self.i < len(self.s) else None

    def next(self) -> Optional[str]:
        ch = self.peek()
        if ch is not None:
            self.i += 1
        return ch

    def at_end(self) -> bool:
        return self.i >= len(self.s)

    def digits(self, negative: bool, good) -> Optional[str]:
        """
        Digits with single underscores between them (removed), or C{None}.
        """
        first = self.next()
        if first is None or first not in good:
            return None
        out = ["-"] if negative else []
        out.append(first)
        last_underscore = False
        while True:
            ch = self.peek()
            if ch is None:
                break
            if ch == "_" and not last_underscore:
                self.i += 1
                last_underscore = True
                continue
            if ch not in good:
                break
            out.append(ch)
            last_underscore = False
            self.i += 1
        return None if last_underscore else "".join(out)


# --- the parser (12.2) ----------------------------------------------------------


def parse(text: Union[str, bytes]) -> Expr:
    """
    The expression C{text} holds.  Several top-level expressions are one
    list (C{= 1 1} is C{(= 1 1)}).  Raises L{PolicyError} for text that does
    not parse: a bad token, an unbalanced bracket, a sequence whose
    neighbours have different kinds (C{[1 "a"]}), or no expression at all.
    """
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise PolicyError(f"policy text is not valid UTF-8 (byte {e.start})", None) from None
    elif type(text) is not str:
        raise PolicyError(f"policy text must be str or bytes, not {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _Lexer(text).error("policy text holds a lone surrogate", e.start) from None

    lexer = _Lexer(text)
    # Open brackets: (kind, offset, items so far).
    open_: list = []
    top: list = []
    for token, offset in lexer.tokens():
        if isinstance(token, Expr):
            (open_[-1][2] if open_ else top).append(token)
        elif token is _LPAREN or token is _LBRACKET:
            open_.append((token, offset, []))
        else:
            expected = _LPAREN if token is _RPAREN else _LBRACKET
            if not open_:
                raise lexer.error(f"'{token}' without a matching '{expected}'", offset)
            kind, opened, items = open_.pop()
            if kind is not expected:
                closer = _RPAREN if kind is _LPAREN else _RBRACKET
                line, column = lexer.where(opened)
                raise lexer.error(
                    f"'{token}' closes the '{kind}' opened at line {line}, column {column}, which needs '{closer}'",
                    offset,
                )
            if kind is _LPAREN:
                value: Expr = List(items)
            else:
                for x, y in zip(items, items[1:]):
                    try:
                        equals(x, y)
                    except TypeMismatch as e:
                        line, column = lexer.where(opened)
                        raise lexer.error(
                            f"{e} (neighbours in the sequence opened at line {line}, column {column} "
                            f"must be of one kind)",
                            offset,
                        ) from None
                value = Seq(items)
            (open_[-1][2] if open_ else top).append(value)
    if open_:
        kind, opened, _ = open_[-1]
        closer = _RPAREN if kind is _LPAREN else _RBRACKET
        raise lexer.error(f"unclosed '{kind}' (no '{closer}' before the end of the text)", opened)
    if not top:
        raise PolicyError("empty expression value: the policy text holds no expression")
    return top[0] if len(top) == 1 else List(top)


# --- evaluation (12.3) ------------------------------------------------------------

_EVAL, _AND, _OR, _NOT, _IF, _EQ, _LT, _GT, _MEMBER, _SEQ = range(10)
_NOTHING: frozenset = frozenset()
_SCALARS = (Str, Int, Float, Bool)


def _as_env(env: Optional[Mapping[str, Any]]) -> Dict[str, Expr]:
    if env is None:
        return {}
    out = {}
    for name, value in env.items():
        if type(name) is not str:
            raise PolicyError(f"environment names are text, not {type(name).__name__}")
        out[name] = to_expr(value)
    return out


def evaluate(expr: Expr, env: Optional[Mapping[str, Any]] = None) -> Expr:
    """
    The value of C{expr} in C{env} (names to L{Expr}, or to Python values
    L{to_expr} converts).  Raises only L{EvalError} (one of its five kinds)
    for an expression that cannot be evaluated; L{PolicyError} for an
    C{env} that holds something that is no policy value.
    """
    if not isinstance(expr, Expr):
        raise PolicyError(f"evaluate needs an Expr, not {type(expr).__name__}")
    env = _as_env(env)
    ctrl: list = [(_EVAL, expr, _NOTHING)]
    args: list = []
    while ctrl:
        op = ctrl.pop()
        code = op[0]
        if code == _EVAL:
            e, expanding = op[1], op[2]
            t = type(e)
            if t is Ident:
                name = e.value
                try:
                    bound = env[name]
                except KeyError:
                    raise Unbound(name) from None
                if type(bound) in _SCALARS:
                    args.append(bound)
                elif name in expanding:
                    # 0.83 loops forever here.
                    raise Malformed(f"identifier {name} is bound to an expression that needs itself")
                else:
                    ctrl.append((_EVAL, bound, expanding | {name}))
            elif t is List:
                _eval_list(e, env, expanding, ctrl, args)
            elif t is Seq:
                ctrl.append((_SEQ, len(e.items)))
                for x in reversed(e.items):
                    ctrl.append((_EVAL, x, expanding))
            else:
                args.append(e)
        elif code == _AND or code == _OR:
            n = op[1]
            if n == 0:
                continue  # the last argument's value is the result, unchecked
            value = args.pop()
            go_on = _TRUE if code == _AND else _FALSE
            if type(value) is Bool:
                if value.value is go_on.value:
                    following = ctrl.pop()
                    ctrl.append((code, n - 1))
                    ctrl.append(following)
                else:
                    del ctrl[len(ctrl) - n :]
                    args.append(value)
            else:
                word = "and" if code == _AND else "or"
                raise InvalidType(value, f"'{word}' expects boolean arguments")
        elif code == _NOT:
            value = args.pop()
            if type(value) is not Bool:
                raise InvalidType(value, "'not' expects boolean arguments")
            args.append(_FALSE if value.value else _TRUE)
        elif code == _IF:
            then, otherwise = ctrl.pop(), ctrl.pop()
            value = args.pop()
            if type(value) is not Bool:
                raise InvalidType(value, "'if' expects test to evaluate to bool")
            ctrl.append(then if value.value else otherwise)
        elif code == _EQ or code == _LT or code == _GT:
            n = op[1]
            start = len(args) - n
            operands = args[start:]
            del args[start:]
            result = True
            for x, y in zip(operands, operands[1:]):
                if code == _EQ:
                    holds = equals(x, y)
                else:
                    holds = compare(x, y) == (-1 if code == _LT else 1)
                if not holds:
                    result = False
                    break
            args.append(_TRUE if result else _FALSE)
        elif code == _MEMBER:
            seq = args.pop()
            needle = args.pop()
            if type(seq) is not Seq:
                raise InvalidType(seq, "'member?' expects sequence as second argument")
            found = False
            for x in seq.items:
                if equals(needle, x):
                    found = True
                    break
            args.append(_TRUE if found else _FALSE)
        else:  # _SEQ
            n = op[1]
            start = len(args) - n
            items = args[start:]
            del args[start:]
            args.append(Seq(items))
    return args.pop()


def _eval_list(e: List, env: Dict[str, Expr], expanding: frozenset, ctrl: list, args: list) -> None:
    xs = e.items
    if not xs:
        args.append(UNIT)
        return
    head = xs[0]
    if type(head) is not Ident:
        raise InvalidType(head, "expected (op ...)")
    name = head.value
    nargs = len(xs) - 1
    if name == "and" or name == "or":
        if nargs == 0:
            args.append(_TRUE if name == "and" else _FALSE)
            return
        for x in reversed(xs[2:]):
            ctrl.append((_EVAL, x, expanding))
        ctrl.append((_AND if name == "and" else _OR, nargs - 1))
        ctrl.append((_EVAL, xs[1], expanding))
        return
    if name == "not":
        if nargs != 1:
            raise Malformed("'not' requires one argument")
        ctrl.append((_NOT,))
    elif name == "if":
        if nargs != 3:
            raise Malformed("'if' requires three arguments")
        ctrl.append((_EVAL, xs[3], expanding))
        ctrl.append((_EVAL, xs[2], expanding))
        ctrl.append((_IF,))
        ctrl.append((_EVAL, xs[1], expanding))
        return
    elif name in ("<", ">", "="):
        if nargs < 2:
            raise Malformed(f"'{name}' requires at least two arguments")
        ctrl.append(({"<": _LT, ">": _GT, "=": _EQ}[name], nargs))
    elif name == "!=":
        ctrl.append((_NOT,))
        ctrl.append((_EQ, nargs))
    elif name == "member?":
        if nargs != 2:
            raise Malformed("'member?' requires two arguments")
        ctrl.append((_MEMBER,))
    elif name == "exists?":
        result = True
        for x in xs[1:]:
            if type(x) is not Ident:
                raise InvalidType(x, "'exists?' expects identifiers as arguments")
            if x.value not in env:
                result = False
                break
        args.append(_TRUE if result else _FALSE)
        return
    else:
        raise Unknown(name)
    for x in reversed(xs[1:]):
        ctrl.append((_EVAL, x, expanding))


# --- policies -------------------------------------------------------------------


class Policy:
    """
    A parsed policy: C{expression}; C{str(policy)} is its text form.
    """

    __slots__ = ("expression",)

    def __init__(self, expression: Expr) -> None:
        if not isinstance(expression, Expr):
            raise PolicyError(f"a Policy holds an Expr, not {type(expression).__name__}")
        self.expression = expression

    @classmethod
    def parse(cls, text: Union[str, bytes]) -> "Policy":
        """
        The policy C{text} states; L{PolicyError} if it does not parse.
        """
        return cls(parse(text))

    @property
    def constant(self) -> Optional[bool]:
        """
        C{True} or C{False} for a policy that is exactly a boolean, else
        C{None}.
        """
        e = self.expression
        return e.value if type(e) is Bool else None

    def evaluate(self, env: Optional[Mapping[str, Any]] = None) -> Expr:
        """
        See L{evaluate}.
        """
        return evaluate(self.expression, env)

    def __str__(self) -> str:
        return str(self.expression)

    def __repr__(self) -> str:
        return f"Policy.parse({str(self.expression)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Policy):
            return NotImplemented
        return self.expression == other.expression

    def __hash__(self) -> int:
        return hash(self.expression)


def default_policy() -> Policy:
    """
    C{(= resource.project_id subject.project_id)}: what a 0.83 member node
    enforces on a portal without a stored policy, and what the authority
    asks of callers of C{credential_issuer}.
    """
    return Policy.parse(DEFAULT_POLICY_TEXT)


def enroller_policy() -> Policy:
    """
    The 0.83 authority's policy for C{direct_authenticator} and
    C{enrollment_token_issuer}: a project member with C{ockam-role}
    C{enroller}.
    """
    return Policy.parse(ENROLLER_POLICY_TEXT)


# --- the environment and the decision (12.5) ------------------------------------


def resource_env(
    resource: Optional[str] = None,
    action: Optional[str] = HANDLE_MESSAGE,
    project_id: Optional[str] = None,
    env: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Expr]:
    """
    The fixed entries of a resource: C{resource.id}, C{action.id},
    C{resource.project_id} (each left out when C{None}), over any other
    entries in C{env}.
    """
    out = _as_env(env)
    for name, value in (("resource.id", resource), ("action.id", action), ("resource.project_id", project_id)):
        if value is not None:
            out[name] = Str(value)
    return out


def _name_key(name) -> str:
    if type(name) is not str:
        raise PolicyError(f"attribute names are text, not {type(name).__name__}")
    return name  # code point order is UTF-8 byte order


def subject_env(
    env: Mapping[str, Any], identifier: str, attributes: Optional[Mapping[str, Union[bytes, str]]]
) -> Dict[str, Expr]:
    """
    C{env} with the subject added, as 0.83 does it: each attribute in
    bytewise name order becomes C{subject.<name>} = L{Str}, except values
    that are not UTF-8 and names that C{env} already binds I{unprefixed};
    then C{subject.identifier} = C{identifier}, last.
    """
    out = _as_env(env)
    for name in sorted(attributes or (), key=_name_key):
        value = attributes[name]
        if isinstance(value, (bytes, bytearray, memoryview)):
            try:
                text = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                continue
        elif type(value) is str:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                continue
            text = value
        else:
            raise PolicyError(f"attribute {name!r} is {type(value).__name__}, not bytes or text")
        if name in out:
            continue  # 0.83 checks the bare name
        out["subject." + name] = Str(text)
    out.pop("subject.identifier", None)  # an attribute named identifier
    out["subject.identifier"] = Str(identifier)
    return out


class Decision:
    """
    The outcome of an access check: C{allowed}, and why (C{reason}); the
    evaluation's C{result} or C{error} when it got that far.
    """

    __slots__ = ("allowed", "reason", "result", "error")

    def __init__(self, allowed: bool, reason: str, result: Optional[Expr] = None, error: Optional[Exception] = None) -> None:
        self.allowed = allowed
        self.reason = reason
        self.result = result
        self.error = error

    def __bool__(self) -> bool:
        return self.allowed

    def __repr__(self) -> str:
        return f"Decision({self.allowed}, {self.reason!r})"


def _expression_of(policy: Union[Policy, Expr]) -> Expr:
    if isinstance(policy, Policy):
        return policy.expression
    if isinstance(policy, Expr):
        return policy
    raise PolicyError(f"a policy is a Policy or an Expr, not {type(policy).__name__}")


def judge(
    policy: Optional[Union[Policy, Expr]],
    identifier: Optional[str],
    attributes: Optional[Mapping[str, Union[bytes, str]]],
    resource: Optional[str] = None,
    action: Optional[str] = HANDLE_MESSAGE,
    project_id: Optional[str] = None,
    *,
    stored: bool = True,
    env: Optional[Mapping[str, Any]] = None,
) -> Decision:
    """
    Decide as 0.83 does whether the subject C{identifier} (the secure
    channel peer; C{None}: no channel identity) with C{attributes} (name to
    stored value) may send to C{resource}.

    Allow iff the policy evaluates to C{true}.  With C{stored} (a policy
    from the node's policy store: 0.83's C{PolicyAccessControl}), a policy
    that is exactly C{true} or C{false} decides alone, even without a
    channel identity, and no policy (C{None}) denies; without it (a fixed
    policy: C{AbacAccessControl}) a channel identity is always required.
    C{env} holds further fixed entries.
    """
    if policy is None:
        return Decision(False, "no policy for this resource")
    expr = _expression_of(policy)
    if stored and type(expr) is Bool:
        return Decision(expr.value, f"the policy is the constant {expr}")
    if identifier is None:
        return Decision(False, "no secure channel identity")
    full = subject_env(resource_env(resource, action, project_id, env), identifier, attributes)
    try:
        result = evaluate(expr, full)
    except EvalError as e:
        return Decision(False, f"evaluation failed: {e}", error=e)
    if type(result) is Bool:
        return Decision(result.value, f"the policy is {result}", result=result)
    return Decision(False, f"the policy gave {result}, not a boolean", result=result)


def decide(
    policy: Optional[Union[Policy, Expr]],
    identifier: Optional[str],
    attributes: Optional[Mapping[str, Union[bytes, str]]],
    resource: Optional[str] = None,
    action: Optional[str] = HANDLE_MESSAGE,
    project_id: Optional[str] = None,
    *,
    stored: bool = True,
    env: Optional[Mapping[str, Any]] = None,
) -> bool:
    """
    Whether L{judge} allows.
    """
    return judge(policy, identifier, attributes, resource, action, project_id, stored=stored, env=env).allowed


# --- an access policy for workers -------------------------------------------------


@implementer(IAccessPolicy)
class PolicyAccess:
    """
    Messages whose sender satisfies an ABAC policy (see L{ockamtw.access}).

    The subject is the secure channel peer (C{message.origin.identity});
    its attributes come from C{attributes_of(identifier)} (a mapping of
    name to stored value, or C{None}: none).  C{policy} is a L{Policy}, an
    L{Expr}, policy text, or a callable returning one of those or C{None}
    (read at each message, as 0.83 reads its policy store; C{None} denies).
    C{stored} selects 0.83's flavour (see L{judge}); with C{local},
    messages from this node itself are let in too.

    An C{attributes_of} or policy source that fails denies the message
    (L{decision} says why).
    """

    def __init__(
        self,
        policy: Union[Policy, Expr, str, Callable[[], Optional[Union[Policy, Expr]]]],
        attributes_of: Callable[[str], Optional[Mapping[str, Union[bytes, str]]]],
        resource: Optional[str] = None,
        project_id: Optional[str] = None,
        action: Optional[str] = HANDLE_MESSAGE,
        *,
        stored: bool = True,
        local: bool = False,
        env: Optional[Mapping[str, Any]] = None,
    ) -> None:
        if isinstance(policy, (str, bytes)):
            policy = Policy.parse(policy)
        if isinstance(policy, Expr):
            policy = Policy(policy)
        if not isinstance(policy, Policy) and not callable(policy):
            raise PolicyError(f"a policy is a Policy, an Expr, text or a callable, not {type(policy).__name__}")
        self.policy = policy
        self.attributes_of = attributes_of
        self.resource = resource
        self.project_id = project_id
        self.action = action
        self.stored = stored
        self.local = local
        self.env = resource_env(resource, action, project_id, env)

    def decision(self, message) -> Decision:
        """
        The L{Decision} on C{message}.
        """
        origin = message.origin
        if origin is None and self.local:
            return Decision(True, "sent by this node")
        policy = self.policy
        if not isinstance(policy, Policy):
            try:
                policy = policy()
            except Exception as e:  # noqa: BLE001 - fail closed
                return Decision(False, f"reading the policy failed: {e!r}", error=e)
            if policy is None:
                return Decision(False, "no policy for this resource")
            if isinstance(policy, (str, bytes)):
                try:
                    policy = Policy.parse(policy)
                except PolicyError as e:
                    return Decision(False, f"the stored policy does not parse: {e}", error=e)
        try:
            expr = _expression_of(policy)
        except PolicyError as e:
            return Decision(False, str(e), error=e)
        identifier = None if origin is None else getattr(origin, "identity", None)
        attributes = None
        if identifier is not None and not (self.stored and type(expr) is Bool):
            try:
                attributes = self.attributes_of(identifier)
            except Exception as e:  # noqa: BLE001 - fail closed
                return Decision(False, f"reading the attributes of {identifier} failed: {e!r}", error=e)
        try:
            return judge(expr, identifier, attributes, None, None, None, stored=self.stored, env=self.env)
        except PolicyError as e:  # an attribute store holding something odd
            return Decision(False, str(e), error=e)

    def allows(self, message) -> bool:
        return self.decision(message).allowed

    def __str__(self) -> str:
        what = f"the ABAC policy {self.policy}" if isinstance(self.policy, Policy) else "the stored ABAC policy"
        on = f" of {self.resource}" if self.resource is not None else ""
        local = " (and this node)" if self.local else ""
        return f"subjects satisfying {what}{on}{local}"
