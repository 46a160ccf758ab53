"""The dependencies pyproject.toml declares are exactly the third-party packages the code imports:
every import in qwenvl_min/, kernels/ and weights_convert/ is declared (core or a runtime extra), every
declared runtime package is imported somewhere, and what a module imports at its top level is a core
dependency (so `import qwenvl_min` needs no extra; extras are imported where they are used)."""

from __future__ import annotations

import ast
import functools
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["qwenvl_min", "kernels", "weights_convert"]
FIRST_PARTY = {"qwenvl_min", "kernels", "weights_convert"}
NOT_RUNTIME = {
    "test",
    "dev",
    "bench",
}  # extras for developing and benchmarking the project, not for running it


def _name(requirement: str) -> str:
    """'tokenizers>=0.22' or 'triton>=3.0; sys_platform == ...' -> the normalized distribution name."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group(0)).lower()


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in project["dependencies"]}
    extras = {
        _name(r)
        for extra, reqs in project["optional-dependencies"].items()
        if extra not in NOT_RUNTIME
        for r in reqs
    }
    return core, extras - core


def _imports() -> dict[str, list[tuple[str, bool]]]:
    """Top-level module name -> [(file, imported at module level?)] for every import in the sources."""
    found: dict[str, list[tuple[str, bool]]] = {}
    for source in SOURCES:
        for path in sorted((ROOT / source).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            top_level = {id(node) for node in tree.body}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    module = name.split(".")[0]
                    if module in sys.stdlib_module_names or module in FIRST_PARTY or module == "__future__":
                        continue
                    found.setdefault(module, []).append((str(path.relative_to(ROOT)), id(node) in top_level))
    return found


@functools.cache
def _providers() -> dict[str, list[str]]:
    return packages_distributions()


def _distribution(module: str) -> str:
    """The installed distribution that provides an import name (PIL -> pillow), from package metadata."""
    providers = _providers().get(module)
    assert providers, f"{module} is imported but no installed distribution provides it"
    return _name(providers[0])


def test_every_import_is_declared_and_every_declaration_imported():
    core, extras = _declared()
    imports = _imports()
    used = {_distribution(module): module for module in imports}
    undeclared = sorted(set(used) - core - extras)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    unused = sorted((core | extras) - set(used))
    assert not unused, f"declared in pyproject.toml but never imported: {unused}"


def test_extras_are_imported_only_where_they_are_used():
    core, _ = _declared()
    for module, places in _imports().items():
        if _distribution(module) in core:
            continue
        at_top = [file for file, top in places if top]
        assert not at_top, (
            f"{module} (an extra) is imported at module level in {at_top}: import it where used"
        )


def test_the_scan_sees_the_known_imports():
    imports = _imports()
    for module in ("torch", "numpy", "PIL", "safetensors", "einops", "tqdm", "tokenizers", "jinja2", "av"):
        assert module in imports, module  # a scan that found nothing would pass the tests above
    assert _distribution("PIL") == "pillow"
