"""The container image and the article's pod, run for real with podman.

The image comes from scripts/image (cached: rebuilt only when its inputs change). The pod is
deploy/kubernetes/base rendered without kubectl (tests/kustomize_lite.py): its ConfigMaps and the
Deployment's template as a Pod, with nginx's image replaced by a small local one (no registry
here) and host ports on 127.0.0.1, run by `podman kube play`. Every container and pod started
here is removed by name, also on failure; every wait is bounded.

Skipped with a message where podman cannot run (not root, or no podman); under CI=true they fail
instead, like the other integration tests.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kustomize_lite import KUSTOMIZE_DIR, by_kind, pod_for_play, render

from .conftest import REPORT
from .support import REPO, require

STATE = Path(os.environ.get("UDSPROXY_IMAGE_STATE", "/var/tmp/udsproxy-image"))
IMAGE = "localhost/udsproxy:latest"
NGINX_IMAGE = "localhost/udsproxy-test-nginx:latest"
BASE_IMAGE = "localhost/debian:bookworm-slim"
# The nginx container of the pod: Debian's nginx-light on the same base, laid out like the
# official image (conf includes /etc/nginx/mime.types, site in /usr/share/nginx/html).
NGINX_CONTAINERFILE = """\
ARG BASE
FROM ${BASE}
RUN apt-get update && apt-get install -y --no-install-recommends nginx-light \\
    && rm -rf /var/lib/apt/lists/* && mkdir -p /usr/share/nginx/html \\
    && printf '<!doctype html><title>hugo</title><p>udsproxy image test</p>\\n' \\
        > /usr/share/nginx/html/index.html \\
    && head -c 1048576 /dev/urandom > /usr/share/nginx/html/1m.bin
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
"""
ACCESS_LINE = re.compile(
    r'^\[\d{4}-\d\d-\d\dT[\d:.]+Z\] "GET (?P<path>\S+) HTTP/1\.1" (?P<code>\d{3}) - 0 \d+ \d+ \d+ '
    r'"[^"]*" "(?P<ua>[^"]*)" "[0-9a-f-]{36}" "[^"]*" "/dev/shm/hugo\.sock"$',
    re.M,
)


def _env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(STATE / "containers.conf")}


def podman(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], env=_env(), capture_output=True, text=True, timeout=timeout, check=check
    )


def _podman_usable() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman buildah runc catatonit)"
    if os.geteuid() != 0:
        return "the image tests run podman as root (rootful networking and cgroups)"
    return None


@pytest.fixture(scope="module")
def image() -> str:
    why = _podman_usable()
    require(why is None, why or "")
    start = time.monotonic()
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "image")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, f"scripts/image failed:\n{done.stderr[-4000:]}"
    size_line = done.stdout.strip().splitlines()[-1]
    REPORT["container image (scripts/image)"] = (
        f"{size_line}; scripts/image took {time.monotonic() - start:.1f} s"
    )
    _ensure_nginx_image()
    return IMAGE


def _ensure_nginx_image() -> None:
    base_id = podman("image", "inspect", "--format", "{{.Id}}", BASE_IMAGE).stdout.strip()
    want = hashlib.sha256((base_id + NGINX_CONTAINERFILE).encode()).hexdigest()
    have = podman(
        "image",
        "inspect",
        "--format",
        '{{index .Labels "io.udsproxy.inputs"}}',
        NGINX_IMAGE,
        check=False,
    ).stdout.strip()
    if have == want:
        return
    build = subprocess.run(
        ["podman", "build", "-q", "--build-arg", f"BASE={BASE_IMAGE}",
         "--label", f"io.udsproxy.inputs={want}", "-t", NGINX_IMAGE, "-f", "-", str(STATE)],
        input=NGINX_CONTAINERFILE, env=_env(), capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip
    assert build.returncode == 0, f"building the test nginx image failed:\n{build.stderr[-3000:]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Pod:
    name: str
    http_port: int
    health_port: int
    play_file: Path
    resources: list[dict[str, Any]]
    first_response: float = 0.0  # seconds from `podman kube play` to the first 200
    volumes: list[str] = field(default_factory=list)

    @property
    def proxy(self) -> str:
        return f"{self.name}-udsproxy"

    def logs(self) -> str:
        out = podman("logs", self.proxy, check=False)
        return out.stdout + out.stderr

    def container_spec(self, name: str) -> dict[str, Any]:
        (deployment,) = by_kind(self.resources, "Deployment")
        spec: dict[str, Any] = next(
            c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name
        )
        return spec


def get(port: int, path: str = "/", ua: str = "udsproxy-image-test") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"user-agent": ua})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_for(what: str, check: Any, timeout: float, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except OSError as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


@pytest.fixture(scope="module")
def pod(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    name = f"udsproxy-test-{os.getpid()}-{secrets.token_hex(2)}"
    resources = render(KUSTOMIZE_DIR / "base")
    http_port, health_port = _free_port(), _free_port()
    docs = pod_for_play(
        resources,
        name,
        images={"nginx": NGINX_IMAGE, "udsproxy": image},
        host_ports={10000: http_port, 9902: health_port},
    )
    play = tmp_path_factory.mktemp("pod") / "pod.yaml"
    play.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    p = Pod(name, http_port, health_port, play, resources)
    p.volumes = [v["name"] for v in docs[-1]["spec"]["volumes"]]
    try:
        started = time.monotonic()
        podman("kube", "play", str(play), timeout=120)
        wait_for(
            "the pod's first 200 through the hostPort",
            lambda: get(http_port)[0] == 200,
            timeout=30,
        )
        p.first_response = time.monotonic() - started
        yield p
    finally:
        podman("pod", "rm", "--force", "--time", "0", name, check=False, timeout=60)
        for volume in p.volumes:
            podman("volume", "rm", "--force", volume, check=False, timeout=30)


def test_pod_serves_and_logs_like_envoy(pod: Pod) -> None:
    REPORT["pod start to first response (podman kube play, through the hostPort)"] = (
        f"{pod.first_response:.2f} s"
    )
    status, body = get(pod.http_port)
    assert status == 200
    assert b"udsproxy image test" in body
    ua = f"image-test-{secrets.token_hex(3)}"
    assert get(pod.http_port, "/index.html", ua=ua)[0] == 200
    line = wait_for(
        "an access-log line in podman logs",
        lambda: next((m for m in ACCESS_LINE.finditer(pod.logs()) if m["ua"] == ua), None),
        timeout=10,
    )
    assert line["path"] == "/index.html" and line["code"] == "200"
    # The non-root UID from the Dockerfile and the manifest, and a read-only root.
    top = podman("top", pod.proxy, "user", "args").stdout
    assert "udsproxy" in top and "root" not in top.split("\n", 1)[1], top
    assert podman("exec", pod.proxy, "sh", "-c", "touch /x", check=False).returncode != 0


def test_ready_and_prometheus_on_the_health_port(pod: Pod) -> None:
    status, body = get(pod.health_port, "/ready")
    assert (status, body.strip()) == (200, b"LIVE")
    status, body = get(pod.health_port, "/stats/prometheus")
    assert status == 200
    served = re.compile(
        rb'envoy_http_downstream_rq_xx\{envoy_response_code_class="2",'
        rb'envoy_http_conn_manager_prefix="ingress_http"\} [1-9]'
    )
    assert served.search(body), body[:2000]
    # Only those two: the admin's mutating endpoints stay on loopback.
    assert get(pod.health_port, "/quitquitquit")[0] == 404


def test_sighup_reloads_in_place(pod: Pod) -> None:
    before = pod.logs().count("SIGHUP applied")
    podman("kill", "--signal", "HUP", pod.proxy)
    wait_for("'SIGHUP applied' in the log", lambda: pod.logs().count("SIGHUP applied") > before, 10)
    assert get(pod.http_port)[0] == 200
    assert podman("inspect", "--format", "{{.State.Running}}", pod.proxy).stdout.strip() == "true"


@dataclass
class Load:
    """Keep-alive clients looping GETs until stopped or refused. A failed request is one that
    was sent and did not get a whole 200 back; a refused connect is not a request."""

    port: int
    path: str = "/1m.bin"
    clients: int = 6
    reconnect_until: float = float("inf")  # monotonic time: the Service stops sending here
    moved: int = 0
    ok: int = 0
    closes: int = 0
    refused: int = 0
    failed: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        for _ in range(self.clients):
            t = threading.Thread(target=self._client, daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def _client(self) -> None:
        conn: http.client.HTTPConnection | None = None
        deadline = time.monotonic() + 60
        while not self.stop.is_set() and time.monotonic() < deadline:
            if conn is None:
                if time.monotonic() >= self.reconnect_until:
                    with self.lock:
                        self.moved += 1
                    return  # out of the endpoints: new connections go to other pods
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                try:
                    conn.connect()
                except OSError:
                    with self.lock:
                        self.refused += 1
                    return  # stopped accepting: a Service sends no new connection here
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                body = resp.read()
                closing = resp.getheader("connection", "") == "close"
            except (OSError, http.client.HTTPException) as exc:
                with self.lock:
                    self.failed.append(repr(exc))
                return
            with self.lock:
                if resp.status == 200 and len(body) == 1 << 20:
                    self.ok += 1
                else:
                    self.failed.append(f"{resp.status} {len(body)} bytes")
                self.closes += closing
            if closing:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def join(self, timeout: float) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "load clients did not stop"


def _wait_exit(container: str, timeout: float) -> int:
    rc = podman("wait", container, timeout=timeout).stdout.strip()
    return int(rc)


def test_term_under_load_fails_no_request(pod: Pod) -> None:
    load = Load(pod.http_port).start()
    wait_for("load under way", lambda: load.ok >= 20, timeout=20)
    sent = time.monotonic()
    podman("kill", "--signal", "TERM", pod.proxy)
    rc = _wait_exit(pod.proxy, timeout=15)
    took = time.monotonic() - sent
    load.join(timeout=15)
    REPORT["SIGTERM under load in the pod (6 keep-alive clients, 1 MiB GETs)"] = (
        f"{load.ok} requests ok, {len(load.failed)} failed, exit {rc} after {took:.2f} s"
    )
    assert rc == 0, pod.logs()[-3000:]
    assert load.failed == [], load.failed
    assert load.closes > 0, "no response carried connection: close during the drain"
    assert took < 5 + 2, "the drain outlasted --drain-time-s"
    # Back for the next test: the same container starts again in the pod (and the stale-socket
    # cleanup is nginx's; the proxy reconnects to the same socket).
    podman("start", pod.proxy)
    wait_for("the proxy serving again", lambda: get(pod.http_port)[0] == 200, timeout=20)


def test_rolling_stop_with_the_manifests_prestop(pod: Pod) -> None:
    """What a rolling update does: the preStop hook from the Deployment (graceful drain, then a
    sleep), under load, then SIGTERM. Connections made during the hook are still served."""
    spec = pod.container_spec("udsproxy")
    pre_stop = spec["lifecycle"]["preStop"]["exec"]["command"]
    load = Load(pod.http_port).start()
    wait_for("load under way", lambda: load.ok >= 20, timeout=20)
    # The pod leaves the Service's endpoints as the hook starts; kube-proxy takes a moment to
    # apply that everywhere: 2 s here, within the 5 s drain window. (New connections at the
    # very end of the window could meet a closing listen socket: that is what the window,
    # --drain-time-s, must outlast.)
    load.reconnect_until = time.monotonic() + 2.0
    hook = subprocess.Popen(
        ["podman", "exec", pod.proxy, *pre_stop], env=_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        out, _ = hook.communicate(timeout=spec_grace(pod))
    finally:
        if hook.poll() is None:
            hook.kill()
            hook.wait(5)
    assert hook.returncode == 0, out
    during = load.ok
    podman("kill", "--signal", "TERM", pod.proxy)
    rc = _wait_exit(pod.proxy, timeout=15)
    load.join(timeout=15)
    REPORT["rolling stop (preStop graceful drain + SIGTERM) under load"] = (
        f"{load.ok} requests ok ({during} before SIGTERM), {len(load.failed)} failed, "
        f"{load.closes} connection: close"
    )
    assert rc == 0
    assert load.failed == [], load.failed
    assert load.closes >= load.clients and load.moved == load.clients


def spec_grace(pod: Pod) -> float:
    (deployment,) = by_kind(pod.resources, "Deployment")
    grace: int = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    return float(grace)


def test_demo_runs_from_the_installed_wheel_in_the_image(image: str) -> None:
    """`udsproxy demo` from the wheel installed in the image (no nginx there: its built-in
    upstream), with the demo site and configs that the wheel carries."""
    name = f"udsproxy-demo-test-{os.getpid()}"
    port = _free_port()
    podman(
        "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:10000",
        "--entrypoint", "udsproxy", image,
        "demo", "--upstream", "builtin", "--socket", "/tmp/hugo.sock",
    )  # fmt: skip
    try:
        status, body = wait_for("the demo answers", lambda: get(port, "/"), 30, 0.1)
        assert status == 200 and b"<html" in body.lower()

        def logged() -> bool:  # the access log is flushed within a second
            out = podman("logs", name, check=False)
            return '"GET / HTTP/1.1" 200' in out.stdout + out.stderr

        wait_for("the access-log line", logged, 10, 0.2)
    finally:
        podman("rm", "--force", "--time", "0", name, check=False, timeout=60)
