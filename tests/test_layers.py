"""The tree reads in dependency order: each package of `inspector` imports only the packages listed before it (the
README's tree), so scoring never reaches up into the service and the line link never into the HTTP layer."""

from __future__ import annotations

import ast
from pathlib import Path

import inspector

LAYERS = (
    "common",
    "data",
    "features",
    "components",
    "runtime",
    "models",
    "evaluation",
    "calibration",
    "export",
    "link",
    "service",
    "cli",
)
ROOT = Path(inspector.__file__).parent


def imported_packages(path: Path) -> set[str]:
    """The `inspector.<package>` names a module imports, at its top or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.level == 0
            else []
        )
        found |= {n.split(".")[1] for n in names if n.startswith("inspector.") and n.count(".") >= 1}
    return found


def test_every_package_is_a_layer() -> None:
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS)
    loose = {p.name for p in ROOT.glob("*.py")} - {"__init__.py", "__main__.py"}
    assert not loose, f"modules outside any layer: {loose}"


def test_each_package_imports_only_the_layers_below_it() -> None:
    wrong = []
    for rank, layer in enumerate(LAYERS):
        allowed = set(LAYERS[: rank + 1])
        for module in sorted((ROOT / layer).rglob("*.py")):
            for package in imported_packages(module) - allowed:
                wrong.append(f"{module.relative_to(ROOT)} imports inspector.{package}")
    assert not wrong, "\n".join(wrong)
