"""The build step that pyproject.toml cannot say: compile the Open Inference Protocol's gRPC
definition (src/digitserve/serving/grpc/proto/*.proto) into Python modules with grpcio-tools,
before the package is collected -- for a wheel, an sdist's build and an editable install alike.
The generated modules are not committed (.gitignore); everything else is in pyproject.toml."""

from importlib.resources import files
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE = Path("src")
PROTOS = SOURCE / "digitserve" / "serving" / "grpc" / "proto"


def compile_protos() -> None:
    from grpc_tools import protoc  # a build requirement (pyproject.toml [build-system])

    well_known = str(files("grpc_tools") / "_proto")
    for proto in sorted(PROTOS.glob("*.proto")):
        args = ["protoc", f"-I{well_known}", f"-I{SOURCE}", f"--python_out={SOURCE}", f"--pyi_out={SOURCE}"]
        args += [f"--grpc_python_out={SOURCE}", str(proto)]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc could not compile {proto}")


class BuildPy(build_py):
    def run(self) -> None:
        compile_protos()
        super().run()


setup(cmdclass={"build_py": BuildPy})
