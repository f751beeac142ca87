"""SWOP's two YAML files: the task definition and the SWOP profile (HPE's schemas where they apply).

Both are checked field by field; the first mistake is a :class:`ConfigError` of one line that
names the file, the field path (``Body.OpsList[1].Operation``) and what is valid. A task
file becomes a :class:`CreateTask` (its Body as canonical JSON) for the ledger; the same body
checks run again when a SWOP executes it, so a task cannot reach a SWOP half-valid.

Task: ``Name``, ``TaskType``, ``Author``, ``Prereq``, ``Outcome``, ``Body``; Body by type:

- ``RUN_SWARM``: ``Command`` (the program and its arguments), ``Entrypoint`` (default
  ``python3``), ``WorkingDir``, ``Envvars`` (a list of one-key maps, or a map),
  ``PrivateContent`` (accepted: the private data path reaches the program as
  ``SWARM_PRIVATE_DATA``), ``MaxRunTimeS`` (default one day).
- ``MAKE_SWARM_USER_CONTENT``: ``ContentType`` (``BUILDCONTENT``: one copy,
  ``SWARMCONTENT``: one per node of the profile), ``OpsList`` of 1-20 ``{Operation:
  DOWNLOAD|COPY|EXTRACT, Target: a local path or file:// URI, Options: [{Out: path}]}``.
- ``MAKE_USER_ENV`` (our counterpart of HPE's MAKE_USER_CONTAINER): ``Requirements`` (pip
  requirement lines), ``PipOptions``, ``Inherit`` (default true: the environment also sees the
  SWOP's own packages, swarmlearn included), ``TimeoutS``.

Profile: ``groupname``, ``taskrunner``, ``nodes`` (each ``slnodedef`` with ``idx`` and
``privatedata.src``; ``identity``, ``slhostname``, ``slhostip``, ``slport``, ``slenvvars``,
``usrhostname``, ``usrenvvars`` and our ``nodesocket``), ``envvars``, ``apisrv``. HPE's
container-only keys (``policyuri``, ``resourcemgr``, ``network``, ``apls``, ``dns``, labels,
network and container options) are accepted and have nothing to act on here.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from swarmlearn.consensus.ledger.tasks import (
    ROOT_TASK,
    TASK_TYPES,
    TEXT_CHARS_MAX,
    CreateTask,
    canonical_json,
)
from swarmlearn.errors import ConfigError

TASK_KEYS = ("Name", "TaskType", "Author", "Prereq", "Outcome", "Body")
BODY_KEYS = {
    "RUN_SWARM": (
        "Command",
        "Entrypoint",
        "WorkingDir",
        "Envvars",
        "PrivateContent",
        "MaxRunTimeS",
    ),
    "MAKE_SWARM_USER_CONTENT": ("ContentType", "OpsList"),
    "MAKE_USER_ENV": ("Requirements", "PipOptions", "Inherit", "TimeoutS"),
}
CONTENT_TYPES = ("BUILDCONTENT", "SWARMCONTENT")
OPERATIONS = ("DOWNLOAD", "COPY", "EXTRACT")
OPS_MAX = 20
RUN_MAX_S = 86_400.0
ENV_TIMEOUT_S = 1_800.0
PROFILE_KEYS = ("groupname", "taskrunner", "nodes", "envvars", "apisrv")
CONTAINER_ONLY = ("policyuri", "resourcemgr", "network", "apls", "dns")
NODE_KEYS = (
    "idx",
    "privatedata",
    "identity",
    "slhostname",
    "slhostip",
    "slport",
    "slenvvars",
    "usrhostname",
    "usrenvvars",
    "nodesocket",
)
NODE_CONTAINER_ONLY = (
    "sllabels",
    "slnetworkopts",
    "slfsservice",
    "usrlabels",
    "usrnetworkopts",
    "usrcontaineropts",
)
ID_TYPES = ("KEY", "CERT", "CACERT", "CAPATH", "SPIFFE_SOCKETPATH")
MOUNT_TYPES = ("BIND", "VOLUME")


@dataclass(frozen=True)
class RunSwarmBody:
    argv: tuple[str, ...]  # entrypoint and command, split as a shell would
    working_dir: str
    env: dict[str, str]
    max_run_s: float


@dataclass(frozen=True)
class ContentOp:
    operation: str
    source: Path
    out: str  # relative to the content directory; "" keeps the source's name


@dataclass(frozen=True)
class UserContentBody:
    content_type: str
    ops: tuple[ContentOp, ...]


@dataclass(frozen=True)
class UserEnvBody:
    requirements: tuple[str, ...]
    pip_options: tuple[str, ...]
    inherit: bool
    timeout_s: float


TaskBody = RunSwarmBody | UserContentBody | UserEnvBody


@dataclass(frozen=True)
class NodeDef:
    idx: int
    private_data: Path
    slhostname: str
    env: dict[str, str]  # slenvvars then usrenvvars
    socket: Path | None  # the SL endpoint the program pairs with; None: this node's own
    identity: dict[str, Path]


@dataclass(frozen=True)
class Profile:
    path: Path
    groupname: str
    taskrunner: str
    env: dict[str, str]
    nodes: tuple[NodeDef, ...]
    apisrv: tuple[str, int] | None


class _Check:
    """Field checks that name the file and the field path in their one-line error."""

    def __init__(self, what: str) -> None:
        self.what = what

    def fail(self, where: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.what}: {where}: {problem}")

    def mapping(
        self, value: Any, where: str, keys: tuple[str, ...], ignored: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping of {', '.join(keys)}")
        for key in value:
            if key not in keys and key not in ignored:
                raise self.fail(
                    f"{where}.{key}" if where else str(key),
                    f"unknown key; valid: {', '.join(keys)}",
                )
        return {k: v for k, v in value.items() if k in keys}

    def text(self, value: Any, where: str, *, chars_max: int = TEXT_CHARS_MAX) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float) or value == "":
            raise self.fail(where, "expected a non-empty string")
        text = str(value)
        if len(text) > chars_max:
            raise self.fail(where, f"at most {chars_max} characters")
        return text

    def choice(self, value: Any, where: str, valid: tuple[str, ...]) -> str:
        if value not in valid:
            raise self.fail(where, f"{value!r} is not one of: {', '.join(valid)}")
        return str(value)

    def number(self, value: Any, where: str, low: float, high: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not low < value <= high:
            raise self.fail(where, f"expected a number of seconds in ({low:g}, {high:g}]")
        return float(value)

    def texts(self, value: Any, where: str, count_max: int = 200) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or len(value) > count_max:
            raise self.fail(where, f"expected a list of at most {count_max} strings")
        return tuple(
            self.text(item, f"{where}[{i}]", chars_max=1000) for i, item in enumerate(value)
        )

    def env(self, value: Any, where: str) -> dict[str, str]:
        """HPE's ``- NAME: value`` lists, or a plain mapping; values become strings."""
        if value is None:
            return {}
        items = value if isinstance(value, list) else [value]
        found: dict[str, str] = {}
        for i, item in enumerate(items):
            place = f"{where}[{i}]" if isinstance(value, list) else where
            if not isinstance(item, dict):
                raise self.fail(place, "expected NAME: value")
            for name, text in item.items():
                if not isinstance(name, str) or not name.isidentifier():
                    raise self.fail(place, f"{name!r} is not a valid variable name")
                if isinstance(text, dict | list):
                    raise self.fail(f"{place}.{name}", "expected a single value")
                found[name] = "" if text is None else str(text)  # True stays "True", as in HPE
        return found


def _read_yaml(path: Path, what: str) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what}: file does not exist") from None
    except OSError as error:
        raise ConfigError(f"{what}: cannot be read ({error.strerror})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        place = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{what}: not valid YAML{place}") from None


def load_task_yaml(path: Path | str) -> CreateTask:
    """The ``CreateTask`` a task definition file describes (SWCI's CREATE TASK FROM)."""
    path = Path(path)
    check = _Check(f"task {path}")
    raw = check.mapping(_read_yaml(path, f"task {path}"), "", TASK_KEYS)
    for key in TASK_KEYS:
        if key not in raw:
            raise check.fail(key, "missing (required: " + ", ".join(TASK_KEYS) + ")")
    name = check.text(raw["Name"], "Name")
    if " " in name or name == ROOT_TASK:
        raise check.fail("Name", f"no spaces, and not {ROOT_TASK}")
    task_type = check.choice(raw["TaskType"], "TaskType", TASK_TYPES)
    body = raw["Body"]
    parse_body(task_type, body, check)
    try:
        body_text = canonical_json(body)
    except (TypeError, ValueError):
        raise check.fail("Body", "only text, numbers, true/false, lists and mappings") from None
    return CreateTask(
        name=name,
        task_type=task_type,
        author=check.text(raw["Author"], "Author"),
        prereq=check.text(raw["Prereq"], "Prereq"),
        outcome=check.text(raw["Outcome"], "Outcome"),
        body=body_text,
    )


def parse_body(task_type: str, body: Any, check: _Check | None = None) -> TaskBody:
    """The checked body of a task of ``task_type`` (a task file's or the ledger's)."""
    check = check or _Check(f"{task_type} task")
    fields = check.mapping(body, "Body", BODY_KEYS[task_type])
    if task_type == "RUN_SWARM":
        return _run_swarm(fields, check)
    if task_type == "MAKE_SWARM_USER_CONTENT":
        return _user_content(fields, check)
    return UserEnvBody(
        requirements=check.texts(fields.get("Requirements"), "Body.Requirements"),
        pip_options=check.texts(fields.get("PipOptions"), "Body.PipOptions"),
        inherit=_flag(fields.get("Inherit", True), "Body.Inherit", check),
        timeout_s=check.number(fields.get("TimeoutS", ENV_TIMEOUT_S), "Body.TimeoutS", 0, 86_400),
    )


def _flag(value: Any, where: str, check: _Check) -> bool:
    if not isinstance(value, bool):
        raise check.fail(where, "expected true or false")
    return value


def _run_swarm(fields: dict[str, Any], check: _Check) -> RunSwarmBody:
    if "Command" not in fields:
        raise check.fail("Body.Command", "missing: the program to run, e.g. model/train.py")
    command = check.text(fields["Command"], "Body.Command", chars_max=1000)
    entrypoint = check.text(fields.get("Entrypoint", "python3"), "Body.Entrypoint")
    try:
        argv = (*shlex.split(entrypoint), *shlex.split(command))
    except ValueError as error:
        raise check.fail("Body.Command", f"cannot be split into arguments ({error})") from None
    if "PrivateContent" in fields:
        check.text(fields["PrivateContent"], "Body.PrivateContent")
    working_dir = fields.get("WorkingDir")
    return RunSwarmBody(
        argv=argv,
        working_dir="" if working_dir is None else check.text(working_dir, "Body.WorkingDir"),
        env=check.env(fields.get("Envvars"), "Body.Envvars"),
        max_run_s=check.number(fields.get("MaxRunTimeS", RUN_MAX_S), "Body.MaxRunTimeS", 0, 1e7),
    )


def _user_content(fields: dict[str, Any], check: _Check) -> UserContentBody:
    content_type = check.choice(
        fields.get("ContentType", "BUILDCONTENT"), "Body.ContentType", CONTENT_TYPES
    )
    ops = fields.get("OpsList")
    if not isinstance(ops, list) or not 1 <= len(ops) <= OPS_MAX:
        raise check.fail("Body.OpsList", f"expected a list of 1..{OPS_MAX} operations")
    found = []
    for i, op in enumerate(ops):
        where = f"Body.OpsList[{i}]"
        op = check.mapping(op, where, ("Operation", "Target", "Options"))
        operation = check.choice(op.get("Operation"), f"{where}.Operation", OPERATIONS)
        target = check.text(op.get("Target"), f"{where}.Target", chars_max=1000)
        if "://" in target and not target.startswith("file://"):
            raise check.fail(f"{where}.Target", "only local paths and file:// URIs (no network)")
        out = ""
        for j, option in enumerate(op.get("Options") or []):
            option = check.mapping(option, f"{where}.Options[{j}]", ("Out",))
            out = check.text(option.get("Out"), f"{where}.Options[{j}].Out")
        if Path(out).is_absolute() or ".." in Path(out).parts:
            raise check.fail(f"{where}.Options.Out", "a relative path inside the content")
        found.append(ContentOp(operation, Path(target.removeprefix("file://")), out))
    return UserContentBody(content_type, tuple(found))


def load_profile(path: Path | str) -> Profile:
    """The SWOP profile at ``path``; relative paths in it are relative to its directory."""
    path = Path(path)
    check = _Check(f"profile {path}")
    raw = check.mapping(_read_yaml(path, f"profile {path}"), "", PROFILE_KEYS, CONTAINER_ONLY)
    for key in ("groupname", "taskrunner", "nodes"):
        if key not in raw:
            raise check.fail(key, "missing (required: groupname, taskrunner, nodes)")
    nodes = raw["nodes"]
    if not isinstance(nodes, list) or not nodes:
        raise check.fail("nodes", "expected a list of one or more - slnodedef: entries")
    found = tuple(_node(item, f"nodes[{i}]", path.parent, check) for i, item in enumerate(nodes))
    seen: set[int] = set()
    for i, node in enumerate(found):
        if node.idx in seen:
            raise check.fail(f"nodes[{i}].slnodedef.idx", f"{node.idx} is used twice")
        seen.add(node.idx)
    return Profile(
        path=path,
        groupname=check.text(raw["groupname"], "groupname"),
        taskrunner=check.text(raw["taskrunner"], "taskrunner"),
        env=check.env(raw.get("envvars"), "envvars"),
        nodes=found,
        apisrv=_apisrv(raw.get("apisrv"), check),
    )


def _apisrv(value: Any, check: _Check) -> tuple[str, int] | None:
    if value is None:
        return None
    locator = check.mapping(check.mapping(value, "apisrv", ("locator",)).get("locator"),
                            "apisrv.locator", ("host", "port", "service"))  # fmt: skip
    host = check.text(locator.get("host"), "apisrv.locator.host")
    port = locator.get("port", 30304)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise check.fail("apisrv.locator.port", "expected a port number (1..65535)")
    return host, port


def _node(item: Any, where: str, base: Path, check: _Check) -> NodeDef:
    outer = check.mapping(item, where, ("slnodedef",))
    where += ".slnodedef"
    node = check.mapping(outer.get("slnodedef"), where, NODE_KEYS, NODE_CONTAINER_ONLY)
    idx = node.get("idx")
    if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
        raise check.fail(f"{where}.idx", "expected a whole number >= 0")
    private = check.mapping(node.get("privatedata"), f"{where}.privatedata", ("src", "mType"))
    source = check.text(private.get("src"), f"{where}.privatedata.src", chars_max=1000)
    check.choice(private.get("mType", "BIND"), f"{where}.privatedata.mType", MOUNT_TYPES)
    identity: dict[str, Path] = {}
    for i, attribute in enumerate(node.get("identity") or []):
        place = f"{where}.identity[{i}].attribute"
        attr = check.mapping(
            check.mapping(attribute, f"{where}.identity[{i}]", ("attribute",)).get("attribute"),
            place,
            ("aType", "mType", "src", "tgt", "subPath"),
        )
        kind = check.choice(attr.get("aType"), f"{place}.aType", ID_TYPES)
        identity[kind] = base / check.text(attr.get("src"), f"{place}.src", chars_max=1000)
    port = node.get("slport", 30305)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise check.fail(f"{where}.slport", "expected a port number (1..65535)")
    socket = node.get("nodesocket")
    return NodeDef(
        idx=idx,
        private_data=base / source,
        slhostname=check.text(node.get("slhostname", f"sl{idx}"), f"{where}.slhostname"),
        env={
            **check.env(node.get("slenvvars"), f"{where}.slenvvars"),
            **check.env(node.get("usrenvvars"), f"{where}.usrenvvars"),
        },
        socket=None if socket is None else base / check.text(socket, f"{where}.nodesocket"),
        identity=identity,
    )
