"""The SSRF guard for callbacks, and a transport that connects where the guard looked.

``check_callback_url`` resolves the callback's host and refuses loopback, private,
link-local (cloud metadata), shared and reserved addresses unless allow-listed;
it returns the addresses it vetted. ``PinnedTransport`` then connects to one of
*those* addresses, never to a fresh DNS answer, so a name that answers a public
address to the check and ``127.0.0.1`` to the connection (DNS rebinding) cannot
reach the worker's own network. The request keeps its host name where it
matters: the ``Host`` header, TLS SNI and certificate verification all use the
name (httpcore's ``sni_hostname`` extension), only the TCP connection uses the
address.

A host allow-listed *by name* is trusted as a name: it is connected to by name,
as any HTTP client would (no pinning, nothing to vet).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import httpx

Resolver = Callable[[str, int], Sequence[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PINNED_ADDRESSES = "synthdetect.pinned_addresses"
"""Request extension: the addresses ``check_callback_url`` vetted for this request, so
``PinnedTransport`` connects to them without resolving the name a second time."""


class CallbackRefused(Exception):
    """The callback can never be delivered as configured (SSRF guard, no secret)."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in the resolver's order (duplicates dropped)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc.strerror}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def check_callback_url(
    url: str, allowlist: Sequence[str], resolve: Resolver = system_resolver
) -> list[str]:
    """The addresses ``url``'s host may be reached at, in the resolver's order.

    Raises ``CallbackRefused`` if any address the host resolves to is not public
    and not allow-listed (one bad answer refuses the host: the client might pick
    it), ``OSError`` if DNS fails. Returns ``[]`` for a host allow-listed by name:
    connect to it by name. ``allowlist`` entries are host names, addresses or CIDR
    ranges.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused(f"callback URL must be http(s) with a host: {url!r}")
    host = parts.hostname.lower()
    names = {entry.lower() for entry in allowlist}
    if host in names:
        return []
    networks: list[IPNetwork] = []
    for entry in allowlist:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue  # a host name, handled above
    port = parts.port or (443 if parts.scheme == "https" else 80)
    vetted: list[str] = []
    for text in resolve(host, port):
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if not _is_public(address) and not any(address in net for net in networks):
            raise CallbackRefused(
                f"callback host {host!r} resolves to {address}, a non-public address "
                "(loopback, private, link-local or metadata); allow-list it to permit"
            )
        vetted.append(text)
    if not vetted:
        raise OSError(f"cannot resolve {host}: no addresses")
    return vetted


class PinnedTransport(httpx.BaseTransport):
    """An httpx transport that connects only to addresses the SSRF guard vetted.

    The addresses come from the request's ``PINNED_ADDRESSES`` extension (set by
    ``deliver_attempt``, which has just run the guard; ``[]`` there means the host
    is allow-listed by name) or, without it, from running the guard here with
    ``resolve`` and ``allowlist``. They are tried in
    order while connecting fails; a refused host raises ``CallbackRefused`` and
    no connection is made. ``inner`` makes the connections (default: httpx's own
    ``HTTPTransport`` with ``verify`` on).
    """

    def __init__(
        self,
        allowlist: Sequence[str],
        resolve: Resolver = system_resolver,
        inner: httpx.BaseTransport | None = None,
    ) -> None:
        self._allowlist = list(allowlist)
        self._resolve = resolve
        self._inner = inner or httpx.HTTPTransport(trust_env=False)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        addresses = request.extensions.get(PINNED_ADDRESSES)
        if addresses is None:
            addresses = check_callback_url(str(request.url), self._allowlist, self._resolve)
        if not addresses:  # allow-listed by name
            return self._inner.handle_request(request)
        failure: httpx.ConnectError | None = None
        for address in addresses:
            try:
                return self._inner.handle_request(pinned_request(request, address))
            except httpx.ConnectError as exc:
                failure = exc
        assert failure is not None
        raise failure

    def close(self) -> None:
        self._inner.close()


def pinned_request(request: httpx.Request, address: str) -> httpx.Request:
    """``request`` sent to ``address``, with its ``Host`` header, SNI and certificate
    checks still on the URL's host name."""
    extensions = {
        key: value for key, value in request.extensions.items() if key != PINNED_ADDRESSES
    }
    extensions["sni_hostname"] = request.url.host
    return httpx.Request(
        request.method,
        request.url.copy_with(host=address.split("%", 1)[0]),
        headers=request.headers,  # Host: the name (and port), set when the request was built
        stream=request.stream,
        extensions=extensions,
    )
