"""GraphiQL at ``GET /graphiql``, in development only: when ``GRAPHIQL_ASSETS_DIR`` names the
``node_modules`` of ``services/gateway/graphiql`` (the npm packages pinned in its
``package-lock.json``, installed by ``mercato_devstack`` for ``make run``).

The page and its assets are served by the gateway itself, read once at start: no CDN at run
time, and a Content-Security-Policy that allows scripts and styles from the gateway only.
Queries and mutations go to ``POST /graphql``, subscriptions over its WebSocket (graphql-ws),
with the headers typed in GraphiQL's header editor (``{"Authorization": "Bearer …"}``), which
it keeps in the browser's local storage and ``start.js`` also sends as ``connection_init``'s
payload.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from starlette.responses import Response

__all__ = ["GRAPHIQL_PATH", "graphiql_handlers"]

GRAPHIQL_PATH = "/graphiql"

#: Served name -> (path under node_modules, media type).
ASSETS = {
    "react.production.min.js": ("react/umd/react.production.min.js", "text/javascript"),
    "react-dom.production.min.js": ("react-dom/umd/react-dom.production.min.js", "text/javascript"),
    "graphql-ws.min.js": ("graphql-ws/umd/graphql-ws.min.js", "text/javascript"),
    "graphiql.min.js": ("graphiql/graphiql.min.js", "text/javascript"),
    "graphiql.min.css": ("graphiql/graphiql.min.css", "text/css"),
}

START_JS = """\
"use strict";
// GraphiQL against this gateway: HTTP for queries and mutations, graphql-ws for subscriptions.
(function () {
  var http = new URL("/graphql", window.location.href);
  var socket = new URL("/graphql", window.location.href);
  socket.protocol = socket.protocol === "https:" ? "wss:" : "ws:";
  function headers() {
    try {
      return JSON.parse(window.localStorage.getItem("graphiql:headers") || "{}");
    } catch (error) {
      return {};
    }
  }
  var fetcher = GraphiQL.createFetcher({
    url: http.href,
    wsClient: graphqlWs.createClient({ url: socket.href, connectionParams: headers }),
  });
  var root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      shouldPersistHeaders: true,
      defaultEditorToolbarTabs: "headers",
      defaultHeaders: '{"Authorization": "Bearer "}',
    })
  );
})();
"""

PAGE = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mercato GraphQL</title>
<link rel="stylesheet" href="/graphiql/graphiql.min.css">
<style>body { margin: 0; } #graphiql { height: 100vh; }</style>
</head>
<body>
<div id="graphiql">Loading GraphiQL…</div>
<script src="/graphiql/react.production.min.js"></script>
<script src="/graphiql/react-dom.production.min.js"></script>
<script src="/graphiql/graphql-ws.min.js"></script>
<script src="/graphiql/graphiql.min.js"></script>
<script src="/graphiql/start.js"></script>
</body>
</html>
"""

#: Scripts and styles from the gateway only (the inline <style> and GraphiQL's own style
#: attributes need 'unsafe-inline' for styles); requests to the gateway only (ws: and wss: of
#: the same host included).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def graphiql_handlers(assets_dir: Path) -> dict[str, Callable[[], Response]]:
    """The fixed paths of the page and its assets, read now: a missing file stops the start."""
    missing = [path for path, _ in ASSETS.values() if not (assets_dir / path).is_file()]
    if missing:
        raise ValueError(
            f"GRAPHIQL_ASSETS_DIR {assets_dir} lacks {', '.join(missing)} "
            "(npm ci in services/gateway/graphiql)"
        )
    files = {
        name: ((assets_dir / path).read_bytes(), media) for name, (path, media) in ASSETS.items()
    }
    files["start.js"] = (START_JS.encode(), "text/javascript")
    headers = {"cache-control": "no-cache", "content-security-policy": CSP}

    def serve(body: bytes, media: str) -> Callable[[], Response]:
        return lambda: Response(body, media_type=media, headers=headers)

    handlers = {
        f"{GRAPHIQL_PATH}/{name}": serve(body, media) for name, (body, media) in files.items()
    }
    handlers[GRAPHIQL_PATH] = serve(PAGE.encode(), "text/html; charset=utf-8")
    return handlers
