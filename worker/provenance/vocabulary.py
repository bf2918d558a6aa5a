"""The words provenance metadata uses: IPTC digital source types and image generators' names."""

from __future__ import annotations

import re

IPTC_DST_PREFIX = "http://cv.iptc.org/newscodes/digitalsourcetype/"
AI_SOURCE_TYPES = frozenset({"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia"})
"""IPTC terms for media made, or composited, by a model trained on sampled content."""

_TERM = re.compile(r"^[A-Za-z][A-Za-z0-9]{1,80}$")

KNOWN_GENERATORS: tuple[tuple[str, str], ...] = (
    (r"comfyui", "ComfyUI"),
    (r"automatic1111|stable[- ]diffusion[- ]web[- ]?ui|sd[- ]webui", "Stable Diffusion web UI"),
    (r"\bforge\b", "Stable Diffusion web UI Forge"),
    (r"invoke ?ai", "InvokeAI"),
    (r"fooocus", "Fooocus"),
    (r"novel ?ai", "NovelAI"),
    (r"midjourney", "Midjourney"),
    (r"dall[-·. ]?e", "DALL-E"),
    (r"openai|chatgpt|gpt-4o|gpt-image", "OpenAI"),
    (r"adobe firefly|\bfirefly\b", "Adobe Firefly"),
    (r"imagen\b|gemini|nano banana", "Google Imagen / Gemini"),
    (r"\bflux(\.1)?\b|black forest labs", "FLUX"),
    (r"stable ?diffusion|sdxl|stability ai|dreamstudio", "Stable Diffusion"),
    (r"leonardo\.?ai", "Leonardo.Ai"),
    (r"ideogram", "Ideogram"),
    (r"runway(ml)?", "Runway"),
    (r"bing image creator|microsoft designer|image creator from microsoft", "Microsoft Designer"),
    (r"\bgrok\b|\baurora\b", "xAI Grok"),
    (r"recraft", "Recraft"),
    (r"krea\.?ai", "Krea"),
    (r"playground ?ai|playground v\d", "Playground"),
    (r"\bkling\b", "Kling"),
)
"""(pattern, name) of tools that only make generated images: naming one is a fingerprint."""
_GENERATORS = [(re.compile(p, re.IGNORECASE), name) for p, name in KNOWN_GENERATORS]


def source_type_term(value: str) -> str | None:
    """'trainedAlgorithmicMedia' from the IPTC URI (or the bare term); None if it is neither."""
    value = value.strip()
    if value.startswith(IPTC_DST_PREFIX):
        value = value[len(IPTC_DST_PREFIX) :]
    value = value.rstrip("/")
    return value if _TERM.match(value) else None


def known_generator(text: str) -> str | None:
    """The generator a software name or tag names, or None for anything else (cameras,
    editors): only tools that exist to generate images count."""
    sample = text[:500]
    for pattern, name in _GENERATORS:
        if pattern.search(sample):
            return name
    return None


def clip(text: str, limit: int = 200) -> str:
    """Printable text of at most ``limit`` characters (metadata is attacker-controlled)."""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text[: limit * 2]).strip()
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"
