"""The README and docs/ stay consistent with the repository and the code.

`make docs` (mkdocs --strict) checks the links inside docs/ and the API names; these tests check what it
cannot: the README's relative links, that mkdocs.yml's nav lists every page, and that the architecture
picture still describes the network it was drawn from.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

REPOSITORY = Path(__file__).resolve().parents[1]
DOCS = REPOSITORY / "docs"
# [text](target) and ![alt](target), up to an optional "title"; code spans and blocks are skipped.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)


def _relative_links(markdown: str) -> list[str]:
    links = LINK.findall(CODE.sub("", markdown))
    return [link for link in links if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", link)]


def _architecture():
    spec = importlib.util.spec_from_file_location("docs_architecture", DOCS / "architecture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_relative_links_point_at_existing_files():
    readme = (REPOSITORY / "README.md").read_text()
    links = _relative_links(readme)
    assert any(link.startswith("docs/") for link in links)
    missing = [link for link in links if not (REPOSITORY / link.split("#")[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_readme_keeps_the_two_setup_commands():
    readme = (REPOSITORY / "README.md").read_text()
    assert "make demo" in readme
    assert "make test" in readme


def test_link_check_finds_a_broken_link():
    assert _relative_links("see [a](docs/a.md), `[b](not/a/link.md)` and [c](https://x.org/c.md)") == [
        "docs/a.md"
    ]


def _nav_pages(entries: list) -> list[str]:
    pages = []
    for entry in entries:
        if isinstance(entry, str):
            pages.append(entry)
        elif isinstance(entry, dict):
            for value in entry.values():
                pages.extend(_nav_pages(value) if isinstance(value, list) else [value])
    return pages


def test_mkdocs_nav_lists_every_docs_page_once():
    config = yaml.safe_load((REPOSITORY / "mkdocs.yml").read_text())
    nav = _nav_pages(config["nav"])
    pages = sorted(str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md"))
    assert sorted(nav) == pages
    assert len(nav) == len(set(nav))


def test_api_pages_name_modules_and_objects_that_exist():
    names = [
        match
        for page in (DOCS / "api").glob("*.md")
        for match in re.findall(r"^::: ([\w.]+)", page.read_text(), re.MULTILINE)
    ]
    assert "sam3d.models.volumetric_sam" in names
    for name in names:
        module, _, attribute = name, "", None
        while True:
            try:
                imported = importlib.import_module(module)
                break
            except ModuleNotFoundError:
                module, _, attribute = module.rpartition(".")
        if attribute:
            assert hasattr(imported, attribute), name


@pytest.fixture(scope="module")
def architecture():
    return _architecture()


@pytest.fixture(scope="module")
def description(architecture):
    # Through JSON, as the picture stores it (tuples become lists).
    return json.loads(json.dumps(architecture.describe()))


def test_architecture_picture_was_drawn_from_the_current_code(architecture, description):
    picture = DOCS / "images" / "architecture.png"
    assert picture.stat().st_size > 10_000
    drawn = architecture.embedded_description(picture)
    assert drawn == description, (
        "docs/images/architecture.png no longer describes the code: redraw it with "
        "`.venv/bin/python docs/architecture.py` and commit it"
    )


def test_architecture_stages_cover_the_network(architecture, description):
    from sam3d.models import build_volumetric_sam

    net = build_volumetric_sam("tiny", crop_size=architecture.CROP)
    stages = description["click_to_mask"]["stages"]
    assert [s["key"] for s in stages] == ["embedding", "blocks", "necks", "prompt_encoder", "mask_decoder"]
    by_key = {s["key"]: s for s in stages}
    # Every parameter is drawn in one stage, with its trainable/frozen state as the builder sets it.
    for state in ("trainable", "frozen"):
        assert sum(s[state] for s in stages) == description["click_to_mask"]["total"][state]
    assert description["click_to_mask"]["total"] == {
        "trainable": sum(p.numel() for p in net.parameters() if p.requires_grad),
        "frozen": sum(p.numel() for p in net.parameters() if not p.requires_grad),
    }
    assert by_key["blocks"]["count"] == len(net.image_encoder.blocks)
    assert len(by_key["necks"]["shape"]) == len(net.image_encoder.necks)
    grid = list(net.config.token_grid)
    assert by_key["embedding"]["shape"] == [1, *grid, net.config.embed_dim]
    assert by_key["prompt_encoder"]["shape"] == [1, net.config.neck_dim, *grid]
    assert description["click_to_mask"]["outputs"]["logits"] == [1, 2, *architecture.CROP]
    training = description["training"]
    assert training["frozen_in_optimiser"] == 0
    # the paper's reference clicks leave the click-label embedding out of the optimiser, at zero
    assert training["label_embedding_frozen"] == net.prompt_encoder.label_embed.weight.numel()
    trainable = description["click_to_mask"]["total"]["trainable"]
    assert sum(training["groups"].values()) == trainable - training["label_embedding_frozen"]
