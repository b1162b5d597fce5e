"""What every test shares: the order the files start in."""

from __future__ import annotations

import pytest

# The longest files (a module fixture of a minute or more each) start first: pytest-xdist hands
# whole files to workers in collection order, and one of these started last would leave a
# single worker running it alone at the end of `make test`.
LONGEST_FIRST = (
    "tests/integration/test_chaos.py",
    "tests/integration/test_bench.py",
    "tests/integration/test_packaging.py",
    "tests/integration/test_faults.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {path: position for position, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order
