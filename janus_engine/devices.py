"""Devices: what a configured device name means, and whether this torch build has it.

:func:`parse_device` is pure (no torch): the config checks a device's *form* when it is built, so a typo
("tpu", "cuda:x") is refused at parse time. :func:`device_problem` and :func:`probe_device` ask torch,
imported lazily, whether the device *exists* here: the worker calls :func:`device_problem` before it makes
the device current (``torch.cuda.set_device`` on a CPU-only torch fails with an AttributeError about
``torch._C``), and ``janus-bot check`` runs ``python -m janus_engine.devices DEVICE...`` in a child process,
which prints one JSON object per device, so the checking process itself never imports torch.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from janus_engine.errors import InvalidRequest

DEVICE_FORMS = "cpu, cuda, cuda:N, mps or auto"
_DEVICE_RE = re.compile(r"^(cpu|cuda|cuda:\d+|mps|auto)$")


def parse_device(text: str) -> str:
    """The canonical form of a device name ("cuda:01" -> "cuda:1"); raises InvalidRequest for anything
    that is not cpu, cuda, cuda:N, mps or auto."""
    name = text.strip().lower() if isinstance(text, str) else ""
    if not _DEVICE_RE.match(name):
        raise InvalidRequest(f"{text!r} is not a device: use {DEVICE_FORMS}.")
    if name.startswith("cuda:"):
        name = f"cuda:{int(name[5:])}"
    return name


@dataclass(frozen=True)
class DeviceInfo:
    """What this torch build says about one device. Memory is in bytes (system RAM for cpu)."""

    device: str  # as configured
    resolved: str  # "auto" resolved to cuda or cpu; otherwise the device itself
    exists: bool
    problem: str | None = None  # why it does not exist, in one line
    name: str | None = None  # the GPU's name ("NVIDIA H100 80GB HBM3"), or "CPU"
    total_bytes: int | None = None
    free_bytes: int | None = None
    torch_version: str | None = None

    @property
    def detail(self) -> str:
        """Its name and memory ("NVIDIA H100 80GB HBM3, 79.1 GiB total, 78.5 GiB free"), or the problem."""
        if not self.exists:
            return self.problem or f"{self.device} is not available"
        memory = ""
        if self.total_bytes is not None:
            memory = f"{gib(self.total_bytes)} total"
            if self.free_bytes is not None:
                memory += f", {gib(self.free_bytes)} free"
        resolved = f"resolves to {self.resolved}" if self.resolved != self.device else ""
        return ", ".join(x for x in (resolved, self.name, memory) if x)

    @property
    def summary(self) -> str:
        """One line naming the device: "cuda:0: NVIDIA H100 80GB HBM3, 79.1 GiB total, ..."."""
        return self.detail if not self.exists else f"{self.device}: {self.detail}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceInfo:
        return cls(**data)


def gib(n: int | float) -> str:
    """Bytes for people: "23.5 GiB", or "2.2 MiB" below a GiB."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _gpus(count: int) -> str:
    return f"{count} GPU{'' if count == 1 else 's'} visible"


def _no_cuda_reason(torch: Any, device: str) -> str:
    if getattr(torch.version, "cuda", None) is None:
        return f"{device} is not available: this torch build has no CUDA (torch {torch.__version__})"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hint = f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
    return (
        f"{device} is not available: torch {torch.__version__} sees no CUDA GPU (driver missing or no GPU "
        f"visible{hint})"
    )


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot be used in this torch build, or None when it can. Creates no CUDA context."""
    import torch

    name = parse_device(device)
    if name in ("cpu", "auto"):
        return None
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            return f"mps is not available: no Metal GPU here (torch {torch.__version__})"
        return None
    if not torch.cuda.is_available():
        return _no_cuda_reason(torch, name)
    count = torch.cuda.device_count()
    index = int(name.split(":")[1]) if ":" in name else 0
    if index >= count:
        return f"{name} does not exist: {_gpus(count)}"
    return None


def resolve_device(device: str) -> str:
    """ "auto" becomes cuda when this torch sees a GPU, else cpu; other names come back canonical."""
    name = parse_device(device)
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _system_memory() -> tuple[int | None, int | None]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = page * os.sysconf("SC_PHYS_PAGES")
        free = page * os.sysconf("SC_AVPHYS_PAGES")
        return int(total), int(free)
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return None, None


def probe_device(device: str, *, memory: bool = True) -> DeviceInfo:
    """Whether ``device`` exists in this torch build, its name and (``memory``) its total and free bytes.

    Asking a GPU for its free memory creates a CUDA context on it (a few hundred MB, for the life of the
    process): ``janus-bot check`` asks in a child process; the worker asks ``memory=False``."""
    import torch

    version = str(torch.__version__)
    problem = device_problem(device)
    resolved = resolve_device(device) if problem is None else parse_device(device)
    if problem is not None:
        return DeviceInfo(device, resolved, False, problem=problem, torch_version=version)
    total: int | None = None
    free: int | None = None
    if resolved == "cpu":
        if memory:
            total, free = _system_memory()
        return DeviceInfo(
            device, resolved, True, name="CPU", total_bytes=total, free_bytes=free, torch_version=version
        )
    if resolved == "mps":
        if memory:
            total, _ = _system_memory()  # unified memory: Metal's budget is a share of RAM
            recommended = getattr(getattr(torch, "mps", None), "recommended_max_memory", None)
            if recommended is not None:
                total = int(recommended())
        return DeviceInfo(device, resolved, True, name="Apple MPS", total_bytes=total, torch_version=version)
    index = int(resolved.split(":")[1]) if ":" in resolved else 0
    props = torch.cuda.get_device_properties(index)
    total = int(props.total_memory)
    if memory:
        free = int(torch.cuda.mem_get_info(index)[0])
    return DeviceInfo(
        device,
        resolved,
        True,
        name=str(props.name),
        total_bytes=total,
        free_bytes=free,
        torch_version=version,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m janus_engine.devices DEVICE...``: one JSON DeviceInfo per line (what check reads)."""
    for device in sys.argv[1:] if argv is None else argv:
        try:
            info = probe_device(device)
        except Exception as exc:  # a broken driver: report it as the device's problem, in one line
            info = DeviceInfo(device, device, False, problem=f"{device}: {type(exc).__name__}: {exc}")
        print(json.dumps(asdict(info)), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover - run by janus-bot check in a child process
    sys.exit(main())
