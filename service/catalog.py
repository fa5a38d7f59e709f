"""The served model cards, and the one answer to "which graph serves this request".

A registered model may be served by several graphs (the VAE: `vae` reconstructs, `vae_decoder`
generates); clients name the model (its family) or a graph by its own name, and the task picks
the graph. The v2 routes address graphs by name and version.
"""

from __future__ import annotations

from collections.abc import Mapping

from core.card import ModelCard

from .errors import ClientError, shown


class Catalog:
    def __init__(self, cards: Mapping[str, ModelCard]) -> None:
        self.cards = dict(cards)  # served graph name -> card

    def __contains__(self, name: str) -> bool:
        return name in self.cards

    def names_for(self, task: str) -> list[str]:
        """Every name a request for `task` may give: the graphs that serve it and their families."""
        graphs = [c for c in self.cards.values() if task in c.tasks]
        return sorted({c.name for c in graphs} | {c.family for c in graphs})

    def for_task(self, name: object, task: str) -> ModelCard:
        """The card of the graph that serves `task` for the model `name` (a family or a graph)."""
        served = ", ".join(sorted({c.family for c in self.cards.values() if task in c.tasks}))
        if not isinstance(name, str) or not name:
            raise ClientError(400, "missing_field", f"field 'model' must name a model; served for /{task}: {served}")
        family = [c for c in self.cards.values() if name in (c.name, c.family)]
        if not family:
            raise ClientError(
                404, "unknown_model", f"model {shown(name, 64)} is not served; served for /{task}: {served}"
            )
        card = next((c for c in family if task in c.tasks), None)
        if card is None:
            tasks = sorted({t for c in family for t in c.tasks})
            raise ClientError(
                400,
                "wrong_task",
                f"model {shown(name, 64)} serves {', '.join('/' + t for t in tasks)}, "
                f"not /{task}; models for /{task}: {served}",
            )
        return card

    def graph(self, name: str, version: str | None = None) -> ModelCard:
        """A served graph by its own name (and version, when given): the v2 protocol's address."""
        card = self.cards.get(name)
        if card is None:
            raise ClientError(
                404, "unknown_model", f"model {shown(name, 64)} is not served; served: {', '.join(self.cards)}"
            )
        if version is not None and version != card.version:
            raise ClientError(
                404,
                "unknown_version",
                f"model {name!r} has no version {shown(version, 64)}; served version: {card.version}",
            )
        return card
