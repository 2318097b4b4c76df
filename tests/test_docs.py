"""The documents a user reads point only at what exists: the README, docs/, the notebook and the Makefile take
nothing from outside the repository, every config's docstring says what we measured, and the files they name are
there."""

import ast
import re

import pytest

from helpers import REPO

CONFIGS = sorted(p for p in (REPO / "resnet_jax" / "configs").glob("*.py") if p.name != "__init__.py")
# A path of the repository as the documents write it: experiments/results/degradation_cpu, docs/guide.md, ...
REPO_PATH = re.compile(r"\b((?:experiments|docs|benchmarks|tests|resnet_jax|notebooks)/[\w./-]*\w|README\.md)")


def _user_documents():
  readme = (REPO / "README.md").read_text()
  results = readme.index("## Results")
  yield "README.md", readme[:results] + readme[readme.index("\n## ", results + 1) :]
  for path in [*sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "notebooks").glob("*.ipynb")), REPO / "Makefile"]:
    yield str(path.relative_to(REPO)), path.read_text()


def test_user_documents_take_nothing_from_outside_the_repository():
  """The paper's numbers are docs/paper.md, the data comes from tfds's usual place (TFDS_DATA_DIR) or a variable
  the document names; only the tests reach the project's data folder (helpers.SHARED_DATA)."""
  names = [name for name, _ in _user_documents()]
  assert {"README.md", "docs/guide.md", "docs/paper.md", "notebooks/tour.ipynb", "Makefile"} <= set(names)
  for name, text in _user_documents():
    assert "../shared" not in text and "shared/data" not in text and "PAPER.md" not in text, name


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_docstring_says_what_we_measured(config):
  doc = ast.get_docstring(ast.parse(config.read_text()))
  assert "Ours:" in doc, f"{config.name}: no 'Ours:' line"
  ours = doc[doc.index("Ours:") :]
  for path in REPO_PATH.findall(ours):
    assert (REPO / path).exists(), f"{config.name} names {path}, which does not exist"


def test_docs_name_files_that_exist():
  for name in ("docs/guide.md", "docs/cpu.md", "docs/paper.md", "docs/pods.md"):
    text = (REPO / name).read_text()
    for path in re.findall(r"`([^`\s]+)`", text) + re.findall(r"\]\(([^)#\s]+)\)", text):
      for found in REPO_PATH.findall(path):
        where = REPO / "docs" / found if (REPO / "docs" / found).exists() else REPO / found
        assert where.exists(), f"{name} names {found}, which does not exist"
