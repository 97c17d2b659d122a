"""House rule: the store is part of the light Discord process; importing it never pulls torch in."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_store_loads_neither_torch_nor_transformers() -> None:
    code = (
        "import sys, bot.store, bot.store.migrate, bot.store.retention\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
