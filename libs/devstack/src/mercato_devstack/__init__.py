"""Local real stack for development and tests: PostgreSQL, Kafka, FerretDB and Redis processes.

    from mercato_devstack import Stack

    stack = Stack()            # paths and ports from MERCATO_* environment variables
    stack.up()                 # idempotent; waits until every component answers
    stack.postgres_dsn("auth"), stack.kafka_bootstrap, stack.mongo_uri, stack.redis_url
    stack.kill("kafka"); stack.start("kafka")   # fault hooks
    stack.down()

See docs/local-stack.md.
"""

from mercato_devstack.components import NAMES as COMPONENTS
from mercato_devstack.components import ComponentStatus
from mercato_devstack.config import StackConfig
from mercato_devstack.errors import ComponentError, StackError
from mercato_devstack.stack import Stack
from mercato_devstack.topics import TopicSpec, load_topics

__all__ = [
    "COMPONENTS",
    "ComponentError",
    "ComponentStatus",
    "Stack",
    "StackConfig",
    "StackError",
    "TopicSpec",
    "load_topics",
]
