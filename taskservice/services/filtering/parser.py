r"""Filter text to a typed tree: the AIP-160 subset our lists accept, with errors that point.

Grammar (AIP-160's, less global search, functions and field traversal):

    filter      = [expression]
    expression  = factor { ["AND"] factor }        juxtaposition is an implicit AND
    factor      = term { "OR" term }               OR binds tighter than AND
    term        = { "NOT" | "-" } ( "(" expression ")" | restriction )
    restriction = FIELD OPERATOR value             OPERATOR: = != < <= > >= :
    value       = "*" | STRING | BARE              "*" only after ":" (presence test)

Keywords are upper-case. STRING is "..." or '...' with the escapes \\ \" \' \n \r \t. A BARE
value runs to the next space or parenthesis. Quoting is only lexical: the field's kind decides
what a value means, so `owner_id = "7"` is 7 and `title = report` is the text "report"; quote a
text value when it holds spaces, parentheses, quotes or any of * = < > ! : \, or is a keyword.

Every mistake in the text, whatever it is, raises InvalidArgument on the caller's field with
the 1-based character position and what was expected there; nothing else escapes. Limits on
length, comparisons and nesting keep a filter from costing more than a small query.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import NoReturn

from taskservice.errors import InvalidArgument
from taskservice.services.filtering.nodes import (
    ANY,
    Comparison,
    EnumValue,
    Expression,
    Filter,
    Not,
    Value,
    conjunction,
    disjunction,
)
from taskservice.services.filtering.schema import KEYWORDS, OPERATOR_ORDER, Field, Kind, Op, Schema

#: Longest filter accepted, in characters.
MAX_FILTER_LENGTH = 2000
#: Most comparisons (restrictions) one filter may hold.
MAX_COMPARISONS = 50
#: Deepest nesting of parentheses and NOTs, which bounds recursion here and in the compilers.
MAX_DEPTH = 20
#: ErrorInfo reason of every filter error.
REASON = "FILTER_INVALID"

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_SPACE = re.compile(r"\s*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_OPERATOR = re.compile(r"<=|>=|!=|<|>|=|:")
_BARE = re.compile(r"""[^\s()"']+""")
_BARE_TEXT = re.compile(r"""[^\s()"'*=<>!:\\]+""")
_INTEGER = re.compile(r"-?[0-9]+")
_TIMESTAMP = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
_SNIPPET = re.compile(r"[()]|[^\s()]{1,20}")
_UNESCAPE = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "r": "\r", "t": "\t"}
_TIMESTAMP_EXAMPLE = "2026-01-01T00:00:00Z"


class _Error(Exception):
    """A mistake at a 0-based index of the text; parse() turns it into InvalidArgument."""

    def __init__(self, index: int, description: str) -> None:
        super().__init__(description)
        self.index = index
        self.description = description


def parse(text: str, schema: Schema, field_name: str = "filter") -> Filter:
    """Parse `text` against `schema`; an empty or blank text is the filter that matches all.

    Raises InvalidArgument(field_name, "position N: ...", reason REASON) on any mistake.
    """
    try:
        return _Parser(text, schema).filter()
    except _Error as error:
        raise InvalidArgument.field(
            field_name, f"position {error.index + 1}: {error.description}", REASON
        ) from None


def _quote(text: str) -> str:
    """Text in double quotes with quotes, backslashes and control characters escaped."""
    return json.dumps(text, ensure_ascii=False)


class _Parser:
    """A recursive-descent parser over the text; `index` is where it reads next."""

    def __init__(self, text: str, schema: Schema) -> None:
        self.text = text
        self.schema = schema
        self.index = 0
        self.comparisons = 0

    def filter(self) -> Filter:
        if len(self.text) > MAX_FILTER_LENGTH:
            raise _Error(
                MAX_FILTER_LENGTH,
                f"a filter is at most {MAX_FILTER_LENGTH} characters (this one has "
                f"{len(self.text)})",
            )
        nul = self.text.find("\x00")
        if nul >= 0:
            raise _Error(nul, "NUL (U+0000) is not allowed")
        self.skip_space()
        if self.at_end():
            return Filter(None)
        expression = self.expression(0, None)
        if not self.at_end():
            raise _Error(self.index, 'unexpected ")" without a matching "("')
        return Filter(expression)

    # The grammar, one method per rule. Each starts at a non-space character.

    def expression(self, depth: int, after: str | None) -> Expression:
        """Factors joined by AND or by juxtaposition; stops at ")" or the end."""
        factors = [self.factor(depth, after)]
        while True:
            self.skip_space()
            if self.at_end() or self.peek() == ")":
                return conjunction(factors)
            if self.keyword() == "AND":
                self.index += len("AND")
                self.skip_space()
                factors.append(self.factor(depth, '"AND"'))
            else:
                factors.append(self.factor(depth, None))

    def factor(self, depth: int, after: str | None) -> Expression:
        """Terms joined by OR."""
        terms = [self.term(depth, after)]
        while True:
            before_space = self.index
            self.skip_space()
            if self.keyword() != "OR":
                self.index = before_space
                return disjunction(terms)
            self.index += len("OR")
            self.skip_space()
            terms.append(self.term(depth, '"OR"'))

    def term(self, depth: int, after: str | None) -> Expression:
        """Negations, then a parenthesised expression or a restriction."""
        negations = 0
        while True:
            start = self.index
            if self.peek() == "-":
                self.index += 1
                after = '"-"'
            elif self.keyword() == "NOT":
                self.index += len("NOT")
                after = '"NOT"'
            else:
                break
            depth = self.deeper(depth, start)
            negations += 1
            self.skip_space()
        expression: Expression
        if self.peek() == "(":
            opening = self.index
            depth = self.deeper(depth, opening)
            self.index += 1
            self.skip_space()
            expression = self.expression(depth, '"("')
            if self.at_end():
                raise _Error(
                    self.index,
                    f'expected ")" to close the "(" at position {opening + 1}, found end of filter',
                )
            self.index += 1
        else:
            expression = self.restriction(after)
        for _ in range(negations):
            expression = Not(expression)
        return expression

    def restriction(self, after: str | None) -> Comparison:
        """`field operator value`, checked against the field's kind and operators."""
        start = self.index
        match = _IDENTIFIER.match(self.text, start)
        if match is None or match.group() in KEYWORDS:
            where = f" after {after}" if after else ""
            self.fail(f"expected a field name{where}, found {self.found()}")
        name = match.group()
        field = self.schema.get(name)
        if field is None:
            self.fail(self.unknown_field(name))
        self.comparisons += 1
        if self.comparisons > MAX_COMPARISONS:
            self.fail(f"a filter holds at most {MAX_COMPARISONS} comparisons")
        self.index = match.end()
        self.skip_space()
        op = self.operator(field)
        self.skip_space()
        return Comparison(name, field.kind, op, self.value(field, op))

    def operator(self, field: Field) -> Op:
        match = _OPERATOR.match(self.text, self.index)
        if match is None:
            spelled = ", ".join(op.value for op in OPERATOR_ORDER)
            self.fail(f"expected an operator ({spelled}) after {field.name}, found {self.found()}")
        op = Op(match.group())
        if not field.allows(op):
            allowed = [f"{op.value}" for op in OPERATOR_ORDER if op in field.operators]
            if field.presence:
                allowed.append(f"{field.name}:* (presence)")
            self.fail(
                f'operator "{op.value}" is not allowed on {field.name}; allowed: '
                + ", ".join(allowed)
            )
        self.index = match.end()
        return op

    def value(self, field: Field, op: Op) -> Value:
        """The value after `op`, converted for the field's kind."""
        if self.at_end():
            self.fail(f'expected a value after "{op.value}", found end of filter')
        if op is Op.EQ and self.peek() == "=":
            self.fail('unexpected "=": equality is a single "="')
        if op is Op.HAS and self.text.startswith("*", self.index) and self.ends_word(1):
            if not field.presence:
                self.fail(f"the presence test {field.name}:* is not allowed")
            self.index += 1
            return ANY
        if op is Op.HAS and Op.HAS not in field.operators:
            self.fail(f'only the presence test {field.name}:* may follow ":" on {field.name}')
        start = self.index
        if self.peek() in ("'", '"'):
            raw, quoted = self.string(), True
        else:
            match = _BARE.match(self.text, start)
            if match is None or match.group() in KEYWORDS:
                texts = (Kind.STRING, Kind.LABELS)
                as_text = match is not None and field.kind in texts
                hint = "; quote a keyword to use it as text" if as_text else ""
                self.fail(f'expected a value after "{op.value}", found {self.found()}{hint}')
            raw, quoted = match.group(), False
            self.index = match.end()
        try:
            return _convert(field, op, raw, quoted)
        except ValueError as error:
            raise _Error(start, str(error)) from None

    def string(self) -> str:
        """A quoted string from its opening quote, escapes decoded."""
        text, opening = self.text, self.index
        quote = text[opening]
        index = opening + 1
        chars: list[str] = []
        while index < len(text):
            char = text[index]
            if char == quote:
                self.index = index + 1
                return "".join(chars)
            if char == "\\" and index + 1 < len(text):
                escaped = text[index + 1]
                if escaped not in _UNESCAPE:
                    spelled = (
                        f"\\{escaped}" if escaped.isprintable() else f"\\ + U+{ord(escaped):04X}"
                    )
                    raise _Error(
                        index, f"unknown escape {spelled}; known: \\\\ \\\" \\' \\n \\r \\t"
                    )
                chars.append(_UNESCAPE[escaped])
                index += 2
                continue
            chars.append(char)
            index += 1
        raise _Error(opening, f"unterminated string: this {quote} is never closed")

    # Helpers.

    def deeper(self, depth: int, index: int) -> int:
        if depth >= MAX_DEPTH:
            raise _Error(index, f"nested more than {MAX_DEPTH} levels deep (parentheses and NOT)")
        return depth + 1

    def unknown_field(self, name: str) -> str:
        fields = ", ".join(field.name for field in self.schema)
        message = f"unknown field {_quote(name)}; filterable fields: {fields}"
        if name.upper() in KEYWORDS:
            message += "; AND, OR and NOT are upper-case"
        return message

    def skip_space(self) -> None:
        match = _SPACE.match(self.text, self.index)
        if match is not None:
            self.index = match.end()

    def at_end(self) -> bool:
        return self.index >= len(self.text)

    def peek(self) -> str:
        return self.text[self.index : self.index + 1]

    def ends_word(self, length: int) -> bool:
        """Whether the `length` characters at the index are followed by a space, ")" or the end."""
        following = self.text[self.index + length : self.index + length + 1]
        return following in ("", ")") or following.isspace()

    def keyword(self) -> str | None:
        """The keyword at the index, if a whole word there is one."""
        match = _IDENTIFIER.match(self.text, self.index)
        return match.group() if match is not None and match.group() in KEYWORDS else None

    def found(self) -> str:
        """What is at the index, for "expected X, found Y"."""
        if self.at_end():
            return "end of filter"
        keyword = self.keyword()
        if keyword is not None:
            return f'"{keyword}"'
        if self.peek() in ("'", '"'):
            return "a quoted string"
        operator = _OPERATOR.match(self.text, self.index)
        if operator is not None:
            return f'"{operator.group()}"'
        match = _SNIPPET.match(self.text, self.index)
        if match is None:
            return _quote(self.peek())
        snippet = match.group()
        following = self.text[match.end() : match.end() + 1]
        if len(snippet) == 20 and following and not following.isspace() and following not in "()":
            snippet += "..."
        return _quote(snippet)

    def fail(self, description: str) -> NoReturn:
        raise _Error(self.index, description)


def _convert(field: Field, op: Op, raw: str, quoted: bool) -> Value:
    """The typed value of `raw` for `field`; ValueError says what the field takes instead."""
    name, kind = field.name, field.kind
    if kind is Kind.INT:
        if not _INTEGER.fullmatch(raw):
            raise ValueError(f"{name} takes an integer, found {_quote(raw)}")
        if len(raw.lstrip("-").lstrip("0")) > 19 or not INT64_MIN <= int(raw) <= INT64_MAX:
            raise ValueError(
                f"{raw} is out of range for {name}: integers are from {INT64_MIN} to {INT64_MAX}"
            )
        return int(raw)
    if kind is Kind.ENUM:
        if raw not in field.enum_values:
            names = ", ".join(field.enum_values)
            raise ValueError(f"unknown value {_quote(raw)} for {name}; expected one of {names}")
        return EnumValue(raw, field.enum_values[raw])
    if kind is Kind.BOOL:
        if raw not in ("true", "false"):
            raise ValueError(f"{name} takes true or false, found {_quote(raw)}")
        return raw == "true"
    if kind is Kind.TIMESTAMP:
        return _timestamp(name, raw)
    if not quoted and not _BARE_TEXT.fullmatch(raw):
        raise ValueError(
            f"{_quote(raw)} must be quoted: unquoted text cannot hold any of * = < > ! : \\"
        )
    if kind is Kind.LABELS:
        return raw.casefold()
    return raw.lower() if op is Op.HAS else raw


def _timestamp(name: str, raw: str) -> datetime:
    """An RFC 3339 timestamp with an offset, as an aware UTC datetime of microsecond precision."""
    match = _TIMESTAMP.fullmatch(raw)
    if match is None:
        raise ValueError(
            f"{name} takes an RFC 3339 timestamp with an offset such as {_TIMESTAMP_EXAMPLE}, "
            f"found {_quote(raw)}"
        )
    year, month, day, hour, minute, second = (int(part) for part in match.group(1, 2, 3, 4, 5, 6))
    fraction, sign, offset_hours, offset_minutes = match.group(7, 8, 9, 10)
    fraction = fraction or ""
    if fraction[6:].strip("0"):
        raise ValueError(f"{_quote(raw)} is finer than the microseconds times are kept in")
    offset = timedelta()
    if sign is not None:
        if int(offset_hours) > 23 or int(offset_minutes) > 59:
            raise ValueError(f"{_quote(raw)} has an invalid offset")
        offset = timedelta(hours=int(offset_hours), minutes=int(offset_minutes))
        offset = -offset if sign == "-" else offset
    out_of_range = ValueError(f"{_quote(raw)} is out of range: years 0001 to 9999 in UTC")
    if year == 0:
        raise out_of_range
    microsecond = int(fraction[:6].ljust(6, "0"))
    try:
        local = datetime(
            year, month, day, hour, minute, second, microsecond, tzinfo=timezone(offset)
        )
    except ValueError:
        raise ValueError(f"{_quote(raw)} is not a valid date and time") from None
    try:
        return local.astimezone(UTC)
    except (OverflowError, ValueError):
        raise out_of_range from None
