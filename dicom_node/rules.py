"""Declarative routing rules: which instances go to which checkpoints and destinations.

A YAML file (``DICOM_NODE_RULES_FILE``; see ``rules.example.yaml`` beside this module)::

    version: 1
    destinations:                  # optional; "default" is the node's configured destination
      research-pacs: {type: dicomweb, url: "https://pacs.example/dicom-web",
                      token_file: /run/secrets/research-pacs}
    rules:
      - name: chest-radiograph     # unique; recorded on jobs and "not routed" records
        priority: 100              # higher first; equal priorities keep file order
        match:                     # all given attributes must match (an empty match: all)
          Modality: [CR, DX]       # one value or a list; "" matches a missing value
          BodyPartExamined: [CHEST, THORAX, ""]
          SeriesDescription: "(?i)chest|thorax"   # regular expression (re.search)
          SOPClassUID: [1.2.840.10008.5.1.4.1.1.1]
          CallingAETitle: [ORTHANC]               # the AE that sent the instance to us
        checkpoints: [default-cxr] # [] : matched, but do not process
        destinations: [default, research-pacs]  # optional (default: [default])
        quiet_seconds: 5           # optional quiet period of this route
    fallback:                      # required: what happens to instances no rule matches
      checkpoints: []              # [] : do not process (recorded in the index as such)

The first matching rule (by priority) decides; the fallback decides when none matches.
Modality and BodyPartExamined compare case-insensitively (code strings are upper case, but
scanners write ``Chest``); SOPClassUID and CallingAETitle compare exactly. The node's own
outputs and other derived objects (SEG, SR, Parametric Map) never match any rule.

This module is the rule model (`Rule`, `RulesFile`: what a rule means and how it decides);
`dicom_node.rules_file` reads and validates the YAML file into it (`load_rules`) and picks
the rules the settings ask for (`build_rules`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from ai_engine.dicom_io.markers import is_derived_object
from dicom_node.errors import ConfigError
from dicom_node.router import NOT_ROUTED, RouteDecision
from dicom_node.sender import Destination

if TYPE_CHECKING:
    from dicom_node.config import NodeSettings
    from dicom_node.sender import ResultSender

#: The node's configured destination (settings ``destination``, ``orthanc_url``...).
DEFAULT_DESTINATION = "default"
#: Attributes a rule may match on. CallingAETitle is the sending AE, not a header attribute.
MATCH_ATTRIBUTES = (
    "Modality",
    "BodyPartExamined",
    "SOPClassUID",
    "SeriesDescription",
    "CallingAETitle",
)
_CASE_INSENSITIVE = frozenset({"Modality", "BodyPartExamined"})
#: Attributes matched by regular expression (re.search) instead of exact values.
REGEX_ATTRIBUTES = frozenset({"SeriesDescription"})


class RulesError(ConfigError):
    """The rules file is invalid.

    Attributes:
        errors: one ``<file>:<line>: <problem>`` entry per problem found.
    """

    def __init__(self, errors: list[str]) -> None:
        super().__init__("invalid routing rules:\n" + "\n".join(f"  {e}" for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class Matcher:
    """One ``match`` entry.

    Attributes:
        attribute: one of `MATCH_ATTRIBUTES`.
        values: accepted values (normalised), for exact attributes.
        pattern: the regular expression, for SeriesDescription.
    """

    attribute: str
    values: frozenset[str] = frozenset()
    pattern: re.Pattern[str] | None = None

    def matches(self, value: str) -> bool:
        """Whether an instance's value matches.

        Args:
            value: the instance's value ("" when missing).

        Returns:
            True on a match.
        """
        if self.pattern is not None:
            return self.pattern.search(value) is not None
        return normalise_value(self.attribute, value) in self.values


@dataclass(frozen=True)
class Rule:
    """One rule of the file.

    Attributes:
        name: its name.
        priority: higher is tried first.
        line: line of the rule in the file.
        matchers: all must match.
        decision: where a matching instance goes.
    """

    name: str
    priority: int
    line: int
    matchers: tuple[Matcher, ...]
    decision: RouteDecision

    def matches(self, values: Mapping[str, str]) -> bool:
        """Whether every matcher accepts the instance.

        Args:
            values: attribute -> value ("" when missing) for `MATCH_ATTRIBUTES`.

        Returns:
            True on a match.
        """
        return all(m.matches(values.get(m.attribute, "")) for m in self.matchers)


@dataclass(frozen=True)
class RulesFile:
    """Validated routing rules (implements `dicom_node.router.RoutingRules`).

    Attributes:
        path: the file they were read from.
        rules: the rules, in the order they are tried (priority, then file order).
        fallback: the decision when no rule matches.
        destinations: named destinations defined in the file.
    """

    path: Path
    rules: tuple[Rule, ...]
    fallback: RouteDecision
    destinations: Mapping[str, Destination]

    @property
    def has_route_quiet_periods(self) -> bool:
        """Whether some rule (or the fallback) sets its own quiet period."""
        return self.fallback.quiet_seconds is not None or any(
            r.decision.quiet_seconds is not None for r in self.rules
        )

    @property
    def checkpoint_names(self) -> list[str]:
        """Every checkpoint some rule or the fallback uses, in first-use order."""
        names: dict[str, None] = {}
        for decision in (*(r.decision for r in self.rules), self.fallback):
            names.update(dict.fromkeys(decision.checkpoints))
        return list(names)

    def decide(self, header: Dataset, calling_ae: str | None = None) -> RouteDecision:
        """The decision of the first matching rule, else the fallback's.

        Args:
            header: the instance header.
            calling_ae: AE title that sent it (None: unknown, matches only "").

        Returns:
            The decision; `dicom_node.router.NOT_ROUTED` for derived objects.
        """
        if is_derived_object(str(header.get("SOPClassUID", "")) or None):
            return NOT_ROUTED
        values = {
            name: str(header.get(name, "") or "").strip()
            for name in MATCH_ATTRIBUTES
            if name != "CallingAETitle"
        }
        values["CallingAETitle"] = (calling_ae or "").strip()
        for rule in self.rules:
            if rule.matches(values):
                return rule.decision
        return self.fallback

    def senders(self, settings: NodeSettings) -> dict[str, ResultSender]:
        """Senders for the destinations the file defines (``default`` is not among them).

        Args:
            settings: node settings (our AE title, batch size, default timeouts).

        Returns:
            Destination name -> sender (`dicom_node.sender.make_sender`).

        Raises:
            ConfigError: a TLS file of a C-STORE destination cannot be loaded.
        """
        from dicom_node.sender import make_sender

        return {name: make_sender(spec, settings) for name, spec in self.destinations.items()}


def normalise_value(attribute: str, value: str) -> str:
    """``value`` as matchers compare it (stripped; upper case for code-string attributes)."""
    value = value.strip()
    return value.upper() if attribute in _CASE_INSENSITIVE else value
