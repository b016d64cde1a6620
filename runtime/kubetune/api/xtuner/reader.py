"""An XTuner config read as a syntax tree, never run: a config is Python, and neither a laptop importing it nor a pod
training from it may execute someone's code. The module-level statements XTuner's configs use (imports, assignments,
`+=`/`*=`, `if` on settings, dict/list/tuple literals, `dict(...)` calls, arithmetic, comparisons, conditional
expressions) are evaluated over plain values; an imported name stays a symbol (`xtuner.dataset.map_fns.alpaca_map_fn`);
a function defined in the file stays a `Local` with its line; anything else becomes an `Unknown` with its line, which
is an error only if the mapping needs it."""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sym:
    """An imported name, or an attribute of one (`PROMPT_TEMPLATE.internlm2_chat`, `torch.float16`)."""

    path: str

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Local:
    """A function or class the config defines itself (a user's map fn): code the importer will not run."""

    name: str
    line: int


@dataclass(frozen=True)
class Unknown:
    """An expression the reader does not evaluate."""

    text: str
    line: int


@dataclass(frozen=True)
class Call:
    """A call of an imported callable other than `dict` (kept, not made)."""

    func: Sym
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    line: int


class Setting(dict):
    """A dict of the config (a `dict(...)` call or a `{...}` literal) that remembers each key's line and which keys
    the importer read, so that what it never looked at can be named (accounting.py)."""

    def __init__(self, items: dict[Any, Any], lines: dict[Any, int]):
        super().__init__(items)
        self.lines: dict[Any, int] = lines
        self.read: set[Any] = set()

    def get(self, key: Any, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: Any) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(key)
        return super().__contains__(key)

    def items(self):  # a walk over every key reads them all
        self.read.update(self.keys())
        return super().items()


@dataclass
class Config:
    """The config's module-level names, where each was last set, and the statements that were skipped."""

    values: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[int, str]] = field(default_factory=list)


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not}


def read(source: str, filename: str) -> Config:
    """Evaluate the config's module-level statements; raises SyntaxError for a file that is not Python."""
    tree = ast.parse(source, filename)
    config = Config()
    _Reader(config).block(tree.body)
    return config


_NUMBER_CASTS = {"int": int, "float": float}
MAX_BITS = 128  # the largest integer a setting may be (seeds, lengths and counts need 64)
MAX_LENGTH = 1_000_000  # the longest string or list a setting may be built into


def _small_enough(fn: Any, left: Any, right: Any) -> bool:
    """Whether an integer result stays within MAX_BITS, judged before computing it."""
    if not (isinstance(left, int) and isinstance(right, int)):
        return True  # float arithmetic overflows into an error, not into memory
    bits = max(abs(left).bit_length(), 1)
    if fn is operator.pow:
        return right < 0 or bits * right <= MAX_BITS or abs(left) <= 1
    if fn is operator.mul:
        return bits + abs(right).bit_length() <= MAX_BITS
    return True


def _short(value: Any) -> str:
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        return "<a very large integer>"
    text = repr(value) if not isinstance(value, (str, list)) or len(value) <= 60 else f"<{type(value).__name__} of " \
        f"{len(value):,}>"
    return text if len(text) <= 80 else text[:77] + "..."


class _Reader:
    def __init__(self, config: Config):
        self.config = config

    # --- statements -------------------------------------------------------------------------------------------------
    def block(self, body: list[ast.stmt]) -> None:
        for node in body:
            self.statement(node)

    def statement(self, node: ast.stmt) -> None:
        c = self.config
        if isinstance(node, ast.Import):
            for alias in node.names:
                # `import a.b` binds a; `import a.b as c` binds c to a.b.
                bound = alias.name if alias.asname else alias.name.split(".")[0]
                self.bind(alias.asname or bound, Sym(bound), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            for alias in node.names:
                if alias.name == "*":
                    c.skipped.append((node.lineno, f"from {module} import *"))
                    continue
                self.bind(alias.asname or alias.name, Sym(f"{module}.{alias.name}"), node.lineno)
        elif isinstance(node, ast.Assign):
            value = self.expr(node.value)
            for target in node.targets:
                self.assign(target, value, node.lineno)
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            self.assign(node.target, self.expr(node.value), node.lineno)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            current = c.values.get(node.target.id, Unknown(node.target.id, node.lineno))
            self.bind(node.target.id, self.binary(node.op, current, self.expr(node.value), node.lineno), node.lineno)
        elif isinstance(node, ast.If):
            test = self.expr(node.test)
            if isinstance(test, (Unknown, Sym, Call, Local)):
                c.skipped.append((node.lineno, f"if {ast.unparse(node.test)}: (not a setting)"))
            else:
                self.block(node.body if test else node.orelse)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            self.bind(node.name, Local(node.name, node.lineno), node.lineno)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            pass  # a docstring
        else:
            c.skipped.append((node.lineno, ast.unparse(node).splitlines()[0][:80]))

    def assign(self, target: ast.expr, value: Any, line: int) -> None:
        if isinstance(target, ast.Name):
            self.bind(target.id, value, line)
        elif isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (list, tuple)) \
                and len(value) == len(target.elts):
            for t, v in zip(target.elts, value):
                self.assign(t, v, line)
        else:
            self.config.skipped.append((line, f"{ast.unparse(target)} = ..."))

    def bind(self, name: str, value: Any, line: int) -> None:
        self.config.values[name] = value
        self.config.lines[name] = line

    # --- expressions ------------------------------------------------------------------------------------------------
    def expr(self, node: ast.expr) -> Any:  # noqa: C901 (one branch per node type reads best)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return self.config.values.get(node.id, Unknown(node.id, node.lineno))
        if isinstance(node, ast.Attribute):
            base = self.expr(node.value)
            return Sym(f"{base.path}.{node.attr}") if isinstance(base, Sym) else Unknown(ast.unparse(node),
                                                                                          node.lineno)
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self.expr(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                return Unknown(ast.unparse(node), node.lineno)
            keys = [self.expr(k) for k in node.keys if k is not None]
            return Setting(dict(zip(keys, (self.expr(v) for v in node.values))),
                           {k: n.lineno for k, n in zip(keys, node.keys) if n is not None})
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.BinOp):
            return self.binary(node.op, self.expr(node.left), self.expr(node.right), node.lineno)
        if isinstance(node, ast.UnaryOp):
            operand = self.expr(node.operand)
            if isinstance(node.op, ast.Not) and not isinstance(operand, (Unknown, Sym, Call, Local)):
                return not operand
            if isinstance(node.op, ast.USub) and isinstance(operand, (int, float)):
                return -operand
            return Unknown(ast.unparse(node), node.lineno)
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _COMPARE:
            left, right = self.expr(node.left), self.expr(node.comparators[0])
            if any(isinstance(v, (Unknown, Call, Local)) for v in (left, right)):
                return Unknown(ast.unparse(node), node.lineno)
            return _COMPARE[type(node.ops[0])](left, right)
        if isinstance(node, ast.IfExp):
            test = self.expr(node.test)
            if isinstance(test, (Unknown, Sym, Call, Local)):
                return Unknown(ast.unparse(node), node.lineno)
            return self.expr(node.body if test else node.orelse)
        if isinstance(node, ast.BoolOp):
            values = [self.expr(v) for v in node.values]
            if any(isinstance(v, (Unknown, Sym, Call, Local)) for v in values):
                return Unknown(ast.unparse(node), node.lineno)
            return all(values) if isinstance(node.op, ast.And) else any(values)
        return Unknown(ast.unparse(node), node.lineno)

    def call(self, node: ast.Call) -> Any:
        func = self.expr(node.func)
        args = tuple(self.expr(a) for a in node.args)
        kwargs = {k.arg: self.expr(k.value) for k in node.keywords if k.arg is not None}
        if any(k.arg is None for k in node.keywords):  # **spread
            return Unknown(ast.unparse(node), node.lineno)
        if isinstance(node.func, ast.Name) and node.func.id == "dict" and not args:
            return Setting(kwargs, {k.arg: k.value.lineno for k in node.keywords if k.arg is not None})
        # int(2048 - (336 / 14) ** 2): LLaVA's max_length, the LLM's length less the image tokens
        if isinstance(node.func, ast.Name) and node.func.id in _NUMBER_CASTS and len(args) == 1 and not kwargs \
                and isinstance(args[0], (int, float)) and not isinstance(args[0], bool):
            return _NUMBER_CASTS[node.func.id](args[0])
        if isinstance(func, Sym):
            return Call(func, args, kwargs, node.lineno)
        return Unknown(ast.unparse(node), node.lineno)

    @staticmethod
    def binary(op: ast.operator, left: Any, right: Any, line: int) -> Any:
        fn = _BINARY.get(type(op))
        numbers = (int, float)
        text = f"{_short(left)} {type(op).__name__} {_short(right)}"
        if fn and isinstance(left, numbers) and isinstance(right, numbers):
            if not _small_enough(fn, left, right):  # 9**9**9**9: no setting is that large, and computing it hangs
                return Unknown(f"{text} (too large to be a setting)", line)
            try:
                return fn(left, right)
            except ArithmeticError:  # 1 / 0, 10.0 ** 400
                return Unknown(text, line)
        if fn is operator.add and isinstance(left, (str, list)) and type(left) is type(right):
            if len(left) + len(right) > MAX_LENGTH:  # `s += s` in a loop of statements doubles without end
                return Unknown(f"{text} (longer than {MAX_LENGTH:,})", line)
            return fn(left, right)
        return Unknown(text, line)
