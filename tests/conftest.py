"""Suite-wide collection order: the tests marked ``slow`` run first.

``make test`` runs pytest-xdist with ``--maxschedchunk 1``: each worker holds at most two
tests ahead and takes the next as it finishes one. Started first, the long end-to-end tests
(one to four minutes each on our 2-core machine) overlap each other and the short ones fill in
behind them; started late in collection order, one of them ran alone on one core at the end
of the suite while the other core idled. ``-m "not slow"`` leaves them out of a quick loop.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: order kept
