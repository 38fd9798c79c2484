"""Compression libraries for the compressor/decompressor filters: gzip (zlib) and brotli (the
``brotli`` package). Each coder streams: every ``encode`` returns what that input produced
(flushed, as Envoy flushes per data frame), so no output accumulates here.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BrotliCompressor", "BrotliConfig", "GzipCompressor", "GzipConfig", "GzipDecompressor",
    "GzipDecompressorConfig", "brotli_available",
]  # fmt: skip

try:
    import brotli as _brotli
except ImportError:  # pragma: no cover - a dependency, but the proxy must start without it
    _brotli = None


def brotli_available() -> bool:
    return _brotli is not None


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
GZIP_LEVELS = tuple(_LEVELS)
GZIP_STRATEGIES = tuple(_STRATEGIES)


@dataclass(frozen=True, slots=True, kw_only=True)
class GzipConfig:
    """envoy.extensions.compression.gzip.compressor.v3.Gzip (Envoy's defaults)."""

    memory_level: int = 5
    compression_level: str = "DEFAULT_COMPRESSION"
    compression_strategy: str = "DEFAULT_STRATEGY"
    window_bits: int = 12


@dataclass(frozen=True, slots=True, kw_only=True)
class BrotliConfig:
    """envoy.extensions.compression.brotli.compressor.v3.Brotli (Envoy's defaults)."""

    quality: int = 3
    encoder_mode: str = "DEFAULT"
    window_bits: int = 18
    input_block_bits: int = 24


@dataclass(frozen=True, slots=True, kw_only=True)
class GzipDecompressorConfig:
    """envoy.extensions.compression.gzip.decompressor.v3.Gzip (Envoy's defaults)."""

    window_bits: int = 15
    chunk_size: int = 4096
    max_inflate_ratio: int = 100


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

    def finish(self) -> bytes:
        out: bytes = self.obj.finish()
        self.stats["total_compressed_bytes"] += len(out)
        return out


class GzipDecompressor:
    """Inflates in steps of ``chunk_size`` output bytes; more than ``max_inflate_ratio`` times
    the input is an error (a zip bomb), as is corrupt input: the rest of the body is dropped and
    ``zlib_data_error`` counted (Envoy's gzip decompressor also stops at a zlib error)."""

    __slots__ = ("chunk", "failed", "obj", "ratio", "stats", "total_in", "total_out")

    def __init__(self, config: GzipDecompressorConfig, stats: dict[str, int]) -> None:
        # +16: gzip only (Envoy's gzip decompressor reads the gzip wrapper)
        self.obj = zlib.decompressobj(16 + config.window_bits)
        self.chunk = config.chunk_size
        self.ratio = config.max_inflate_ratio
        self.stats = stats
        self.total_in = 0
        self.total_out = 0
        self.failed = False

    def encode(self, data: bytes | memoryview) -> bytes:
        if self.failed:
            return b""
        self.total_in += len(data)
        limit = self.total_in * self.ratio
        obj = self.obj
        parts: list[bytes] = []
        pending = bytes(data)
        try:
            while pending:
                out = obj.decompress(pending, self.chunk)
                self.total_out += len(out)
                if self.total_out > limit:
                    raise zlib.error("max_inflate_ratio exceeded")
                parts.append(out)
                pending = obj.unconsumed_tail
        except zlib.error:
            self.failed = True
            self.stats["zlib_data_error"] += 1
            return b"".join(parts)
        out = b"".join(parts)
        self.stats["total_compressed_bytes"] += len(data)
        self.stats["total_uncompressed_bytes"] += len(out)
        return out

    def finish(self) -> bytes:
        if self.failed:
            return b""
        out = self.obj.flush()
        self.stats["total_uncompressed_bytes"] += len(out)
        return out
