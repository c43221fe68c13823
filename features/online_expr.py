"""The registry's portable SQL, compiled to Python closures with DuckDB's semantics.

:func:`compile_scalar` turns one expression (``CASE WHEN emails_sent_7d > 0 THEN least(1, ...) END``)
into a function of a dict of values (a row, or one customer's features); :func:`compile_aggregate`
turns ``sum(quantity * unit_price)`` into a function of a group of rows. NULL is ``None`` and
behaves as in SQL: three-valued logic, NULL through arithmetic and comparisons, a ``CASE`` without
``ELSE`` gives NULL, ``least``/``greatest``/``coalesce`` skip NULLs, division by zero follows IEEE
(DuckDB on DOUBLE), ``round`` rounds half away from zero and a cast to INTEGER half to even (as
DuckDB does). A node this module does not know is a :class:`~features.registry.RegistryError`
naming the expression: a new declaration must fail here, never silently differ from the batch SQL.

Parsed with sqlglot (``read="duckdb"``). The online feature store (:mod:`features.online`) is the
user.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import sqlglot
from sqlglot import exp

from features.registry import RegistryError

Env = dict[str, object]
Fn = Callable[[Env], object]
WINDOW_KEY = "__window_{}"  # the key a precomputed window value is stored under in each row


@dataclass(frozen=True)
class Scalar:
    """A compiled scalar expression: ``fn(row)``; ``windows`` are (key, function of all rows giving one
    value per row) to store in each row before ``fn`` runs (``row_number() OVER (...)``)."""

    sql: str
    fn: Fn
    windows: tuple[tuple[str, Callable[[list[Env]], list[object]]], ...] = ()
    equals: tuple[str, object] | None = None  # (column, literal) when the expression is ``column = literal``

    def add_to(self, rows: list[Env], name: str) -> None:
        """Add this expression as column ``name`` to every row of ``rows`` (one partition set)."""
        for key, window in self.windows:
            for row, value in zip(rows, window(rows), strict=True):
                row[key] = value
        fn = self.fn
        for row in rows:
            row[name] = fn(row)


def _unsupported(node: exp.Expression, sql: str) -> RegistryError:
    return RegistryError(f"the online feature path cannot evaluate {node.sql('duckdb')!r} "
                         f"({type(node).__name__}) in {sql!r}; extend features/online_expr.py")


def _parse(sql: str) -> exp.Expression:
    try:
        return sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.ParseError as err:
        raise RegistryError(f"cannot parse the declaration {sql!r}: {err}") from err


@lru_cache(maxsize=1024)
def compile_scalar(sql: str, windows: bool = False) -> Scalar:
    """``sql`` as a :class:`Scalar`; window functions only where ``windows`` (a source's added columns)."""
    found: list[tuple[str, Callable[[list[Env]], list[object]]]] = []
    tree = _parse(sql)
    fn = _Compiler(sql, found if windows else None).node(tree)
    return Scalar(sql, fn, tuple(found), _equality(tree))


def _equality(node: exp.Expression) -> tuple[str, object] | None:
    """(column, value) of ``column = 'literal'`` (or ``literal = column``, numbers too): true exactly for
    the rows whose column equals the value, so a filter can look them up instead of testing each row."""
    while isinstance(node, exp.Paren):
        node = node.this
    if not isinstance(node, exp.EQ):
        return None
    sides = (node.this, node.expression)
    column = next((c for c in sides if isinstance(c, exp.Column) and not c.table), None)
    literal = next((v for v in sides if isinstance(v, exp.Literal)), None)
    if column is None or literal is None:
        return None
    return column.name, _literal(literal)


def _literal(node: exp.Literal) -> object:
    """A literal's value: the text, or an int or float."""
    return node.this if node.is_string else (int(node.this) if node.is_int else float(node.this))


@lru_cache(maxsize=1024)
def compile_aggregate(sql: str) -> Callable[[list[Env]], object]:
    """``sql``, an aggregate call (``sum(x * y)``, ``min(ordered_at)``), as a function of a group's rows."""
    node = _parse(sql)
    kinds: dict[type, Callable[[list[object]], object]] = {
        exp.Sum: sql_sum,
        exp.Min: lambda vs: min(vs) if vs else None,
        exp.Max: lambda vs: max(vs) if vs else None,
        exp.Avg: lambda vs: math.fsum(vs) / len(vs) if vs else None,
    }
    if isinstance(node, exp.Count):
        arg = node.this
        if isinstance(arg, exp.Star):
            return len
        inner = _Compiler(sql, None).node(arg)
        return lambda rows: sum(1 for r in rows if inner(r) is not None)
    if type(node) not in kinds:
        raise _unsupported(node, sql)
    inner, reduce = _Compiler(sql, None).node(node.this), kinds[type(node)]
    return lambda rows: reduce([v for v in map(inner, rows) if v is not None])


# -- SQL semantics ------------------------------------------------------------------------------------


def sql_sum(values: list) -> object:
    """SQL ``sum``: NULL for no values; a float sum correctly rounded (DuckDB's order of addition is
    unspecified, so agreement is to rounding, not bit for bit)."""
    if not values:
        return None
    return math.fsum(values) if any(isinstance(v, float) for v in values) else sum(values)


def _divide(a: object, b: object) -> object:
    if a is None or b is None:
        return None
    try:
        return a / b
    except ZeroDivisionError:
        return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a) * math.copysign(1.0, b)


def sql_round(value: object, decimals: int = 0) -> object:
    """DuckDB's ``round`` of a DOUBLE: ``std::round(value * 10^d) / 10^d`` (half away from zero)."""
    if value is None:
        return None
    if isinstance(value, int) and decimals >= 0:
        return value
    modifier = 10.0 ** decimals
    scaled = value * modifier
    if math.isinf(scaled) or math.isnan(scaled):
        return value
    magnitude = abs(scaled)
    whole = math.floor(magnitude)
    if magnitude - whole >= 0.5:  # exact for doubles; floor(x + 0.5) is not
        whole += 1
    result = math.copysign(float(whole), scaled) / modifier
    return value if math.isinf(result) or math.isnan(result) else result


def _cast(value: object, kind: exp.DataType.Type, sql: str) -> object:
    if value is None:
        return None
    t = exp.DataType.Type
    if kind in (t.DOUBLE, t.FLOAT):
        return float(value)
    if kind in (t.INT, t.BIGINT, t.SMALLINT, t.TINYINT):
        return round(value) if isinstance(value, float) else int(value)  # half to even, as DuckDB
    if kind in (t.VARCHAR, t.TEXT):
        return ("true" if value else "false") if isinstance(value, bool) else str(value)
    if kind is t.BOOLEAN:
        return bool(value)
    raise RegistryError(f"the online feature path cannot cast to {kind.value} in {sql!r}")


def _and(a: object, b: object) -> object:
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def _or(a: object, b: object) -> object:
    if a is True or b is True:
        return True
    return None if a is None or b is None else False


def _strict(op: Callable[[object, object], object]) -> Callable[[object, object], object]:
    return lambda a, b: None if a is None or b is None else op(a, b)


_BINARY: dict[type, Callable[[object, object], object]] = {
    exp.Add: _strict(lambda a, b: a + b), exp.Sub: _strict(lambda a, b: a - b),
    exp.Mul: _strict(lambda a, b: a * b), exp.Div: _divide,
    exp.EQ: _strict(lambda a, b: a == b), exp.NEQ: _strict(lambda a, b: a != b),
    exp.GT: _strict(lambda a, b: a > b), exp.GTE: _strict(lambda a, b: a >= b),
    exp.LT: _strict(lambda a, b: a < b), exp.LTE: _strict(lambda a, b: a <= b),
    exp.And: _and, exp.Or: _or,
}

_UNARY: dict[type, Callable[[object], object]] = {
    exp.Neg: lambda v: None if v is None else -v,
    exp.Not: lambda v: None if v is None else not v,
    exp.Lower: lambda v: None if v is None else str(v).lower(),
    exp.Upper: lambda v: None if v is None else str(v).upper(),
    exp.Ceil: lambda v: None if v is None else float(math.ceil(v)),
    exp.Floor: lambda v: None if v is None else float(math.floor(v)),
    exp.Abs: lambda v: None if v is None else abs(v),
}


class _Compiler:
    def __init__(self, sql: str, windows: list | None) -> None:
        self.sql, self.windows = sql, windows

    def node(self, node: exp.Expression) -> Fn:
        sql = self.sql
        if isinstance(node, exp.Paren):
            return self.node(node.this)
        if isinstance(node, exp.Column):
            if node.table:
                raise _unsupported(node, sql)
            name = node.name
            return lambda env: env[name]
        if isinstance(node, exp.Literal):
            value = _literal(node)
            return lambda env: value
        if isinstance(node, exp.Boolean):
            value = node.this
            return lambda env: value
        if isinstance(node, exp.Null):
            return lambda env: None
        if type(node) in _BINARY:
            op, left, right = _BINARY[type(node)], self.node(node.this), self.node(node.expression)
            return lambda env: op(left(env), right(env))
        if type(node) in _UNARY:
            op, inner = _UNARY[type(node)], self.node(node.this)
            return lambda env: op(inner(env))
        if isinstance(node, exp.Is):
            if not isinstance(node.expression, exp.Null):
                raise _unsupported(node, sql)
            inner = self.node(node.this)
            return lambda env: inner(env) is None
        if isinstance(node, exp.Between):
            value, low, high = self.node(node.this), self.node(node.args["low"]), self.node(node.args["high"])
            ge, le = _BINARY[exp.GTE], _BINARY[exp.LTE]
            return lambda env: _and(ge(value(env), low(env)), le(value(env), high(env)))
        if isinstance(node, exp.In):
            if node.args.get("query") or node.args.get("unnest") or node.args.get("field"):
                raise _unsupported(node, sql)
            value, items = self.node(node.this), [self.node(e) for e in node.expressions]
            return lambda env: _in(value(env), [i(env) for i in items])
        if isinstance(node, exp.Case):
            return self._case(node)
        if isinstance(node, exp.Coalesce):
            parts = [self.node(node.this), *map(self.node, node.expressions)]
            return lambda env: next((v for v in (p(env) for p in parts) if v is not None), None)
        if isinstance(node, exp.Least | exp.Greatest):
            parts = [self.node(node.this), *map(self.node, node.expressions)]
            pick = min if isinstance(node, exp.Least) else max
            return lambda env: _pick(pick, [p(env) for p in parts])
        if isinstance(node, exp.Round):
            value = self.node(node.this)
            decimals = self.node(node.args["decimals"]) if node.args.get("decimals") else (lambda env: 0)
            return lambda env: sql_round(value(env), decimals(env))
        if isinstance(node, exp.Cast):
            inner, kind = self.node(node.this), node.to.this
            _cast(0, kind, sql)  # an unknown target fails now, not at the first row
            return lambda env: _cast(inner(env), kind, sql)
        if isinstance(node, exp.Window) and self.windows is not None:
            return self._window(node)
        raise _unsupported(node, sql)

    def _case(self, node: exp.Case) -> Fn:
        subject = self.node(node.this) if node.this else None
        whens = [(self.node(i.this), self.node(i.args["true"])) for i in node.args.get("ifs", [])]
        default = self.node(node.args["default"]) if node.args.get("default") else (lambda env: None)

        def case(env: Env) -> object:
            s = subject(env) if subject else None
            for cond, then in whens:
                hit = cond(env)
                if (hit is True) if subject is None else (s is not None and hit is not None and s == hit):
                    return then(env)
            return default(env)
        return case

    def _window(self, node: exp.Window) -> Fn:
        if not isinstance(node.this, exp.RowNumber) or node.args.get("spec"):
            raise _unsupported(node, self.sql)
        parts = [self.node(p) for p in node.args.get("partition_by") or []]
        order = node.args.get("order")
        keys = [(self.node(o.this), bool(o.args.get("desc"))) for o in (order.expressions if order else [])]
        key = WINDOW_KEY.format(len(self.windows))

        def row_number(rows: list[Env]) -> list[object]:
            index = list(range(len(rows)))
            for fn, desc in reversed(keys):  # stable sorts, last key first; NULLs last as DuckDB
                index.sort(key=lambda i, fn=fn: _order_key(fn(rows[i]), desc))
            seen: dict[tuple, int] = {}
            out: list[object] = [None] * len(rows)
            for i in index:
                part = tuple(p(rows[i]) for p in parts)
                seen[part] = seen.get(part, 0) + 1
                out[i] = seen[part]
            return out

        self.windows.append((key, row_number))
        return lambda env: env[key]


def _order_key(value: object, desc: bool) -> tuple:
    if value is None:
        return (1, 0)
    if desc:
        return (0, _Reversed(value))
    return (0, value)


class _Reversed:
    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __lt__(self, other: _Reversed) -> bool:
        return other.value < self.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and other.value == self.value


def _in(value: object, items: list[object]) -> object:
    if value is None:
        return None
    if any(i is not None and i == value for i in items):
        return True
    return None if any(i is None for i in items) else False


def _pick(pick: Callable, values: list[object]) -> object:
    present = [v for v in values if v is not None]
    return pick(present) if present else None


__all__ = ["Scalar", "compile_aggregate", "compile_scalar", "sql_round", "sql_sum"]
