"""Tools that ship with udsproxy but are not the proxy: ``udsproxy demo`` and ``udsproxy bench``.

Only the CLI imports this package, lazily; the data path never does (tests/unit/
test_import_contract.py enforces it), so neither tool adds to a worker's imports.
"""
