"""One image's provenance from the bytes already fetched: the strongest evidence found.

Order of strength: a C2PA manifest (signed; validated when trusted), an IPTC/XMP
``DigitalSourceType`` (a claim anyone can write), then generator fingerprints:
PNG text chunks that image-generation front-ends write (AUTOMATIC1111-style
``parameters``, ComfyUI ``prompt``/``workflow``, InvokeAI), and EXIF/XMP software
tags naming a known generator. A file without any of them gets no provenance.

``read`` never raises: provenance is extra evidence, so a parser failure on a
hostile file is logged and the image is scored as if it had no metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

from contracts import Provenance
from worker.logs import get_logger
from worker.provenance.c2pa_manifest import C2paReader
from worker.provenance.embedded import exif_text, png_text_chunks, xmp_packet, xmp_value
from worker.provenance.vocabulary import AI_SOURCE_TYPES, clip, known_generator, source_type_term

log = get_logger(__name__)

_SD_PARAMETER_MARKS = ("Steps:", "Sampler:", "CFG scale:", "Seed:")


class ProvenanceReader:
    """Reads provenance metadata; one per process (it holds per-thread C2PA contexts)."""

    def __init__(self, trust_anchors: Path | None = None) -> None:
        self._c2pa = C2paReader(trust_anchors)

    def read(self, data: bytes) -> Provenance | None:
        """The strongest provenance evidence in ``data``, or None."""
        try:
            return self._read(data)
        except Exception:
            log.warning("provenance_unreadable", exc_info=True, size=len(data))
            return None

    def _read(self, data: bytes) -> Provenance | None:
        manifest = self._c2pa.read(data)
        if manifest is not None:
            return manifest
        packet = xmp_packet(data)
        found = from_xmp(packet) if packet else None
        if found is not None and found.claim is not None:
            return found
        return from_png_text(data) or from_exif(data) or found


def from_xmp(packet: str) -> Provenance | None:
    """IPTC ``DigitalSourceType`` or a ``CreatorTool`` naming a generator."""
    value = xmp_value(packet, "Iptc4xmpExt:DigitalSourceType")
    term = source_type_term(value) if value else None
    tool = xmp_value(packet, "xmp:CreatorTool")
    generator = known_generator(tool) if tool else None
    if term is None and generator is None:
        return None
    return Provenance(
        source="xmp",
        claim=term,
        ai_generated=term in AI_SOURCE_TYPES if term else True,
        generator=generator or (clip(tool) if tool else None),
        detail="XMP metadata is not signed: reported, never used to label",
    )


def from_png_text(data: bytes) -> Provenance | None:
    """Text chunks written by image-generation front-ends."""
    for chunk in png_text_chunks(data):
        key, text = chunk.key, chunk.text
        generator: str | None = None
        if key == "parameters" and any(mark in text for mark in _SD_PARAMETER_MARKS):
            generator = "Stable Diffusion web UI (parameters)"
            if "Version: f" in text:
                generator = "Stable Diffusion web UI Forge (parameters)"
        elif key in ("prompt", "workflow") and _is_comfyui_graph(text):
            generator = "ComfyUI"
        elif key in ("invokeai_metadata", "invokeai_graph", "sd-metadata", "Dream"):
            generator = "InvokeAI"
        elif key in ("Software", "Source"):  # free text (Comment, Description) may mention
            generator = known_generator(text)  # a generator's name without being made by it
        elif key == "XML:com.adobe.xmp":
            found = from_xmp(text)
            if found is not None:
                return found
        if generator is not None:
            return Provenance(
                source="png_text",
                ai_generated=True,
                generator=generator,
                detail=f"PNG text chunk '{clip(key, 40)}' "
                "(not signed: reported, never used to label)",
            )
    return None


def _is_comfyui_graph(text: str) -> bool:
    try:
        graph = json.loads(text)
    except ValueError:
        return False
    if isinstance(graph, dict) and "nodes" in graph:
        return True
    return isinstance(graph, dict) and any(
        isinstance(node, dict) and "class_type" in node for node in list(graph.values())[:1000]
    )


def from_exif(data: bytes) -> Provenance | None:
    """EXIF Software naming a generator, or generation parameters in UserComment."""
    fields = exif_text(data)
    if fields is None:
        return None
    for name, value in (
        ("Software", fields.software),
        ("ImageDescription", fields.description),
        ("UserComment", fields.user_comment),
    ):
        if not value:
            continue
        generator = known_generator(value) if name == "Software" else None
        if generator is None and sum(mark in value for mark in _SD_PARAMETER_MARKS) >= 2:
            generator = "Stable Diffusion web UI (parameters)"
        if generator is not None:
            return Provenance(
                source="exif",
                ai_generated=True,
                generator=generator,
                detail=f"EXIF {name} (not signed: reported, never used to label)",
            )
    return None
