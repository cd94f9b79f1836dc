"""What the wheel holds and what the package needs: the pretrained adapters inside, no `train` package, PISA
optional, and no product module reaching into the repository's experiments/ or bench/."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (absolute imports only)."""
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.unit
@pytest.mark.parametrize("package", ["pyterrier_matroyshka", "train"])
def test_the_product_never_imports_experiments_or_bench(package):
    offenders = {str(path.relative_to(ROOT)): sorted(imported_modules(path) & {"experiments", "bench", "tests"})
                 for path in sorted((ROOT / package).rglob("*.py"))}
    assert {path: names for path, names in offenders.items() if names} == {}
    sources = "\n".join(path.read_text() for path in (ROOT / package).rglob("*.py"))
    assert "sys.path.insert" not in sources  # nor reaches them by path


@pytest.mark.integration  # a fresh interpreter
def test_the_reranker_runs_without_pisa_and_bm25_names_the_extra():
    code = ("import sys; sys.modules['pyterrier_pisa'] = None\n"  # as if pyterrier-pisa were not installed
            "from pyterrier_matroyshka import MatroyshkaReRanker, FirstStageFusion\n"
            "from pyterrier_matroyshka.offline.bm25 import pisa_index\n"
            "try:\n    pisa_index('cranfield')\nexcept ImportError as err:\n    print(err)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pip install 'pyterrier-matroyshka[bm25]'" in done.stdout


@pytest.mark.integration
def test_the_wheel_holds_the_library_and_the_pretrained_adapters(tmp_path):
    from pyterrier_matroyshka.pretrained import VARIANTS

    # built from a copy: a build/ folder left in the checkout by an earlier build would leak stale files in
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", ".cache", "build", "dist", "runs",
                                                                "*.egg-info", "__pycache__", ".pytest_cache"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = tmp_path.glob("pyterrier_matroyshka-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"pyterrier_matroyshka", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "pyterrier_matroyshka/offline/bm25.py" in names
    shipped = [v for v in VARIANTS.values() if (ROOT / "models" / v.folder).is_dir()]
    assert shipped, "no variant's adapters are in models/"
    for variant in shipped:
        for adapter in variant.merged + variant.compensation:
            for file in ("adapter_config.json", "adapter_model.safetensors"):
                assert f"pyterrier_matroyshka/models/{variant.folder}/{adapter}/{file}" in names
