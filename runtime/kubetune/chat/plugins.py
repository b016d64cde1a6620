"""MOSS plugins for `chat --with-plugins`: the model writes `<|Commands|>: Calculate("2*(3+4)")<eoc>`, the REPL runs
the commands and feeds `<|Results|>: ...<eor>` back before the model answers. Nothing here calls `eval`.

The model's output is untrusted input: each command runs in its own process with a time and memory budget
(`exp(1000)`, `x^1000000000-1` or `round(1, -10**9)` must cost an error line, never the session), and its
argument is NFKC-normalised before any filter looks at it (full-width `ｙ.ｎａｍｅ` is `y.name`)."""

from __future__ import annotations

import ast
import json
import math
import operator
import os
import re
import resource
import subprocess
import sys
import time
import unicodedata
import urllib.request
from typing import Any, Callable

COMMAND = re.compile(r'(Calculate|Solve|Search)\("((?:[^"\\]|\\.)*)"\)')
COMMANDS_BLOCK = re.compile(r"<\|Commands\|>:(.*?)(?:<eoc>|$)", re.S)
SEARCH_KEY_ENV = "SERPER_API_KEY"
_EQUATION = re.compile(r"[\w\s+\-*/^().=,;]*", re.ASCII)
BUDGET_SECONDS = 10.0
BUDGET_BYTES = 1 << 30  # address space of the plugin process
MAX_RESULT = 2000
MAX_COMMANDS = 8  # per answer


class PluginError(ValueError):
    """A command the plugin cannot run; its message goes back to the model as the result."""


_BINARY: dict[type, Callable[[Any, Any], Any]] = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {name: getattr(math, name) for name in
              ("sqrt", "sin", "cos", "tan", "asin", "acos", "atan", "log", "log2", "log10", "exp", "floor", "ceil",
               "factorial", "radians", "degrees")} | {"abs": abs, "round": round, "min": min, "max": max}
_CONSTANTS = {"pi": math.pi, "e": math.e}


def calculate(expression: str) -> str:
    """Arithmetic over numbers, + - * / // % ** ^, parentheses and a few math functions."""
    try:
        tree = ast.parse(expression.replace("^", "**").replace("×", "*").replace("÷", "/"), mode="eval")
    except SyntaxError:
        raise PluginError(f"not an arithmetic expression: {expression!r}") from None
    value = _eval(tree.body)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    return f"{value:.10g}" if isinstance(value, float) else str(value)


def _eval(node: ast.AST) -> float | int:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 1000 or abs(left) > 1e100):
            raise PluginError("exponent too large")
        try:
            return _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise PluginError("division by zero") from None
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
            and not node.keywords):
        args = [_eval(a) for a in node.args]
        if node.func.id == "factorial" and (not float(args[0]).is_integer() or args[0] > 1000):
            raise PluginError("factorial takes an integer up to 1000")
        try:
            return _FUNCTIONS[node.func.id](*args)
        except (ValueError, TypeError) as exc:
            raise PluginError(f"{node.func.id}: {exc}") from None
    raise PluginError(f"unsupported in arithmetic: {ast.unparse(node)!r}")


def solve(equations: str) -> str:
    """Solve one equation or a comma/semicolon-separated system with sympy, e.g. `x^2 - 4 = 0`."""
    import sympy
    from sympy.parsing.sympy_parser import (convert_xor, implicit_multiplication_application, parse_expr,
                                            standard_transformations)

    # parse_expr evaluates Python: admit only arithmetic characters, no dunders and no attribute access.
    # A dot before a letter is attribute access however it is spaced (`1 .evalf()`), never part of a number here.
    if not _EQUATION.fullmatch(equations) or "__" in equations or re.search(r"[A-Za-z_)\]]\s*\.", equations) \
            or re.search(r"\.\s*[A-Za-z_]", equations):
        raise PluginError(f"not an equation: {equations!r}")
    transformations = standard_transformations + (convert_xor, implicit_multiplication_application)
    parsed = []
    for part in filter(None, (p.strip() for p in re.split(r"[;,]", equations))):
        left, _, right = part.partition("=")
        try:
            # Only symbols, numbers and sympy's own functions are in scope; no builtins reach the parser.
            lhs = parse_expr(left, transformations=transformations, global_dict={"__builtins__": {}, **_sympy_scope()})
            rhs = parse_expr(right or "0", transformations=transformations,
                             global_dict={"__builtins__": {}, **_sympy_scope()})
        except Exception:
            raise PluginError(f"cannot parse equation {part!r}") from None
        parsed.append(sympy.Eq(lhs, rhs))
    if not parsed:
        raise PluginError("no equation given")
    solutions = sympy.solve(parsed, dict=True)
    if not solutions:
        return "no solution"
    return "; ".join(", ".join(f"{k} = {v}" for k, v in s.items()) for s in solutions)


def _sympy_scope() -> dict:
    import sympy

    return {name: getattr(sympy, name) for name in
            ("Symbol", "Integer", "Float", "Rational", "sqrt", "sin", "cos", "tan", "exp", "log", "pi", "E", "I")}


def search(query: str) -> str:
    """Web search through Serper (https://serper.dev), as XTuner's plugin does; the key comes from the environment."""
    key = os.environ.get(SEARCH_KEY_ENV)
    if not key:
        raise PluginError(f"search is unavailable: set {SEARCH_KEY_ENV} to a serper.dev API key")
    request = urllib.request.Request("https://google.serper.dev/search", data=json.dumps({"q": query}).encode(),
                                     headers={"X-API-KEY": key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            results = json.load(response).get("organic", [])[:3]
    except OSError as exc:
        raise PluginError(f"search failed: {exc}") from None
    return "\n".join(f"<|{i}|>: '{r.get('title', '')}: {r.get('snippet', '')}'" for i, r in enumerate(results)) \
        or "no results"


PLUGINS = {"Calculate": ("calculate", calculate), "Solve": ("solve", solve), "Search": ("search", search)}


def run_isolated(name: str, argument: str, seconds: float | None = None) -> str:
    """`name(argument)` in a child process under the budget; the result line, or `error: ...` whatever happens."""
    try:
        proc = subprocess.run([sys.executable, "-m", "kubetune.chat.plugins", name], input=argument, text=True,
                              capture_output=True, timeout=BUDGET_SECONDS if seconds is None else seconds)
    except subprocess.TimeoutExpired:
        return f"error: ran past this answer's {BUDGET_SECONDS:g} s plugin budget"
    try:
        answer = json.loads(proc.stdout)
    except ValueError:
        return "error: ran out of its memory budget" if "MemoryError" in proc.stderr else "error: the plugin failed"
    text = answer["result"] if "result" in answer else f"error: {answer['error']}"
    return text if len(text) <= MAX_RESULT else text[:MAX_RESULT] + "... (cut)"


def _child(name: str) -> None:
    """The plugin process: one command from stdin, one JSON object on stdout."""
    # Set here rather than in a preexec_fn, which is unsafe in the chat's threaded process.
    resource.setrlimit(resource.RLIMIT_AS, (BUDGET_BYTES, BUDGET_BYTES))
    try:
        out = {"result": PLUGINS[name][1](sys.stdin.read())}
    except PluginError as exc:
        out = {"error": str(exc)}
    except MemoryError:
        out = {"error": "ran out of its memory budget"}
    except Exception as exc:  # OverflowError, a too-long int to print...: an answer for the model, not a crash
        out = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(out))


def _argument(raw: str) -> str:
    if "\\" in raw:
        try:
            raw = raw.encode().decode("unicode_escape")
        except UnicodeDecodeError:
            pass  # `1\x`: not an escape, so the text stands as written
    return unicodedata.normalize("NFKC", raw)


def run_commands(generated: str, enabled: set[str]) -> str | None:
    """The `<|Results|>` block for the commands in a MOSS answer, or None when it asked for none."""
    block = COMMANDS_BLOCK.search(generated)
    if not block:
        return None
    lines = []
    # One budget per answer, not per command: four slow commands must not hold the chat for four budgets.
    deadline = time.monotonic() + BUDGET_SECONDS
    for index, (name, argument) in enumerate(COMMAND.findall(block.group(1))):
        flag, _ = PLUGINS[name]
        argument = _argument(argument)
        left = deadline - time.monotonic()
        if flag not in enabled:
            result = f"{name} is disabled (start chat with --with-plugins {flag})"
        elif index >= MAX_COMMANDS:
            result = f"error: more than {MAX_COMMANDS} commands in one answer"
        elif left <= 0.05:
            result = f"error: this answer's {BUDGET_SECONDS:g} s plugin budget is spent"
        else:
            result = run_isolated(name, argument, left)
        lines.append(f'{name}("{argument}") => {result}')
    if not lines:
        return None
    return "<|Results|>:\n" + "\n".join(lines) + "\n<eor>\n"


if __name__ == "__main__":
    _child(sys.argv[1])
