"""Baseline of the SQLite store: the schema of gateway.sqlite_schema, created on a new database, or reached
from a database made before migrations (``PRAGMA user_version`` 2..6) without losing its rows.

Every later schema change is a new file in this folder (``NNNN.what.sql`` or ``.py``), never an edit here:
a database records the migrations it applied by id (docs/architecture.md, "Schema migrations").
"""

from yoyo import step

from gateway.sqlite_schema import upgrade

steps = [step(upgrade)]
