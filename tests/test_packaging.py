"""The wheel a user installs (`pip install .`, not `-e`) carries the data the builders need: every
builder's `dummy_data`, the built-in datasets under `data/`, and all modules."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Local state that is not part of the source tree (see .gitignore).
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "runs", "tfds_data", "build", "_build", "__pycache__",
                                    "*.egg-info", ".pytest_cache")


def _files_under(root: Path, pattern: str) -> set[str]:
    return {path.relative_to(REPO).as_posix() for path in root.glob(pattern) if path.is_file()}


def _expected_package_files() -> set[str]:
    datasets = REPO / "retina_jax" / "datasets"
    return (_files_under(REPO / "retina_jax", "**/*.py") | _files_under(datasets, "*/dummy_data/**/*")
            | _files_under(datasets, "*/data/**/*") | _files_under(datasets, "*/checksums.tsv"))


@pytest.mark.slow
def test_wheel_holds_modules_dummy_data_and_built_in_data(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(wheel_dir), "--quiet"], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheel_dir.glob("retina_jax-*.whl")
    with zipfile.ZipFile(wheel) as wheel_zip:
        wheel_files = set(wheel_zip.namelist())

    expected = _expected_package_files()
    assert any("/dummy_data/" in name for name in expected) and any("/data/" in name for name in expected)
    assert expected - wheel_files == set()
    assert not any(name.startswith("tests/") or "/_build/" in name for name in wheel_files)
