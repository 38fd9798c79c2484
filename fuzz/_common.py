"""What the harnesses share: their corpora, a small mutator, and the two ways to run them.

A harness is a module with ``check(data: bytes) -> None`` that raises ``Finding`` (or any
other exception) when an invariant breaks. ``run`` drives it with atheris (coverage-guided,
libFuzzer) when atheris is installed, else with ``mutate`` below: a coverage-less random
mutation fuzzer over the same seeds, which is also what the CI smoke test uses.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
REGRESSIONS = HERE / "regressions"
MAX_LEN = 4096

Check = Callable[[bytes], None]


class Finding(AssertionError):
    """An invariant the harness checks did not hold."""


def seeds(target: str) -> list[bytes]:
    """The seed corpus and the regressions of one target, in a stable order."""
    out = []
    for d in (CORPUS / target, REGRESSIONS / target):
        if d.is_dir():
            out += [p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()]
    return out


def regressions(target: str) -> Iterator[Path]:
    d = REGRESSIONS / target
    if d.is_dir():
        yield from (p for p in sorted(d.iterdir()) if p.is_file() and p.suffix != ".md")


# Bytes that matter to HTTP/1.1 framing and to YAML/format syntax: spliced in often.
TOKENS = [
    b"\r\n", b"\r", b"\n", b"\r\n\r\n", b" ", b"\t", b":", b",", b";", b"\x00", b"\x7f", b"\xff",
    b"Content-Length: ", b"Transfer-Encoding: chunked", b"chunked", b"Host: ", b"Connection: ",
    b"close", b"keep-alive", b"Upgrade: websocket", b"Expect: 100-continue", b"0\r\n\r\n",
    b"HTTP/1.1", b"HTTP/1.0", b"GET ", b"POST ", b"HEAD ", b"CONNECT ", b"http://", b"ffffffff",
    b"-1", b"+1", b"0x1", b"1_0", b"99999999999999999999", b"%", b"%REQ(", b")%", b":12%",
    b"%START_TIME(", b"{", b"}", b"[", b"]", b"- ", b"&a", b"*a", b"!!", b"'", b'"', b"\\",
]  # fmt: skip


def mutate(data: bytes, pool: list[bytes], rng: random.Random) -> bytes:
    """One to four random edits: flips, inserts, deletes, token splices, crossover."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        pos = rng.randint(0, len(buf))
        if op == 0 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos:pos] = bytes([rng.randrange(256)])
        elif op == 2 and buf:
            del buf[pos : pos + rng.randint(1, 16)]
        elif op in (3, 4):
            buf[pos:pos] = rng.choice(TOKENS)
        elif op == 5 and buf:
            i = rng.randrange(len(buf))
            buf[pos:pos] = buf[i : i + rng.randint(1, 32)]
        elif op == 6 and pool:
            other = rng.choice(pool)
            j = rng.randint(0, len(other))
            buf = buf[:pos] + other[j:]
        elif op == 7 and buf:
            i = rng.randrange(len(buf))
            buf[i : i + 1] = rng.choice(TOKENS)
    return bytes(buf[:MAX_LEN])


def smoke(check: Check, target: str, mutations: int, seed: int = 12) -> int:
    """Every seed and regression, then ``mutations`` mutants of them (deterministic)."""
    pool = seeds(target)
    for data in pool:
        check(data)
    rng = random.Random(seed)
    for _ in range(mutations):
        check(mutate(rng.choice(pool), pool, rng))
    return len(pool) + mutations


def _save(target: str, data: bytes, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{target}-{hashlib.sha1(data).hexdigest()[:16]}"
    path.write_bytes(data)
    return path


def random_run(check: Check, target: str, seconds: float, out: Path) -> None:
    """The coverage-less fallback: mutate seeds (and what was found) until time is up."""
    pool = seeds(target)
    rng = random.Random(int(os.environ.get("FUZZ_SEED", time.time_ns())))
    deadline = time.monotonic() + seconds
    execs = findings = 0
    seen: set[str] = set()
    while time.monotonic() < deadline:
        for _ in range(100):
            data = mutate(rng.choice(pool), pool, rng)
            execs += 1
            try:
                check(data)
            except Exception as exc:
                kind = f"{type(exc).__name__}: {str(exc)[:80]}"
                if kind not in seen:
                    seen.add(kind)
                    findings += 1
                    path = _save(target, data, out)
                    print(f"FINDING {kind} -> {path}", file=sys.stderr)
                    traceback.print_exc()
            else:
                if rng.random() < 0.01:
                    pool.append(data)  # keep some mutants: deeper edits over time
    print(f"#{target} random: {execs} execs in {seconds:.0f}s, {findings} distinct findings")


def main(check: Check, target: str) -> None:
    """``python -m fuzz.<target> SECONDS [--random]``: atheris if it is there, else random."""
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    out = Path(os.environ.get("FUZZ_OUT", HERE.parent / "build" / "fuzz" / "findings"))
    try:
        if "--random" in sys.argv:
            raise ImportError
        import atheris  # type: ignore[import-untyped]
    except ImportError:
        print(f"#{target}: atheris missing or not wanted: coverage-less random mutation")
        random_run(check, target, seconds, out)
        return
    work = HERE.parent / "build" / "fuzz" / "corpus" / target
    work.mkdir(parents=True, exist_ok=True)
    for data in seeds(target):
        (work / hashlib.sha1(data).hexdigest()).write_bytes(data)
    out.mkdir(parents=True, exist_ok=True)
    atheris.instrument_all()  # every loaded Python function (C code, llhttp, is not)
    argv = [
        sys.argv[0],
        str(work),
        f"-max_total_time={int(seconds)}",
        f"-max_len={MAX_LEN}",
        "-timeout=20",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={out}/{target}-",
        "-print_final_stats=1",
    ]
    atheris.Setup(argv, check)
    atheris.Fuzz()
