"""mcp-background-job: an MCP server that runs shell commands as background jobs, on SQLite.

Import rule: imports nothing from the package. The layers, lowest first, are ``LAYERS`` in
``tests/test_layers.py``, which fails when an import points up.
"""

__version__ = "0.1.0"
