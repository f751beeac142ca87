"""SWCI's parser as a table: every command of the grammar, and bad lines with their one line."""

from __future__ import annotations

import pytest

from swarmlearn.swci import commands as c
from swarmlearn.swci.grammar import SPECS, ParseError, completions, help_text, parse, usage

TR = "defaulttaskbb.taskdb.sml.hpe"

GOOD: list[tuple[str, c.Command]] = [
    ("CREATE CONTEXT lab WITH IP 10.0.0.1", c.CreateContext("lab", "10.0.0.1", 30304)),
    ("create context Lab with ip sn1 4000", c.CreateContext("Lab", "sn1", 4000)),
    ("SWITCH CONTEXT Lab", c.SwitchContext("Lab")),
    ("LIST CONTEXTS", c.ListContexts()),
    ("GET CONTEXT INFO", c.GetContextInfo(None)),
    ("get context info lab", c.GetContextInfo("lab")),
    ("SET CONTEXT ENV lab MAX_EPOCHS 5", c.SetContextEnv("lab", "MAX_EPOCHS", "5")),
    ("set context env lab NOTE 'two words'", c.SetContextEnv("lab", "NOTE", "two words")),
    ("GET CONTEXT ENV lab MAX_EPOCHS", c.GetContextEnv("lab", "MAX_EPOCHS")),
    ("LIST CONTEXT ENV lab", c.ListContextEnv("lab")),
    ("LIST NODES", c.ListNodes()),
    ("list nodes", c.ListNodes()),
    ("CREATE CONTRACT defaultbb.cqdb.sml.hpe", c.CreateContract("defaultbb.cqdb.sml.hpe")),
    ("create contract lab with merge coordmedian", c.CreateContract("lab", "coordmedian")),
    ("GET CONTRACT INFO lab", c.GetContractInfo("lab")),
    ("GET CONTRACT STATUS lab", c.GetContractStatus("lab")),
    ("LIST CONTRACTS", c.ListContracts()),
    ("PERFDATA lab", c.Perfdata("lab")),
    ("RESET CONTRACT lab", c.ResetContract("lab")),
    ("LIST ROUNDS", c.ListRounds(None)),
    ("list rounds lab", c.ListRounds("lab")),
    ("CREATE TASK FROM taskdefs/Run.yaml", c.CreateTaskFrom("taskdefs/Run.yaml")),
    ("FINALIZE TASK run", c.FinalizeTask("run")),
    ("GET TASK INFO run", c.GetTaskInfo("run")),
    ("GET TASK BODY run", c.GetTaskBody("run")),
    ("LIST TASKS", c.ListTasks()),
    ("DELETE TASK run", c.DeleteTask("run")),
    ("CREATE TASKRUNNER tr1", c.CreateTaskRunner("tr1")),
    (f"ASSIGN TASK run TO {TR} WITH 2 PEERS", c.AssignTask("run", TR, 2, "")),
    ("assign task run to tr1 with all peers", c.AssignTask("run", "tr1", 0, "")),
    ("ASSIGN TASK run TO tr1 TARGET AbC123", c.AssignTask("run", "tr1", 0, "AbC123")),
    ("GET TASKRUNNER STATUS tr1", c.GetTaskRunnerStatus("tr1")),
    ("GET TASKRUNNER INFO tr1", c.GetTaskRunnerInfo("tr1")),
    ("GET TASKRUNNER PEER STATUS tr1 0", c.GetTaskRunnerPeerStatus("tr1", "0")),
    ("LIST TASKRUNNERS", c.ListTaskRunners()),
    ("LIST TASKRUNNER PEERS tr1", c.ListTaskRunnerPeers("tr1")),
    ("RESET TASKRUNNER tr1", c.ResetTaskRunner("tr1")),
    ("WAIT FOR TASKRUNNER tr1", c.WaitForTaskRunner("tr1", None)),
    ("wait for taskrunner tr1 90.5", c.WaitForTaskRunner("tr1", 90.5)),
    ("WAIT FOR IP sn1", c.WaitForIp("sn1", 30304, 360)),
    ("wait for ip sn1 4000", c.WaitForIp("sn1", 4000, 360)),
    ("WAIT FOR IP 10.0.0.1 4000 3", c.WaitForIp("10.0.0.1", 4000, 3)),
    ("SLEEP 15", c.Sleep(15.0)),
    ("sleep 0.25", c.Sleep(0.25)),
    ("EXIT ON FAILURE", c.ExitOnFailure(True)),
    ("exit on failure on", c.ExitOnFailure(True)),
    ("EXIT ON FAILURE Off", c.ExitOnFailure(False)),
    ("EXIT", c.Exit()),
    ("HELP", c.Help(())),
    ("help assign task", c.Help(("assign", "task"))),
    ("CD /platform/swarm/usr", c.Cd("/platform/swarm/usr")),
    ("PWD", c.Pwd()),
]


@pytest.mark.parametrize(("line", "expected"), GOOD, ids=[line for line, _ in GOOD])
def test_every_command_parses_to_its_typed_value(line: str, expected: c.Command) -> None:
    assert parse(line) == expected


def test_the_table_covers_every_form_of_the_grammar() -> None:
    covered = {type(command) for _, command in GOOD}
    assert covered == {spec.build for spec in SPECS}
    assert len(GOOD) >= len(SPECS)


BAD = [
    ("", "empty command (HELP lists the commands)"),
    ("CRAETE CONTEXT x", "unknown command 'CRAETE': did you mean CREATE? (HELP lists"),
    ("frobnicate", "unknown command 'frobnicate' (HELP lists the commands)"),
    (
        "create contex x",
        "CREATE: expected CONTEXT, CONTRACT, TASK or TASKRUNNER after 'create', got 'contex': "
        "did you mean CONTEXT? (HELP CREATE)",
    ),
    (
        "CREATE CONTEXT lab WITH IP",
        "CREATE CONTEXT: expected <host> after 'IP', got nothing (HELP CREATE CONTEXT)",
    ),
    (
        "CREATE CONTEXT lab WITH IP h 70000",
        "CREATE CONTEXT: expected <port> (a port 1..65535) or the end of the command after 'h', "
        "got '70000' (HELP CREATE CONTEXT)",
    ),
    (
        "assign task t to r wiht 3 peers",
        "ASSIGN TASK: expected TARGET or WITH after 'r', got 'wiht': did you mean WITH? "
        "(HELP ASSIGN TASK)",
    ),
    (
        "ASSIGN TASK t TO r WITH 0 PEERS",
        "ASSIGN TASK: expected <peers> (a whole number >= 1) or ALL after 'WITH', got '0' "
        "(HELP ASSIGN TASK)",
    ),
    (
        "ASSIGN TASK t TO r WITH 2 PEER",
        "ASSIGN TASK: expected PEERS after '2', got 'PEER': did you mean PEERS? (HELP ASSIGN TASK)",
    ),
    ("LIST NODES now", "LIST NODES: unexpected 'now' after 'NODES' (HELP LIST NODES)"),
    (
        "get taskrunner statu tr1",
        "GET TASKRUNNER: expected INFO, PEER or STATUS after 'taskrunner', got 'statu': "
        "did you mean STATUS? (HELP GET TASKRUNNER)",
    ),
    (
        "WAIT FOR TASKRUNNER tr1 0",
        "WAIT FOR TASKRUNNER: expected <timeout_s> (a number of seconds > 0) or the end of the "
        "command after 'tr1', got '0' (HELP WAIT FOR TASKRUNNER)",
    ),
    (
        "WAIT FOR IP sn1 4000 0",
        "WAIT FOR IP: expected <retries> (a whole number >= 1) or the end of the command after "
        "'4000', got '0' (HELP WAIT FOR IP)",
    ),
    (
        "SLEEP soon",
        "SLEEP: expected <seconds> (a number of seconds >= 0) after 'SLEEP', got 'soon' "
        "(HELP SLEEP)",
    ),
    (
        "EXIT ON FAILURE maybe",
        "EXIT ON FAILURE: expected <on> (ON or OFF) or the end of the command after 'FAILURE', "
        "got 'maybe' (HELP EXIT ON FAILURE)",
    ),
    ("EXIT NOW", "EXIT: expected ON or the end of the command after 'EXIT', got 'NOW' (HELP EXIT)"),
    ("PERFDATA", "PERFDATA: expected <name> after 'PERFDATA', got nothing (HELP PERFDATA)"),
    ("SET CONTEXT ENV lab 'unclosed", 'cannot split "SET CONTEXT ENV lab \'unclosed" into words'),
]


@pytest.mark.parametrize(("line", "message"), BAD, ids=[line or "empty" for line, _ in BAD])
def test_a_bad_command_is_one_line_saying_what_was_expected(line: str, message: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse(line)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_help_lists_every_command_and_explains_one() -> None:
    everything = help_text()
    assert len(everything.splitlines()) == len(SPECS)
    assert "WAIT FOR IP <host> [<port>] [<retries>]" in everything
    assert "EXIT ON FAILURE [ON|OFF]" in everything
    assign = help_text(["assign", "TASK"]).splitlines()
    assert [line.split("  ")[0] for line in assign] == [
        "ASSIGN TASK <task> TO <runner> WITH <peers> PEERS",
        "ASSIGN TASK <task> TO <runner> WITH ALL PEERS",
        "ASSIGN TASK <task> TO <runner> TARGET <target>",
    ]
    assert all(usage(s) in everything for s in SPECS)
    with pytest.raises(ParseError, match="HELP: no command starts with 'ASIGN': did you mean"):
        help_text(["ASIGN"])


@pytest.mark.parametrize(
    ("before", "prefix", "expected"),
    [
        ([], "cr", ["CREATE"]),
        ([], "LIST", ["LIST"]),
        (["create"], "", ["CONTEXT", "CONTRACT", "TASK", "TASKRUNNER"]),
        (["list"], "task", ["TASKRUNNER", "TASKRUNNERS", "TASKS"]),
        (["create", "context", "lab"], "", ["WITH"]),
        (["assign", "task", "t", "to", "r"], "", ["TARGET", "WITH"]),
        (["assign", "task", "t", "to", "r", "with"], "a", ["ALL"]),
        (["exit"], "", ["ON"]),
        (["exit", "on", "failure"], "o", ["OFF", "ON"]),
        (["wait", "for", "ip", "sn1"], "", []),
    ],
)
def test_completion_offers_the_keywords_that_may_come_next(
    before: list[str], prefix: str, expected: list[str]
) -> None:
    assert completions(before, prefix) == expected
