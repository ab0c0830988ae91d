"""Layers point down: the import contracts in pyproject.toml hold, and no module of the
package imports itself back through others (issue 7)."""

from __future__ import annotations

import pathlib

import grimp
from importlinter.cli import lint_imports

ROOT = pathlib.Path(__file__).resolve().parent.parent



def test_the_import_contracts_in_pyproject_are_kept(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def test_no_module_imports_itself_back_through_others():
    graph = grimp.build_graph("flexitasks", cache_dir=None)
    cycles = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if imported != module and graph.chain_exists(importer=imported, imported=module):
                cycles.add(tuple(sorted((module, imported))))
    assert cycles == set()
