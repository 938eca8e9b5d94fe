"""Reading the routing rules file (``DICOM_NODE_RULES_FILE``) into the rule model.

The format and what a rule means: `dicom_node.rules`. The file is read with
``yaml.SafeLoader`` (no Python tags) by composing the node tree, so every error names its
line: ``rules.yaml:12: unknown attribute 'Modalty' (did you mean 'Modality'?)``.
`load_rules` reports all errors at once as one `dicom_node.rules.RulesError` (a
`ConfigError`), and the node refuses to start with invalid rules. `build_rules` gives the
rules the settings ask for: the file's, or `dicom_node.router.DefaultRules` without one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dicom_node.router import DefaultRules, RouteDecision, RoutingRules
from dicom_node.rules import (
    DEFAULT_DESTINATION,
    MATCH_ATTRIBUTES,
    REGEX_ATTRIBUTES,
    Matcher,
    Rule,
    RulesError,
    RulesFile,
    normalise_value,
)
from dicom_node.sender import Destination

if TYPE_CHECKING:
    from dicom_node.config import NodeSettings

_RULE_KEYS = ("name", "priority", "match", "checkpoints", "destinations", "quiet_seconds")
_FALLBACK_KEYS = ("checkpoints", "destinations", "quiet_seconds")
_TOP_KEYS = ("version", "destinations", "rules", "fallback")
_DEST_KEYS: dict[str, tuple[str, ...]] = {
    "dicomweb": ("type", "url", "username", "password_file", "token_file", "timeout_seconds"),
    "cstore": (
        "type",
        "host",
        "port",
        "ae_title",
        "timeout_seconds",
        "tls",
        "tls_ca_file",
        "tls_cert_file",
        "tls_key_file",
        "tls_server_name",
    ),
}
_CHECKPOINT_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "seq", "map")
)


class _Reader:
    """Walks the composed YAML node tree, collecting errors with line numbers."""

    def __init__(self, path: Path, loader: yaml.SafeLoader) -> None:
        self.path = path
        self.loader = loader
        self.errors: list[str] = []

    def error(self, node: yaml.Node | None, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.errors.append(f"{self.path}:{line}: {message}")

    def mapping(
        self, node: yaml.Node, what: str, allowed: tuple[str, ...] | None
    ) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        """Key -> (key node, value node); unknown and repeated keys are errors."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{what} must be a mapping")
            return None
        result: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.error(key_node, f"{what}: keys must be plain names")
                continue
            key = str(key_node.value)
            if key in result:
                self.error(key_node, f"{what}: '{key}' is given twice")
                continue
            if allowed is not None and key not in allowed:
                self.error(key_node, f"{what}: unknown key {key!r}{_suggest(key, allowed)}")
                continue
            result[key] = (key_node, value_node)
        return result

    def text(self, node: yaml.Node, what: str) -> str | None:
        if (
            not isinstance(node, yaml.ScalarNode)
            or node.tag not in (_STR, _INT, _FLOAT)
            or (node.tag == _STR and not node.value.strip())
        ):
            self.error(node, f"{what} must be a non-empty text value")
            return None
        return str(node.value).strip()

    def text_list(self, node: yaml.Node, what: str, *, allow_empty_items: bool) -> list[str] | None:
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        result: list[str] = []
        for item in items:
            if (
                not isinstance(item, yaml.ScalarNode)
                or item.tag not in (_STR, _INT, _FLOAT)
                or (not allow_empty_items and not str(item.value).strip())
            ):
                self.error(item, f"{what}: each value must be text")
                return None
            result.append(str(item.value))
        return result

    def number(self, node: yaml.Node, what: str, *, integer: bool, minimum: float) -> Any:
        tags = (_INT,) if integer else (_INT, _FLOAT)
        if not isinstance(node, yaml.ScalarNode) or node.tag not in tags:
            self.error(node, f"{what} must be {'an integer' if integer else 'a number'}")
            return None
        value = self.loader.construct_object(node)
        if value < minimum:
            self.error(node, f"{what} must be >= {minimum:g}")
            return None
        return value


def _suggest(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}; valid: {', '.join(choices)}"


def load_rules(path: Path) -> RulesFile:
    """Read and validate a rules file.

    Args:
        path: the YAML file.

    Returns:
        The rules.

    Raises:
        RulesError: the file cannot be read or parsed, or is invalid; every problem is
            listed with its line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError([f"{path}: cannot read the rules file: {exc}"]) from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise RulesError([f"{path}:{line}: not valid YAML: {exc.problem or exc}"]) from None
    except yaml.YAMLError as exc:
        raise RulesError([f"{path}: not valid YAML: {exc}"]) from None
    try:
        reader = _Reader(path, loader)
        rules = _read_file(reader, root)
    finally:
        loader.dispose()
    if reader.errors or rules is None:
        raise RulesError(sorted(reader.errors, key=_line_number) or [f"{path}:1: no rules"])
    return rules


def _line_number(error: str) -> int:
    """The line of an ``<file>:<line>: ...`` error (for sorting)."""
    match = re.search(r":(\d+): ", error)
    return int(match.group(1)) if match else 0


def _read_file(r: _Reader, root: yaml.Node | None) -> RulesFile | None:
    if root is None:
        r.error(None, "the rules file is empty")
        return None
    if not _standard_tags(r, root):
        return None
    top = r.mapping(root, "rules file", _TOP_KEYS)
    if top is None:
        return None
    if "version" in top:
        node = top["version"][1]
        if not (isinstance(node, yaml.ScalarNode) and node.tag == _INT and node.value == "1"):
            r.error(node, "version must be 1")
    destinations = _read_destinations(r, top["destinations"][1]) if "destinations" in top else {}
    known = {DEFAULT_DESTINATION, *destinations}
    rules: list[Rule] = []
    if "rules" not in top:
        r.error(root, "'rules' is required (a list of rules)")
    else:
        node = top["rules"][1]
        if not isinstance(node, yaml.SequenceNode):
            r.error(node, "'rules' must be a list of rules")
        else:
            names: set[str] = set()
            for item in node.value:
                name, rule = _read_rule(r, item, known)
                if name is not None and name in names:
                    r.error(item, f"rule name {name!r} is used twice")
                names.add(name or "")
                if rule is not None:
                    rules.append(rule)
    fallback: RouteDecision | None = None
    if "fallback" not in top:
        r.error(
            root,
            "'fallback' is required: what to do with instances no rule matches "
            "(e.g. 'fallback: {checkpoints: []}' to not process them)",
        )
    else:
        fields = r.mapping(top["fallback"][1], "fallback", _FALLBACK_KEYS)
        if fields is not None:
            fallback = _read_decision(r, top["fallback"][1], fields, "fallback", known)
    if fallback is None:
        return None
    # stable sort: equal priorities keep their order in the file
    rules.sort(key=lambda rule: -rule.priority)
    return RulesFile(r.path, tuple(rules), fallback, destinations)


def _standard_tags(r: _Reader, node: yaml.Node) -> bool:
    """Refuse application tags (``!!python/...``, ``!custom``): plain YAML data only."""
    ok = True
    if node.tag not in _PLAIN_TAGS:
        r.error(node, f"tag {node.tag!r} is not allowed (plain YAML only)")
        ok = False
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            ok = _standard_tags(r, item) and ok
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            ok = _standard_tags(r, key) and ok
            ok = _standard_tags(r, value) and ok
    return ok


def _read_rule(r: _Reader, node: yaml.Node, known: set[str]) -> tuple[str | None, Rule | None]:
    """The rule's name (if valid) and the rule (None when it has errors)."""
    fields = r.mapping(node, "rule", _RULE_KEYS)
    if fields is None:
        return None, None
    line = node.start_mark.line + 1
    name: str | None = None
    if "name" not in fields:
        r.error(node, "rule: 'name' is required")
    else:
        name = r.text(fields["name"][1], "rule name")
        if name is not None and not _NAME_RE.fullmatch(name):
            r.error(fields["name"][1], f"rule name {name!r}: letters, digits, '_.-' only")
            name = None
    what = f"rule {name!r}" if name else "rule"
    priority = 0
    if "priority" in fields:
        value = r.number(fields["priority"][1], f"{what}: priority", integer=True, minimum=-1e9)
        priority = int(value) if value is not None else 0
    matchers: list[Matcher] = []
    if "match" not in fields:
        r.error(node, f"{what}: 'match' is required (use 'match: {{}}' to match everything)")
    else:
        match = r.mapping(fields["match"][1], f"{what}: match", None)
        for attribute, (key_node, value_node) in (match or {}).items():
            matcher = _read_matcher(r, attribute, key_node, value_node)
            if matcher is not None:
                matchers.append(matcher)
    if "checkpoints" not in fields:
        r.error(node, f"{what}: 'checkpoints' is required ('checkpoints: []' to not process)")
    decision = _read_decision(r, node, fields, what, known, rule=name)
    if name is None or decision is None:
        return name, None
    return name, Rule(name, priority, line, tuple(matchers), decision)


def _read_matcher(
    r: _Reader, attribute: str, key_node: yaml.Node, value_node: yaml.Node
) -> Matcher | None:
    if attribute not in MATCH_ATTRIBUTES:
        r.error(key_node, f"unknown attribute {attribute!r}{_suggest(attribute, MATCH_ATTRIBUTES)}")
        return None
    if attribute in REGEX_ATTRIBUTES:
        pattern = r.text(value_node, f"{attribute} (a regular expression)")
        if pattern is None:
            return None
        try:
            return Matcher(attribute, pattern=re.compile(pattern))
        except re.error as exc:
            r.error(value_node, f"{attribute}: invalid regular expression: {exc}")
            return None
    values = r.text_list(value_node, attribute, allow_empty_items=True)
    if values is None:
        return None
    if not values:
        r.error(value_node, f"{attribute}: give at least one value")
        return None
    return Matcher(attribute, values=frozenset(normalise_value(attribute, v) for v in values))


def _read_decision(
    r: _Reader,
    node: yaml.Node,
    fields: Mapping[str, tuple[yaml.Node, yaml.Node]],
    what: str,
    known: set[str],
    rule: str | None = "fallback",
) -> RouteDecision | None:
    ok = True
    checkpoints: list[str] = []
    if "checkpoints" in fields:
        value_node = fields["checkpoints"][1]
        if not isinstance(value_node, yaml.SequenceNode):
            r.error(value_node, f"{what}: checkpoints must be a list ([] to not process)")
            ok = False
        else:
            names = r.text_list(value_node, f"{what}: checkpoints", allow_empty_items=False)
            for item, name in zip(value_node.value, names or [], strict=False):
                if not _CHECKPOINT_RE.fullmatch(name):
                    r.error(item, f"{what}: invalid checkpoint name {name!r}")
                    ok = False
                elif name in checkpoints:
                    r.error(item, f"{what}: checkpoint {name!r} is listed twice")
                    ok = False
                else:
                    checkpoints.append(name)
            ok = ok and names is not None
    elif rule == "fallback":
        r.error(node, "fallback: 'checkpoints' is required ('checkpoints: []' to not process)")
        ok = False
    destinations: list[str] = []
    if "destinations" in fields:
        value_node = fields["destinations"][1]
        names = r.text_list(value_node, f"{what}: destinations", allow_empty_items=False)
        items = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        for item, name in zip(items, names or [], strict=False):
            if name not in known:
                r.error(item, f"{what}: unknown destination {name!r}{_suggest(name, tuple(known))}")
                ok = False
            elif name not in destinations:
                destinations.append(name)
        ok = ok and names is not None
    quiet: float | None = None
    if "quiet_seconds" in fields:
        value = r.number(
            fields["quiet_seconds"][1], f"{what}: quiet_seconds", integer=False, minimum=0
        )
        if value is None:
            ok = False
        else:
            quiet = float(value)
    if not ok:
        return None
    if destinations == [DEFAULT_DESTINATION]:
        destinations = []
    return RouteDecision(tuple(checkpoints), tuple(destinations), rule, quiet)


def _read_destinations(r: _Reader, node: yaml.Node) -> dict[str, Destination]:
    entries = r.mapping(node, "destinations", None)
    result: dict[str, Destination] = {}
    for name, (key_node, value_node) in (entries or {}).items():
        if name == DEFAULT_DESTINATION:
            r.error(key_node, f"destination name {name!r} is reserved (the node's settings)")
            continue
        if not _NAME_RE.fullmatch(name):
            r.error(key_node, f"destination name {name!r}: letters, digits, '_.-' only")
            continue
        spec = _read_destination(r, name, value_node)
        if spec is not None:
            result[name] = spec
    return result


def _read_destination(r: _Reader, name: str, node: yaml.Node) -> Destination | None:
    what = f"destination {name!r}"
    fields = r.mapping(node, what, None)
    if fields is None:
        return None
    if "type" not in fields:
        r.error(node, f"{what}: 'type' is required (dicomweb or cstore)")
        return None
    kind = r.text(fields["type"][1], f"{what}: type")
    if kind not in _DEST_KEYS:
        r.error(fields["type"][1], f"{what}: type must be dicomweb or cstore")
        return None
    before = len(r.errors)
    for key, (key_node, _) in fields.items():
        if key not in _DEST_KEYS[kind]:
            r.error(key_node, f"{what}: unknown key {key!r}{_suggest(key, _DEST_KEYS[kind])}")
    values: dict[str, Any] = {}
    for key, (_, value_node) in fields.items():
        if key in ("type",) or key not in _DEST_KEYS[kind]:
            continue
        if key == "port":
            values[key] = r.number(value_node, f"{what}: port", integer=True, minimum=1)
        elif key == "timeout_seconds":
            values[key] = r.number(value_node, f"{what}: timeout_seconds", integer=False, minimum=0)
        elif key == "tls":
            if value_node.tag != "tag:yaml.org,2002:bool":
                r.error(value_node, f"{what}: tls must be true or false")
            else:
                values[key] = value_node.value.lower() in ("true", "yes", "on")
        else:
            values[key] = r.text(value_node, f"{what}: {key}")
    required = ("url",) if kind == "dicomweb" else ("host", "port", "ae_title")
    for key in required:
        if key not in fields:
            r.error(node, f"{what}: {key!r} is required for type {kind}")
    if (
        kind == "dicomweb"
        and values.get("url")
        and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", values["url"])
    ):
        r.error(fields["url"][1], f"{what}: url must be an http(s) URL")
    if kind == "cstore" and not values.get("tls"):
        for key in ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name"):
            if key in fields:
                r.error(fields[key][0], f"{what}: {key} needs tls: true")
    if kind == "cstore" and ("tls_cert_file" in fields) != ("tls_key_file" in fields):
        r.error(node, f"{what}: tls_cert_file and tls_key_file go together")
    if kind == "dicomweb" and ("username" in fields) != ("password_file" in fields):
        r.error(node, f"{what}: username and password_file go together")
    if kind == "dicomweb" and "token_file" in fields and "username" in fields:
        r.error(node, f"{what}: use token_file or username/password_file, not both")
    secrets: dict[str, str] = {}
    for key, target in (("password_file", "password"), ("token_file", "token")):
        if values.get(key):
            secret = _read_secret(r, fields[key][1], Path(values[key]), what)
            if secret is not None:
                secrets[target] = secret
    if len(r.errors) > before:
        return None
    return Destination(
        name=name,
        type="dicomweb" if kind == "dicomweb" else "cstore",
        url=str(values.get("url") or "").rstrip("/"),
        username=values.get("username"),
        host=str(values.get("host") or ""),
        port=int(values.get("port") or 104),
        ae_title=str(values.get("ae_title") or ""),
        timeout_seconds=values.get("timeout_seconds"),
        password=secrets.get("password"),
        token=secrets.get("token"),
        tls=bool(values.get("tls", False)),
        tls_ca_file=_path(values.get("tls_ca_file")),
        tls_cert_file=_path(values.get("tls_cert_file")),
        tls_key_file=_path(values.get("tls_key_file")),
        tls_server_name=values.get("tls_server_name"),
    )


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _read_secret(r: _Reader, node: yaml.Node, path: Path, what: str) -> str | None:
    try:
        secret = path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        r.error(node, f"{what}: cannot read secret file {path}: {exc.strerror}")
        return None
    if not secret:
        r.error(node, f"{what}: secret file {path} is empty")
        return None
    return secret


def build_rules(settings: NodeSettings) -> RoutingRules:
    """The routing rules the settings ask for.

    Args:
        settings: node settings.

    Returns:
        The rules of ``settings.rules_file``, or `dicom_node.router.DefaultRules` over
        ``settings.checkpoints`` when none is set.

    Raises:
        RulesError: the rules file is invalid, or a route's quiet period is longer than
            ``study_max_wait_seconds`` (it would never be waited for).
    """
    if settings.rules_file is None:
        return DefaultRules(settings.checkpoints)
    rules = load_rules(settings.rules_file)
    errors = [
        f"{rules.path}:{rule.line}: rule {rule.name!r}: quiet_seconds "
        f"{rule.decision.quiet_seconds:g} is longer than study_max_wait_seconds "
        f"{settings.study_max_wait_seconds:g}"
        for rule in rules.rules
        if (rule.decision.quiet_seconds or 0) > settings.study_max_wait_seconds
    ]
    if errors:
        raise RulesError(errors)
    return rules
