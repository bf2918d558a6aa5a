"""C2PA manifests, read and validated by the ``c2pa-python`` package (the CAI's c2pa-rs).

A manifest is *validated* only when the SDK reports it ``Trusted``: the claim's
signature is valid, its hashes match these very bytes (nothing was changed after
signing), and the signing certificate chains to one of the configured trust
anchors (``SYNTHDETECT_C2PA_TRUST_ANCHORS``). A signature from an unknown
certificate is ``Valid`` in the SDK's words but proves nothing about who signed,
since anyone can make a certificate; it is reported, not trusted.

The SDK is imported on first use (a native library), and only for files whose
bytes contain a C2PA manifest store's label, so images without one cost a
substring search.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from contracts import Provenance
from worker.logs import get_logger
from worker.provenance.vocabulary import AI_SOURCE_TYPES, clip, known_generator, source_type_term

log = get_logger(__name__)

_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF8", "image/gif"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)
_ACTION_LABELS = ("c2pa.actions", "c2pa.actions.v2")
_MAX_ACTIONS = 200


def mime_type(data: bytes) -> str | None:
    """The MIME type c2pa needs, from the file's magic bytes (None: not one we read)."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        return "image/avif" if brand in (b"avif", b"avis") else "image/heic"
    return None


def may_hold_manifest(data: bytes) -> bool:
    """Cheap pre-check: a C2PA manifest store is a JUMBF box labelled 'c2pa'."""
    return b"c2pa" in data


class C2paReader:
    """Reads manifests with one SDK context per thread (trust settings parsed once each)."""

    def __init__(self, trust_anchors: Path | None = None) -> None:
        self._anchors = _read_anchors(trust_anchors) if trust_anchors is not None else None
        self._local = threading.local()

    def read(self, data: bytes) -> Provenance | None:
        """The active manifest's claim, or None when the file has no (readable) manifest."""
        mime = mime_type(data)
        if mime is None or not may_hold_manifest(data):
            return None
        import c2pa

        try:
            reader = c2pa.Reader(mime, io.BytesIO(data), context=self._context())
        except c2pa.C2paError as exc:
            if "ManifestNotFound" in type(exc).__name__ or "no JUMBF" in str(exc):
                return None
            return Provenance(
                source="c2pa",
                ai_generated=False,
                validated=False,
                detail=clip(f"a C2PA manifest is present but cannot be read: {exc}", 500),
            )
        try:
            store = json.loads(reader.json())
            state = reader.get_validation_state()
        finally:
            reader.close()
        return describe_store(store, state)

    def _context(self) -> Any:
        context = getattr(self._local, "context", None)
        if context is None:
            import c2pa

            config: dict[str, Any] = {"verify": {"verify_trust": True}}
            if self._anchors:
                config["trust"] = {"trust_anchors": self._anchors}
            context = c2pa.Context(settings=c2pa.Settings.from_json(json.dumps(config)))
            self._local.context = context
        return context


def _read_anchors(path: Path) -> str:
    """The PEM trust list; a missing or empty file is a configuration error, said plainly."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"SYNTHDETECT_C2PA_TRUST_ANCHORS: cannot read {path}: {exc}") from exc
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ValueError(f"SYNTHDETECT_C2PA_TRUST_ANCHORS: {path} holds no PEM certificate")
    return text


def describe_store(store: dict[str, Any], state: str | None) -> Provenance | None:
    """A ``Provenance`` from the SDK's manifest-store JSON and validation state."""
    manifests = store.get("manifests")
    active = store.get("active_manifest")
    if not isinstance(manifests, dict) or not isinstance(active, str) or active not in manifests:
        return None
    manifest = manifests[active]
    if not isinstance(manifest, dict):
        return None
    terms, agents = _source_types_and_agents(manifest)
    ai_terms = [t for t in terms if t in AI_SOURCE_TYPES]
    claim = ai_terms[0] if ai_terms else (terms[0] if terms else None)
    generator = _claim_generator(manifest)
    named = next((g for g in (*agents, generator) if g and known_generator(g)), None)
    signer = _signer(manifest)
    validated = state == "Trusted"
    return Provenance(
        source="c2pa",
        claim=claim,
        ai_generated=bool(ai_terms),
        generator=clip(named or generator or (agents[0] if agents else ""), 200) or None,
        validated=validated,
        signer=clip(signer, 200) if signer else None,
        detail=None if validated else _why_not_validated(store, state),
    )


def _actions(manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for assertion in manifest.get("assertions") or []:
        if not isinstance(assertion, dict) or assertion.get("label") not in _ACTION_LABELS:
            continue
        data = assertion.get("data")
        actions = data.get("actions") if isinstance(data, dict) else None
        for action in (actions or [])[:_MAX_ACTIONS]:
            if isinstance(action, dict):
                yield action


def _source_types_and_agents(manifest: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The digital source types of the created/edited actions, and their software agents."""
    terms: list[str] = []
    agents: list[str] = []
    for action in _actions(manifest):
        value = action.get("digitalSourceType")
        term = source_type_term(value) if isinstance(value, str) else None
        if term:
            terms.append(term)
        agent = action.get("softwareAgent")
        name = agent.get("name") if isinstance(agent, dict) else agent
        if isinstance(name, str) and name.strip():
            agents.append(name.strip())
    return terms, agents


def _claim_generator(manifest: dict[str, Any]) -> str | None:
    info = manifest.get("claim_generator_info")
    if isinstance(info, list) and info and isinstance(info[0], dict):
        name, version = info[0].get("name"), info[0].get("version")
        if isinstance(name, str):
            return f"{name} {version}" if isinstance(version, str) else name
    legacy = manifest.get("claim_generator")
    return legacy if isinstance(legacy, str) else None


def _signer(manifest: dict[str, Any]) -> str | None:
    info = manifest.get("signature_info")
    if not isinstance(info, dict):
        return None
    parts = [info.get("common_name"), info.get("issuer")]
    names = [p for p in parts if isinstance(p, str) and p]
    return " / ".join(dict.fromkeys(names)) or None


def _why_not_validated(store: dict[str, Any], state: str | None) -> str:
    codes: list[str] = [
        str(s["code"])
        for s in store.get("validation_status") or []
        if isinstance(s, dict) and isinstance(s.get("code"), str)
    ]
    if state == "Valid":
        return (
            "signature and hashes are valid, but the signer is not on the trust list"
            if "signingCredential.untrusted" in codes or not codes
            else clip("valid, but: " + ", ".join(codes[:5]), 500)
        )
    if "assertion.dataHash.mismatch" in codes:
        return "the image was changed after the manifest was signed (hash mismatch)"
    return clip(f"the manifest does not validate ({', '.join(codes[:5]) or state})", 500)
