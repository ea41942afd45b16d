"""Type names of the gRPC asyncio API that its stubs only define for the type checker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

__all__ = ["ServicerContext"]

if TYPE_CHECKING:  # the stubs' generics do not exist at run time
    ServicerContext: TypeAlias = grpc.aio.ServicerContext[Any, Any]
else:
    ServicerContext: TypeAlias = Any
