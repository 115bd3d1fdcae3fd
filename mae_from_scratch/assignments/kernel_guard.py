"""What the grader runs inside a submission's kernel, before any of the student's cells.

The grader puts one cell of its own first in the notebook, ``install(...)``, and marks every
check cell with a comment holding this run's nonce.  From then on:

- **Before a check cell is transformed and run**, the kernel is put back as it was at
  install: IPython's input and AST transformers, its custom exception handler and its
  traceback display; and torch's, numpy's and Python's comparison functions (``torch.equal``,
  ``torch.testing.assert_close``, ``all``, ...) are the ones taken at install, wherever the
  notebook rebound them.  The student's own bindings come back after the check.  Each thing
  undone is flagged: a person should read that submission.
- **While a check cell runs**, every call into the package that starts beneath an
  exercise's own code is recorded.  A package function that the check itself also calls
  directly is the answer the check compares against: an exercise that calls it passes
  without doing the work, and is flagged, however the function was reached (an import
  of the chapter's, an alias, ``importlib``).
- Flags go to a JSON-lines report as they arise; the grader's last cell marks it complete.

This stops the cheap ways to fool the checks.  It is no sandbox: student code runs in the
same kernel first, and a determined student can undo any of this.
"""

from __future__ import annotations

import builtins
import json
import sys
from pathlib import Path

# (module, attribute) pairs whose values the checks compare with.
COMPARISONS = (
    ("torch", "equal"), ("torch", "allclose"), ("torch", "isclose"),
    ("torch.testing", "assert_close"), ("numpy", "allclose"), ("numpy", "array_equal"),
    ("numpy.testing", "assert_allclose"), ("numpy.testing", "assert_array_equal"),
    ("math", "isclose"),
)
TENSOR_METHODS = ("equal", "allclose", "__eq__", "__ne__", "all", "any", "item", "tolist")
BUILTINS = ("abs", "all", "any", "bool", "dict", "enumerate", "float", "getattr", "hasattr",
            "int", "isinstance", "len", "list", "map", "max", "min", "print", "range", "repr",
            "round", "set", "sorted", "str", "sum", "tuple", "type", "zip")
MODULE_NAMES = {"torch": "torch", "np": "numpy", "numpy": "numpy", "math": "math"}
SHELL_METHODS = ("showtraceback", "showsyntaxerror", "_showtraceback", "run_cell", "run_code")
MARK = "# graded check {nonce}: {gid}"


def _resolve(module: str):
    obj = sys.modules.get(module)
    if obj is None:
        import importlib

        obj = importlib.import_module(module)
    return obj


class Guard:
    def __init__(self, shell, nonce: str, report: str, exercises: dict):
        import numpy
        import torch
        import torch.testing  # noqa: F401  (taken below)

        self.shell, self.nonce, self.exercises = shell, nonce, dict(exercises)
        self.report = Path(report)
        self.saved = {(m, a): getattr(_resolve(m), a) for m, a in COMPARISONS}
        self.saved.update({("torch.Tensor", a): getattr(torch.Tensor, a) for a in TENSOR_METHODS})
        self.saved.update({("builtins", a): getattr(builtins, a) for a in BUILTINS})
        self.modules = {"torch": torch, "numpy": numpy, "math": _resolve("math")}
        manager = shell.input_transformer_manager
        self.transformer_lists = [
            (shell, "input_transformers_post"), (shell, "ast_transformers"),
            (manager, "cleanup_transforms"), (manager, "line_transforms"),
            (manager, "token_transformers")]
        self.transformers = {k: list(getattr(*k)) for k in self.transformer_lists}
        # What the shell holds as its own attributes at install (ipykernel sets some).
        self.shell_methods = {name: shell.__dict__.get(name) for name in SHELL_METHODS}
        self.package_dir = str(Path(_resolve("mae_from_scratch").__file__).parent)
        # Where the kernel compiles cells: ipykernel's files, or IPython's <ipython-input-...>.
        name = shell.compile.get_code_name("", "", 0)
        self.cell_dir = "<ipython-input-" if name.startswith("<") else str(Path(name).parent)
        self.check = None  # the check cell now running, if any
        self.checks_seen = 0
        self.reported = set()  # (exercise, package code) pairs flagged already
        self.undo = []  # (setter, value): the student's bindings, put back after the check
        shell.transform_cell = self.transform_cell
        shell.events.register("post_run_cell", self.post_run_cell)
        self.report.write_text("")

    # -- the report -------------------------------------------------------------------------
    def flag(self, text: str) -> None:
        with self.report.open("a") as f:
            f.write(json.dumps({"flag": text}) + "\n")

    def finish(self) -> None:
        """The grader's last cell: the hooks must still be in place."""
        if self.shell.__dict__.get("transform_cell") != self.transform_cell:
            self.flag("the notebook replaced IPython's transform_cell (the grader's hook)")
        if self.post_run_cell not in self.shell.events.callbacks["post_run_cell"]:
            self.flag("the notebook unregistered the grader's post_run_cell hook")
        with self.report.open("a") as f:
            f.write(json.dumps({"complete": True, "checks_seen": self.checks_seen}) + "\n")

    # -- before a check cell ----------------------------------------------------------------
    def transform_cell(self, raw_cell: str) -> str:
        prefix = MARK.format(nonce=self.nonce, gid="")
        for line in raw_cell.splitlines():
            if line.startswith(prefix):
                self.before_check(line[len(prefix):].strip())
                break
        return type(self.shell).transform_cell(self.shell, raw_cell)

    def before_check(self, gid: str) -> None:
        if self.check is not None:
            return  # a shell that transforms a cell twice: once is enough
        shell = self.shell
        self.check, self.checks_seen = gid, self.checks_seen + 1
        for key, saved in self.transformers.items():
            if list(getattr(*key)) != saved:
                self.flag(f"before {gid}: the notebook changed IPython's {key[1]} (undone)")
                setattr(*key, list(saved))
        if shell.custom_exceptions:
            self.flag(f"before {gid}: the notebook set a custom exception handler "
                      f"(set_custom_exc; removed)")
            shell.set_custom_exc((), None)
        for name, saved in self.shell_methods.items():
            if shell.__dict__.get(name) is not saved:
                self.flag(f"before {gid}: the notebook replaced the shell's {name} (undone)")
                if saved is None:
                    del shell.__dict__[name]
                else:
                    shell.__dict__[name] = saved
        self.undo = []
        for (module, attr), original in self.saved.items():
            owner = self.modules["torch"].Tensor if module == "torch.Tensor" else _resolve(module)
            current = getattr(owner, attr)
            if current is not original:
                self.flag(f"before {gid}: {module}.{attr} was rebound (the original is used)")
                self.undo.append((owner, attr, current))
                setattr(owner, attr, original)
        # Names in the notebook that hide the builtins or the modules the checks use.
        namespace = shell.user_ns
        real = {a: o for (m, a), o in self.saved.items() if m == "builtins"}
        real.update({name: self.modules[module] for name, module in MODULE_NAMES.items()})
        for name, original in real.items():
            if name in namespace and namespace[name] is not original:
                self.flag(f"before {gid}: the notebook's {name!r} hides the real one "
                          f"(the real one is used)")
                self.undo.append((namespace, name, namespace[name]))
                namespace[name] = original
        self.start_watching()

    # -- while a check cell runs: who calls the package ---------------------------------------
    def start_watching(self) -> None:
        namespace = self.shell.user_ns
        self.student_files, self.allowed = {}, {}
        self.from_student, self.from_check = {}, set()
        for name, references in self.exercises.items():
            obj = namespace.get(name)
            if obj is None:
                continue
            module = getattr(obj, "__module__", "") or ""
            if module.split(".")[0] == "mae_from_scratch":
                self.flag(f"{self.check}: {name} is the package's own "
                          f"{module}.{getattr(obj, '__qualname__', name)}, not the student's")
                continue
            codes = list(_codes_of(obj))
            if not codes and callable(obj):
                self.flag(f"{self.check}: {name} is a {type(obj).__name__}, not a function or "
                          f"class the notebook defines")
            for code in codes:
                self.student_files.setdefault(code.co_filename, name)
            # What the reference solution itself uses of the package, by name: allowed.
            self.allowed[name] = {c for ref in references
                                  for c in _codes_of(_lookup(namespace, ref), package=True)}
        sys.setprofile(self.profile)

    def _is_cell(self, filename: str) -> bool:
        return filename.startswith(self.cell_dir) or filename.startswith("<ipython-input-")

    def profile(self, frame, event, arg) -> None:
        """On each call: an entry into the package is recorded by who made it, found by the
        first frame above it that is not a library's (torch's, Python's)."""
        if event != "call" or not frame.f_code.co_filename.startswith(self.package_dir):
            return
        code, f = frame.f_code, frame.f_back
        while f is not None:
            filename = f.f_code.co_filename
            if filename.startswith(self.package_dir):
                return  # the package calling itself: not a way in
            if filename in self.student_files:
                name = self.student_files[filename]
                if code not in self.allowed.get(name, ()) and not _on_an_argument(frame, f):
                    self.from_student.setdefault(code, name)
                return
            if self._is_cell(filename):
                self.from_check.add(code)  # the check, or the chapter's own code
                return
            f = f.f_back

    def post_run_cell(self, result) -> None:
        if self.check is None:
            return
        sys.setprofile(None)
        gid, self.check = self.check, None
        for code, name in self.from_student.items():
            if code in self.from_check and (name, code) not in self.reported:
                self.reported.add((name, code))  # once, at the first check that shows it
                module = Path(code.co_filename).relative_to(self.package_dir).with_suffix("")
                function = getattr(code, "co_qualname", code.co_name)  # Python 3.11+
                self.flag(f"{gid}: {name} calls the package's own "
                          f"mae_from_scratch.{'.'.join(module.parts)}.{function}")
        for owner, attr, value in reversed(self.undo):
            if isinstance(owner, dict):
                owner[attr] = value
            else:
                setattr(owner, attr, value)
        self.undo = []


def _lookup(namespace: dict, dotted: str):
    """``a.b.c`` looked up in the notebook's namespace (None when it is not there)."""
    first, *rest = dotted.split(".")
    obj = namespace.get(first)
    for attr in rest:
        obj = getattr(obj, attr, None)
    return obj


def _on_an_argument(package_frame, student_frame) -> bool:
    """A method of an object the exercise was given (``model(imgs)`` in an exercise that
    takes ``model``): the exercise uses what the check handed it."""
    code = package_frame.f_code
    if not code.co_argcount or code.co_varnames[0] != "self":
        return False  # a function, not a method: its first argument is data
    receiver = package_frame.f_locals.get(code.co_varnames[0])
    given = student_frame.f_code
    arguments = given.co_varnames[:given.co_argcount + given.co_kwonlyargcount]
    return any(student_frame.f_locals.get(a) is receiver for a in arguments
               if receiver is not None)


def _codes_of(obj, package: bool = False):
    """The code objects of a function, or of a class's own methods; with ``package``, only
    the package's (a class's along its bases)."""
    import inspect

    def ours(code) -> bool:
        return not package or "mae_from_scratch" in Path(code.co_filename).parts

    if inspect.isclass(obj):
        for cls in (obj.__mro__ if package else (obj,)):
            for value in vars(cls).values():
                func = getattr(value, "__func__", value)
                if inspect.isfunction(func) and ours(func.__code__):
                    yield func.__code__
    else:
        func = getattr(obj, "__func__", obj)
        if inspect.isfunction(func) and ours(func.__code__):
            yield func.__code__


GUARD = None


def install(nonce: str, report: str, exercises: dict) -> None:
    """``exercises``: {name an exercise defines: the names its reference solution uses}."""
    global GUARD
    from IPython import get_ipython

    GUARD = Guard(get_ipython(), nonce, report, exercises)


def finish() -> None:
    GUARD.finish()
