"""SWCI contexts persist in the user's config directory and load back the same."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from swarmlearn.errors import ConfigError
from swarmlearn.swci.contexts import (
    Context,
    Contexts,
    config_dir,
    contexts_path,
    load_context,
    load_contexts,
    save_contexts,
)


def test_config_dir_follows_xdg_and_falls_back_to_home() -> None:
    assert config_dir({"XDG_CONFIG_HOME": "/x/cfg", "HOME": "/h"}) == Path("/x/cfg/swarmlearn")
    assert config_dir({"HOME": "/h"}) == Path("/h/.config/swarmlearn")
    assert config_dir({"XDG_CONFIG_HOME": "  ", "HOME": "/h"}) == Path("/h/.config/swarmlearn")


def test_contexts_round_trip_with_env_identity_and_active(tmp_path: Path) -> None:
    lab = Context("lab", "10.0.0.1", 30304, {}, Path("/p/op.pem"), Path("/p/k.pem"), Path("/p/ca"))
    edge = Context("edge", "::1", 4000)
    saved = Contexts().with_context(lab).with_context(edge).with_env("edge", "MAX_EPOCHS", "5")
    assert saved.active == "lab"  # the first context becomes the active one
    path = save_contexts(saved.switched("edge"), tmp_path)
    assert path == contexts_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_contexts(tmp_path)
    assert loaded.active == "edge"
    assert loaded.get(None).env == {"MAX_EPOCHS": "5"}
    assert loaded.get(None).url == "https://[::1]:4000"
    assert load_context("lab", tmp_path) == lab
    assert lab.identity_paths().cert == Path("/p/op.pem")
    assert json.loads(path.read_text())["version"] == 1


def test_no_file_means_no_contexts_and_a_clear_error(tmp_path: Path) -> None:
    assert load_contexts(tmp_path) == Contexts()
    with pytest.raises(ConfigError, match="no active context: CREATE CONTEXT"):
        load_context(None, tmp_path)


def test_unknown_context_suggests_the_closest(tmp_path: Path) -> None:
    save_contexts(Contexts().with_context(Context("mnist", "sn1")), tmp_path)
    with pytest.raises(ConfigError, match=r"no context 'mnits'; did you mean 'mnist'\? \(known"):
        load_context("mnits", tmp_path)


def test_a_context_without_identity_says_what_is_missing() -> None:
    with pytest.raises(ConfigError, match="context 'bare' has no cert, key, cacert"):
        Context("bare", "sn1").identity_paths()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"contexts": []}', "expected an object with a 'contexts' object"),
        ('{"contexts": {"a": {"port": 1}}}', "context 'a': host must be a non-empty string"),
        ('{"contexts": {"a": {"host": "h", "port": 0}}}', "context 'a': port must be 1..65535"),
        ('{"contexts": {"a": {"host": "h", "env": {"x": 1}}}}', "env must map strings"),
        ('{"contexts": {"a": {"host": "h", "cert": 5}}}', "cert must be a path or null"),
        ('{"contexts": {}, "active": "gone"}', "active context 'gone' is not one of"),
    ],
)
def test_a_damaged_file_is_one_line_naming_it(tmp_path: Path, document: str, message: str) -> None:
    contexts_path(tmp_path).write_text(document)
    with pytest.raises(ConfigError, match=message) as caught:
        load_contexts(tmp_path)
    assert str(contexts_path(tmp_path)) in str(caught.value)
    assert "\n" not in str(caught.value)
