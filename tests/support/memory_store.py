"""``MemoryStore``: an in-memory ``ObjectStore`` (the storage seam's test double)."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import BinaryIO

from worker.errors import ObjectNotFound, ObjectTooLarge
from worker.storage import DEFAULT_CONTENT_TYPE, ObjectInfo


class MemoryStore:
    """Objects in a dict keyed by address, with S3's semantics (key order, no folders).

    ``reads`` counts ``get_bytes`` calls per address, so tests can assert laziness.
    """

    def __init__(self, objects: dict[str, bytes] | None = None) -> None:
        self.objects: dict[str, bytes] = dict(objects or {})
        self.reads: dict[str, int] = {}
        self._lock = threading.Lock()

    def get_bytes(self, uri: str, max_bytes: int | None = None) -> bytes:
        self.reads[uri] = self.reads.get(uri, 0) + 1
        data = self._get(uri)
        if max_bytes is not None and len(data) > max_bytes:
            raise ObjectTooLarge(uri, len(data), max_bytes)
        return data

    def open_stream(self, uri: str, start: int = 0, end: int | None = None) -> BinaryIO:
        return io.BytesIO(self._get(uri)[start:end])

    def put_bytes(self, uri: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        self.objects[uri] = data

    def put_if_absent(
        self, uri: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> bool:
        with self._lock:
            if uri in self.objects:
                return False
            self.objects[uri] = data
            return True

    def list_objects(self, prefix_uri: str) -> Iterator[ObjectInfo]:
        for uri in sorted(self.objects):
            if uri.startswith(prefix_uri) and not uri.endswith("/"):
                yield ObjectInfo(uri, len(self.objects[uri]))

    def exists(self, uri: str) -> bool:
        return uri in self.objects

    def delete(self, uri: str) -> None:
        self.objects.pop(uri, None)

    def _get(self, uri: str) -> bytes:
        try:
            return self.objects[uri]
        except KeyError:
            raise ObjectNotFound(f"no object at {uri}") from None
