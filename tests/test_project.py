"""The repository's own consistency: notebooks, configuration, dependencies."""

import ast
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import stamp_setup_cell  # noqa: E402


def test_every_notebook_setup_cell_matches_config():
    assert stamp_setup_cell.notebooks(), "no chapter notebooks found"
    assert stamp_setup_cell.drifted() == []


def test_setup_cell_names_the_configured_repository():
    repo = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    src = stamp_setup_cell.setup_source()
    assert f"git+{repo['url']}@{repo['branch']}" in src
    assert 'if "google.colab" in sys.modules' in src


def test_drift_is_detected(tmp_path, monkeypatch):
    """Changing the repository in _config.yml makes every notebook count as drifted."""
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    cfg["repository"]["branch"] = "some-other-branch"
    alt = tmp_path / "_config.yml"
    alt.write_text(yaml.safe_dump(cfg))
    original = stamp_setup_cell.setup_source
    monkeypatch.setattr(stamp_setup_cell, "setup_source", lambda: original(alt))
    assert stamp_setup_cell.drifted() == [p.name for p in stamp_setup_cell.notebooks()]


def _names(reqs):
    return {re.split(r"[<>=!\[ ]", r, maxsplit=1)[0].lower().replace("_", "-"): r.replace(" ", "") for r in reqs}


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _names(project["dependencies"] + project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = _names([r for r in pip_section if not r.startswith("-e")])
    assert listed == wanted


def _oldest_python():
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    match = re.fullmatch(r">=\s*3\.(\d+)", spec)
    assert match, f"requires-python {spec!r} is not of the form '>=3.N'"
    return 3, int(match.group(1))


def _uses_union_types(tree):
    """Whether annotations or isinstance() calls spell a union as ``A | B`` (run-time only on 3.10+)."""
    def union(node):
        return node is not None and any(
            isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(node))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs + [node.args.vararg, node.args.kwarg]
            if union(node.returns) or any(a is not None and union(a.annotation) for a in args):
                return True
        if isinstance(node, ast.AnnAssign) and union(node.annotation):
            return True
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("isinstance", "issubclass"):
            if len(node.args) == 2 and isinstance(node.args[1], ast.BinOp):
                return "isinstance"
    return False


def test_sources_run_on_the_oldest_supported_python():
    """Nothing newer than requires-python: no newer syntax (match, except*, ...), and
    ``X | Y`` types only where they stay unevaluated strings."""
    version = _oldest_python()
    paths = sorted([*ROOT.glob("mae_from_scratch/**/*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("tools/*.py")])
    assert len(paths) > 20
    for path in paths:
        source = path.read_text()
        tree = ast.parse(source, filename=str(path), feature_version=version)
        if version < (3, 10):
            future = "from __future__ import annotations" in source
            uses = _uses_union_types(tree)
            assert uses != "isinstance", f"{path.name}: isinstance(x, A | B) needs Python 3.10"
            assert future or not uses, f"{path.name}: 'A | B' annotations need 'from __future__ import annotations'"


# Modules that Python 3.12 and 3.13 removed from the standard library (PEP 594, PEP 632, imp).
REMOVED_BY_313 = {"aifc", "asynchat", "asyncore", "audioop", "cgi", "cgitb", "chunk", "crypt", "distutils",
                  "imghdr", "imp", "mailcap", "msilib", "nis", "nntplib", "ossaudiodev", "pipes", "smtpd",
                  "sndhdr", "spwd", "sunau", "telnetlib", "uu", "xdrlib", "lib2to3"}


def _all_sources():
    """Every Python source the project runs: modules, tests, tools, benchmarks, and each
    notebook's code cells (chapters and student notebooks)."""
    for path in sorted([*ROOT.glob("mae_from_scratch/**/*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("tools/*.py"),
                        *ROOT.glob("benchmarks/*.py"), *ROOT.glob("book/_ext/*.py")]):
        yield path.relative_to(ROOT).as_posix(), path.read_text()
    for path in sorted([*ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("assignments/*.ipynb")]):
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                yield f"{path.relative_to(ROOT).as_posix()} cell {i}", cell.source


def test_sources_parse_with_the_oldest_and_colabs_python():
    """Python 3.9's grammar (requires-python) and 3.13's (Colab's runtime as of August 2026),
    read by parso's grammars of those versions, whatever Python runs the tests; and no module
    that 3.13 no longer has."""
    import parso

    grammars = {v: parso.load_grammar(version=v) for v in ("3.9", "3.13")}
    checked = 0
    for name, source in _all_sources():
        for version, grammar in grammars.items():
            errors = list(grammar.iter_errors(grammar.parse(source)))
            assert not errors, (f"{name} is not Python {version}: line {errors[0].start_pos[0]}: "
                                f"{errors[0].message}")
        for node in ast.walk(ast.parse(source)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            gone = {n.split(".")[0] for n in names} & REMOVED_BY_313
            assert not gone, f"{name} imports {sorted(gone)}, which Python 3.13 removed"
        checked += 1
    assert checked > 200


def test_a_newer_grammar_is_told_apart():
    """The check above can fail: 3.12's type statement is refused by 3.9's grammar, and
    Python 2's print statement by both."""
    import parso

    assert list(parso.load_grammar(version="3.9").iter_errors(parso.parse("type X = int\n", version="3.9")))
    for v in ("3.9", "3.13"):
        grammar = parso.load_grammar(version=v)
        assert list(grammar.iter_errors(grammar.parse("print 'x'\n")))


def test_every_notebook_is_in_the_toc_and_has_a_check_cell():
    toc = (ROOT / "_toc.yml").read_text()
    for path in stamp_setup_cell.notebooks():
        assert f"notebooks/{path.stem}" in toc, f"{path.name} is not in _toc.yml"
        nb = nbformat.read(path, as_version=4)
        checks = [c for c in nb.cells if c.cell_type == "code" and "# NBVAL_CHECK_OUTPUT" in c.source]
        assert checks, f"{path.name} has no '# NBVAL_CHECK_OUTPUT' check cell"
        for c in checks:
            assert "assert" in c.source, f"a check cell of {path.name} asserts nothing"
            assert c.outputs, f"a check cell of {path.name} has no saved output for nbval to compare"
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert not errors, f"{path.name} has saved error outputs"


def _exercise_cells(nb):
    return [i for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and "### BEGIN SOLUTION" in c.source]


def test_exercises_are_marked_and_checked():
    """Chapters 2 onward carry at least two nbgrader-style exercises, each followed by a check."""
    for path in stamp_setup_cell.notebooks():
        nb = nbformat.read(path, as_version=4)
        cells = _exercise_cells(nb)
        for i in cells:
            src = nb.cells[i].source
            assert src.count("### BEGIN SOLUTION") == src.count("### END SOLUTION"), path.name
            after = [c for c in nb.cells[i + 1:] if c.cell_type == "code"]
            assert after and "assert" in after[0].source, f"{path.name}: exercise cell {i} is not followed by a check"
        if not path.name.startswith("01_"):
            assert len(cells) >= 2, f"{path.name} has {len(cells)} exercise cells, expected at least 2"



# ----------------------------------------------------------------------------------
# Import cycles inside the package
PACKAGE = "mae_from_scratch"


def _module_name(path: Path) -> str:
    """``mae_from_scratch/pretrain.py`` -> ``mae_from_scratch.pretrain``; a package's
    ``__init__.py`` -> the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_imports(path: Path, modules: set) -> dict:
    """The modules of ``modules`` that the module at ``path`` imports, as
    ``{module: "module level" | "in a function"}``: module level when the import runs as the
    module is imported (also under ``if``/``try`` and in class bodies), in a function when only
    a call runs it.  ``if TYPE_CHECKING:`` never runs.  Names in full (``a.b``)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = {}

    def add(module, where):
        if module in modules and module != name and found.get(module) != "module level":
            found[module] = where

    def visit(node, where):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            where = "in a function"
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            for a in node.names:  # import a.b.c: the deepest of a.b.c, a.b that is ours
                parts = a.name.split(".")
                hits = [m for m in (".".join(parts[:k]) for k in range(len(parts), 0, -1)) if m in modules]
                if hits:
                    add(hits[0], where)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + (node.module.split(".") if node.module else []))
            for a in node.names:  # from target import x: the module target.x, or a name target holds
                add(f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target, where)
        for child in ast.iter_child_nodes(node):
            visit(child, where)

    visit(ast.parse(path.read_text(), filename=str(path)), "module level")
    return found


def package_imports() -> dict:
    """``{module: {imported module: "module level" | "in a function"}}`` for every module of
    the package and its subpackages, named without the ``mae_from_scratch.`` in front (the
    package itself: ``__init__``).  Importing ``a.b`` imports the package ``a`` first; that
    link is left out."""
    paths = sorted(p for p in (ROOT / PACKAGE).rglob("*.py") if "__pycache__" not in p.parts)
    modules = {_module_name(p) for p in paths}

    def short(module):
        return "__init__" if module == PACKAGE else module[len(PACKAGE) + 1:]

    return {short(_module_name(p)): {short(m): where for m, where in _module_imports(p, modules).items()}
            for p in paths}


def strongly_connected(graph: dict) -> list:
    """The groups of two or more nodes of ``graph`` (``{node: iterable of nodes}``) that all
    reach each other: every import cycle lies inside one.  Sorted lists, sorted."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups)


def shortest_path(graph: dict, start, end, within) -> list:
    """The shortest ``[start, ..., end]`` along ``graph`` through nodes of ``within``."""
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        if path[-1] == end:
            return path
        for w in sorted(graph.get(path[-1], ())):
            if w in within and w not in seen:
                seen.add(w)
                paths.append(path + [w])
    raise ValueError(f"{end} is not reachable from {start}")


def import_cycles(imports: dict) -> tuple[list, list]:
    """``(defects, tolerated)``: one cycle per group of modules that import each other.

    A defect holds at least one module-level import.  Made of module-level imports only, the
    cycle works or fails by which module is imported first (one of them runs half-imported);
    with an import in a function on the way back, it works only as long as that import stays
    in its function, and the two modules still cannot be read, tested or loaded one without
    the other (snapshots -> pictures pulled matplotlib into every training run).  A cycle
    made only of imports in functions, which run after every module is whole, is tolerated.
    Each cycle is written ``a -> b -> (in a function) c -> a``, a defect through its first
    module-level link."""
    every = {m: set(i) for m, i in imports.items()}
    defects, tolerated = [], []
    for group in strongly_connected(every):
        links = [(a, b) for a in group for b in sorted(imports[a]) if b in group]
        top = [(a, b) for a, b in links if imports[a][b] == "module level"]
        a, b = (top or links)[0]
        cycle = [a] + shortest_path(every, b, a, set(group))
        text = cycle[0] + "".join(f" -> {'(in a function) ' * (imports[x][y] != 'module level')}{y}"
                                  for x, y in zip(cycle, cycle[1:]))
        (defects if top else tolerated).append(text)
    return defects, tolerated


def test_import_cycles_are_found():
    """The search itself, on made-up modules: a module-level cycle of three, a pair of which one
    side imports in a function (a defect still), two imports in functions (tolerated), a chain."""
    top, fn = "module level", "in a function"
    assert import_cycles({"a": {"b": top}, "b": {"c": top}, "c": {"a": top}, "d": {"a": top}}) == (
        ["a -> b -> c -> a"], [])
    assert import_cycles({"pictures": {"snapshots": fn}, "snapshots": {"pictures": top}}) == (
        ["snapshots -> pictures -> (in a function) snapshots"], [])
    assert import_cycles({"x": {"y": fn}, "y": {"x": fn}}) == ([], ["x -> (in a function) y -> (in a function) x"])
    assert import_cycles({"a": {"b": top}, "b": {"c": top}, "c": {}}) == ([], [])


def test_the_package_has_no_import_cycles():
    """No two modules of the package import each other, directly or around a loop, where any
    link of the loop is a module-level import (see :func:`import_cycles`).  Cycles of imports
    in functions only are tolerated (none at the time of writing)."""
    imports = package_imports()
    assert len(imports) > 20 and imports["pretrain"]
    defects, _tolerated = import_cycles(imports)
    assert not defects, "import cycles among the package's modules: " + "; ".join(defects)


# Modules over this many lines hold more than one idea, unless named here with the reason.
MODULE_LINES = 450
ONE_IDEA = {
    "model.py": "the model itself: MaskedAutoencoderViT's encoder, decoder and loss, as the official "
                "models_mae.py keeps them in one file, plus its named sizes",
}


def test_no_module_holds_more_than_one_idea():
    long = {p.relative_to(ROOT / PACKAGE).as_posix(): len(p.read_text().splitlines())
            for p in (ROOT / PACKAGE).rglob("*.py") if "__pycache__" not in p.parts}
    over = {name: n for name, n in long.items() if n > MODULE_LINES and name not in ONE_IDEA}
    assert not over, f"modules over {MODULE_LINES} lines: {over}; split them by idea, or name the reason in ONE_IDEA"
