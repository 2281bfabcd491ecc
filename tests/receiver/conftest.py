"""Fixtures for the receiver's tests: a real PostgreSQL server and a fresh storage per backend."""

from tests.support.postgres import postgres  # noqa: F401
from tests.support.receiver_storage import storage_url  # noqa: F401
