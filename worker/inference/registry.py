"""Where model versions live: ``<root>/<name>/<version>/{model.pt,card.json}``.

Aliases are small JSON objects, ``<root>/<name>/aliases/<alias>.json`` holding
``{"version": ..., "history": [...]}``; ``production`` is the alias a job
follows unless it pins a version. Several roots are searched in order (the
configured registry, then the models bundled in the package), so a fresh
deployment serves the bundled default model before anything was ever trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from contracts import ModelCard, ModelId, ModelRef
from worker.errors import ModelError, ObjectNotFound
from worker.settings import BUNDLED_MODELS, Settings
from worker.storage import Storage, join_uri

PRODUCTION = "production"


@dataclass(frozen=True)
class AliasRecord:
    """Which version an alias points at now, and the versions it pointed at before."""

    version: str
    history: tuple[str, ...] = ()


class ModelRegistry:
    """Reads models and aliases from one or more roots (first match wins)."""

    def __init__(self, storage: Storage, roots: list[str]) -> None:
        if not roots:
            raise ValueError("a registry needs at least one root")
        self.storage = storage
        self.roots = roots

    @classmethod
    def from_settings(cls, settings: Settings, storage: Storage) -> ModelRegistry:
        roots = [settings.model_registry] if settings.model_registry else []
        return cls(storage, [*roots, str(BUNDLED_MODELS)])

    @property
    def primary_root(self) -> str:
        """The root new versions are published to (the configured registry)."""
        return self.roots[0]

    def resolve(self, ref: ModelRef, alias: str = PRODUCTION) -> ModelId:
        """The exact version a reference means right now."""
        if ref.version is not None:
            self._root_of(ref.name, ref.version)  # raises if no root has it
            return ModelId(name=ref.name, version=ref.version)
        record = self.read_alias(ref.name, alias)
        if record is None:
            known = ", ".join(self.known_models()) or "none"
            raise ModelError(
                f"unknown model {ref.name!r}: no {alias!r} alias for it (known models: {known})"
            )
        return ModelId(name=ref.name, version=record.version)

    def read_alias(self, name: str, alias: str = PRODUCTION) -> AliasRecord | None:
        """The alias from the first root that has it, or None."""
        for root in self.roots:
            try:
                raw = self.storage.get_bytes(self.alias_uri(root, name, alias))
            except ObjectNotFound:
                continue
            data = json.loads(raw)
            return AliasRecord(version=str(data["version"]), history=tuple(data.get("history", ())))
        return None

    def read_card(self, model: ModelId) -> ModelCard:
        """The card of one version."""
        root = self._root_of(model.name, model.version)
        raw = self.storage.get_bytes(join_uri(self.version_uri(root, model), "card.json"))
        return ModelCard.model_validate_json(raw)

    def read_model(self, model: ModelId) -> tuple[ModelCard, bytes]:
        """Card and model file bytes of one version (checksum is verified by the loader)."""
        card = self.read_card(model)
        root = self._root_of(model.name, model.version)
        return card, self.storage.get_bytes(join_uri(self.version_uri(root, model), card.file))

    def publish(self, card: ModelCard, model_bytes: bytes) -> str:
        """Write a version to the primary root: the file first, the card last.

        A reader that finds the card therefore always finds the complete file.
        Returns the card's URI.
        """
        base = self.version_uri(self.primary_root, ModelId(name=card.name, version=card.version))
        self.storage.put_bytes(join_uri(base, card.file), model_bytes)
        card_uri = join_uri(base, "card.json")
        self.storage.put_bytes(
            card_uri, card.model_dump_json(indent=2).encode(), content_type="application/json"
        )
        return card_uri

    def write_alias(self, name: str, record: AliasRecord, alias: str = PRODUCTION) -> None:
        """Point ``alias`` of ``name`` at ``record.version`` in the primary root."""
        body = {"version": record.version, "history": list(record.history)}
        self.storage.put_bytes(
            self.alias_uri(self.primary_root, name, alias),
            json.dumps(body, indent=2).encode(),
            content_type="application/json",
        )

    def known_models(self) -> list[str]:
        """Names that have a ``production`` alias in some root."""
        names: set[str] = set()
        suffix = f"/aliases/{PRODUCTION}.json"
        for root in self.roots:
            prefix = root.rstrip("/") + "/"
            for info in self.storage.list_objects(prefix):
                if info.uri.endswith(suffix) and info.uri.count("/") - prefix.count("/") == 2:
                    names.add(info.uri[len(prefix) :].split("/")[0])
        return sorted(names)

    def list_versions(self, name: str) -> list[str]:
        """Every published version of ``name`` in any root, in numeric-then-text order."""
        versions: set[str] = set()
        for root in self.roots:
            prefix = join_uri(root, name) + "/"
            for info in self.storage.list_objects(prefix):
                relative = info.uri[len(prefix) :].split("/")
                if len(relative) == 2 and relative[1] == "card.json":
                    versions.add(relative[0])
        return sorted(versions, key=_version_order)

    def next_version(self, name: str) -> str:
        """One more than the highest numeric version of ``name`` (``1`` for a new model)."""
        numeric = [int(v) for v in self.list_versions(name) if v.isdigit()]
        return str(max(numeric, default=0) + 1)

    def promote(self, model: ModelId, alias: str = PRODUCTION) -> AliasRecord:
        """Point ``alias`` at ``model``; the version it left goes on the alias's history."""
        self.read_card(model)  # refuses versions that do not exist
        current = self.read_alias(model.name, alias)
        history: tuple[str, ...] = ()
        if current is not None and current.version != model.version:
            history = (*current.history, current.version)
        elif current is not None:
            history = current.history
        record = AliasRecord(version=model.version, history=history)
        self.write_alias(model.name, record, alias)
        return record

    def rollback(self, name: str, alias: str = PRODUCTION) -> AliasRecord:
        """Point ``alias`` back at the version it pointed at before the last promotion."""
        current = self.read_alias(name, alias)
        if current is None or not current.history:
            raise ModelError(f"model {name!r}: the {alias!r} alias has no earlier version")
        record = AliasRecord(version=current.history[-1], history=current.history[:-1])
        self.write_alias(name, record, alias)
        return record

    @staticmethod
    def version_uri(root: str, model: ModelId) -> str:
        return join_uri(root, model.name, model.version)

    @staticmethod
    def alias_uri(root: str, name: str, alias: str) -> str:
        return join_uri(root, name, "aliases", f"{alias}.json")

    def _root_of(self, name: str, version: str) -> str:
        for root in self.roots:
            if self.storage.exists(join_uri(root, name, version, "card.json")):
                return root
        raise ModelError(f"model {name}@{version} is not in any registry root {self.roots}")


def _version_order(version: str) -> tuple[int, int, str]:
    return (0, int(version), "") if version.isdigit() else (1, 0, version)
