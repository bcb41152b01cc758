"""Repository-wide test setup: the builders' tests under datasets/ get the same no-network
guard as tests/ (tests/conftest.py: loopback only, in this process and its Python children)."""

from tests.conftest import no_network  # noqa: F401  (an autouse fixture, registered here too)
