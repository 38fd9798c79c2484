"""x-request-id values: random version-4 UUIDs, from Python or (compiled form) from C."""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import pytest

from udsproxy.http import header_mutation

_UUID4 = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

GENERATORS: list[tuple[str, Callable[[], bytes]]] = [("python", header_mutation._request_id)]
try:
    from udsproxy.http import _request_id
except ImportError:
    if os.environ.get("UDSPROXY_EXPECT_NATIVE") == "1":
        raise
else:
    GENERATORS.append(("c", _request_id.request_id))


@pytest.mark.parametrize(("name", "gen"), GENERATORS, ids=[g[0] for g in GENERATORS])
def test_ids_are_version_4_uuids_and_do_not_repeat(name: str, gen: Callable[[], bytes]) -> None:
    ids = [gen() for _ in range(3000)]  # the C pool refills several times
    assert all(_UUID4.fullmatch(i) for i in ids), ids[:3]
    assert len(set(ids)) == len(ids)
    # every hex digit of the random part turns up: the bits are not stuck
    assert set(b"".join(ids).replace(b"-", b"")) == set(b"0123456789abcdef")


@pytest.mark.parametrize(("name", "gen"), GENERATORS, ids=[g[0] for g in GENERATORS])
def test_a_forked_worker_draws_its_own_ids(name: str, gen: Callable[[], bytes]) -> None:
    gen()  # the parent has drawn (the C pool holds ids its child must not reuse)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(w, b"".join(gen() for _ in range(4)))
        os._exit(0)
    os.close(w)
    child = os.read(r, 4 * 36)
    os.close(r)
    os.waitpid(pid, 0)
    parent = b"".join(gen() for _ in range(4))
    assert child != parent and len(child) == 4 * 36


def test_the_header_mutation_uses_the_c_generator_when_built() -> None:
    if len(GENERATORS) == 2:
        assert header_mutation.request_id is GENERATORS[1][1]
    else:
        assert header_mutation.request_id is header_mutation._request_id
