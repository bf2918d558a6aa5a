"""Image files with provenance metadata, made here: C2PA-signed, PNG text chunks, XMP, EXIF.

C2PA fixtures are signed with ``c2pa-python`` and certificates generated on the
fly with ``cryptography`` (an ES256 root CA and a signing certificate with the
extended key usage C2PA requires), so no key material is checked in. A second,
unrelated CA makes forgeries: well-formed manifests whose signer no trust list
knows.
"""

from __future__ import annotations

import datetime
import io
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from PIL import Image

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
_NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
_VALIDITY = datetime.timedelta(days=3650)


@dataclass(frozen=True)
class SigningIdentity:
    """A root CA (the trust anchor) and a signing certificate chain with its key, as PEM."""

    root_pem: bytes
    chain_pem: bytes
    key_pem: bytes

    def write_anchor(self, folder: Path) -> Path:
        path = folder / "anchors.pem"
        path.write_bytes(self.root_pem)
        return path


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "synthdetect tests"),
        ]
    )


def _key_usage(*, sign_certs: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not sign_certs,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=sign_certs,
        crl_sign=sign_certs,
        encipher_only=False,
        decipher_only=False,
    )


def make_identity(label: str) -> SigningIdentity:
    """A fresh CA and signer (ES256) named after ``label``."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{label} root"))
        .issuer_name(_name(f"{label} root"))
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW)
        .not_valid_after(_NOW + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(sign_certs=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), False)
        .sign(root_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{label} signer"))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW)
        .not_valid_after(_NOW + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(sign_certs=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), False
        )
        .sign(root_key, hashes.SHA256())
    )

    def pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return SigningIdentity(pem(root), pem(leaf) + pem(root), key_pem)


def jpeg(size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (200, 40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png(size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (30, 40, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def c2pa_signed(
    image: bytes,
    identity: SigningIdentity,
    *,
    source_type: str = "trainedAlgorithmicMedia",
    generator: str = "TestGen Image Model",
    action: str = "c2pa.created",
    mime: str = "image/jpeg",
) -> bytes:
    """``image`` with a C2PA manifest: one ``action`` whose digital source type is given."""
    import c2pa

    manifest = {
        "claim_generator_info": [{"name": generator, "version": "1.0"}],
        "title": "fixture",
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {
                    "actions": [
                        {
                            "action": action,
                            "digitalSourceType": IPTC + source_type,
                            "softwareAgent": {"name": generator},
                        }
                    ]
                },
            }
        ],
    }
    info = c2pa.C2paSignerInfo(b"es256", identity.chain_pem, identity.key_pem, None)
    signer = c2pa.Signer.from_info(info)
    builder = c2pa.Builder(json.dumps(manifest))
    out = io.BytesIO()
    builder.sign(signer, mime, io.BytesIO(image), out)
    return out.getvalue()


def reencoded(image: bytes) -> bytes:
    """The same pixels saved again: every metadata block is stripped."""
    buf = io.BytesIO()
    with Image.open(io.BytesIO(image)) as opened:
        opened.convert("RGB").save(buf, opened.format or "PNG")
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def png_with_chunks(*chunks: bytes, base: bytes | None = None) -> bytes:
    """A PNG with extra chunks inserted right after IHDR."""
    data = base or png()
    ihdr_end = 8 + 8 + 13 + 4
    return data[:ihdr_end] + b"".join(chunks) + data[ihdr_end:]


def text_chunk(key: str, text: str) -> bytes:
    return png_chunk(b"tEXt", key.encode("latin-1") + b"\x00" + text.encode("latin-1"))


def ztxt_chunk(key: str, text: str) -> bytes:
    return png_chunk(b"zTXt", key.encode() + b"\x00\x00" + zlib.compress(text.encode("latin-1")))


def itxt_chunk(key: str, text: str, *, compressed: bool = False) -> bytes:
    body = text.encode("utf-8")
    if compressed:
        body = zlib.compress(body)
    flags = bytes([1 if compressed else 0, 0])
    return png_chunk(b"iTXt", key.encode() + b"\x00" + flags + b"\x00\x00" + body)


def xmp(source_type: str | None = None, creator_tool: str | None = None) -> str:
    """An XMP packet with an IPTC DigitalSourceType and/or xmp:CreatorTool."""
    fields = []
    if source_type is not None:
        fields.append(f'Iptc4xmpExt:DigitalSourceType="{IPTC}{source_type}"')
    if creator_tool is not None:
        fields.append(f'xmp:CreatorTool="{creator_tool}"')
    return (
        '<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" '
        'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
        'xmlns:xmp="http://ns.adobe.com/xap/1.0/" ' + " ".join(fields) + "/>"
        "</rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    )


def jpeg_with_xmp(packet: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 120, 30)).save(buf, "JPEG", xmp=packet.encode())
    return buf.getvalue()


def jpeg_with_exif(**tags: str | bytes) -> bytes:
    """A JPEG whose EXIF holds ``Software``, ``ImageDescription`` or ``UserComment``."""
    image = Image.new("RGB", (64, 48), (90, 90, 90))
    exif = image.getexif()
    if "Software" in tags:
        exif[0x0131] = tags["Software"]
    if "ImageDescription" in tags:
        exif[0x010E] = tags["ImageDescription"]
    if "UserComment" in tags:
        exif.get_ifd(0x8769)[0x9286] = tags["UserComment"]
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif)
    return buf.getvalue()
