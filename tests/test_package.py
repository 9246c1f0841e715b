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
    "numpyro": {"numpyro_model", "lens_light_model", "gibbs_kernel", "chain_runner"},  # models, kernel, MCMC driver
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


def test_third_party_libraries_are_confined():
    offenders = []
    for path in SRC.glob("*.py"):
        if path.stem == "cli":  # the CLI may use anything public
            continue
        for lib in _imported_roots(path) & set(CONFINED):
            if path.stem not in CONFINED[lib]:
                offenders.append(f"{path.name} imports {lib}")
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
