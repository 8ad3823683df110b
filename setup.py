"""Build hook for the native crypto extension; all other metadata lives in pyproject.toml.

``cffi_modules`` makes setuptools compile ``native._mlsnative`` (native/build.py) during ``pip install .``
and ``pip install -e .``. Build requirements: gcc, the OpenSSL 3 headers and libcrypto (Debian:
``libssl-dev``), the Python headers; cffi comes from pyproject's build-system requires.
"""

from setuptools import setup

setup(
    cffi_modules=["native/build.py:ffibuilder"],
    # The C sources and headers ship in the sdist so that a wheel can be built from it.
    package_data={"native": ["csrc/*.c", "csrc/*.h", "sanitize_check.sh"]},
)
