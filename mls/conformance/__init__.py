"""The MLS working group's test vectors, run against this library (RFC 9420 conformance).

:mod:`mls.conformance.runner` recognises vector files and runs their cases, one ``vectors_*`` module per
kind of file; :mod:`mls.conformance.cli` is the command line (``python -m mls.conformance``), whose
:func:`main` an application calls with the crypto backend it chose (``mls-gateway conformance``).
"""

from mls.conformance.cli import main
from mls.conformance.runner import FileResult, Skip, run_file, vector_files, vector_kind

__all__ = ["FileResult", "Skip", "main", "run_file", "vector_files", "vector_kind"]
