"""The documentation site builds with no warning and documents every public name."""

import importlib
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api"
# The command line is documented by its --help; everything else is on an API page.
UNDOCUMENTED = ("jaxtricks.cli", "jaxtricks.__main__")


def _public_modules():
    modules = []
    for path in sorted((ROOT / "jaxtricks").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            continue
        name = ".".join(parts)
        if any(part.startswith("_") for part in parts) or name.startswith(UNDOCUMENTED):
            continue
        modules.append(name)
    return modules


def _documented_modules():
    return {
        match
        for page in API.glob("*.md")
        for match in re.findall(r"^::: (\S+)\s*$", page.read_text(), flags=re.M)
    }


def test_every_public_module_is_on_an_api_page_and_every_page_is_in_the_nav():
    missing = sorted(set(_public_modules()) - _documented_modules())
    assert not missing, f"modules on no page of docs/api/: {missing}"
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(f"api/{page.name}" for page in API.glob("*.md"))
    assert pages and [page for page in pages if page not in nav] == []


def test_docstring_examples_use_the_section_griffe_renders_as_code():
    # griffe reads "Examples:" as doctest code; a singular "Example:" becomes Markdown prose,
    # where `[0.7, 0.6]` in an output is taken for a link.
    offending = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in (ROOT / "jaxtricks").rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if re.fullmatch(r"\s+Example:\s*", line)
    ]
    assert not offending, f"'Example:' sections (write 'Examples:'): {offending}"


def test_the_home_page_code_runs():
    home = (ROOT / "docs" / "index.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", home, flags=re.S)
    assert blocks
    namespace = {}
    for block in blocks:
        exec(compile(block, "docs/index.md", "exec"), namespace)
    assert namespace["params"]["w"].shape == (784, 10) and namespace["opt_state"] is not None


@pytest.mark.slow
def test_the_site_builds_strict_with_no_warning_and_documents_every_public_name(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
         "-d", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    output = result.stdout + result.stderr
    warnings = [line for line in output.splitlines() if re.match(r"\s*(WARNING|ERROR)\b", line)]
    assert result.returncode == 0 and not warnings, output[-4000:]
    assert (site / "notebooks" / "overview" / "index.html").is_file()

    html = "".join(page.read_text() for page in (site / "api").rglob("*.html"))
    ids = set(re.findall(r'id="(jaxtricks\.[\w.]+)"', html))
    pages = "".join(page.read_text() for page in API.glob("*.md"))
    missing = []
    for name in sorted(_documented_modules()):
        module = importlib.import_module(name)
        for member in getattr(module, "__all__", ()):
            home = getattr(getattr(module, member), "__module__", None) or name
            # A name re-exported from another library (Flax's DynamicScale) is documented there;
            # its page must still say so.
            # A package's name may be documented where it is defined, in one of its modules
            # (jaxtricks.testing re-exports its strategies lazily, out of griffe's sight).
            documented = (
                f"{name}.{member}" in ids
                or any(i.startswith(f"{name}.") and i.endswith(f".{member}") for i in ids)
                if home.startswith("jaxtricks") else f"`{name}.{member}`" in pages
            )
            if not documented:
                missing.append(f"{name}.{member}")
    assert not missing, f"public names without an entry in the API pages: {missing}"
