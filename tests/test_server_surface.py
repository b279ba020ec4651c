"""The server's MCP surface, pinned: every tool (name, title, description, input and output
schema, annotations), every resource template and the instructions, as a client receives them
in both protocol eras. Any drift fails here, so a refactoring of ``server``/``tools`` cannot
change what agents see by accident. After an intended change, regenerate the snapshot with
``.venv/bin/python -m tests.test_server_surface`` and review its diff."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client

from mcp_background_job.config import Settings
from mcp_background_job.server import create_server

SNAPSHOT = Path(__file__).parent / "fixtures" / "server_surface.json"


async def _surface(db: Path, mode: str) -> dict[str, Any]:
    settings = Settings(db=db, subreaper=False)
    async with Client(create_server(settings), mode=mode) as client:
        tools = await client.list_tools()
        templates = await client.list_resource_templates()
        init = client.initialize_result
        return {
            "instructions": init.instructions if init is not None else None,
            "tools": [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools],
            "resource_templates": [
                t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in templates
            ],
        }


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_tools_and_resources_are_unchanged(tmp_path: Path, mode: str) -> None:
    surface = await _surface(tmp_path / "jobs.db", mode)
    expected = json.loads(SNAPSHOT.read_text())
    assert [t["name"] for t in surface["tools"]] == [t["name"] for t in expected["tools"]]
    for got, want in zip(surface["tools"], expected["tools"], strict=True):
        assert got == want, f"tool {want['name']!r} drifted"
    assert surface["resource_templates"] == expected["resource_templates"]
    if mode == "legacy":  # 2026-07-28 has no initialize result to carry the instructions
        assert surface["instructions"] == expected["instructions"]


if __name__ == "__main__":  # regenerate the snapshot (review the diff before committing it)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        data = asyncio.run(_surface(Path(tmp) / "jobs.db", "legacy"))
    SNAPSHOT.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    sys.exit(0)
