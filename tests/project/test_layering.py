"""The package's layering, checked statically from the source (docs/design.md, "Package map"):

- `qwenvl_min/model/` (the architecture) imports, at module level, nothing of ours but itself, `kernels`
  and `utils`, and nothing it reaches imports an I/O library (PIL, PyAV, tokenizers, jinja2, transformers,
  huggingface_hub, safetensors, tqdm, urllib);
- no module-level import cycle anywhere in the package;
- the function-level ("lazy") imports that close a cycle are exactly the ones listed in LAZY_ALLOWED
  (two at most).

Edges follow what Python executes: `from a.b import c` runs `a`, `a.b` and, when `c` is a module, `a.b.c`.
A module's own ancestor packages are left out (they are always initialized before it); imports under
`if TYPE_CHECKING:` never run and are left out too. A run-time check confirms the first rule: importing
the model loads none of those libraries.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# source folders and the package names they install as (pyproject's package-dir remap)
SOURCES = {
    "qwenvl_min": "qwenvl_min",
    "kernels": "qwenvl_min.kernels",
    "weights_convert": "qwenvl_min.weights_convert",
}
MODEL = "qwenvl_min.model"
MODEL_MAY_IMPORT = ("qwenvl_min.model", "qwenvl_min.kernels", "qwenvl_min.utils")
IO_LIBRARIES = (
    "PIL",
    "av",
    "tokenizers",
    "jinja2",
    "transformers",
    "huggingface_hub",
    "safetensors",
    "tqdm",
    "urllib",
)
# (importer, imported): the only function-level imports allowed to close a cycle, each a delegate from the
# model to the code that builds models (hf) or hooks into them (interp)
LAZY_ALLOWED = {
    ("qwenvl_min.model.qwenvl", "qwenvl_min.hf"),
    ("qwenvl_min.model.qwenvl", "qwenvl_min.interp"),
}


def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package __init__)."""
    found = {}
    for folder, package in SOURCES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            found[".".join([package, *parts])] = (path, is_package)
    return found


MODULES = _modules()


def _targets(node: ast.Import | ast.ImportFrom, name: str, is_package: bool) -> list[str]:
    """The modules an import statement executes (its ancestors included)."""
    if isinstance(node, ast.Import):
        roots = [alias.name for alias in node.names]
    else:
        if node.level:
            base = name.split(".") if is_package else name.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        roots = [module]
        roots += [f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in MODULES]
    executed = []
    for root in roots:
        parts = root.split(".")
        executed += [".".join(parts[: i + 1]) for i in range(len(parts))]
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    if is_package:
        ancestors.add(name)
    return [t for t in dict.fromkeys(executed) if t not in ancestors]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports() -> tuple[dict[str, set[str]], dict[str, set[str]], dict[str, set[str]]]:
    """Per module: module-level targets of ours, function-level targets of ours, module-level third-party roots."""
    eager: dict[str, set[str]] = {}
    lazy: dict[str, set[str]] = {}
    external: dict[str, set[str]] = {}

    def visit(node: ast.AST, name: str, is_package: bool, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, name, is_package, True)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                continue  # never executed
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(child, name, is_package):
                    if target.split(".")[0] == "qwenvl_min":
                        (lazy if in_function else eager)[name].add(target)
                    elif not in_function:
                        external[name].add(target.split(".")[0])
            else:
                visit(child, name, is_package, in_function)

    for name, (path, is_package) in MODULES.items():
        eager[name], lazy[name], external[name] = set(), set(), set()
        visit(ast.parse(path.read_text(), str(path)), name, is_package, False)
    return eager, lazy, external


EAGER, LAZY, EXTERNAL = _imports()


def _reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        for target in EAGER.get(module, ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _owner(module: str) -> str:
    """The folder a module belongs to: qwenvl_min.hf.pretrained -> qwenvl_min.hf."""
    return ".".join(module.split(".")[:2])


def test_every_module_is_seen():
    assert f"{MODEL}.qwenvl" in MODULES and "qwenvl_min.kernels" in MODULES
    assert sum(len(targets) for targets in EAGER.values()) > 100


def test_model_imports_only_itself_kernels_and_utils():
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in EAGER.items()
        if name.startswith(MODEL)
        for target in targets
        if target != "qwenvl_min" and not target.startswith(MODEL_MAY_IMPORT)
    )
    assert not wrong, "model/ must not import upward at module level:\n" + "\n".join(wrong)


def test_nothing_the_model_reaches_imports_io_libraries():
    reached = {name for name in MODULES if name.startswith(MODEL)}
    for name in list(reached):
        reached |= _reachable(name)
    wrong = sorted(
        f"{name} imports {lib}" for name in reached for lib in EXTERNAL.get(name, ()) if lib in IO_LIBRARIES
    )
    assert not wrong, "\n".join(wrong)


def test_no_module_level_cycle():
    cycles = sorted(name for name in MODULES if name in _reachable(name))
    assert not cycles, f"module-level import cycles through: {cycles}"


def test_lazy_imports_that_close_a_cycle_are_the_listed_delegates():
    closing = set()
    for name, targets in LAZY.items():
        for target in targets:
            if name in _reachable(target):
                closing.add((name, _owner(target)))
    assert closing <= LAZY_ALLOWED and len(LAZY_ALLOWED) <= 2, sorted(closing - LAZY_ALLOWED)


def test_importing_the_model_loads_no_io_library():
    script = (
        "import sys, torch, einops, numpy\n"
        "before = set(sys.modules)\n"
        "import qwenvl_min.model\n"
        "from qwenvl_min import QwenVL, Config\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        f"print(sorted(new & set({IO_LIBRARIES!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
