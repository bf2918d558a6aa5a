"""Provenance from an image's own bytes: C2PA (validated, untrusted, forged, tampered,
stripped), IPTC/XMP DigitalSourceType, generator tags in PNG text chunks and EXIF, and
hostile input that must never crash or balloon."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from tests.support.provenance_files import (
    SigningIdentity,
    c2pa_signed,
    itxt_chunk,
    jpeg,
    jpeg_with_exif,
    jpeg_with_xmp,
    make_identity,
    png,
    png_chunk,
    png_with_chunks,
    reencoded,
    text_chunk,
    xmp,
    ztxt_chunk,
)
from worker.provenance.embedded import MAX_TEXT_BYTES, png_text_chunks, xmp_packet
from worker.provenance.reader import ProvenanceReader
from worker.provenance.vocabulary import known_generator, source_type_term

A1111 = (
    "a cat in a spacesuit\nNegative prompt: blurry\n"
    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 512x512, Model: sd15"
)
SD_PARAMETERS = "Stable Diffusion web UI (parameters)"
COMFY_PROMPT = '{"3": {"class_type": "KSampler", "inputs": {"seed": 5}}}'
COMFY_WORKFLOW = '{"last_node_id": 9, "nodes": [{"id": 3, "type": "KSampler"}]}'


@pytest.fixture(scope="module")
def identity() -> SigningIdentity:
    return make_identity("trusted test")


@pytest.fixture(scope="module")
def forger() -> SigningIdentity:
    return make_identity("forger")


@pytest.fixture
def anchors(tmp_path: Path, identity: SigningIdentity) -> Path:
    return identity.write_anchor(tmp_path)


@pytest.fixture
def trusting(anchors: Path) -> ProvenanceReader:
    """A reader whose trust list holds the test CA."""
    return ProvenanceReader(anchors)


# --- C2PA ---------------------------------------------------------------------------------


def test_a_signed_ai_claim_from_a_trusted_signer_is_validated(
    trusting: ProvenanceReader, identity: SigningIdentity
) -> None:
    found = trusting.read(c2pa_signed(jpeg(), identity))
    assert found is not None
    assert found.source == "c2pa"
    assert found.claim == "trainedAlgorithmicMedia"
    assert found.ai_generated is True
    assert found.validated is True
    assert found.generator is not None
    assert "TestGen Image Model" in found.generator
    assert found.signer is not None
    assert "trusted test signer" in found.signer
    assert found.detail is None


def test_a_png_manifest_is_read_too(trusting: ProvenanceReader, identity: SigningIdentity) -> None:
    found = trusting.read(c2pa_signed(png(), identity, mime="image/png"))
    assert found is not None
    assert found.validated
    assert found.ai_generated


def test_a_composite_with_ai_counts_as_ai_generated(
    trusting: ProvenanceReader, identity: SigningIdentity
) -> None:
    signed = c2pa_signed(
        jpeg(),
        identity,
        source_type="compositeWithTrainedAlgorithmicMedia",
        generator="Photo Editor",
    )
    found = trusting.read(signed)
    assert found is not None
    assert found.claim == "compositeWithTrainedAlgorithmicMedia"
    assert found.ai_generated is True
    assert found.validated is True


def test_a_camera_capture_claim_is_not_ai(
    trusting: ProvenanceReader, identity: SigningIdentity
) -> None:
    found = trusting.read(
        c2pa_signed(jpeg(), identity, source_type="digitalCapture", generator="Camera Firmware")
    )
    assert found is not None
    assert found.claim == "digitalCapture"
    assert found.ai_generated is False
    assert found.validated is True


def test_without_a_trust_list_a_valid_signature_is_reported_not_validated(
    identity: SigningIdentity,
) -> None:
    found = ProvenanceReader(None).read(c2pa_signed(jpeg(), identity))
    assert found is not None
    assert found.ai_generated is True
    assert found.validated is False
    assert found.detail is not None
    assert "not on the trust list" in found.detail


def test_a_forged_manifest_from_an_unknown_signer_is_not_validated(
    trusting: ProvenanceReader, forger: SigningIdentity
) -> None:
    found = trusting.read(c2pa_signed(jpeg(), forger))
    assert found is not None
    assert found.ai_generated is True
    assert found.validated is False
    assert found.signer is not None
    assert "forger" in found.signer


def test_pixels_changed_after_signing_invalidate_the_manifest(
    trusting: ProvenanceReader, identity: SigningIdentity
) -> None:
    signed = bytearray(c2pa_signed(jpeg(), identity))
    signed[-20] ^= 0xFF  # inside the entropy-coded image data, covered by the hard binding
    found = trusting.read(bytes(signed))
    assert found is not None
    assert found.validated is False
    assert found.detail is not None
    assert "changed after" in found.detail


def test_a_stripped_file_has_no_provenance(
    trusting: ProvenanceReader, identity: SigningIdentity
) -> None:
    assert trusting.read(reencoded(c2pa_signed(jpeg(), identity))) is None


def test_plain_images_have_no_provenance(trusting: ProvenanceReader) -> None:
    assert trusting.read(jpeg()) is None
    assert trusting.read(png()) is None


# --- XMP ------------------------------------------------------------------------------


def test_an_xmp_digital_source_type_is_reported_unvalidated() -> None:
    found = ProvenanceReader().read(jpeg_with_xmp(xmp("trainedAlgorithmicMedia")))
    assert found is not None
    assert found.source == "xmp"
    assert found.claim == "trainedAlgorithmicMedia"
    assert found.ai_generated is True
    assert found.validated is False


def test_an_xmp_capture_claim_is_not_ai() -> None:
    found = ProvenanceReader().read(jpeg_with_xmp(xmp("digitalCapture")))
    assert found is not None
    assert found.claim == "digitalCapture"
    assert not found.ai_generated


def test_an_xmp_creator_tool_naming_a_generator_is_a_fingerprint() -> None:
    found = ProvenanceReader().read(jpeg_with_xmp(xmp(creator_tool="Adobe Firefly 3")))
    assert found is not None
    assert found.source == "xmp"
    assert found.generator == "Adobe Firefly"
    assert found.claim is None
    assert found.ai_generated is True


def test_an_xmp_creator_tool_naming_an_editor_is_nothing() -> None:
    assert ProvenanceReader().read(jpeg_with_xmp(xmp(creator_tool="GIMP 2.10"))) is None


def test_xmp_inside_a_png_itxt_chunk_is_read() -> None:
    data = png_with_chunks(itxt_chunk("XML:com.adobe.xmp", xmp("trainedAlgorithmicMedia")))
    found = ProvenanceReader().read(data)
    assert found is not None
    assert found.claim == "trainedAlgorithmicMedia"


# --- PNG text chunks and EXIF ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "generator"),
    [
        ([text_chunk("parameters", A1111)], SD_PARAMETERS),
        ([ztxt_chunk("parameters", A1111)], SD_PARAMETERS),
        ([itxt_chunk("parameters", A1111, compressed=True)], SD_PARAMETERS),
        ([text_chunk("prompt", COMFY_PROMPT)], "ComfyUI"),
        ([text_chunk("workflow", COMFY_WORKFLOW)], "ComfyUI"),
        ([text_chunk("invokeai_metadata", '{"model": "x"}')], "InvokeAI"),
        ([text_chunk("Software", "NovelAI")], "NovelAI"),
    ],
)
def test_generator_text_chunks_are_fingerprints(chunks: list[bytes], generator: str) -> None:
    found = ProvenanceReader().read(png_with_chunks(*chunks))
    assert found is not None
    assert found.source == "png_text"
    assert found.generator == generator
    assert found.ai_generated is True
    assert found.validated is False


@pytest.mark.parametrize(
    "chunk",
    [
        text_chunk("parameters", "width=3, height=4"),  # not generation parameters
        text_chunk("prompt", "not json"),
        text_chunk("Comment", "painted with a firefly in view"),  # free text naming nothing
        text_chunk("Software", "GIMP 2.10"),
    ],
)
def test_ordinary_text_chunks_are_not_fingerprints(chunk: bytes) -> None:
    assert ProvenanceReader().read(png_with_chunks(chunk)) is None


def test_exif_software_naming_a_generator_is_a_fingerprint() -> None:
    found = ProvenanceReader().read(jpeg_with_exif(Software="Midjourney v6"))
    assert found is not None
    assert found.source == "exif"
    assert found.generator == "Midjourney"


def test_generation_parameters_in_an_exif_user_comment_are_a_fingerprint() -> None:
    comment = b"UNICODE\x00" + A1111.encode("utf-16-be")
    found = ProvenanceReader().read(jpeg_with_exif(UserComment=comment))
    assert found is not None
    assert found.source == "exif"
    assert found.generator == "Stable Diffusion web UI (parameters)"


def test_a_camera_exif_is_nothing() -> None:
    assert ProvenanceReader().read(jpeg_with_exif(Software="Camera firmware 1.2")) is None


def test_c2pa_outranks_the_weaker_sources(
    trusting: ProvenanceReader, identity: SigningIdentity
) -> None:
    base = png_with_chunks(text_chunk("parameters", A1111))
    found = trusting.read(c2pa_signed(base, identity, mime="image/png"))
    assert found is not None
    assert found.source == "c2pa"


# --- hostile input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"c2pa",
        b"\xff\xd8\xff" + b"c2pa" * 100,  # a JPEG start and the label, nothing parseable
        b"\x89PNG\r\n\x1a\n" + b"c2pa" + os.urandom(64),
        os.urandom(4096),
        b"<x:xmpmeta " + b"A" * 10_000,  # a packet that never ends
        png()[:40],  # truncated
    ],
)
def test_garbage_never_raises(data: bytes, trusting: ProvenanceReader) -> None:
    found = trusting.read(data)
    assert found is None or found.validated is False


def test_a_chunk_length_past_the_end_stops_the_walk() -> None:
    lying = struct.pack(">I", 0x7FFFFFFF) + b"tEXt" + b"parameters\x00Steps: 1"
    assert list(png_text_chunks(png_with_chunks(lying))) == []


def test_a_compressed_text_bomb_inflates_only_to_the_limit() -> None:
    bomb = png_chunk(b"zTXt", b"parameters\x00\x00" + zlib.compress(b"A" * (50 * MAX_TEXT_BYTES)))
    chunks = list(png_text_chunks(png_with_chunks(bomb)))
    assert len(chunks) == 1
    assert len(chunks[0].text) == MAX_TEXT_BYTES


def test_an_unterminated_xmp_packet_is_ignored() -> None:
    assert xmp_packet(b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>" + b"x" * 1000) is None


def test_reported_text_is_bounded(trusting: ProvenanceReader, identity: SigningIdentity) -> None:
    found = trusting.read(c2pa_signed(jpeg(), identity, generator="Gen\x07" + "Z" * 5000))
    assert found is not None
    assert found.generator is not None
    assert len(found.generator) <= 200
    assert found.generator.isprintable()
    overlong = jpeg_with_xmp(xmp(creator_tool="Midjourney" + "Z" * 5000))
    assert ProvenanceReader().read(overlong) is None


# --- vocabulary -----------------------------------------------------------------------------


def test_source_type_terms_come_from_uris_or_bare_terms() -> None:
    assert source_type_term("http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture") == (
        "digitalCapture"
    )
    assert source_type_term("trainedAlgorithmicMedia") == "trainedAlgorithmicMedia"
    assert source_type_term("<script>") is None


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("ComfyUI", "ComfyUI"),
        ("DALL·E 3", "DALL-E"),
        ("Adobe Firefly", "Adobe Firefly"),
        ("Adobe Photoshop 25.0", None),
        ("Canon EOS R5 firmware", None),
    ],
)
def test_known_generators(text: str, name: str | None) -> None:
    assert known_generator(text) == name


def test_an_unreadable_trust_list_is_a_clear_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        ProvenanceReader(tmp_path / "missing.pem")
    empty = tmp_path / "empty.pem"
    empty.write_text("nothing here")
    with pytest.raises(ValueError, match="no PEM certificate"):
        ProvenanceReader(empty)


def _exif_block(software: str) -> bytes:
    exif = Image.Exif()
    exif[0x0131] = software
    return exif.tobytes()


def test_exif_in_a_png_is_read_from_its_chunk_without_decoding_pixels() -> None:
    # The IDAT is garbage: decoding the pixels would fail, reading the eXIf chunk must not.
    header = png()[:33]  # signature + IHDR
    data = header + png_chunk(b"eXIf", _exif_block("DALL-E 3")) + png_chunk(b"IDAT", b"junk")
    data += png_chunk(b"IEND", b"")
    found = ProvenanceReader().read(data)
    assert found is not None
    assert found.source == "exif"
    assert found.generator == "DALL-E"


def test_exif_in_a_webp_is_read() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buffer, "WEBP", exif=_exif_block("ComfyUI"))
    found = ProvenanceReader().read(buffer.getvalue())
    assert found is not None
    assert found.generator == "ComfyUI"
