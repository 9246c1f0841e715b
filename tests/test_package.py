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
    "optax": {"training"},
    "galsim": {"galaxies"},
    "numpyro": {"numpyro_model", "lens_light_model", "lens_space", "gibbs_kernel", "lens_block", "source_moves",
                "chain_runner"},  # models, kernel and its blocks, MCMC driver
    "arviz": {"arviz_conversion"},
    "xarray": {"arviz_conversion"},
    "astropy": {"observation", "survey_fits"},
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


def _module_files() -> dict[str, list[Path]]:
    """Each blindlens module by name with its source files; a subpackage is one module (all its files)."""
    modules = {p.stem: [p] for p in SRC.glob("*.py")}
    for init in SRC.glob("*/__init__.py"):
        modules[init.parent.name] = sorted(init.parent.rglob("*.py"))
    return modules


def test_third_party_libraries_are_confined():
    offenders = []
    for name, paths in _module_files().items():
        if name == "cli":  # the CLI may use anything public
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
    """The blindlens modules ``path`` imports (relative imports), at module level or anywhere.

    In a subpackage, imports among its own files are internal and left out.
    """
    level = len(path.relative_to(SRC).parts)  # the relative-import level that names blindlens itself
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level == level:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out |= {a.name for a in node.names}
    return out


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
    """Module-level imports form no cycle; the physics layer never imports the inference layer, even lazily."""
    modules = _module_files()
    graph = {name: set().union(*(_package_imports(p, True) for p in paths)) & set(modules)
             for name, paths in modules.items()}
    assert _find_cycle(graph) is None, _find_cycle(graph)
    physics = {"grid", "psf", "lens_models", "light_profiles", "lensing_operator", "linear_operator"}
    inference = {"numpyro_model", "gibbs_kernel", "gibbsddrm", "lens_block", "source_moves", "lens_space",
                 "chain_runner", "chain_starts", "pipeline", "catalogue", "cli", "parametric_prefit",
                 "lens_initialization", "lens_light_model", "gibbs_core", "lens_batch", "batch_pipeline"}
    offenders = {m: sorted(set().union(*(_package_imports(p, False) for p in modules[m])) & inference)
                 for m in physics}
    assert not any(offenders.values()), offenders


def test_a_cycle_is_found_by_the_checker():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_package_ships_the_typing_marker():
    """PEP 561: ``py.typed`` in the package, and listed as package data so wheels carry it."""
    assert (SRC / "py.typed").exists()
    assert '"py.typed"' in (SRC.parents[1] / "pyproject.toml").read_text()
