"""The README's layout section is the tree as it is: every package is drawn, every module named.

The block under ``## Layout`` draws one line per folder (indented two spaces per level) and
names that folder's modules in the description beside it. A package added, moved or removed
without the README following fails here, naming what is missing or stale.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "swarmlearn"
# Sub-packages whose modules the README describes by role instead of one by one.
SUMMARISED = {"swarmlearn/swci", "swarmlearn/dashboard", "swarmlearn/demo", "swarmlearn/sim"}


def _layout_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Layout\n") :]
    opening = section.index("```\n") + 4
    return section[opening : section.index("\n```", opening)].splitlines()


def _drawn() -> dict[str, str]:
    """Folder path (``swarmlearn/roles/sl``) -> its description, from the README's block."""
    folders: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    current = ""
    for line in _layout_block():
        match = re.match(r"^( *)(\w+)/(?:\s+(.*))?$", line.rstrip())
        if match and len(match.group(1)) < 8:
            depth = len(match.group(1)) // 2
            while stack and stack[-1][0] >= depth:
                stack.pop()
            parent = stack[-1][1] if stack else ""
            current = f"{parent}/{match.group(2)}" if parent else match.group(2)
            stack.append((depth, current))
            folders[current] = match.group(3) or ""
        elif current and line.startswith(" " * 4):
            folders[current] += " " + line.strip()
    return folders


def _packages() -> list[Path]:
    return sorted(p.parent for p in PACKAGE.rglob("__init__.py") if "__pycache__" not in str(p))


def test_every_package_is_drawn_and_every_drawn_folder_exists() -> None:
    drawn = _drawn()
    for package in _packages():
        name = package.relative_to(ROOT).as_posix()
        if name != "swarmlearn":
            assert name in drawn, f"README layout: {name}/ is not drawn"
    for name in drawn:
        assert (ROOT / name).is_dir(), f"README layout draws {name}/, which does not exist"


def test_every_module_is_named_beside_its_folder() -> None:
    drawn = _drawn()
    for package in _packages():
        name = package.relative_to(ROOT).as_posix()
        if name == "swarmlearn" or name in SUMMARISED:
            continue
        words = set(re.findall(r"\w+", drawn[name]))
        for module in sorted(package.glob("*.py")):
            if module.stem in ("__init__", "__main__"):
                continue
            assert module.stem in words, f"README layout: {name}/ does not name {module.stem}"
