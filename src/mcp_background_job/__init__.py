"""mcp-background-job: an MCP server that runs shell commands as background jobs, on SQLite."""

__version__ = "0.1.0"
