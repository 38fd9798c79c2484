"""The route table: virtual hosts in Envoy's order, route matching, rewrites. No sockets."""

from __future__ import annotations

import pytest

from udsproxy.config import schema
from udsproxy.router.routes import RouteTable


def route(
    cluster: str,
    *,
    prefix: str | None = None,
    path: str | None = None,
    regex: str | None = None,
    rewrite: str | None = None,
    case_sensitive: bool = True,
    upgrades: tuple[schema.UpgradeConfig, ...] = (),
) -> schema.Route:
    return schema.Route(
        name=cluster,
        match=schema.RouteMatch(
            prefix=prefix, path=path, safe_regex=regex, case_sensitive=case_sensitive
        ),
        route=schema.RouteAction(cluster=cluster, prefix_rewrite=rewrite, upgrade_configs=upgrades),
    )


def router(
    *vhosts: tuple[str, tuple[str, ...], tuple[schema.Route, ...]], **kw: object
) -> RouteTable:
    config = schema.RouteConfiguration(
        virtual_hosts=tuple(
            schema.VirtualHost(name=name, domains=domains, routes=routes)
            for name, domains, routes in vhosts
        )
    )
    return RouteTable(config, **kw)  # type: ignore[arg-type]


def cluster_for(r: RouteTable, authority: bytes, path: bytes = b"/") -> str | None:
    matched = r.match(authority, path)
    return None if matched is None else matched.cluster


def test_virtual_hosts_are_chosen_in_envoys_order() -> None:
    r = router(
        ("exact", ("blog.example.com",), (route("exact", prefix="/"),)),
        ("long-suffix", ("*.blog.example.com",), (route("long-suffix", prefix="/"),)),
        ("suffix", ("*.example.com",), (route("suffix", prefix="/"),)),
        ("prefix", ("blog.*",), (route("prefix", prefix="/"),)),
        ("default", ("*",), (route("default", prefix="/"),)),
    )
    assert cluster_for(r, b"blog.example.com") == "exact"
    assert cluster_for(r, b"BLOG.Example.COM") == "exact"  # domains are case-insensitive
    assert cluster_for(r, b"a.blog.example.com") == "long-suffix"  # the longest suffix wins
    assert cluster_for(r, b"www.example.com") == "suffix"
    assert cluster_for(r, b"example.com") == "default"  # "*.example.com" needs a label
    assert cluster_for(r, b"blog.example.org") == "prefix"
    assert cluster_for(r, b"other") == "default"
    # With a port, the full authority is matched first ("blog.*" takes it, as in Envoy)...
    assert cluster_for(r, b"blog.example.com:8080") == "prefix"
    assert cluster_for(r, b"[::1]") == "default"


def test_a_port_is_dropped_when_nothing_else_matches() -> None:
    # ...and only when no domain matches it is the port dropped (a udsproxy deviation: curl to
    # http://localhost:10000 sends "localhost:10000"; Envoy would answer 404 for "localhost").
    r = router(
        ("local", ("localhost",), (route("local", prefix="/"),)),
        ("default", ("*",), (route("default", prefix="/"),)),
    )
    assert cluster_for(r, b"localhost:10000") == "local"
    assert cluster_for(r, b"localhost:x") == "default"


def test_no_virtual_host_and_no_route_are_no_match() -> None:
    r = router(("only", ("a.test",), (route("a", prefix="/api/"),)))
    assert r.match(b"b.test", b"/api/x") is None
    assert r.match(b"a.test", b"/web") is None


@pytest.mark.parametrize(
    ("path", "cluster"),
    [
        (b"/exact", "exact"),
        (b"/exact?x=1", "exact"),  # a path match ignores the query string
        (b"/exact/more", "prefix"),
        (b"/posts/2026/12/hello", "regex"),
        (b"/posts/2026/12/hello?utm=1", "regex"),
        (b"/posts/x", "prefix"),
        (b"/STATIC/app.css", "static"),  # case-insensitive prefix
        (b"/", "prefix"),
    ],
)
def test_routes_match_in_order(path: bytes, cluster: str) -> None:
    r = router(
        (
            "all",
            ("*",),
            (
                route("exact", path="/exact"),
                route("regex", regex=r"/posts/\d{4}/\d{2}/[a-z-]+"),
                route("static", prefix="/static/", case_sensitive=False),
                route("prefix", prefix="/"),
            ),
        )
    )
    assert cluster_for(r, b"host", path) == cluster


@pytest.mark.parametrize(
    ("rt", "path", "rewritten"),
    [
        (route("p", prefix="/blog/", rewrite="/"), b"/blog/post?a=1", b"/post?a=1"),
        (route("p", prefix="/BLOG", rewrite="/b", case_sensitive=False), b"/blog/x", b"/b/x"),
        # path and regex routes: the whole path is replaced, the query string stays
        (route("e", path="/old", rewrite="/new"), b"/old?q=2", b"/new?q=2"),
        (route("r", regex=r"/v[0-9]+/.*", rewrite="/api"), b"/v2/users", b"/api"),
        (route("n", prefix="/"), b"/same?x", b"/same?x"),
    ],
)
def test_prefix_rewrite(rt: schema.Route, path: bytes, rewritten: bytes) -> None:
    matched = router(("all", ("*",), (rt,))).match(b"host", path)
    assert matched is not None
    assert matched.rewrite(path) == rewritten


def test_route_upgrades_override_the_connection_managers() -> None:
    hcm = (schema.UpgradeConfig(upgrade_type="websocket"),)
    off = (schema.UpgradeConfig(upgrade_type="WebSocket", enabled=False),)
    r = router(
        ("all", ("*",), (route("ws", prefix="/ws"), route("no", prefix="/", upgrades=off))),
        hcm_upgrades=hcm,
    )
    ws, no = r.match(b"h", b"/ws"), r.match(b"h", b"/x")
    assert ws is not None and ws.upgrade_types == frozenset({b"websocket"})
    assert no is not None and no.upgrade_types == frozenset()


def test_expected_timeout_header_follows_the_route_timeout() -> None:
    rt = schema.Route(
        match=schema.RouteMatch(prefix="/"), route=schema.RouteAction(cluster="c", timeout=2.5)
    )
    off = schema.Route(
        match=schema.RouteMatch(prefix="/"), route=schema.RouteAction(cluster="c", timeout=0)
    )
    a = router(("a", ("a",), (rt,)), ("b", ("b",), (off,)))
    ra, rb = a.match(b"a", b"/"), a.match(b"b", b"/")
    assert (
        ra is not None and ra.expected_timeout_header == b"x-envoy-expected-rq-timeout-ms: 2500\r\n"
    )
    assert rb is not None and rb.expected_timeout_header == b""


def test_a_catch_all_table_answers_with_one_test() -> None:
    r = router(("all", ("*",), (route("hugo", prefix="/"), route("never", prefix="/x"))))
    assert r.catch_all is not None and r.catch_all.cluster == "hugo"
    assert cluster_for(r, b"any.host", b"/x/y?q=1") == "hugo"  # the first route wins, as Envoy
    assert cluster_for(r, b"", b"*") is None  # OPTIONS *: no prefix "/" matches it


@pytest.mark.parametrize(
    "vhosts",
    [
        (("all", ("*",), (route("api", prefix="/api"), route("hugo", prefix="/"))),),
        (("all", ("*", "blog.example.com"), (route("hugo", prefix="/"),)),),
        (
            ("blog", ("blog.example.com",), (route("blog", prefix="/"),)),
            ("all", ("*",), (route("hugo", prefix="/"),)),
        ),
    ],
)
def test_tables_that_need_matching_keep_it(vhosts) -> None:  # type: ignore[no-untyped-def]
    r = router(*vhosts)
    assert r.catch_all is None
    assert cluster_for(r, b"blog.example.com", b"/api/1") in {"api", "blog", "hugo"}
