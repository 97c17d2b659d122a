from __future__ import annotations

from emulated_bot import Scene


async def test_ping(scene: Scene) -> None:
    emu = scene.emu
    itx = await emu.slash(scene.alice, scene.general, "ping")
    await itx.wait_response()
    assert itx.response_type == 4 and itx.ephemeral
    assert itx.original.content == "pong"
    emu.assert_clean()
