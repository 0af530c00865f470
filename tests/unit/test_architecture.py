"""The shape of the package (docs/architecture.md): layers that point one way, no import circles,
no torch where it is not needed."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "digitserve"

# A module may import from its own layer and the layers listed for it; never from a higher one.
LAYERS: dict[str, set[str]] = {
    "config": set(),
    "storage": {"config"},
    "registry": {"config", "storage"},
    "imaging": set(),
    "data": {"config"},
    "reporting": {"config", "storage", "registry", "data"},
    "synthetic": {"config", "data", "imaging"},
    "runtime": {"config", "storage", "registry"},
    "models": {"config", "storage", "registry", "runtime", "imaging", "data"},
    "evaluation": {"config", "storage", "registry", "runtime", "data", "synthetic"},
    "gate": {"config", "storage", "registry", "runtime", "data", "evaluation", "models", "synthetic"},
    "training": {"config", "storage", "registry", "runtime", "data", "evaluation", "models", "synthetic", "imaging"},
    "serving": {"config", "storage", "registry", "runtime", "imaging"},
    "client": {"config", "imaging"},  # digitserve.client: HTTP to a server, never the server itself
    "cli": {
        "client",
        "config",
        "storage",
        "registry",
        "runtime",
        "data",
        "evaluation",
        "gate",
        "serving",
        "reporting",
        "imaging",
    },
}
# Inside serving/: the rooms a module of each room (or top-level module) may import (docs/architecture.md).
ROOM_BELOW: dict[str, set[str]] = {"errors": set(), "responses": set(), "workers": set(), "clients": set()}
ROOMS: dict[str, set[str]] = {
    **ROOM_BELOW,
    "http": {"errors"},
    "observability": {"http"},
    "inference": {"errors", "observability", "workers"},
    "rollouts": {"errors", "observability", "inference", "workers", "clients"},
    "feedback": {"errors", "clients"},
    "browsing": {"errors", "observability", "inference", "workers"},
    "pipeline": {"errors", "observability", "inference", "rollouts", "workers"},
}
ROOMS["services"] = {room for room in ROOMS} | {"browsing", "feedback"}
ROOMS["deps"] = ROOMS["services"] | {"services"}
ROOMS["api"] = ROOMS["deps"] | {"deps", "responses"}
ROOMS["grpc"] = ROOMS["api"] | {"api"}  # OIP v2 over gRPC: REST's protocol logic (api/v2), another transport
ROOMS["app"] = ROOMS["grpc"] | {"grpc"}
TORCH = ("torch", "torchvision", "timm", "safetensors")


def generated(path: Path) -> bool:
    """Compiled by grpcio-tools in the build (setup.py), not written here."""
    return path.stem.endswith(("_pb2", "_pb2_grpc"))


def modules() -> list[str]:
    found = []
    for path in sorted(p for p in PACKAGE.rglob("*.py") if not generated(p)):
        parts = path.relative_to(SRC).with_suffix("").parts
        found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def imports(module: str) -> set[str]:
    """Every module name `module` imports, at any depth of its code (function-level imports too)."""
    path = SRC / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = SRC / module.replace(".", "/") / "__init__.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", [m for m in modules() if layer(m) in LAYERS])
def test_layers_point_one_way(module: str) -> None:
    own = layer(module)
    for name in imports(module):
        if name.startswith("digitserve.") and name.count("."):
            target = name.split(".")[1]
            assert target == own or target in LAYERS[own], f"{module} ({own}) imports {name} ({target})"
        if own not in ("models", "gate", "training"):  # gate imports torch only inside its agreement check
            assert name.split(".")[0] not in TORCH, f"{module} imports {name}: only models/ and training may"


def room(module: str) -> str:
    """The room of a module inside serving/: its folder, or its own name for a top-level module."""
    return module.split(".")[2] if module.count(".") >= 2 else "serving"


@pytest.mark.parametrize("module", [m for m in modules() if layer(m) == "serving" and m.count(".") >= 2])
def test_serving_rooms_point_one_way(module: str) -> None:
    """No room imports a room above it (no circle between rooms, no TYPE_CHECKING back-edge)."""
    own = room(module)
    for name in imports(module):
        if name.startswith("digitserve.serving.") and room(name) != own:
            assert room(name) in ROOMS[own], f"{module} ({own}) imports {name} ({room(name)})"


def test_every_package_says_what_lives_there() -> None:
    """Each package's __init__ has a docstring naming what it holds (more than a title line)."""
    thin = []
    for init in sorted(PACKAGE.rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        if len(doc) < 60:
            thin.append(str(init.relative_to(SRC)))
    assert not thin, thin


def test_every_module_imports_on_its_own() -> None:
    """Each in a fork taken before any of the package is imported (tests/support/import_each.py):
    an import circle fails the module that starts it."""
    script = Path(__file__).parents[1] / "support" / "import_each.py"
    done = subprocess.run([sys.executable, str(script), *modules()], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    failed = json.loads(done.stdout.strip().splitlines()[-1])
    assert not failed, failed


def test_an_import_circle_is_reported(tmp_path: Path) -> None:
    """The check above can fail: a circle (a imports b, which takes a name from a) is reported."""
    (tmp_path / "circle").mkdir()
    (tmp_path / "circle" / "__init__.py").write_text("")
    (tmp_path / "circle" / "a.py").write_text("from circle import b\nVALUE = 1\n")
    (tmp_path / "circle" / "b.py").write_text("from circle.a import VALUE\n")
    script = Path(__file__).parents[1] / "support" / "import_each.py"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(script), "circle.a", "circle.b"], capture_output=True, text=True, env=env, timeout=300
    )
    failed = dict(json.loads(done.stdout.strip().splitlines()[-1]))
    assert list(failed) == ["circle.a"] and "partially initialized module" in failed["circle.a"], failed


def test_help_and_the_server_import_no_torch() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from digitserve.cli.main import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
        "import digitserve.serving.app, digitserve.cli.registry\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'torchvision', 'timm'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_server_serving_onnx_never_imports_torch(tmp_path: Path) -> None:
    """The whole app, both shipped models loaded, a prediction answered: torch never imported."""
    code = (
        "import asyncio, sys, httpx\n"
        "from digitserve.config import Settings\n"
        "from digitserve.serving.app import create_app\n"
        "from digitserve.serving.api.schemas import EXAMPLE_PNG_B64\n"
        "async def main():\n"
        "    app = create_app(Settings(poll_seconds=3600, shutdown_grace_s=0))\n"
        "    async with app.router.lifespan_context(app):\n"
        "        transport = httpx.ASGITransport(app=app)\n"
        "        async with httpx.AsyncClient(transport=transport, base_url='http://t') as client:\n"
        "            for model in ('cnn', 'vit'):\n"
        "                r = await client.post(f'/v1/models/{model}/predict', json={'images': [EXAMPLE_PNG_B64]})\n"
        "                assert r.status_code == 200 and r.json()['predictions'][0]['label'] == 7, r.text\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'torchvision', 'timm'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_modules_and_functions_stay_short() -> None:
    """No module over 300 lines and no function over 50, in src/ and training/ (CONVENTIONS.md)."""
    long = []
    for root in (PACKAGE, SRC.parent / "training"):
        for path in sorted(p for p in root.rglob("*.py") if not generated(p)):
            text = path.read_text()
            if len(text.splitlines()) > 300:
                long.append(f"{path.name}: {len(text.splitlines())} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno:
                    length = node.end_lineno - node.lineno + 1
                    if length > 50:
                        long.append(f"{path.name}:{node.name}: {length} lines")
    assert not long, long


def test_only_config_reads_the_environment() -> None:
    readers = [
        str(path.relative_to(SRC))
        for path in PACKAGE.rglob("*.py")
        if path.parent.name != "config" and ("os.environ" in path.read_text() or "getenv(" in path.read_text())
    ]
    assert not readers, readers
