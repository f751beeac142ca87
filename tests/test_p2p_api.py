"""The p2p package's public API: every re-exported name is the defining module's object, and
importing the package leaves the service, gossip and transfer modules unimported."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

import swarmlearn.p2p as p2p
from swarmlearn.p2p import _LAZY


def test_every_public_name_resolves_to_its_defining_object() -> None:
    assert len(p2p.__all__) == len(set(p2p.__all__))
    for name in p2p.__all__:
        value = getattr(p2p, name)
        module = getattr(value, "__module__", None)
        if module is not None and module.startswith("swarmlearn.p2p."):
            assert getattr(importlib.import_module(module), name) is value, name


def test_lazy_names_are_public_and_come_from_their_module() -> None:
    for module, names in _LAZY.items():
        defining = importlib.import_module(f"swarmlearn.p2p.{module}")
        for name in names:
            assert name in p2p.__all__, name
            assert getattr(p2p, name) is getattr(defining, name), name


def test_an_unknown_name_is_an_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        _ = p2p.NoSuchThing  # type: ignore[attr-defined]
    assert "P2PService" in dir(p2p)


@pytest.mark.process
def test_importing_the_package_does_not_import_the_service() -> None:
    code = (
        "import json, sys, swarmlearn.p2p as p; "
        "before = sorted(m for m in sys.modules if m.startswith('swarmlearn.p2p.')); "
        "p.ServiceConfig; "
        "print(json.dumps([before, 'swarmlearn.p2p.service' in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    before, service_after = json.loads(out.stdout)
    lazy = ("service", "service_blobs", "gossip", "bulk", "node", "transport")
    for name in lazy:  # the transport too: the sans-IO cores import this package
        assert f"swarmlearn.p2p.{name}" not in before
    assert "swarmlearn.p2p.wire" in before
    assert service_after
