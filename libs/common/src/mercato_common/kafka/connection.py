"""How a process reaches Kafka: bootstrap servers, client id, TLS and SASL, in one object that
every producer, consumer, relay and admin client of the process is built from.

:func:`kafka_connection` reads it from the kit's :class:`~mercato_common.settings.KafkaSettings`
group, so a managed Kafka (TLS with the provider's CA, a client certificate, SASL PLAIN or
SCRAM) is a matter of settings, the same in every service.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mercato_common.runtime import Periodic
from mercato_common.settings import KafkaSettings
from mercato_common.tls import ContextCertificates

__all__ = [
    "KafkaCertificates",
    "KafkaConnection",
    "kafka_connection",
    "kafka_ssl_context",
    "kafka_tls_reload",
]


@dataclass(frozen=True, slots=True)
class KafkaConnection:
    """Where and how to connect; shared by producers and consumers of one service."""

    bootstrap_servers: str | Sequence[str]
    client_id: str = "mercato"
    security_protocol: str = "PLAINTEXT"
    ssl_context: ssl.SSLContext | None = None
    sasl_mechanism: str = "PLAIN"
    sasl_plain_username: str | None = None
    # repr=False: this object ends up in logs and tracebacks.
    sasl_plain_password: str | None = field(default=None, repr=False)

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments common to AIOKafkaProducer, AIOKafkaConsumer and the admin client."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.ssl_context is not None:
            kwargs["ssl_context"] = self.ssl_context
        if self.security_protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_plain_username
            kwargs["sasl_plain_password"] = self.sasl_plain_password
        return kwargs


def kafka_ssl_context(settings: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context of ``settings`` (None for PLAINTEXT and SASL_PLAINTEXT).

    The brokers' certificates are checked against ``KAFKA_SSL_CA_FILE`` (the system's trust
    store when unset, as for a managed Kafka with a public CA) and, unless turned off, against
    the host name; ``KAFKA_SSL_CERT_FILE``/``KAFKA_SSL_KEY_FILE`` are presented to brokers that
    ask for a client certificate. The files are read once, here, at start.
    """
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    ca_file = settings.kafka_ssl_ca_file
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file is not None else None
    )
    context.check_hostname = settings.kafka_ssl_check_hostname
    if settings.kafka_ssl_cert_file is not None and settings.kafka_ssl_key_file is not None:
        context.load_cert_chain(settings.kafka_ssl_cert_file, settings.kafka_ssl_key_file)
    return context


def kafka_connection(settings: KafkaSettings, *, client_id: str) -> KafkaConnection:
    """The connection ``settings`` describe, naming itself ``client_id`` unless the settings
    name it (``KAFKA_CLIENT_ID``)."""
    uses_sasl = settings.kafka_security_protocol.startswith("SASL_")
    return KafkaConnection(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=settings.kafka_client_id or client_id,
        security_protocol=settings.kafka_security_protocol,
        ssl_context=kafka_ssl_context(settings),
        sasl_mechanism=settings.kafka_sasl_mechanism,
        sasl_plain_username=settings.kafka_sasl_username if uses_sasl else None,
        sasl_plain_password=(
            settings.kafka_sasl_password.get_secret_value() if uses_sasl else None
        ),
    )


class KafkaCertificates(ContextCertificates):
    """Renewed Kafka TLS files (client certificate, CA bundle) taken into the connection's
    context in place: the next connection to a broker presents them (aiokafka keeps the
    context object)."""

    def __init__(self, context: ssl.SSLContext, settings: KafkaSettings) -> None:
        super().__init__(
            context,
            cert_file=settings.kafka_ssl_cert_file,
            key_file=settings.kafka_ssl_key_file,
            ca_file=settings.kafka_ssl_ca_file,
            what="Kafka TLS",
        )


def kafka_tls_reload(
    connection: KafkaConnection,
    settings: KafkaSettings,
    *,
    interval: float,
    logger: logging.Logger,
) -> Periodic | None:
    """The job that takes renewed Kafka TLS files into ``connection``'s context every
    ``interval`` seconds, so renewed client certificates (and CA bundles) are used without a
    restart; None when the connection has no TLS."""
    if connection.ssl_context is None:
        return None
    certificates = KafkaCertificates(connection.ssl_context, settings)

    async def reload() -> None:
        certificates.reload_if_changed()

    return Periodic("kafka-tls-reload", reload, interval=interval, logger=logger)
