"""TLS material from certificate files, read again when the files change (kept apart so settings
need not import the gRPC client).

cert-manager renews a certificate in its Secret and the kubelet swaps the mounted files; a
process that read them once at start would serve, and present to its peers, an expired
certificate once it outlives it. So the files are watched (:class:`FilesWatch`: inode, size and
modification time of each): a gRPC server asks :class:`ServerCertificates` at every new
connection and gets the new certificate once the files changed; outgoing channels
(``mercato_common.client``) build a new connection with the new client certificate. Connections
already open keep the certificate they were opened with. Files that cannot be read, or a
certificate that does not match its key (a swap half-way), keep the current material and are
tried again at the next look.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc

__all__ = [
    "ClientTls",
    "ContextCertificates",
    "FilesWatch",
    "ServerCertificates",
    "check_key_pair",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# What identifies one version of a file: (inode, size, modification time in ns), or None when
# the file cannot be read.
_Stamp = tuple[tuple[int, int, int] | None, ...]


class FilesWatch:
    """Tells when a set of files changed since the version last accepted."""

    def __init__(self, *paths: Path | None) -> None:
        self.paths = tuple(path for path in paths if path is not None)
        self._accepted = self._stamp()

    def _stamp(self) -> _Stamp:
        stamps: list[tuple[int, int, int] | None] = []
        for path in self.paths:
            try:
                # stat follows the symlinks of a Secret volume: a swap changes the inode.
                status = path.stat()
            except OSError:
                stamps.append(None)
                continue
            stamps.append((status.st_ino, status.st_size, status.st_mtime_ns))
        return tuple(stamps)

    def poll(self) -> _Stamp | None:
        """The files' current version when it differs from the accepted one, else None."""
        stamp = self._stamp()
        return None if stamp == self._accepted else stamp

    def accept(self, stamp: _Stamp) -> None:
        """``stamp`` (from :meth:`poll`) was read successfully: the current version."""
        self._accepted = stamp

    def renewed(self, load: Callable[[], T], what: str) -> T | None:
        """``load()`` once the files changed, and the new version accepted; None when nothing
        changed or ``load`` could not use the files yet (tried again at the next look)."""
        stamp = self.poll()
        if stamp is None:
            return None
        try:
            loaded = load()
        except (OSError, ssl.SSLError) as exc:
            log.warning(
                "%s files changed but cannot be used yet (%s); keeping the current", what, exc
            )
            return None
        self.accept(stamp)
        log.info("%s reloaded", what)
        return loaded


def check_key_pair(cert_file: Path, key_file: Path) -> None:
    """Raise ``ssl.SSLError``/``OSError`` unless ``cert_file`` is a certificate for ``key_file``."""
    ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert_file, key_file)


@dataclass(frozen=True, slots=True)
class ClientTls:
    """Trust roots, and a client certificate for mutual TLS."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials from the files as they are now."""
        if self.cert_file is not None and self.key_file is not None:
            check_key_pair(self.cert_file, self.key_file)
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=self.key_file.read_bytes() if self.key_file else None,
            certificate_chain=self.cert_file.read_bytes() if self.cert_file else None,
        )

    def watch(self) -> FilesWatch:
        return FilesWatch(self.ca_file, self.cert_file, self.key_file)


class ServerCertificates:
    """The certificate a gRPC server presents (and the CA its clients' certificates must chain
    to), read again when the files change: the fetcher of
    ``grpc.dynamic_ssl_server_credentials``, which gRPC calls for every new connection."""

    def __init__(self, cert_file: Path, key_file: Path, client_ca_file: Path | None) -> None:
        self._cert_file = cert_file
        self._key_file = key_file
        self._client_ca_file = client_ca_file
        self._watch = FilesWatch(cert_file, key_file, client_ca_file)
        self.initial = self._load()

    def _load(self) -> grpc.ServerCertificateConfiguration:
        check_key_pair(self._cert_file, self._key_file)
        client_ca = self._client_ca_file.read_bytes() if self._client_ca_file else None
        return grpc.ssl_server_certificate_configuration(
            [(self._key_file.read_bytes(), self._cert_file.read_bytes())],
            root_certificates=client_ca,
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The new configuration when the files changed (None: keep the current one)."""
        return self._watch.renewed(self._load, "TLS certificate")

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.initial,
            # gRPC documents None as "no change"; its type stubs lack it.
            self.fetch,  # type: ignore[arg-type]
            require_client_authentication=self._client_ca_file is not None,
        )


@dataclass(eq=False)
class ContextCertificates:
    """Takes renewed files into an ``ssl.SSLContext`` in place: whoever holds the context (an
    aiokafka client, uvicorn's listener) uses them for its next handshake; connections already
    open keep theirs. A pair that does not match is checked on a scratch context first and left
    out, so the context never holds half a swap."""

    context: ssl.SSLContext
    _: KW_ONLY
    cert_file: Path | None
    key_file: Path | None
    ca_file: Path | None = None
    what: str = "TLS"
    _watch: FilesWatch = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._watch = FilesWatch(self.ca_file, self.cert_file, self.key_file)

    def reload_if_changed(self) -> bool:
        """Whether new files were taken."""
        return self._watch.renewed(self._load_into_context, f"{self.what} certificate") is not None

    def _load_into_context(self) -> bool:
        # Checked on a scratch context first: a failed load_cert_chain could leave this one
        # holding the new certificate with the old key.
        if self.cert_file is not None and self.key_file is not None:
            check_key_pair(self.cert_file, self.key_file)
            self.context.load_cert_chain(self.cert_file, self.key_file)
        if self.ca_file is not None:
            self.context.load_verify_locations(cafile=self.ca_file)
        return True
