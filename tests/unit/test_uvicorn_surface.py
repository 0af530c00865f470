"""The parts of uvicorn that are not its public API and that digitserve relies on: its httptools
protocol (subclassed by serving/http/protocol.py), the request cycle and flow control it drives,
and the server object the SIGTERM drain closes (serving/http/shutdown.py). pyproject.toml pins
uvicorn to the range this was tested with; a release that changes any of this fails here, loudly,
before a server runs without its limits."""

from __future__ import annotations

import asyncio
import inspect

import uvicorn
import uvicorn.lifespan.on
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import Server, ServerState

from digitserve.serving.http.protocol import LimitedHttpProtocol

OVERRIDDEN = (
    "connection_made",
    "connection_lost",
    "data_received",
    "on_message_begin",
    "on_url",
    "on_header",
    "on_headers_complete",
    "on_body",
    "on_message_complete",
)
PROTOCOL_ATTRIBUTES = (
    "app_state",
    "connections",
    "cycle",
    "expect_100_continue",
    "flow",
    "headers",
    "loop",
    "parser",
    "pipeline",
    "scope",
    "server_state",
    "timeout_keep_alive",
    "timeout_keep_alive_task",
    "transport",
    "url",
)


async def app(scope: dict, receive: object, send: object) -> None:  # pragma: no cover - never called
    pass


def test_the_protocol_methods_overridden_are_uvicorns_own_with_their_signatures() -> None:
    for name in OVERRIDDEN:
        theirs = getattr(HttpToolsProtocol, name)
        assert callable(theirs), name
        ours = getattr(LimitedHttpProtocol, name)
        assert [p.name for p in inspect.signature(ours).parameters.values()] == [
            p.name for p in inspect.signature(theirs).parameters.values()
        ], name
    for name in ("_unset_keepalive_if_required", "timeout_keep_alive_handler"):
        assert callable(getattr(HttpToolsProtocol, name)), name


def test_the_protocol_attributes_read_exist_and_a_request_has_a_state() -> None:
    async def scenario() -> None:
        config = Config(app, lifespan="off", log_level="warning")
        config.load()
        protocol = HttpToolsProtocol(config=config, server_state=ServerState(), app_state={"k": 1})
        for name in PROTOCOL_ATTRIBUTES:
            if name in ("scope", "url", "headers", "cycle", "expect_100_continue"):
                continue  # per request: checked below
            assert hasattr(protocol, name), name
        protocol.on_message_begin()
        for name in ("scope", "url", "headers", "expect_100_continue"):
            assert hasattr(protocol, name), name
        assert protocol.scope["state"] == {"k": 1}  # admission stamps its deadline here
        assert protocol.parser.get_http_version  # type: ignore[truthy-function]
        assert protocol.parser.should_upgrade and protocol.parser.get_method  # type: ignore[truthy-function]

    asyncio.run(scenario())


def test_the_request_cycle_flow_control_and_server_have_what_is_read() -> None:
    cycle_fields = {"response_complete", "response_started", "keep_alive", "disconnected", "message_event"}
    assert cycle_fields <= set(inspect.signature(RequestResponseCycle.__init__).parameters) | _init_assigned(
        RequestResponseCycle
    )
    assert {"read_paused", "write_paused"} <= _init_assigned(FlowControl)
    assert callable(FlowControl.pause_reading)
    assert {"servers", "config", "server_state", "lifespan"} <= _init_assigned(Server) | set(dir(Server))
    assert "total_requests" in _init_assigned(ServerState)
    assert "http_protocol_class" in _init_assigned(Config) | set(dir(Config))
    assert uvicorn.__version__.startswith("0.54."), uvicorn.__version__


def test_the_protocol_is_built_the_way_the_shutdown_hands_it_connections() -> None:
    """serving/http/shutdown.py builds the server's protocol itself for the connections it accepts."""
    names = set(inspect.signature(HttpToolsProtocol.__init__).parameters)
    assert {"config", "server_state", "app_state", "_loop"} <= names
    assert "state" in _init_assigned(uvicorn.lifespan.on.LifespanOn)


def test_a_listening_socket_can_be_duplicated_without_private_attributes() -> None:
    async def scenario() -> None:
        server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
        wrapped = server.sockets[0]
        with wrapped.dup() as copy:  # serving/http/shutdown.py accepts the queued connections on it
            assert copy.fileno() != wrapped.fileno() and copy.getsockname() == wrapped.getsockname()
        server.close()

    asyncio.run(scenario())


def _init_assigned(cls: type) -> set[str]:
    """The attribute names a class's __init__ (or a property) assigns, read from its source."""
    source = inspect.getsource(cls)
    names = {
        line.split("self.", 1)[1].split("=")[0].split(":")[0].strip()
        for line in source.splitlines()
        if "self." in line and "=" in line
    }
    return names | {n for n, v in vars(cls).items() if isinstance(v, property)}
