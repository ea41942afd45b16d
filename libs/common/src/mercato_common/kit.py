"""The service kit: a service is declared, the kit runs it.

A service's ``app.py`` creates one :class:`Service` from its settings and declares on it what the
service is made of; the kit adds what every service has and puts the parts in one start order:

1. stores (:meth:`Service.postgres`, :meth:`Service.mongo`): connected, migrated, probed;
2. clients (:meth:`Service.client`, :meth:`Service.part`): channels to other services and the
   like, closed on stop;
3. publishers (:meth:`Service.postgres_outbox`, :meth:`Service.mongo_outbox`): the outbox relays;
4. consumers (:meth:`Service.consume`): consumer groups;
5. jobs (:meth:`Service.job`): periodic work;
6. the saturation metrics, the gRPC server (:meth:`Service.serve`: health, reflection,
   interceptors, graceful stop) and the health watch, which turns the server NOT_SERVING while a
   store or a broker the service needs is unreachable (:mod:`mercato_common.health`).

:func:`run_until_signal` starts the parts in that order and stops them in reverse, so the server
drains before the consumers, the relays and the stores it uses go away.

Every ``__main__.py`` is the same few lines: it hands its :class:`Definition` (settings model,
builder, admin commands) to :func:`main`, which reads the environment once, sets up telemetry and
runs ``serve`` (the default), ``migrate`` or one of the service's commands.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypedDict, TypeVar

import grpc
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import REGISTRY, CollectorRegistry

from mercato_common.client import TLS_CHECK_SECONDS, create_channel, verifier_from_auth
from mercato_common.db_metrics import DbOperationMetrics
from mercato_common.health import HealthWatch
from mercato_common.identity import JwksTokenVerifier, TokenVerifier, auth_jwks_fetcher
from mercato_common.kafka import (
    ConsumerGroup,
    EventProducer,
    Handler,
    KafkaConnection,
    kafka_connection,
    kafka_tls_reload,
)
from mercato_common.outbox.runner import RelayRunner
from mercato_common.runtime import (
    CloseOnStop,
    Lifecycle,
    run_until_signal,
    start_all,
    stop_all,
)
from mercato_common.saturation import SaturationMetrics
from mercato_common.server import GrpcServer
from mercato_common.settings import (
    BaseServiceSettings,
    KafkaSettings,
    MongoSettings,
    OutboxSettings,
    PostgresSettings,
    SettingsError,
    load_settings,
)
from mercato_common.telemetry import configure_logging, telemetry_for

if TYPE_CHECKING:
    # The drivers load only in the services that use them (each is several MiB of memory).
    from pymongo.asynchronous.collection import AsyncCollection

    from mercato_common.mongo import IndexSpec, MongoStore
    from mercato_common.outbox.mongo import MongoOutboxRelay
    from mercato_common.outbox.postgres import PostgresOutboxRelay
    from mercato_common.postgres import Database


__all__ = [
    "App",
    "BrokerProbe",
    "Command",
    "Definition",
    "KitOptions",
    "Service",
    "main",
]

_log = logging.getLogger("mercato.kit")

S = TypeVar("S", bound=BaseServiceSettings)


class StorePart(Lifecycle, Protocol):
    """A store the kit runs: started and stopped with the service, migrated by ``migrate``."""

    async def migrate(self) -> list[Any]: ...


class BrokerProbe:
    """Asks the Kafka cluster to describe itself (the health probe of a service that needs it).

    The admin client connects at the first probe and is rebuilt after a failure, so a broker
    that comes back is seen at the next probe.
    """

    def __init__(self, connection: KafkaConnection) -> None:
        self._connection = connection
        self._admin: Any = None

    async def __call__(self) -> None:
        try:
            if self._admin is None:
                admin = AIOKafkaAdminClient(**self._connection.client_kwargs())
                await admin.start()
                self._admin = admin
            await self._admin.describe_cluster()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()


class KitOptions(TypedDict, total=False):
    """What a test or a bench may hand a service's ``build_app`` besides its settings: the
    verifier of callers' tokens (instead of one fed by auth's JWKS) and the metrics registry.

    Every builder takes them as ``**options: Unpack[KitOptions]`` and passes them on to
    :class:`Service`.
    """

    token_verifier: TokenVerifier | None
    registry: CollectorRegistry


class Service:
    """One service as the kit runs it: declare its parts, then hand :attr:`parts` to the runner.

    Nothing connects until the parts start. ``token_verifier`` checks the callers' access tokens;
    without one, :meth:`verify_tokens_with_auth` builds one fed by auth's JWKS.
    """

    def __init__(
        self,
        settings: BaseServiceSettings,
        *,
        token_verifier: TokenVerifier | None = None,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.settings = settings
        self.name = settings.service_name
        self.registry = registry
        self.saturation = SaturationMetrics(registry)
        self._token_verifier = token_verifier
        self._server: GrpcServer | None = None
        self.health = HealthWatch(
            lambda serving: self.server.set_serving(serving),
            interval=settings.health_check_interval_seconds,
            grace=settings.health_grace_seconds,
            registry=registry,
        )
        self.stores: list[StorePart] = []
        self.clients: list[Lifecycle] = []
        self._publishers: list[Lifecycle] = []
        self._consumers: list[Lifecycle] = []
        self._jobs: list[Lifecycle] = []
        self._broker_probe: BrokerProbe | None = None
        self._kafka_connection: KafkaConnection | None = None

    # --- the gRPC server ----------------------------------------------------------------------

    @property
    def server(self) -> GrpcServer:
        """The gRPC server, built at first use with the token verifier known by then."""
        if self._server is None:
            self._server = GrpcServer(
                self.settings,
                error_domain=f"{self.name}.mercato",
                token_verifier=self._token_verifier,
                registry=self.registry,
            )
        return self._server

    def verify_tokens(self, verifier: TokenVerifier) -> None:
        """Verify callers' tokens with ``verifier`` (before the first :meth:`serve`)."""
        if self._server is not None:
            raise RuntimeError("verify_tokens() must come before serve()")
        self._token_verifier = verifier
        if isinstance(verifier, JwksTokenVerifier):
            self.clients.append(CloseOnStop(verifier.close))  # its revocation list's client

    def verify_tokens_with_auth(self, auth: str | grpc.aio.Channel) -> None:
        """Verify callers' tokens against auth's JWKS, fetched over ``auth``: a channel the
        service already has to auth, or auth's address for a channel of its own, closed on stop.
        Nothing changes when a verifier was given already (as tests do)."""
        if self._token_verifier is not None:
            return
        if isinstance(auth, str):
            verifier, channel = verifier_from_auth(
                self.settings, auth_target=auth, tls=self.settings.client_tls
            )
            self.clients.append(CloseOnStop(channel.close))
        else:
            verifier = JwksTokenVerifier.from_settings(auth_jwks_fetcher(auth), self.settings)
        self.verify_tokens(verifier)

    def serve(
        self, add_to_server: Callable[[Any, grpc.aio.Server], None], servicer: Any, name: str
    ) -> None:
        """Serve ``servicer`` (``add_XServicer_to_server``, the servicer, its full name)."""
        self.server.add_service(add_to_server, servicer, name)

    # --- stores -------------------------------------------------------------------------------

    def postgres(
        self,
        settings: PostgresSettings,
        *,
        package: str | None = None,
        migrations: Traversable | None = None,
        outbox_migration: int | None = None,
        unavailable_error: Callable[[], BaseException] | None = None,
    ) -> Database:
        """The service's PostgreSQL pool: migrated at start, probed, its pool in the metrics.

        ``package`` is the service's store package, by default the ``store`` package beside the
        module of the settings' class (``mercato_orders.store``), as the layout has it. Its
        ``migrations/`` folder holds the migrations (unless ``migrations`` names another) and its
        name is the logger name of the database.
        """
        from mercato_common.postgres import Database

        package = package or type(settings).__module__.rpartition(".")[0] + ".store"
        database = Database(
            settings.database_url.get_secret_value(),
            logger_name=package,
            migrations=migrations if migrations is not None else files(package) / "migrations",
            min_size=settings.database_pool_min_size,
            max_size=settings.database_pool_max_size,
            command_timeout=settings.database_command_timeout_seconds,
            acquire_timeout=settings.database_command_timeout_seconds,
            migrate_on_start=settings.migrate_on_start,
            unavailable_error=unavailable_error,
            outbox_migration=outbox_migration,
            query_logger=DbOperationMetrics.for_registry(self.registry).postgres_logger(),
        )
        self.stores.append(database)
        self.saturation.watch_postgres("postgres", lambda: database.pool)
        self.health.watch("postgres", database.ping)
        return database

    def mongo(
        self,
        settings: MongoSettings,
        *,
        indexes: Mapping[str, Sequence[IndexSpec]],
        retired_indexes: Mapping[str, Sequence[str]] | None = None,
        on_connect: Callable[[Any], Awaitable[None]] | None = None,
    ) -> MongoStore:
        """The service's MongoDB database: indexes created (and retired ones dropped) at start,
        probed, pool in metrics."""
        from mercato_common.mongo import MongoCommandMetrics, MongoPoolMonitor, MongoStore

        monitor = MongoPoolMonitor()
        commands = MongoCommandMetrics(DbOperationMetrics.for_registry(self.registry))
        store = MongoStore(
            settings,
            appname=f"mercato-{self.name}",
            indexes=indexes,
            retired_indexes=retired_indexes,
            event_listeners=[monitor, commands],
            on_connect=on_connect,
        )
        self.stores.append(store)
        self.saturation.watch_mongo(
            "mongodb", monitor, store.client.options.pool_options.max_pool_size
        )
        self.health.watch("mongodb", store.ping)
        return store

    # --- Kafka --------------------------------------------------------------------------------

    def kafka(self, settings: KafkaSettings) -> KafkaConnection:
        """How this service connects to Kafka (one client id per service): one connection for
        every producer, consumer and probe of the service, so that one TLS context, reloaded
        in place when its files are renewed, serves them all."""
        if self._kafka_connection is not None:
            return self._kafka_connection
        connection = kafka_connection(settings, client_id=f"mercato-{self.name}")
        self._kafka_connection = connection
        reload = kafka_tls_reload(connection, settings, interval=TLS_CHECK_SECONDS, logger=_log)
        if reload is not None:
            self.job(reload)
        return connection

    def _watch_broker(self, connection: KafkaConnection, *, required: bool) -> None:
        if self._broker_probe is None:
            self._broker_probe = BrokerProbe(connection)
            self.clients.append(CloseOnStop(self._broker_probe.close))
            self.health.watch("kafka", self._broker_probe, required=required)

    def postgres_outbox(
        self, database: Database, settings: OutboxSettings
    ) -> RelayRunner[PostgresOutboxRelay] | None:
        """The relay of the outbox table of ``database`` (None when the relay is turned off).

        The broker is not required for serving: accepted changes wait in the outbox.
        """
        if not settings.outbox_relay_enabled:
            return None
        from mercato_common.outbox.postgres import PostgresOutboxRelay

        producer = self._producer(settings)

        def make_relays() -> list[PostgresOutboxRelay]:
            # Made at start: the relay reads the pool, which exists once the database started.
            return [
                PostgresOutboxRelay(
                    database.pool,
                    producer,
                    poll_interval=settings.outbox_poll_interval_seconds,
                    registry=self.registry,
                )
            ]

        relay = RelayRunner(producer, make_relays)
        self._publishers.append(relay)
        return relay

    def mongo_outbox(
        self,
        collections: Sequence[AsyncCollection[Any]],
        settings: OutboxSettings,
        *,
        write_guard: Callable[[str, Any], contextlib.AbstractAsyncContextManager[Any]]
        | None = None,
    ) -> RelayRunner[MongoOutboxRelay] | None:
        """The relays of the outboxes embedded in ``collections``' documents (None when off).

        ``write_guard(collection name, document id)`` serialises the relay's writes with the
        service's own where the server needs it (FerretDB).
        """
        if not settings.outbox_relay_enabled:
            return None
        from mercato_common.outbox.mongo import MongoOutboxRelay

        producer = self._producer(settings)
        relays = RelayRunner(
            producer,
            [
                MongoOutboxRelay(
                    collection,
                    producer,
                    poll_interval=settings.outbox_poll_interval_seconds,
                    registry=self.registry,
                    write_guard=(
                        functools.partial(write_guard, collection.name) if write_guard else None
                    ),
                )
                for collection in collections
            ],
            grace=5.0,
        )
        self._publishers.append(relays)
        return relays

    def _producer(self, settings: KafkaSettings) -> EventProducer:
        connection = self.kafka(settings)
        producer = EventProducer(connection)
        self.saturation.watch_producer(producer)
        self._watch_broker(connection, required=False)
        return producer

    def consume(self, group: ConsumerGroup, connection: KafkaConnection) -> ConsumerGroup:
        """Run a consumer group; the broker becomes a dependency the service needs."""
        self._consumers.append(group)
        if group.producer is not None:
            self.saturation.watch_producer(group.producer)
        self._watch_broker(connection, required=True)
        return group

    def consume_events(
        self,
        settings: KafkaSettings,
        *,
        group_id: str,
        topics: Sequence[str],
        handler: Handler,
        dead_letter_topic: str | Callable[[str], str] | None = None,
        **options: Any,
    ) -> ConsumerGroup:
        """Consume ``topics`` as member of ``group_id`` with ``handler`` (an idempotent one:
        delivery is at least once); ``options`` go to :class:`ConsumerGroup`."""
        connection = self.kafka(settings)
        group = ConsumerGroup(
            connection,
            group_id=group_id,
            topics=topics,
            handler=handler,
            dead_letter_topic=dead_letter_topic,
            registry=self.registry,
            **options,
        )
        return self.consume(group, connection)

    # --- the rest -----------------------------------------------------------------------------

    def client(
        self,
        target: str,
        *,
        services: Sequence[str],
        timeout: float,
        metadata: Callable[[], Awaitable[Sequence[tuple[str, str]]]] | None = None,
    ) -> grpc.aio.Channel:
        """A channel to another service (deadlines, retries of idempotent calls), closed on stop."""
        channel = create_channel(
            target,
            services=services,
            default_timeout=timeout,
            tls=self.settings.client_tls,
            metadata=metadata,
            max_message_bytes=self.settings.max_message_bytes,
        )
        self.clients.append(CloseOnStop(channel.close))
        return channel

    def part(self, part: Lifecycle) -> None:
        """Any other part (a cache client, a service object that drains its tasks on stop),
        started after the stores and before the publishers."""
        self.clients.append(part)

    def job(self, job: Lifecycle) -> None:
        """Periodic work (a :class:`mercato_common.runtime.Periodic`), started before the server."""
        self._jobs.append(job)

    @property
    def parts(self) -> list[Lifecycle]:
        """Every part in start order (see the module's docstring)."""
        return [
            *self.stores,
            *self.clients,
            *self._publishers,
            *self._consumers,
            *self._jobs,
            self.saturation,
            self.server,
            self.health,
        ]

    async def migrate(self) -> None:
        """Apply every store's migrations (PostgreSQL files, MongoDB indexes) and return."""
        for store in self.stores:
            applied = await store.migrate()
            print(f"{type(store).__name__}: applied {len(applied)} migration(s)")

    @contextlib.asynccontextmanager
    async def running(self, *parts: Lifecycle) -> AsyncIterator[None]:
        """Run ``parts`` (default: the stores) for the length of an admin command."""
        started = await start_all(parts or self.stores)
        try:
            yield
        finally:
            await stop_all(started)


@dataclass
class App:
    """What a service's builder returns: its kit :class:`Service`; a service's own app class
    adds the objects its commands and tests reach."""

    kit: Service

    @property
    def parts(self) -> list[Lifecycle]:
        return self.kit.parts

    @property
    def server(self) -> GrpcServer:
        return self.kit.server


A = TypeVar("A", bound=App)
T = TypeVar("T")


@dataclass(frozen=True)
class Command(Generic[S, A]):
    """An admin command: ``python -m mercato_<name> <name> [arguments]``.

    ``run(app, args, environ)`` gets the app built from the settings (nothing started: it starts
    what it needs, usually ``app.kit.running()``) and returns the exit status (None: 0).
    """

    name: str
    help: str
    run: Callable[[A, argparse.Namespace, Mapping[str, str]], Awaitable[int | None]]
    arguments: Callable[[argparse.ArgumentParser], None] | None = None


@dataclass(frozen=True)
class Definition(Generic[S, A]):
    """A service for :func:`main`: its name, settings model, builder and admin commands."""

    name: str
    settings: type[S]
    build: Callable[..., A]
    commands: Sequence[Command[S, A]] = field(default_factory=tuple)

    def main(
        self, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> int:
        """The service's ``python -m`` entry point (see :func:`main`)."""
        return main(self, argv, environ)


def _parser(definition: Definition[Any, Any]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m mercato_{definition.name}",
        description=f"The mercato {definition.name} service: serve it, migrate its store, or run "
        "one of its admin commands.",
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the service until SIGTERM/SIGINT (the default)")
    commands.add_parser(
        "migrate", help="apply the store's migrations (PostgreSQL) or indexes (MongoDB) and exit"
    )
    for command in definition.commands:
        sub = commands.add_parser(command.name, help=command.help)
        if command.arguments is not None:
            command.arguments(sub)
    return parser


def main(
    definition: Definition[Any, Any],
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Read the environment once, then run ``serve`` (default), ``migrate`` or a command."""
    environ = os.environ if environ is None else environ
    args = _parser(definition).parse_args(argv)
    try:
        settings = load_settings(definition.settings, environ)
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    command = args.command or "serve"
    if command == "serve":
        telemetry = telemetry_for(settings)
        try:
            run_on(settings.event_loop, _serve(definition, settings))
        finally:
            telemetry.shutdown()
        return 0
    configure_logging(settings.service_name, settings.service_version, settings.log_level)
    return asyncio.run(_admin(definition, settings, command, args, environ))


def run_on(event_loop: str, main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the chosen event loop implementation (``uvloop`` or
    ``asyncio``'s own)."""
    if event_loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


async def _serve(definition: Definition[Any, Any], settings: BaseServiceSettings) -> None:
    app = definition.build(settings)
    await run_until_signal(app.kit.parts)


async def _admin(
    definition: Definition[Any, Any],
    settings: BaseServiceSettings,
    command: str,
    args: argparse.Namespace,
    environ: Mapping[str, str],
) -> int:
    # Admin commands export no metrics: a registry of their own keeps the default one untouched.
    app = definition.build(settings, registry=CollectorRegistry())
    if command == "migrate":
        try:
            await app.kit.migrate()
        finally:
            await stop_all(app.kit.stores)
        return 0
    chosen = next(c for c in definition.commands if c.name == command)
    return await chosen.run(app, args, environ) or 0
