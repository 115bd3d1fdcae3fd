"""Mutation testing of the core modules: do their own tests notice a wrong line?

For each module named in ``MODULE_TESTS``, every small change from ``mutants()`` (a
flipped comparison, ``+`` for ``-``, ``0`` for ``1``, a deleted call, ...) is written
into a private copy of the package, and that module's own fast tests run against the
copy.  A mutant is *killed* when the tests fail (or run past the time limit); one that
passes them *survives*: no test would notice that line going wrong.  Mutants that
cannot change what the code does are listed with the reason in ``EXPLAINED``.

    python tools/mutation_test.py                          # every module, tools/mutation-report.md
    python tools/mutation_test.py --modules loss optim     # some of them (the report keeps the others)
    python tools/mutation_test.py --modules masking --list # the mutants, without running anything
    python tools/mutation_test.py --modules loss --only '*masked_mse*' --report /tmp/r.md

How the tests see the mutant: the package and ``tests/`` are copied into a temporary
folder, and the tests run there with ``PYTHONPATH`` set to it and that folder as the
working directory, so ``import mae_from_scratch`` loads the copy, never the files in the
repository (other people run tests against those).  This is checked when a run starts
(``python -c "import mae_from_scratch"`` must print the copy's path, or the run stops)
and again inside every test run.

Speed: importing torch and friends takes most of a fresh pytest's time, so each job
keeps a server process that imports them once (but never ``mae_from_scratch``) and
forks a fresh child per mutant; the child imports the package from the copy and runs
pytest.  ``--fresh`` runs a new ``python -m pytest`` per mutant instead (slower, for
checking that the two agree).  Hypothesis runs derandomized (a run is repeatable) and
without shrinking, and each module's tests run quickest first once they are seen to pass
in that order: with ``-x``, a killed mutant then costs about a second.
"""

from __future__ import annotations

import argparse
import ast
import copy
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "mae_from_scratch"
DEFAULT_REPORT = ROOT / "tools" / "mutation-report.md"

# Each module's own tests: the smallest set that is really about that module.
MODULE_TESTS = {
    "masking": ["tests/test_masking.py", "tests/test_masking_variants.py"],
    "loss": ["tests/test_loss.py"],
    "patching": ["tests/test_patching.py"],
    "pos_embed": ["tests/test_pos_embed.py"],
    "optim": ["tests/test_optim.py"],
    "device_data": ["tests/test_device_data.py"],
    "train_step": ["tests/test_train_step.py"],
}
PYTEST_ARGS = ["-m", "not slow", "-x", "-q", "-p", "no:cacheprovider"]

# Mutants that cannot change behaviour, with the reason.  Keys: (module, pattern), the
# pattern matched (only * is special) against the mutant's fingerprint "operator: old -> new @ line",
# where line is the code line it is on: it names the code, not the line number, so it
# survives edits elsewhere in the file.
EXPLAINED: dict[tuple[str, str], str] = {
    ("patching", "drop unary: -2 -> 2 @ h, w = imgs.shape[-2:]"):
        "_check_images has just refused anything but a 4-D batch, so shape[2:] and shape[-2:] are both (H, W)",
    ("pos_embed", "arithmetic: embed_dim // 2 -> embed_dim / 2 @ *"):
        "embed_dim is even here (checked just before, or divisible by 4 for the 2-D table), so embed_dim / 2 "
        "is the same whole number as a float, and arange, % and / give the same values for it",
    ("device_data", "swap arguments: _mul32(x, 0x*) -> _mul32(*, x) @ x = _mul32(x, 0x*)"):
        "_mul32(a, b) is (a * b) mod 2**32 exactly for any a, b below 2**32, in either order: split into "
        "16-bit halves, no product reaches 2**63",
    ("device_data", "compare: in_ratio < min(ratio) -> in_ratio <= min(ratio) @ *"):
        "at in_ratio == min(ratio) the first branch gives fh = round(width / (width / height)) = height, "
        "the whole image, as the last branch does",
    ("device_data", "compare: in_ratio > max(ratio) -> in_ratio >= max(ratio) @ *"):
        "at in_ratio == max(ratio) the second branch gives fw = round(height * width / height) = width, "
        "the whole image, as the last branch does",
    ("device_data", "compare: max(height, width) > size -> max(height, width) >= size @ *"):
        "an image exactly as large as the output cannot be shrunk, and then both paths compute the same "
        "bilinear interpolation held inside the crop (the antialiased filter's support is 1 pixel); they "
        "differ only in float rounding, far below the tests' 0.002 grey levels",
    ("device_data", "compare: * < 0.5 -> * <= 0.5 @ flip = counter_uniform(*"):
        "the draw is k / 2**32 for a whole k, so it equals 0.5 only for k = 2**31: the flip's probability "
        "moves by 2**-32, which no test (and no training run) can see",
    ("device_data", "drop unary: -1 -> 1 @ return _Unreadable(path, * else e.why), -1"):
        "the label paired with an unreadable image is never read: decode_images skips such pairs",
    ("device_data", "constant: 1 -> 0 @ return _Unreadable(path, * else e.why), -1"):
        "the label paired with an unreadable image is never read: decode_images skips such pairs",
    ("device_data", "constant: 256 -> 257 @ _Decoded(ds), batch_size=256, *"):
        "the decoding DataLoader's batch size only sets how many images one step decodes; each image "
        "still lands at its own index, in order",
    ("device_data", "arithmetic: total // 4 -> total / 4 @ return nbytes <= total // 4"):
        "nbytes is a whole number, and a whole n is <= t / 4 exactly when it is <= t // 4",
    ("train_step", "compare: n > 1 -> n >= 1 @ value = *"):
        "n >= 1 here; with one micro-batch, the mean of the stacked float32 loss is that loss exactly",
    ("train_step", "constant: 1 -> 0 @ value = torch.stack(losses).mean().item() if n > 1 else *"):
        "n >= 1 here (checked above), so n > 0 always takes the mean, which for n = 1 is the loss exactly",
}

# Survivors that are not equivalent but that these tests cannot reach, with the reason:
# they still count as survivors; the report shows the note beside them.
NOTED: dict[tuple[str, str], str] = {
    ("device_data", "delete statement: index = index.to(self.data.images.device) -> pass @ *"):
        "needs a second device: on a CPU-only machine the index is already where the images are",
}

# Third-party modules each test server imports once, before it forks (never the package).
PRELOAD = ["numpy", "torch", "torch.nn.functional", "einops", "PIL.Image", "tqdm", "torchvision",
           "torchvision.transforms", "torchvision.transforms.v2.functional", "hypothesis",
           "hypothesis.strategies", "pytest", "_pytest.python", "transformers.models.vit_mae.modeling_vit_mae"]


# ----------------------------------------------------------------------------------
# Making mutants
@dataclass
class Mutant:
    module: str
    op: str  # the operator's name, e.g. "compare"
    line: int
    old: str  # the code before, and after
    new: str
    where: str  # the (first) line of code it is on, stripped
    source: str = ""  # the whole mutated module

    @property
    def fingerprint(self) -> str:
        return f"{self.op}: {self.old} -> {self.new} @ {self.where}"

    @property
    def id(self) -> str:
        return f"L{self.line}:{self.op}"


_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
        ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
_BIN = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
        ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd,
        ast.BitXor: ast.BitOr, ast.LShift: ast.RShift, ast.RShift: ast.LShift, ast.MatMult: ast.Mult}
# Calls whose first two arguments are not swapped: they commute (nothing can change), or the
# swap raises a TypeError at once (a mutant that tells nothing about the tests).
_NO_SWAP = {"min", "max", "minimum", "maximum", "hypot", "transpose", "swapaxes", "swapdims", "isinstance",
            "issubclass", "getattr", "hasattr",
            "setattr"}
_MINMAX = {"min": "max", "max": "min", "minimum": "maximum", "maximum": "minimum", "amin": "amax",
           "amax": "amin", "argmin": "argmax", "argmax": "argmin", "floor": "ceil", "ceil": "floor"}


def _one_line(text: str, width: int = 90) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= width else text[: width - 3] + "..."


def _is_docstring(node: ast.AST, parent: ast.AST | None) -> bool:
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
            and isinstance(parent, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and parent.body and parent.body[0] is node)


def _is_main_block(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def _skipped_children(node: ast.AST) -> set[int]:
    """ids of children never mutated: annotations, and the messages of raised errors."""
    skip = set()
    if isinstance(node, ast.arg) and node.annotation is not None:
        skip.add(id(node.annotation))
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
        skip.add(id(node.returns))
    if isinstance(node, ast.AnnAssign):
        skip.add(id(node.annotation))
    return skip


def _einops_swaps(pattern: str):
    """Patterns with two neighbouring axes of one output group swapped: "(p1 p2 c)" -> "(p2 p1 c)"."""
    if "->" not in pattern:
        return
    left, right = pattern.split("->", 1)
    for group in re.finditer(r"\(([^()]*)\)", right):
        names = group.group(1).split()
        for k in range(len(names) - 1):
            swapped = names[:k] + [names[k + 1], names[k]] + names[k + 2:]
            new_right = right[: group.start(1)] + " ".join(swapped) + right[group.end(1):]
            yield left + "->" + new_right


class _Finder:
    """Walks a module and lists (node, replacement, operator) candidates.

    A replacement is either a new expression node (written in parentheses in place of
    the old one) or the text of a statement (written in place of the old statement).
    """

    def __init__(self, tree: ast.Module):
        self.found: list[tuple[ast.AST, object, str]] = []
        self._bound: list[set[str]] = [set()]
        self._visit(tree, None)

    def _add(self, node, replacement, op):
        self.found.append((node, replacement, op))

    def _visit(self, node: ast.AST, parent: ast.AST | None) -> None:
        if _is_docstring(node, parent) or _is_main_block(node):
            return
        if isinstance(node, (ast.Raise, ast.Import, ast.ImportFrom, ast.JoinedStr, ast.Assert)):
            return  # error messages, imports, f-strings (messages) are left alone
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__"
                                                for t in node.targets):
            return
        new_scope = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if new_scope:
            self._bound.append(set())
        self._mutate(node, parent)
        skip = _skipped_children(node)
        for child in ast.iter_child_nodes(node):
            if id(child) not in skip:
                self._visit(child, node)
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    self._bound[-1].add(t.id)
        if isinstance(node, ast.arg):
            self._bound[-1].add(node.arg)
        if new_scope:
            self._bound.pop()

    def _mutate(self, node: ast.AST, parent: ast.AST | None) -> None:
        if isinstance(node, ast.Compare):
            for k, op in enumerate(node.ops):
                if type(op) in _CMP:
                    new = copy.deepcopy(node)
                    new.ops[k] = _CMP[type(op)]()
                    self._add(node, new, "compare")
        elif isinstance(node, ast.BinOp) and type(node.op) in _BIN:
            new = copy.deepcopy(node)
            new.op = _BIN[type(node.op)]()
            self._add(node, new, "arithmetic")
        elif isinstance(node, ast.BoolOp):
            new = copy.deepcopy(node)
            new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            self._add(node, new, "and/or")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not, ast.Invert)):
            self._add(node, copy.deepcopy(node.operand), "drop unary")
        elif isinstance(node, ast.Constant):
            self._constant(node, parent)
        elif isinstance(node, ast.Call):
            self._call(node)
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, (ast.Slice, ast.Tuple)):
            self._slice(node)
        if isinstance(node, ast.AugAssign):
            if type(node.op) in _BIN:
                new = copy.deepcopy(node)
                new.op = _BIN[type(node.op)]()
                self._add(node, ast.unparse(new), "arithmetic")
            self._add(node, "pass", "delete statement")
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            self._add(node, "pass", "delete statement")
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in self._bound[-1]:
            self._add(node, "pass", "delete statement")  # a name bound again: the old value goes on
        elif isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            self._add(node, "return None", "return None")

    def _constant(self, node: ast.Constant, parent) -> None:
        v = node.value
        if isinstance(v, bool):
            self._add(node, ast.Constant(not v), "constant")
        elif isinstance(v, (int, float)):
            new = 1 if v == 0 else 0 if v == 1 else v + 1
            self._add(node, ast.Constant(type(v)(new)), "constant")
        elif isinstance(v, str):
            if isinstance(parent, ast.Compare) or (isinstance(parent, (ast.Tuple, ast.Set, ast.List))
                                                   and isinstance(getattr(parent, "_cmp_parent", None), ast.Compare)):
                self._add(node, ast.Constant(f"XX{v}XX"), "string")
            for swapped in _einops_swaps(v):
                self._add(node, ast.Constant(swapped), "einops axes")

    def _call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in _MINMAX:
            new = copy.deepcopy(node)
            new.func.id = _MINMAX[func.id]
            self._add(node, new, "min/max")
        if isinstance(func, ast.Attribute) and func.attr in _MINMAX:
            new = copy.deepcopy(node)
            new.func.attr = _MINMAX[func.attr]
            self._add(node, new, "min/max")
        for k, kw in enumerate(node.keywords):
            if kw.arg in ("min", "max"):
                new = copy.deepcopy(node)
                new.keywords[k].arg = "max" if kw.arg == "min" else "min"
                self._add(node, new, "min/max")
        positional = [a for a in node.args if not isinstance(a, ast.Starred)]
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if len(positional) == len(node.args) >= 2 and ast.dump(node.args[0]) != ast.dump(node.args[1]) \
                and name not in _NO_SWAP:
            new = copy.deepcopy(node)
            new.args[0], new.args[1] = new.args[1], new.args[0]
            self._add(node, new, "swap arguments")
        if node.args and isinstance(node.args[0], (ast.List, ast.Tuple)) and len(node.args[0].elts) >= 2:
            elts = node.args[0].elts
            if not any(isinstance(e, ast.Starred) for e in elts[:2]) and ast.dump(elts[0]) != ast.dump(elts[1]):
                new = copy.deepcopy(node)
                e = new.args[0].elts
                e[0], e[1] = e[1], e[0]
                self._add(node, new, "swap arguments")

    def _slice(self, node: ast.Subscript) -> None:
        parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        for k, s in enumerate(parts):
            if isinstance(s, ast.Slice) and s.step is None and (s.lower is None) != (s.upper is None):
                new = copy.deepcopy(node)
                ns = new.slice.elts[k] if isinstance(new.slice, ast.Tuple) else new.slice
                ns.lower, ns.upper = ns.upper, ns.lower
                self._add(node, new, "slice")


def _mark_compare_tuples(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for c in node.comparators:
                if isinstance(c, (ast.Tuple, ast.Set, ast.List)):
                    c._cmp_parent = node


def mutants(module: str, source: str) -> list[Mutant]:
    """Every mutant of ``source`` (the text of ``mae_from_scratch/<module>.py``), in file order."""
    tree = ast.parse(source)
    _mark_compare_tuples(tree)
    data = source.encode()
    starts = [0]
    for line in data.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    out, seen = [], set()
    for node, replacement, op in _Finder(tree).found:
        a = starts[node.lineno - 1] + node.col_offset  # col_offset counts UTF-8 bytes
        b = starts[node.end_lineno - 1] + node.end_col_offset
        old = data[a:b].decode()
        if isinstance(replacement, str):  # a whole statement
            shown = written = replacement
        else:  # an expression, in parentheses so that it binds as the old one did
            shown = ast.unparse(replacement)
            if shown == ast.unparse(node):
                continue
            written = f"({shown})"
        text = (data[:a] + written.encode() + data[b:]).decode()
        if text in seen:
            continue
        try:
            compile(text, f"{module}.py", "exec")
        except SyntaxError:
            continue
        seen.add(text)
        where = data.splitlines()[node.lineno - 1].decode().strip()
        out.append(Mutant(module, op, node.lineno, _one_line(old), _one_line(shown), where, text))
    out.sort(key=lambda m: m.line)
    return out


def matches(pattern: str, text: str) -> bool:
    """Whether ``text`` matches ``pattern``, where only ``*`` is special (any characters):
    code is full of the brackets that fnmatch would read as character classes."""
    return re.fullmatch(".*".join(re.escape(part) for part in pattern.split("*")), text, re.S) is not None


def explanation(m: Mutant, table: dict | None = None) -> str | None:
    for (module, pattern), why in (EXPLAINED if table is None else table).items():
        if module == m.module and matches(pattern, m.fingerprint):
            return why
    return None


# ----------------------------------------------------------------------------------
# Running the tests against a copy of the package
def make_copy(where: Path) -> Path:
    """The package, the tests and the pytest settings, copied into ``where``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    shutil.copytree(ROOT / PACKAGE, where / PACKAGE, ignore=ignore)
    shutil.copytree(ROOT / "tests", where / "tests", ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", where / "pyproject.toml")  # the markers and addopts
    return where


def copy_env(copy_dir: Path, threads: int) -> dict:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(copy_dir), PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), HYPOTHESIS_STORAGE_DIRECTORY=str(copy_dir / ".hypothesis"))
    return env


def check_import_resolves_to(copy_dir: Path, threads: int) -> str:
    """Refuse to run unless ``import mae_from_scratch`` in the test environment loads the copy."""
    out = subprocess.run([sys.executable, "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)"],
                         cwd=copy_dir, env=copy_env(copy_dir, threads), capture_output=True, text=True)
    where = out.stdout.strip()
    if out.returncode != 0 or not Path(where).resolve().is_relative_to(copy_dir.resolve()):
        raise SystemExit(f"refusing to run: under PYTHONPATH={copy_dir}, `import {PACKAGE}` loads "
                         f"{where or '(nothing)'}\n{out.stderr[-2000:]}")
    return where


class Worker:
    """One private copy of the package and the process that runs tests against it."""

    def __init__(self, base: Path, k: int, threads: int, fresh: bool):
        self.dir = make_copy(base / f"job{k}")
        self.threads, self.fresh = threads, fresh
        self.log = self.dir / "last-test-output.txt"
        check_import_resolves_to(self.dir, threads)
        self.server = None
        if not fresh:
            self.server = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--serve", str(self.dir), "--threads", str(threads)],
                cwd=self.dir, env=copy_env(self.dir, threads), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                text=True, bufsize=1)
            ready = self.server.stdout.readline().strip()
            if not ready.startswith("ready"):
                raise SystemExit(f"the test server did not start: {ready!r}")

    def write_module(self, module: str, text: str) -> None:
        path = self.dir / PACKAGE / f"{module}.py"
        path.write_text(text)

    def run_tests(self, tests: list[str], timeout: float, order: dict | None = None,
                  record: Path | None = None) -> tuple[str, float]:
        """("passed" | "failed" | "timeout", seconds).  ``order``: each test's seconds, to run the
        quickest first (with -x a mutant's run ends at its first failing test); ``record``: where to
        write those seconds.  Both only with the test server."""
        start = time.monotonic()
        if self.fresh:
            with open(self.log, "w") as log:
                try:
                    rc = subprocess.run([sys.executable, "-m", "pytest", *PYTEST_ARGS, *tests], cwd=self.dir,
                                        env=copy_env(self.dir, self.threads), stdout=log, stderr=log,
                                        timeout=timeout).returncode
                except subprocess.TimeoutExpired:
                    return "timeout", time.monotonic() - start
        else:
            request = {"tests": tests, "timeout": timeout, "log": str(self.log), "order": order,
                       "record": str(record) if record else None}
            self.server.stdin.write(json.dumps(request) + "\n")
            reply = json.loads(self.server.stdout.readline())
            if reply["timeout"]:
                return "timeout", time.monotonic() - start
            rc = reply["rc"]
        return ("passed" if rc == 0 else "failed"), time.monotonic() - start

    def close(self) -> None:
        if self.server is not None and self.server.poll() is None:
            try:
                self.server.stdin.close()  # the server ends when its input does
                self.server.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.server.terminate()  # which kills the test run it is waiting for
                self.server.wait(timeout=10)


class _Timing:
    """A pytest plugin: runs the tests quickest first (given their seconds), or records their seconds."""

    def __init__(self, order: dict | None, record: str | None):
        self.order, self.record, self.seconds = order, record, {}

    def pytest_collection_modifyitems(self, items):
        if self.order:
            items.sort(key=lambda item: self.order.get(item.nodeid, 0.0))  # a stable sort: ties keep file order

    def pytest_runtest_logreport(self, report):
        self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self, session):
        if self.record:
            Path(self.record).write_text(json.dumps(self.seconds))


def serve(copy_dir: Path, threads: int) -> None:
    """The test server: import the heavy third-party modules once, then fork one child per request."""
    import importlib
    import importlib.util
    import resource

    spec = importlib.util.find_spec(PACKAGE)  # found, not imported: every child imports it afresh
    if spec is None or not Path(spec.origin).resolve().is_relative_to(copy_dir.resolve()):
        print(f"refused: {PACKAGE} resolves to {spec and spec.origin}", flush=True)
        return
    from importlib.metadata import entry_points

    # pytest's plugins too: importing them (nbval pulls in Jupyter) is most of pytest's start-up.
    plugins = [ep.module for ep in entry_points(group="pytest11")]
    for name in PRELOAD + plugins:
        try:
            importlib.import_module(name)
        except Exception:  # an optional module (transformers) may be missing; the tests say so
            pass
    import gc

    import hypothesis

    # Repeatable examples, and no shrinking: a mutant is killed by any failing example, and
    # shrinking one to the smallest takes far longer than finding it.
    hypothesis.settings.register_profile(
        "mutation", derandomize=True, database=None, print_blob=False, report_multiple_bugs=False,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.reuse, hypothesis.Phase.generate])
    hypothesis.settings.load_profile("mutation")
    # Objects that exist now are never collected in the children: pytest's gc.collect() at
    # exit then takes milliseconds instead of seconds, and the shared pages stay shared.
    gc.freeze()
    child = []

    def stop(signum, frame):  # told to stop: take the running test run down too
        for pid in child:
            os.kill(pid, signal.SIGKILL)
        os._exit(1)

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        start = time.monotonic()
        pid = os.fork()
        if pid:
            child[:] = [pid]
        if pid == 0:  # the child: import the copy, check where it came from, run pytest
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            code = 1
            try:
                fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                # A mutant that allocates without end must not take the memory others use.
                soft = 6 * 2**30 + int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
                resource.setrlimit(resource.RLIMIT_AS, (soft, soft))
                import torch

                torch.set_num_threads(threads)
                package = importlib.import_module(PACKAGE)
                if not Path(package.__file__).resolve().is_relative_to(copy_dir.resolve()):
                    print(f"refused: {PACKAGE} imported from {package.__file__}", flush=True)
                    code = 99
                else:
                    import pytest

                    plugin = _Timing(request.get("order"), request.get("record"))
                    code = int(pytest.main([*PYTEST_ARGS, *request["tests"]], plugins=[plugin]))
            except BaseException:  # the mutant broke the import: the tests fail
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        timed_out, rc = False, None
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                rc = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() - start > request["timeout"]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                timed_out = True
                break
            time.sleep(0.02)
        print(json.dumps({"rc": rc, "timeout": timed_out}), flush=True)


# ----------------------------------------------------------------------------------
# One module at a time
@dataclass
class Result:
    id: str
    op: str
    line: int
    old: str
    new: str
    status: str  # "killed", "timeout" (killed by the time limit), "survived", "explained"
    why: str = ""


def run_module(module: str, workers: list[Worker], args) -> dict:
    source = (ROOT / PACKAGE / f"{module}.py").read_text()
    tests = MODULE_TESTS[module]
    made = mutants(module, source)
    if args.only:
        made = [m for m in made if any(matches(p, m.fingerprint) or m.id == p for p in args.only)]
    if args.limit:
        made = made[: args.limit]
    start = time.monotonic()
    baseline, order = [], None
    for w in workers:  # the unchanged module must pass its tests, or nothing can be learned
        w.write_module(module, source)
        seconds = w.dir / "test-seconds.json"
        status, secs = w.run_tests(tests, timeout=600, record=None if w.fresh else seconds)
        if status != "passed":
            raise SystemExit(f"{module}: the unchanged module fails its tests {tests}:\n"
                             f"{w.log.read_text()[-4000:]}")
        baseline.append(secs)
        if not w.fresh and order is None:
            # Quickest tests first, if they pass in that order too (tests that depend on their
            # order would make every mutant look killed): a killed mutant then costs seconds.
            candidate = json.loads(seconds.read_text())
            if w.run_tests(tests, timeout=600, order=candidate)[0] == "passed":
                order = candidate
            else:
                print(f"{module}: the tests fail when run quickest first; keeping the file order", flush=True)
    timeout = max(30.0, 4 * max(baseline))
    print(f"{module}: {len(made)} mutants, tests {' '.join(tests)} take {max(baseline):.1f} s "
          f"(limit {timeout:.0f} s per mutant)", flush=True)
    results: list[Result | None] = [None] * len(made)
    todo = list(enumerate(made))
    lock = threading.Lock()

    def work(w: Worker):
        while True:
            with lock:
                if not todo:
                    return
                k, m = todo.pop(0)
            w.write_module(module, m.source)
            status, secs = w.run_tests(tests, timeout, order=order)
            why = explanation(m)
            if status == "passed":
                status = "explained" if why else "survived"
                why = why or explanation(m, NOTED)
            else:
                status = "killed" if status == "failed" else "timeout"
                why = None
            results[k] = Result(m.id, m.op, m.line, m.old, m.new, status, why or "")
            with lock:
                mark = {"killed": ".", "timeout": "T", "survived": "S", "explained": "e"}[status]
                print(f"  [{k + 1}/{len(made)}] {mark} {secs:5.1f}s L{m.line} {m.op}: {m.old} -> {m.new}",
                      flush=True)

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in workers:
        w.write_module(module, source)
    counts = {s: sum(r.status == s for r in results) for s in ("killed", "timeout", "survived", "explained")}
    return {"module": module, "tests": tests, "made": len(made), **counts,
            "seconds": round(time.monotonic() - start, 1), "partial": bool(args.only or args.limit),
            "results": [asdict(r) for r in results]}


# ----------------------------------------------------------------------------------
# The report
HEADER = """# Mutation testing report

Written by `tools/mutation_test.py` ({when}).  Each mutant is one small change to one
module (a flipped comparison, `+` for `-`, `*` for `/`, a constant `0`<->`1` or `n`->`n+1`,
a dropped unary minus or `not`, `True`<->`False`, `and`<->`or`, `min`<->`max`, `floor`<->`ceil`,
a `return None`, a deleted call or re-assignment, the first two arguments of a call swapped,
a one-sided slice turned around, two axes of an einops pattern swapped, a compared string
changed).  Every mutant is tested by that module's own fast tests (`-m "not slow" -x`) run
against a private copy of the package; it is *killed* when they fail or run past the time limit.

Not mutated: docstrings, comments, raised errors (their messages and arguments), f-strings
(messages), type annotations, imports, `assert` statements, `__all__` and `if __name__` blocks.
Arguments are not swapped in calls where they commute (`min`, `max`, ...) or where the swap
fails at once (`isinstance`, `getattr`, ...).  Hypothesis runs derandomized and without
shrinking, and each module's tests run quickest first (once checked to pass in that order),
so that a killed mutant costs little.

*Survival rate* = unexplained survivors / mutants made.  *Explained* mutants cannot change
behaviour; each has its reason in `EXPLAINED` in the script (listed below).
"""


def _embedded(path: Path) -> dict:
    if not path.exists():
        return {}
    m = re.search(r"<!-- mutation-data (.*) -->", path.read_text())
    return json.loads(m.group(1)) if m else {}


def write_report(path: Path, runs: dict, total_seconds: float | None, tested: list[str] | None = None) -> None:
    order = [m for m in MODULE_TESTS if m in runs]
    lines = [HEADER.format(when=datetime.datetime.now().strftime("%Y-%m-%d %H:%M")), ""]
    lines += ["| module | tests | mutants | killed | of which timed out | survived | explained | survival rate |"
              " run time |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in order:
        r = runs[name]
        killed = r["killed"] + r["timeout"]
        rate = r["survived"] / r["made"] if r["made"] else 0.0
        partial = " (partial run)" if r.get("partial") else ""
        lines.append(f"| `{name}`{partial} | {', '.join('`' + t.split('/')[-1] + '`' for t in r['tests'])} | "
                     f"{r['made']} | {killed} | {r['timeout']} | {r['survived']} | {r['explained']} | "
                     f"{100 * rate:.1f}% | {r['seconds'] / 60:.1f} min |")
    if total_seconds is not None:
        lines += ["", f"This run took {total_seconds / 60:.1f} minutes."]
        earlier = [name for name in order if tested is not None and name not in tested]
        if earlier:
            lines[-1] = (f"This run tested {', '.join(tested)} in {total_seconds / 60:.1f} minutes; the rows of "
                         f"{', '.join(earlier)} come from earlier runs.")
    lines += ["", "## Surviving mutants", ""]
    any_survivor = False
    for name in order:
        for r in runs[name]["results"]:
            if r["status"] == "survived":
                any_survivor = True
                note = f" ({r['why']})" if r.get("why") else ""
                lines.append(f"- `{name}.py` line {r['line']}, {r['op']}: `{r['old']}` -> `{r['new']}`{note}")
    if not any_survivor:
        lines.append("None.")
    lines += ["", "## Explained mutants (equivalent: no behaviour can change)", ""]
    any_explained = False
    for name in order:
        for r in runs[name]["results"]:
            if r["status"] == "explained":
                any_explained = True
                lines.append(f"- `{name}.py` line {r['line']}, {r['op']}: `{r['old']}` -> `{r['new']}`: {r['why']}")
    if not any_explained:
        lines.append("None.")
    # Enough to write this report again when a later run tests only some modules.
    slim = {name: {**r, "results": [x for x in r["results"] if x["status"] in ("survived", "explained")]}
            for name, r in runs.items()}
    lines += ["", f"<!-- mutation-data {json.dumps(slim)} -->", ""]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modules", nargs="+", choices=list(MODULE_TESTS), default=list(MODULE_TESTS))
    p.add_argument("--limit", type=int, default=0, help="at most this many mutants per module (a trial run)")
    p.add_argument("--only", nargs="+", default=[], help="only mutants whose fingerprint matches (* as wildcard) or id")
    p.add_argument("--report", type=Path, default=None,
                   help=f"default {DEFAULT_REPORT.relative_to(ROOT)}; none for --only/--limit runs unless given")
    p.add_argument("--jobs", type=int, default=1, help="test runs at a time (more only on an idle machine)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per test run")
    p.add_argument("--fresh", action="store_true", help="a new python -m pytest per mutant (slow)")
    p.add_argument("--list", action="store_true", help="print the mutants and stop")
    p.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve, args.threads)
        return 0
    if args.list:
        for module in args.modules:
            made = mutants(module, (ROOT / PACKAGE / f"{module}.py").read_text())
            print(f"{module}: {len(made)} mutants")
            for m in made:
                why = explanation(m)
                print(f"  {m.id:>24}  {m.fingerprint}" + (f"   [explained: {why}]" if why else ""))
        return 0
    partial = bool(args.only or args.limit)
    report = args.report or (None if partial else DEFAULT_REPORT)
    start = time.monotonic()
    runs = _embedded(report) if report else {}
    # A plain `kill` ends the run through the `finally` below: the servers and copies go too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    base = Path(tempfile.mkdtemp(prefix="mutation-"))
    workers = []
    try:
        workers = [Worker(base, k, args.threads, args.fresh) for k in range(args.jobs)]
        print(f"testing copies in {base}; import {PACKAGE} -> {check_import_resolves_to(workers[0].dir, 1)}",
              flush=True)
        for module in args.modules:
            runs[module] = run_module(module, workers, args)
            if report:  # after every module, so a long run shows its progress
                write_report(report, runs, None)
    finally:
        for w in workers:
            w.close()
        shutil.rmtree(base, ignore_errors=True)
    total = time.monotonic() - start
    if report:
        write_report(report, runs, total, args.modules)
    bad = [m for m in args.modules if runs[m]["made"] and runs[m]["survived"] / runs[m]["made"] >= 0.10]
    print(f"done in {total / 60:.1f} min; report: {report}"
          + (f"; 10% or more survive in {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
