"""Compression libraries for the compressor/decompressor filters: gzip (zlib) and brotli (the
``brotli`` package). Each coder streams: every ``encode`` returns what that input produced
(flushed, as Envoy flushes per data frame), so no output accumulates here.
"""

from __future__ import annotations

import zlib
from typing import Any

from udsproxy.config.filter_schema import BrotliConfig, GzipConfig, GzipDecompressorConfig

__all__ = ["BrotliCompressor", "GzipCompressor", "GzipDecompressor"]

try:
    import brotli as _brotli
except ImportError:  # pragma: no cover - a dependency, but the proxy must start without it
    _brotli = None


_LEVELS = {
    "DEFAULT_COMPRESSION": zlib.Z_DEFAULT_COMPRESSION,
    "BEST_SPEED": 1,
    "BEST_COMPRESSION": 9,
}
_LEVELS.update({f"COMPRESSION_LEVEL_{n}": n for n in range(1, 10)})
_STRATEGIES = {
    "DEFAULT_STRATEGY": zlib.Z_DEFAULT_STRATEGY,
    "FILTERED": zlib.Z_FILTERED,
    "HUFFMAN_ONLY": zlib.Z_HUFFMAN_ONLY,
    "RLE": zlib.Z_RLE,
    "FIXED": zlib.Z_FIXED,
}


class GzipCompressor:
    __slots__ = ("obj", "stats")

    def __init__(self, config: GzipConfig, stats: dict[str, int]) -> None:
        # +16: the gzip wrapper (header and CRC), what "content-encoding: gzip" means
        self.obj = zlib.compressobj(
            _LEVELS[config.compression_level],
            zlib.DEFLATED,
            16 + config.window_bits,
            config.memory_level,
            _STRATEGIES[config.compression_strategy],
        )
        self.stats = stats

    def encode(self, data: bytes | memoryview) -> bytes:
        obj = self.obj
        out = obj.compress(data) + obj.flush(zlib.Z_SYNC_FLUSH)
        stats = self.stats
        stats["total_uncompressed_bytes"] += len(data)
        stats["total_compressed_bytes"] += len(out)
        return out

    def more(self) -> bytes:
        return b""  # each encode returns all it made (compressed: no bigger than its input)

    def finish(self) -> bytes:
        out = self.obj.flush(zlib.Z_FINISH)
        self.stats["total_compressed_bytes"] += len(out)
        return out


class BrotliCompressor:
    __slots__ = ("obj", "stats")

    def __init__(self, config: BrotliConfig, stats: dict[str, int]) -> None:
        assert _brotli is not None
        mode = {"TEXT": _brotli.MODE_TEXT, "FONT": _brotli.MODE_FONT}.get(
            config.encoder_mode, _brotli.MODE_GENERIC
        )
        self.obj: Any = _brotli.Compressor(
            mode=mode,
            quality=config.quality,
            lgwin=config.window_bits,
            lgblock=config.input_block_bits,
        )
        self.stats = stats

    def encode(self, data: bytes | memoryview) -> bytes:
        obj = self.obj
        out: bytes = obj.process(bytes(data)) + obj.flush()
        stats = self.stats
        stats["total_uncompressed_bytes"] += len(data)
        stats["total_compressed_bytes"] += len(out)
        return out

    def more(self) -> bytes:
        return b""  # each encode returns all it made (compressed: no bigger than its input)

    def finish(self) -> bytes:
        out: bytes = self.obj.finish()
        self.stats["total_compressed_bytes"] += len(out)
        return out


class GzipDecompressor:
    """Inflates in bounded pieces: ``encode``/``feed`` take compressed input, ``more`` returns
    the next piece of at most ``limit`` bytes (the listener's buffer limit) and keeps the rest of
    the input compressed, so the caller decides how much to let out (as far as the peer takes
    it). More than ``max_inflate_ratio`` times the input is an error (a zip bomb), as is corrupt
    input: the rest of the body is dropped and ``zlib_data_error`` counted (Envoy's gzip
    decompressor also stops at a zlib error)."""

    __slots__ = (
        "chunk", "failed", "limit", "obj", "pending", "ratio", "stats", "total_in", "total_out",
    )  # fmt: skip

    def __init__(
        self, config: GzipDecompressorConfig, stats: dict[str, int], limit: int = 1 << 20
    ) -> None:
        # +16: gzip only (Envoy's gzip decompressor reads the gzip wrapper)
        self.obj = zlib.decompressobj(16 + config.window_bits)
        self.chunk = config.chunk_size
        self.ratio = config.max_inflate_ratio
        self.limit = max(limit, self.chunk)
        self.stats = stats
        self.total_in = 0
        self.total_out = 0
        self.failed = False
        self.pending = b""  # compressed input not inflated yet

    def feed(self, data: bytes | memoryview) -> None:
        if self.failed:
            return
        n = len(data)
        self.total_in += n
        self.stats["total_compressed_bytes"] += n
        self.pending = self.pending + bytes(data) if self.pending else bytes(data)

    def encode(self, data: bytes | memoryview) -> bytes:
        """Take ``data``; the first piece of what is pending (``more`` gives the rest)."""
        self.feed(data)
        return self.more()

    def more(self) -> bytes:
        """The next piece (at most ``limit`` bytes); b"" when the input so far is used up."""
        pending = self.pending
        if self.failed or not pending:
            return b""
        obj = self.obj
        limit = self.total_in * self.ratio
        parts: list[bytes] = []
        size = 0
        room = self.limit
        try:
            while pending and size < room:
                out = obj.decompress(pending, min(self.chunk, room - size))
                pending = obj.unconsumed_tail
                self.total_out += len(out)
                if self.total_out > limit:
                    raise zlib.error("max_inflate_ratio exceeded")
                parts.append(out)
                size += len(out)
        except zlib.error:
            self.failed = True
            self.pending = b""
            self.stats["zlib_data_error"] += 1
            return b"".join(parts)
        self.pending = pending
        out = b"".join(parts)
        self.stats["total_uncompressed_bytes"] += size
        return out

    def finish(self) -> bytes:
        """The end of the input (call once ``more`` returned b"")."""
        if self.failed:
            return b""
        out = self.obj.flush()
        self.stats["total_uncompressed_bytes"] += len(out)
        return out
