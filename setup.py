"""Build the specopt Python package with the project's CMake.

    pip install --no-build-isolation .            (see docs/python.md)

The extension specopt._C is the CMake target `specopt_python` (python/CMakeLists.txt),
configured with -DSPECOPT_PYTHON=ON against the torch of the interpreter running pip.
Environment: SPECOPT_BUILD_DIR (default build/pip), SPECOPT_BUILD_JOBS (default 2),
SPECOPT_CMAKE_ARGS (extra configure arguments, space separated).
"""
import os
import re
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


def project_version():
    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        return re.search(r"project\(specopt VERSION ([0-9.]+)", f.read()).group(1)


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build_dir = os.environ.get("SPECOPT_BUILD_DIR", os.path.join(ROOT, "build", "pip"))
        configure = ["cmake", "-S", ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
                     "-DSPECOPT_PYTHON=ON", "-DSPECOPT_TESTS=OFF", "-DSPECOPT_BENCH=OFF",
                     f"-DPython3_EXECUTABLE={sys.executable}"]
        if shutil.which("ninja"):
            configure += ["-G", "Ninja"]
        import torch.utils  # a pip torch ships its CMake config; Debian's is found by default

        if os.path.isdir(torch.utils.cmake_prefix_path):
            configure.append(f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}")
        configure += os.environ.get("SPECOPT_CMAKE_ARGS", "").split()
        subprocess.check_call(configure)
        subprocess.check_call(["cmake", "--build", build_dir, "--target", "specopt_python",
                               "-j", os.environ.get("SPECOPT_BUILD_JOBS", "2")])
        built_dir = os.path.join(build_dir, "python", "specopt")
        built = [f for f in os.listdir(built_dir) if f.startswith("_C") and f.endswith(".so")]
        if len(built) != 1:
            raise RuntimeError(f"expected one _C*.so in {built_dir}, found {built}")
        target = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(built_dir, built[0]), target)


setup(
    version=project_version(),
    packages=["specopt"],
    package_dir={"specopt": "python/specopt"},
    ext_modules=[Extension("specopt._C", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
)
