"""The safe expression language of ``derive`` steps: a parsed Python expression
restricted to arithmetic, comparisons, column names and a few functions, evaluated
vectorized over an Arrow record batch.
"""

from __future__ import annotations

import ast

import pyarrow as pa
import pyarrow.compute as pc

from cauce.artifacts import CauceError

_ARITHMETIC = {ast.Add: "add", ast.Sub: "subtract", ast.Mult: "multiply", ast.Div: "divide", ast.Pow: "power"}
_COMPARE = {ast.Lt: "less", ast.LtE: "less_equal", ast.Gt: "greater", ast.GtE: "greater_equal", ast.Eq: "equal", ast.NotEq: "not_equal"}
_FUNCTIONS = {
    # name: (min args, max args)
    "log": (1, 1), "log1p": (1, 1), "exp": (1, 1), "sqrt": (1, 1), "abs": (1, 1), "floor": (1, 1), "ceil": (1, 1),
    "round": (1, 2), "min": (2, 16), "max": (2, 16), "clip": (3, 3), "where": (3, 3), "if_else": (3, 3),
    "is_null": (1, 1), "coalesce": (2, 16), "concat": (1, 16), "lower": (1, 1), "upper": (1, 1), "strip": (1, 1),
    "length": (1, 1), "hour": (1, 1), "day_of_week": (1, 1), "month": (1, 1), "year": (1, 1), "col": (1, 1),
}
FUNCTIONS = tuple(sorted(_FUNCTIONS))


def _is_number(value) -> bool:
    t = value.type
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_boolean(t) or pa.types.is_null(t)


def _as_float(value):
    return value if pa.types.is_float64(value.type) else pc.cast(value, pa.float64())


def _as_string(value):
    return value if pa.types.is_string(value.type) else pc.cast(value, pa.string())


class Expression:
    """A parsed expression: ``ast`` nodes from a whitelist, evaluated with pyarrow.compute.

    Column names are bare identifiers (``fare``) or ``col("any name")``; numbers
    are computed in float64 (``/`` is true division, a division by zero gives
    inf); nulls propagate; ``a if cond else b`` and ``where(cond, a, b)`` pick per row.
    """

    def __init__(self, text: str):
        self.text = text
        try:
            self.tree = ast.parse(text.strip(), mode="eval").body
        except SyntaxError as error:
            raise ValueError(f"is not a valid expression ({error.msg} at column {error.offset})") from None
        self.columns: list[str] = []
        self._check(self.tree)

    def _check(self, node) -> None:
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float, str, bool)) and node.value is not None:
                raise ValueError(f"has an unsupported constant {node.value!r}")
        elif isinstance(node, ast.Name):
            if node.id not in self.columns:
                self.columns.append(node.id)
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _ARITHMETIC and not isinstance(node.op, (ast.Mod, ast.FloorDiv)):
                raise ValueError(f"uses the unsupported operator {type(node.op).__name__}")
            self._check(node.left)
            self._check(node.right)
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.USub, ast.UAdd, ast.Not)):
                raise ValueError(f"uses the unsupported operator {type(node.op).__name__}")
            self._check(node.operand)
        elif isinstance(node, ast.BoolOp):
            for value in node.values:
                self._check(value)
        elif isinstance(node, ast.Compare):
            if any(type(op) not in _COMPARE for op in node.ops):
                raise ValueError("uses an unsupported comparison (use <, <=, >, >=, ==, !=)")
            for value in [node.left, *node.comparators]:
                self._check(value)
        elif isinstance(node, ast.IfExp):
            for value in (node.test, node.body, node.orelse):
                self._check(value)
        elif isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else None
            if name not in _FUNCTIONS or node.keywords:
                raise ValueError(f"calls {ast.unparse(node.func)!r}; the functions are {list(FUNCTIONS)} (positional arguments)")
            low, high = _FUNCTIONS[name]
            if not low <= len(node.args) <= high:
                raise ValueError(f"calls {name}() with {len(node.args)} argument(s); expected {low}..{high}")
            if name == "col":
                arg = node.args[0]
                if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                    raise ValueError('uses col() without a string column name: write col("column name")')
                if arg.value not in self.columns:
                    self.columns.append(arg.value)
                return
            for arg in node.args:
                self._check(arg)
        else:
            raise ValueError(f"uses unsupported syntax {type(node).__name__!r} ({ast.unparse(node)!r})")

    def evaluate(self, columns: dict[str, pa.Array]) -> pa.Array:
        result = self._eval(self.tree, columns)
        if isinstance(result, pa.Scalar):
            raise CauceError(f"expression {self.text!r} does not depend on any column")
        return result

    def _eval(self, node, columns):
        if isinstance(node, ast.Constant):
            return pa.scalar(node.value)
        if isinstance(node, ast.Name):
            return columns[node.id]
        if isinstance(node, ast.BinOp):
            left, right = self._numbers(node, self._eval(node.left, columns), self._eval(node.right, columns))
            if isinstance(node.op, (ast.Mod, ast.FloorDiv)):
                quotient = pc.floor(pc.divide(left, right))
                return quotient if isinstance(node.op, ast.FloorDiv) else pc.subtract(left, pc.multiply(quotient, right))
            return pc.call_function(_ARITHMETIC[type(node.op)], [left, right])
        if isinstance(node, ast.UnaryOp):
            operand = self._eval(node.operand, columns)
            if isinstance(node.op, ast.Not):
                return pc.invert(self._boolean(node, operand))
            (operand,) = self._numbers(node, operand)
            return pc.negate(operand) if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BoolOp):
            combine = pc.and_kleene if isinstance(node.op, ast.And) else pc.or_kleene
            values = [self._boolean(node, self._eval(v, columns)) for v in node.values]
            result = values[0]
            for value in values[1:]:
                result = combine(result, value)
            return result
        if isinstance(node, ast.Compare):
            result, left = None, self._eval(node.left, columns)
            for op, comparator in zip(node.ops, node.comparators):
                right = self._eval(comparator, columns)
                a, b = (self._numbers(node, left, right) if _is_number(left) and _is_number(right) else (left, right))
                try:
                    value = pc.call_function(_COMPARE[type(op)], [a, b])
                except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
                    raise CauceError(f"expression {self.text!r}: cannot compare {left.type} with {right.type} in {ast.unparse(node)!r}") from None
                result = value if result is None else pc.and_kleene(result, value)
                left = right
            return result
        if isinstance(node, ast.IfExp):
            return self._choose(node, self._eval(node.test, columns), self._eval(node.body, columns), self._eval(node.orelse, columns))
        return self._call(node, node.func.id, columns)

    def _call(self, node, name, columns):
        if name == "col":
            return columns[node.args[0].value]
        args = [self._eval(arg, columns) for arg in node.args]
        if name in ("where", "if_else"):
            return self._choose(node, *args)
        if name in ("log", "log1p", "exp", "sqrt", "abs", "floor", "ceil"):
            (x,) = self._numbers(node, *args)
            return pc.call_function({"log": "ln"}.get(name, name), [x])
        if name == "round":
            (x,) = self._numbers(node, args[0])
            digits = int(args[1].as_py()) if len(args) > 1 else 0
            return pc.round(x, ndigits=digits, round_mode="half_to_even")
        if name in ("min", "max"):
            fn = pc.min_element_wise if name == "min" else pc.max_element_wise
            return fn(*self._numbers(node, *args), skip_nulls=False)
        if name == "clip":
            x, low, high = self._numbers(node, *args)
            return pc.min_element_wise(pc.max_element_wise(x, low, skip_nulls=False), high, skip_nulls=False)
        if name == "is_null":
            return pc.is_null(args[0], nan_is_null=True) if isinstance(args[0], pa.Array) else pa.scalar(args[0].as_py() is None)
        if name == "coalesce":
            if all(_is_number(a) for a in args):
                args = self._numbers(node, *args)
            return pc.coalesce(*args)
        if name == "concat":
            return pc.binary_join_element_wise(*[_as_string(a) for a in args], "")
        if name in ("lower", "upper", "strip", "length"):
            text = _as_string(args[0])
            kernel = {"lower": "utf8_lower", "upper": "utf8_upper", "strip": "utf8_trim_whitespace", "length": "utf8_length"}[name]
            result = pc.call_function(kernel, [text])
            return _as_float(result) if name == "length" else result
        # hour / day_of_week / month / year of a timestamp column
        value = args[0]
        if not pa.types.is_timestamp(value.type) and not pa.types.is_date(value.type):
            raise CauceError(f"expression {self.text!r}: {name}() needs a timestamp (cast the column first), got {value.type}")
        return _as_float(pc.call_function(name, [value]))

    def _numbers(self, node, *values):
        out = []
        for value in values:
            if not _is_number(value):
                raise CauceError(
                    f"expression {self.text!r}: {ast.unparse(node)!r} needs numbers, got {value.type} "
                    "(cast the column first; join strings with concat())"
                )
            out.append(_as_float(value))
        return out

    def _boolean(self, node, value):
        if pa.types.is_boolean(value.type):
            return value
        if pa.types.is_null(value.type):
            return pc.cast(value, pa.bool_())
        raise CauceError(f"expression {self.text!r}: {ast.unparse(node)!r} needs a boolean, got {value.type}")

    def _choose(self, node, test, yes, no):
        test = self._boolean(node, test)
        if _is_number(yes) and _is_number(no):
            yes, no = self._numbers(node, yes, no)
        elif pa.types.is_null(yes.type):
            yes = pa.scalar(None, no.type)
        elif pa.types.is_null(no.type):
            no = pa.scalar(None, yes.type)
        try:
            return pc.if_else(test, yes, no)
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            raise CauceError(f"expression {self.text!r}: both branches of {ast.unparse(node)!r} must have one type, got {yes.type} and {no.type}") from None
