"""Package-level promises: exports, lazy imports, the third-party confinement table, the CLI."""

import ast
import subprocess
import sys
from pathlib import Path

import blindlens
from blindlens.cli import build_parser

SRC = Path(blindlens.__file__).parent

# Each third-party library lives behind the modules listed here (docs/architecture.md).
CONFINED = {
    "diffrax": {"diffusion_sde"},
    "lineax": {"diffusion_sde"},
    "optax": {"_optimisers"},  # training and the pre-fit / evidence-search maximiser
    "galsim": {"galaxies"},
    "numpyro": {"numpyro_model", "lens_light_model", "source_shift_model", "lens_space", "gibbs_kernel",
                "gibbs_kernel_state", "lens_block", "source_moves", "chain_runner", "mixing_diagnostics", "testing"},  # models, kernel and its blocks, MCMC driver; the test oracles' lens model
    "arviz": {"arviz_conversion"},
    "xarray": {"arviz_conversion"},
    "astropy": {"observation", "survey_fits", "fits_products"},  # FITS I/O: reading, survey input, writers
    "h5py": {"image_sets"},
    "distributed": {"catalogue"},  # the catalogue engine (Dask)
    "dask": {"catalogue"},
    "pandas": {"catalogue"},  # its summary table (Parquet through pyarrow)
    "pyarrow": {"catalogue"},
}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


LAYERS = ("physics", "io", "prior", "source", "inference", "results")
"""The pipeline's layers, lowest first: a module may import its own layer and lower ones only."""


def _module_key(dotted: str) -> str:
    """The module a dotted path (relative to blindlens) belongs to: ``layer.name`` or a root module;
    a subpackage inside a layer (``physics.lens_models``) is one module."""
    parts = dotted.split(".")
    return ".".join(parts[:2]) if parts[0] in LAYERS else parts[0]


def _module_files() -> dict[str, list[Path]]:
    """Each blindlens module by key (``physics.grid``, ``pipeline``) with its source files."""
    modules: dict[str, list[Path]] = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        if not parts or (len(parts) == 1 and parts[0] in LAYERS):
            continue  # blindlens/__init__.py and the layers' empty __init__ files
        modules.setdefault(_module_key(".".join(parts)), []).append(path)
    return modules


def _stem(key: str) -> str:
    return key.split(".")[-1]


def test_third_party_libraries_are_confined():
    offenders = []
    for key, paths in _module_files().items():
        name = _stem(key)
        if name in ("cli", "cli_prepare"):  # the CLI may use anything public
            continue
        for path in paths:
            for lib in _imported_roots(path) & set(CONFINED):
                if name not in CONFINED[lib]:
                    offenders.append(f"{path.relative_to(SRC)} imports {lib}")
    assert not offenders, offenders


def test_every_export_resolves():
    for name in blindlens._EXPORTS:
        assert getattr(blindlens, name) is not None, name


def test_import_is_lazy():
    code = "import sys, blindlens; print(sorted(m for m in ('numpyro', 'arviz', 'diffrax', 'astropy', 'galsim') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_lists_subcommands():
    parser = build_parser()
    help_text = parser.format_help()
    for command in ("simulate", "make-galaxies", "train-prior"):
        assert command in help_text
    out = subprocess.run([sys.executable, "-m", "blindlens", "--help"], capture_output=True, text=True, check=True).stdout
    assert "train-prior" in out


def _package_imports(path: Path, module_level_only: bool) -> set[str]:
    """The blindlens modules (keys, see :func:`_module_key`) ``path`` imports by relative imports,
    at module level or anywhere; imports among the files of one module are left out."""
    package = list(path.relative_to(SRC).parts[:-1])
    own = _module_key(".".join([*package, path.stem])) if path.stem != "__init__" else _module_key(".".join(package))
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if not (isinstance(node, ast.ImportFrom) and node.level > 0):
            continue
        base = package[: len(package) - (node.level - 1)]
        target = ".".join([*base, node.module] if node.module else base)
        if target in ("", *LAYERS):  # ``from . import x`` / ``from ..inference import x``: x is a module
            out |= {_module_key(f"{target}.{a.name}".lstrip(".")) for a in node.names}
        else:
            out.add(_module_key(target))
    return out - {own, "__version__"}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles_among_modules():
    """Module-level imports among blindlens modules form no cycle."""
    modules = _module_files()
    graph = {name: set().union(*(_package_imports(p, True) for p in paths)) & set(modules)
             for name, paths in modules.items()}
    assert _find_cycle(graph) is None, _find_cycle(graph)


def _rank(key: str) -> int:
    """Layer of a module: -1 for the shared foundations (type aliases, optimisers), the layer's index, or
    above every layer (the application: pipeline, batch_pipeline, catalogue, cli, ...)."""
    if key in ("_types", "_optimisers"):
        return -1
    head = key.split(".")[0]
    return LAYERS.index(head) if head in LAYERS else len(LAYERS)


def test_lower_layers_never_import_higher_ones():
    """physics < io < prior < source < inference < results < application, counting imports inside
    functions too (a lazy import is still a dependency)."""
    modules = _module_files()
    assert {k.split(".")[0] for k in modules} >= set(LAYERS)
    offenders = {
        name: sorted(t for t in set().union(*(_package_imports(p, False) for p in paths)) if _rank(t) > _rank(name))
        for name, paths in modules.items()
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, offenders


def test_the_layering_check_finds_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a physics file importing the inference layer is caught."""
    bad = SRC / "physics" / "grid.py"
    text = bad.read_text() + "\n\ndef _f():\n    from ..inference import numpyro_model  # noqa\n"
    fake = tmp_path / "physics"
    fake.mkdir()
    (fake / "grid.py").write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    assert "inference.numpyro_model" in _package_imports(fake / "grid.py", False)
    assert _rank("inference.numpyro_model") > _rank("physics.grid")


def test_moved_modules_keep_their_old_import_paths():
    """``blindlens.grid`` is ``blindlens.physics.grid`` (the same module object), submodules included."""
    import importlib

    for old, new in blindlens._MOVED.items():
        assert importlib.import_module(f"blindlens.{old}") is importlib.import_module(f"blindlens.{new}"), old
    base = importlib.import_module("blindlens.lens_models.base")
    assert base is importlib.import_module("blindlens.physics.lens_models.base")
    assert base.__spec__.name == "blindlens.physics.lens_models.base"


def test_a_cycle_is_found_by_the_checker():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_package_ships_the_typing_marker():
    """PEP 561: ``py.typed`` in the package, and listed as package data so wheels carry it."""
    assert (SRC / "py.typed").exists()
    assert '"py.typed"' in (SRC.parents[1] / "pyproject.toml").read_text()
