"""ARCHITECTURE.md stays true: the paths it names exist, every package has a
row in its layer table, and every pysyncobj hook the replica wraps, patches,
overrides or writes is named in its hook table."""

from __future__ import annotations

import pathlib
import re

from test_layers import LAYERS

from vault_raft.raft import _pysyncobj as PS

REPO = pathlib.Path(__file__).resolve().parent.parent
DOC = (REPO / "ARCHITECTURE.md").read_text()


def test_every_named_module_exists():
    named = set(re.findall(r"`((?:[a-z_]+/)+[a-z_]+\.py)`", DOC))
    assert named
    missing = [n for n in sorted(named)
               if not (REPO / "vault_raft" / n).exists() and not (REPO / n).exists()]
    assert missing == []


def test_every_package_has_a_row():
    rows = {cell for line in DOC.splitlines() if line.startswith("| ")
            for cell in re.findall(r"`([a-z_]+)`", line.split("|")[2])}
    assert {pkg for layer in LAYERS for pkg in layer} <= rows


def test_every_changed_hook_is_named():
    changed = [h.name for h in PS.INVENTORY
               if any(u in h.use for u in ("wrap", "patch", "override", "write"))]
    short = [n.split("__", 1)[1] if n.startswith("_") and "__" in n[1:] else n for n in changed]
    assert [n for n in short if f"`__{n}`" not in DOC and f"`{n}`" not in DOC
            and f".__{n}`" not in DOC] == []
