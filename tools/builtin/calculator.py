"""`calculator`: arithmetic on numbers, parsed into a syntax tree and walked; nothing is ever eval'd.

Operators + - * / // % ** and parentheses, unary minus, the functions below and the constants pi, e,
tau. Powers and factorials are bounded so one request cannot keep a core busy or fill the memory.
"""

from __future__ import annotations

import ast
import math
import operator

from pydantic import BaseModel, Field

from ..tool import ToolError, tool

MAX_EXPRESSION = 1000  # characters
MAX_EXPONENT = 10_000
MAX_FACTORIAL = 1000
MAX_INT_DIGITS = 4000
_MAX_BITS = int(MAX_INT_DIGITS * 3.33)

_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {
    "sqrt": math.sqrt, "abs": abs, "round": round, "floor": math.floor, "ceil": math.ceil,
    "exp": math.exp, "log": math.log, "log10": math.log10, "log2": math.log2,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos, "atan": math.atan,
    "min": min, "max": max, "factorial": math.factorial,
}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


class CalculatorArgs(BaseModel):
    expression: str = Field(description="An arithmetic expression, e.g. '(2 + 3) * 4 ** 2 / sqrt(16)'",
                            max_length=MAX_EXPRESSION)


@tool(input=CalculatorArgs)
async def calculator(args: CalculatorArgs, ctx) -> dict:
    """Evaluate an arithmetic expression exactly: + - * / // % **, parentheses, sqrt, log, sin, cos,
    tan, abs, round, floor, ceil, min, max, factorial, and the constants pi, e and tau."""
    value = evaluate(args.expression)
    return {"expression": args.expression, "result": value}


def evaluate(expression: str) -> int | float:
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ToolError(f"not an arithmetic expression: {expression!r}") from None
    try:
        value = _eval(tree.body)
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("the result is too large") from None
    except (ValueError, TypeError) as exc:
        raise ToolError(f"cannot evaluate {expression!r}: {exc}") from None
    except RecursionError:
        raise ToolError("the expression is nested too deeply") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is not a finite number")
    return value


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > MAX_EXPONENT or (
                isinstance(left, int) and isinstance(right, int) and left.bit_length() * right > _MAX_BITS)):
            raise OverflowError
        value = _BINARY[type(node.op)](left, right)
        if isinstance(value, complex):
            raise ValueError("the result is not a real number")
        if isinstance(value, int) and value.bit_length() > _MAX_BITS:
            raise OverflowError
        return value
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
            and not node.keywords):
        args = [_eval(a) for a in node.args]
        if node.func.id == "factorial" and args and (not isinstance(args[0], int) or args[0] > MAX_FACTORIAL):
            raise ValueError(f"factorial takes a whole number up to {MAX_FACTORIAL}")
        return _FUNCTIONS[node.func.id](*args)
    raise ToolError(f"unsupported in an arithmetic expression: {ast.unparse(node)!r}")
