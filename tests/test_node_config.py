"""swarm-node's configuration: a TOML file, HPE's flag names, flags over the file, clear errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from swarmlearn.cli.common import ArgumentParser
from swarmlearn.errors import ConfigError
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import Role
from swarmlearn.roles.node.config import resolve
from swarmlearn.roles.node.daemon import add_node_arguments, main, node_options


def parse(*argv: str) -> argparse.Namespace:
    parser = ArgumentParser(prog="swarm-node")
    add_node_arguments(parser)
    return resolve(parser.parse_args(list(argv)))


def test_the_file_fills_what_flags_leave_and_flags_win(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        'listen = "10.0.0.6:30303"\n'
        'data-dir = "/var/lib/swarm"\n'
        'sentinel-ip = "10.0.0.5"\n'
        'api = "none"\n'
    )
    args = parse("--config", str(config), "--listen", "127.0.0.1:4000")
    options = node_options(args)
    assert options.listen == ("127.0.0.1", 4000)  # the flag wins
    assert options.data_dir == Path("/var/lib/swarm")
    assert options.bootstrap == ("10.0.0.5", 30303)  # HPE's --sentinel-ip, default port
    assert options.api is None
    assert parse().api == "127.0.0.1:30304"  # defaults when neither says


def test_round_lanes_ride_the_listen_port_unless_given_a_port_of_their_own(
    tmp_path: Path,
) -> None:
    assert node_options(parse()).lane_port is None  # on --listen's port
    assert node_options(parse("--listen", "10.0.0.6:30303")).lane_port is None
    assert node_options(parse("--lane-port", "none")).lane_port is None
    assert node_options(parse("--lane-port", "30305")).lane_port == 30305  # HPE's, if asked
    assert node_options(parse("--lane-port", "0")).lane_port == 0  # any free port
    config = tmp_path / "node.toml"
    config.write_text("lane-port = 31005\n")
    assert node_options(parse("--config", str(config))).lane_port == 31005
    config.write_text('lane-port = "none"\n')
    assert node_options(parse("--config", str(config))).lane_port is None
    with pytest.raises(ConfigError, match="--lane-port 70000: must be a port number"):
        node_options(parse("--lane-port", "70000"))


def test_hpe_names_on_the_command_line() -> None:
    options = node_options(
        parse("--data-dir", "/d", "--sentinel-ip", "h", "--sentinel-port", "31000")
    )
    assert (options.data_dir, options.bootstrap) == (Path("/d"), ("h", 31000))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('lissen = "x"', "unknown key 'lissen'; valid: "),
        ("sentinel = 1", "sentinel must be true or false"),
        ('sentinel-port = "x"', "sentinel-port must be a port number"),
        ("listen = [", "not valid TOML"),
        ('log-level = "loud"', "log-level 'loud' is not one of: debug, info, warning, error"),
    ],
)
def test_config_mistakes_name_the_key(tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "node.toml"
    config.write_text(content + "\n")
    with pytest.raises(ConfigError, match=message):
        parse("--config", str(config))


def test_flag_mistakes() -> None:
    with pytest.raises(ConfigError, match="--sentinel-port needs --sentinel-ip"):
        parse("--sentinel-port", "1")
    with pytest.raises(ConfigError, match="name the same thing"):
        parse("--sentinel-ip", "h", "--bootstrap", "h:1")
    with pytest.raises(ConfigError, match=r"config .*missing\.toml: file does not exist"):
        parse("--config", "/missing.toml")
    with pytest.raises(ConfigError, match="on every address, the node needs --advertise"):
        node_options(parse("--listen", "0.0.0.0:30303"))
    assert node_options(parse("--listen", "0.0.0.0:1", "--advertise", "10.0.0.5:1")).listen == (
        "0.0.0.0",
        1,
    )


def test_a_node_checks_its_identity_from_a_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = create_ca(tmp_path)
    issued = issue_certificate(ca, "n", tmp_path, hosts=[], roles=[Role.SN])
    config = tmp_path / "node.toml"
    lines = [f'cert = "{issued.cert_path}"', f'key = "{issued.key_path}"']
    config.write_text("\n".join([*lines, f'cacert = "{tmp_path / "ca.pem"}"', ""]))
    assert main(["--config", str(config), "--check"]) == 0
    assert capsys.readouterr().out.startswith("identity ok: n, peer id ")
