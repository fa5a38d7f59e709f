"""The served model cards, and the one answer to "which graph serves this request".

A registered model may be served by several graphs (the VAE: `vae` reconstructs, `vae_decoder`
generates); clients name the model (its family) or a graph by its own name, and the task picks
the graph. The v2 routes address graphs by name and version.

Several versions of a graph may be served side by side (EE559_MODELS=lenet:v1,lenet:v2): a
request names one (`version` in a task request, the v2 path's /versions/{version}), or gets the
name's default version, the first listed (the newest stored when the name is given alone).
Versions of several precisions may be among them (EE559_PRECISION=int8,fp32: a model's INT8
variant and its fp32 graph): a task request may name a precision (`precision`), and gets the
first served version of that precision.
"""

from __future__ import annotations

from collections.abc import Mapping

from core.card import PRECISIONS, ModelCard

from .errors import ClientError, shown


class Catalog:
    def __init__(self, cards: Mapping[str, ModelCard]) -> None:
        self.cards = dict(cards)  # tag (name:version) -> card, each name's default version first
        self.default: dict[str, ModelCard] = {}  # graph name -> the version requests get by default
        for card in self.cards.values():
            self.default.setdefault(card.name, card)

    def __contains__(self, name: str) -> bool:
        return name in self.default

    def versions(self, name: str) -> list[str]:
        """The served versions of the graph `name`, the default first."""
        return [c.version for c in self.cards.values() if c.name == name]

    def names_for(self, task: str) -> list[str]:
        """Every name a request for `task` may give: the graphs that serve it and their families."""
        graphs = [c for c in self.default.values() if task in c.tasks]
        return sorted({c.name for c in graphs} | {c.family for c in graphs})

    def for_task(self, name: object, task: str, version: object = None, precision: object = None) -> ModelCard:
        """The card of the graph that serves `task` for the model `name` (a family or a graph), in
        `version` if given (a version of that graph: versions are per graph), else the default;
        of `precision` if given: the first served version of it (that version must be of it)."""
        served = ", ".join(sorted({c.family for c in self.default.values() if task in c.tasks}))
        if not isinstance(name, str) or not name:
            raise ClientError(400, "missing_field", f"field 'model' must name a model; served for /{task}: {served}")
        family = [c for c in self.cards.values() if name in (c.name, c.family)]
        if not family:
            raise ClientError(
                404, "unknown_model", f"model {shown(name, 64)} is not served; served for /{task}: {served}"
            )
        if precision is not None:
            family = self._of_precision(name, family, task, precision)
        if version is None:  # each graph's default, or the first served of the precision
            candidates = family if precision is not None else [c for c in family if self.default[c.name] is c]
        else:
            versions = ", ".join(c.version for c in family if task in c.tasks) or "none"
            if not isinstance(version, str):
                raise ClientError(
                    400, "bad_field", f"'version' must be a string; served versions for /{task}: {versions}"
                )
            candidates = [c for c in family if c.version == version]
            if not candidates:
                raise ClientError(
                    404,
                    "unknown_version",
                    f"model {shown(name, 64)} has no version {shown(version, 64)}"
                    f"{'' if precision is None else f' in precision {precision}'}; "
                    f"served versions for /{task}{'' if precision is None else f' in {precision}'}: {versions}",
                )
        card = next((c for c in candidates if task in c.tasks), None)
        if card is None:
            tasks = sorted({t for c in candidates for t in c.tasks})
            raise ClientError(
                400,
                "wrong_task",
                f"model {shown(name, 64)}{'' if version is None else ' in that version'} serves "
                f"{', '.join('/' + t for t in tasks)}, not /{task}; models for /{task}: {served}",
            )
        return card

    def _of_precision(self, name: str, family: list[ModelCard], task: str, precision: object) -> list[ModelCard]:
        """The served versions of `family` of `precision`, in serving order (the default first)."""
        if not isinstance(precision, str) or precision not in PRECISIONS:
            raise ClientError(
                400, "bad_field", f"'precision' must be one of {', '.join(PRECISIONS)}, got {shown(precision)}"
            )
        chosen = [c for c in family if c.precision == precision]
        if not chosen:
            served = ", ".join(dict.fromkeys(c.precision for c in family if task in c.tasks)) or "none"
            raise ClientError(
                404,
                "unknown_precision",
                f"model {shown(name, 64)} is not served in precision {precision!r}; "
                f"'precision' served for it on /{task}: {served}",
            )
        return chosen

    def graph(self, name: str, version: object = None) -> ModelCard:
        """A served graph by its own name (and version, when given): the v2 protocol's address."""
        card = self.default.get(name)
        if card is None:
            raise ClientError(
                404, "unknown_model", f"model {shown(name, 64)} is not served; served: {', '.join(self.default)}"
            )
        return card if version is None else self.version(name, version)

    def version(self, name: str, version: object) -> ModelCard:
        """One served version of the graph `name`."""
        served = ", ".join(self.versions(name))
        if not isinstance(version, str):
            raise ClientError(400, "bad_field", f"'version' must be a string, one of: {served}; got {shown(version)}")
        card = self.cards.get(f"{name}:{version}")
        if card is None:
            raise ClientError(
                404, "unknown_version", f"model {name!r} has no version {shown(version, 64)}; served versions: {served}"
            )
        return card
