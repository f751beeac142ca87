"""docs/moving-from-hpe.md against the code: every SwarmCallback option the code accepts and
every one of HPE's is on the page, with a status that matches (an option marked same or
extended is accepted, one of ours is not HPE's); every SWCI command of HPE's is listed, and
those marked same or extended parse, and every command of ours is on the page; every
environment variable marked same, extended or ours is read by the code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from swarmlearn.callback.core import COMMON_OPTIONS
from swarmlearn.swci.grammar import SPECS, ParseError, parse

ROOT = Path(__file__).parent.parent
PAGE = ROOT / "docs" / "moving-from-hpe.md"
ADAPTERS = ("pytorch", "keras", "huggingface", "lightning")

#: HPE's SwarmCallback options (client wheel v2.3.0: swarm.py, tf.py, pyt.py,
#: hf_transformers.py), with the documented alias mlPlatform.
HPE_OPTIONS = {
    "syncFrequency", "minPeers", "trainingContract", "useAdaptiveSync", "adsValData",
    "adsValBatchSize", "checkinModelOnTrainEnd", "nodeWeightage", "mergeMethod", "totalEpochs",
    "logger", "ml_platform", "mlPlatform", "tf", "sess", "model", "lossFunction",
    "lossFunctionArgs", "metricFunction", "metricFunctionArgs", "hfMode",
}  # fmt: skip
#: HPE's SWCI commands (docs/User/Swarm_Learning_Command_Interface.md), by their keywords.
HPE_COMMANDS = {
    "CREATE CONTEXT", "GET CONTEXT INFO", "GET CONTEXT ENV", "GET CONTEXT VERSION",
    "LIST CONTEXTS", "LIST CONTEXT ENV", "SET CONTEXT ENV", "SWITCH CONTEXT", "CREATE CONTRACT",
    "GET CONTRACT INFO", "GET CONTRACT STATUS", "LIST CONTRACTS", "PERFDATA", "RESET CONTRACT",
    "CREATE TASK", "CREATE TASK FROM", "APPEND TASK BODY", "DELETE TASK", "FINALIZE TASK",
    "GET TASK BODY", "GET TASK INFO", "LIST TASKS", "CREATE TASKRUNNER", "ASSIGN TASK",
    "GET TASKRUNNER INFO", "GET TASKRUNNER STATUS", "GET TASKRUNNER PEER STATUS",
    "LIST TASKRUNNERS", "LIST TASKRUNNER PEERS", "RESET TASKRUNNER", "WAIT FOR TASKRUNNER",
    "CD", "LS()", "PWD()", "EXIT", "EXIT ON FAILURE", "LIST NODES", "SLEEP", "WAIT FOR IP",
    "WAIT FOR SERVICE", "HELP",
}  # fmt: skip
#: HPE's environment variables (docs/Install/Environment_variables.md, the FIFOs' names).
HPE_VARIABLES = {
    "SWARM_LOOPBACK", "SL_MAKE_ME_ADMIN", "SL_LEADER_FAILURE_BASE_TIMEOUT",
    "SL_WAIT_FOR_FULL_QUORUM_SECONDS", "SL_RAM_INTENSIVE",
    "SL_MODEL_PARAMS_COMPRESSION_THRESHOLD_MB", "SL_LOG_LEVEL", "SN_I_AM_SENTINEL",
    "SN_START_MINING", "SN_ETH_PORT_EXT", "SWCI_MODE", "SWCI_WEB_PORT", "SWCI_STARTUP_SCRIPT",
    "SWCI_RUN_TASK_MAX_WAIT_TIME", "SWCI_GENERIC_TASK_MAX_WAIT_TIME", "SWOP_PROFILE",
    "SWOP_KEEP_CONTAINERS", "SWARM_ID_CACERT", "SWARM_ID_CAPATH", "SWARM_ID_CERT",
    "SWARM_ID_KEY", "SWARM_SPIFFE_WORKLOAD_API_SOCKET_PATH", "LOGS_DIR", "USR_DIR",
    "SL_REQUEST_CHANNEL", "SL_RESPONSE_CHANNEL",
}  # fmt: skip


def table(section: str) -> dict[str, str]:
    """The first column (without its backticks) and status of each row of a section's table."""
    text = PAGE.read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in body.splitlines():
        match = re.match(
            r"\| `([^`]+)` \| (?:[^|]*\| )?(same|extended|not supported|ours) \|", line
        )
        if match:
            assert match[1] not in rows, f"{match[1]} is listed twice"
            rows[match[1]] = match[2]
    assert rows, f"no table in section {section!r}"
    return rows


def platform_options(adapter: str) -> set[str]:
    """An adapter's ``PLATFORM_OPTIONS``, read from its source (no framework imported)."""
    tree = ast.parse((ROOT / "swarmlearn" / "callback" / f"{adapter}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "PLATFORM_OPTIONS":
            return set(ast.literal_eval(node.value))
    raise AssertionError(f"swarmlearn/callback/{adapter}.py has no PLATFORM_OPTIONS")


def accepted_options() -> set[str]:
    options = {"syncFrequency", "minPeers", "trainingContract", *COMMON_OPTIONS}
    for adapter in ADAPTERS:
        options |= platform_options(adapter)
    return options


def test_every_callback_option_is_on_the_page_with_its_status() -> None:
    rows = table("SwarmCallback options")
    accepted = accepted_options()
    assert set(rows) == accepted | HPE_OPTIONS
    for option, status in rows.items():
        assert (status == "ours") == (option not in HPE_OPTIONS), option
        if status in ("same", "extended", "ours"):
            assert option in accepted, option


def command_words(command: str) -> str:
    """``GET TASKRUNNER PEER STATUS <tr> <peer>`` -> ``GET TASKRUNNER PEER STATUS``."""
    words: list[str] = []
    for word in command.split():
        if word.startswith(("<", "[")) or (words and word in ("TO", "WITH", "TARGET")):
            break
        words.append(word.upper())
    return " ".join(words)


def example(command: str) -> str:
    """A line for the command's pattern: placeholders filled, optional parts left out."""
    line = re.sub(r"\[[^\]]*\]", "", command)
    line = re.sub(r"<n>|<sec>|<idx>", "2", line)
    line = re.sub(r"<ip>", "127.0.0.1", line)
    return re.sub(r"<[^>]+>", "x", line)


def test_every_swci_command_is_on_the_page_and_those_we_have_parse() -> None:
    rows = table("SWCI commands")
    assert {command_words(command) for command in rows} >= HPE_COMMANDS
    for command, status in rows.items():
        if status in ("same", "extended", "ours"):
            parse(example(command))  # a ParseError here: the page promises a command we lack
        else:
            with pytest.raises(ParseError):
                parse(example(command))
    listed = {command_words(command) for command in rows}
    for spec in SPECS:
        assert " ".join(spec.keywords) in listed | {"CREATE TASK FROM"}, spec.pattern


def test_every_environment_variable_we_read_is_on_the_page() -> None:
    rows = table("Environment variables")
    assert set(rows) >= HPE_VARIABLES
    source = "\n".join(p.read_text() for p in (ROOT / "swarmlearn").rglob("*.py"))
    read = set(re.findall(r"\"((?:SWARM|SWOP|SL|SN|SWCI)_[A-Z_]+)\"", source))
    for variable, status in rows.items():
        assert (status == "ours") == (variable not in HPE_VARIABLES), variable
        if status in ("same", "extended", "ours"):
            assert variable in source, f"{variable} is not read anywhere in swarmlearn/"
    assert read <= set(rows), read - set(rows)
