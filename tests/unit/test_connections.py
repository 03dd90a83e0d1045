"""The connection cap, from the descriptor limit (pure arithmetic; the behaviour is tested over
real HTTP in tests/service/test_hostile_clients.py)."""

from __future__ import annotations

import pytest

from service.connections import DEFAULT_MAX_CONNECTIONS, FD_RESERVE, connection_caps


@pytest.mark.parametrize("fd_limit", [128, 256, 1024, 20_000, 1 << 20])
def test_every_connection_fits_in_the_descriptors_with_a_reserve(fd_limit: int) -> None:
    cap, ceiling = connection_caps(fd_limit, None)
    assert cap < ceiling == fd_limit - FD_RESERVE
    assert cap <= DEFAULT_MAX_CONNECTIONS
    # The room between them takes a burst of new connections until their heads are read.
    assert ceiling - cap >= min(ceiling // 4, 16)


def test_a_container_default_of_1024() -> None:
    assert connection_caps(1024, None) == (720, 960)


def test_a_configured_limit_is_kept_below_what_the_descriptors_allow() -> None:
    assert connection_caps(20_000, 500) == (500, 20_000 - FD_RESERVE)
    assert connection_caps(1024, 5000) == (720, 960)
