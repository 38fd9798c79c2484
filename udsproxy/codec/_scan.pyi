# The C scanner's interface (udsproxy/codec/_scan.c); absent in the pure-Python form.

def configure(special_request_headers: frozenset[bytes], authority_table: bytes, /) -> None: ...
def scan_request(
    data: bytes, pos: int, max_bytes: int, max_count: int, underscores_ok: bool, /
) -> (
    tuple[int, bytes, bytes, list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], bool] | None
): ...
def scan_response(
    data: bytes, max_bytes: int, /
) -> tuple[int, int, list[tuple[bytes, bytes]], int, bool, bytes] | None: ...
