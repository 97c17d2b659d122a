"""``janus-bot imagine`` and ``janus-bot describe``: one-off jobs through a JanusEngine, with a progress bar.

They go through the same engine as the bot (worker process, queue, events), so the CLI is also a quick
end-to-end check of a model directory. Inputs are validated before the model starts loading, so a typo
costs milliseconds, not a model load. Errors are JanusError subclasses: ``bot.cli`` prints them as one
line and exits with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from janus_engine.config import EngineConfig
from janus_engine.engine import JanusEngine, JobHandle
from janus_engine.errors import InvalidImage, InvalidRequest
from janus_engine.images import normalize_upload
from janus_engine.protocol import (
    DEFAULT_MODEL,
    Done,
    GenerateRequest,
    GenerateResult,
    ModelSpec,
    Progress,
    TextDelta,
    TextSampling,
    Turn,
    UnderstandRequest,
    UnderstandResult,
)
from janus_engine.text import strip_control
from janus_engine.validation import validate_generate_request, validate_understand_request


def _check_local_model(model: str) -> None:
    """A ``--model`` written as a path (``/x``, ``./x``, ``../x``, ``~/x``) must exist before a worker is
    started for it (that costs seconds); a hub id (``org/name``) is the worker's to resolve."""
    if not model.startswith(("/", "./", "../", "~", ".\\")) and model not in (".", ".."):
        return
    path = Path(model).expanduser()
    if not path.is_dir():
        what = "is a file, not a model directory" if path.exists() else "does not exist"
        raise InvalidRequest(
            f"model directory {path} {what}; pass a hub id such as {DEFAULT_MODEL} or a directory written "
            "by save_pretrained (or `janus-bot make-tiny-model DIR` for a test model)."
        )


def _engine_config(args: argparse.Namespace, jobs: int) -> EngineConfig:
    _check_local_model(args.model)
    spec = ModelSpec(model=args.model, dtype=args.dtype)
    return EngineConfig(
        model=spec,
        devices=(args.device or "auto",),
        max_queue=max(jobs, 1),
        max_queued_per_user=max(jobs, 1),
        max_running_per_user=max(jobs, 1),
        preview_every=0,  # the progress bar shows no previews: decoding them would only cost time
    )


def _slug(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:limit].strip("-")
    return slug or "image"


def _job_id(kind: str) -> str:
    return f"cli-{kind}-{uuid.uuid4().hex[:12]}"


# ---- imagine ----------------------------------------------------------------------------------------------


def writable_output_dir(path: Path) -> Path:
    """Make sure ``path`` is a folder this process can write into, before any work starts: create it
    (and its parents) and write and delete a probe file in it. Raises :class:`InvalidRequest` with one
    line otherwise (a file in the way, a read-only or missing mount, no permission)."""
    if path.exists() and not path.is_dir():
        raise InvalidRequest(f"{path} exists and is not a folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidRequest(f"cannot create the output folder {path}: {exc.strerror or exc}.") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".janus-write-test-", dir=path)
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise InvalidRequest(f"cannot write in the output folder {path}: {exc.strerror or exc}.") from None
    return path


def _write_images(
    out_dir: Path, names: Sequence[str], images: Sequence[bytes]
) -> tuple[list[Path], str | None]:
    """Write the images into ``out_dir``; if that fails now (disk full, folder removed meanwhile), into a
    fresh temporary folder instead, so a finished generation is never lost. Returns the paths and, after
    a fallback, the reason."""
    try:
        paths = [out_dir / name for name in names]
        for path, png in zip(paths, images, strict=True):
            path.write_bytes(png)
        return paths, None
    except OSError as exc:
        reason = f"cannot write to {out_dir} ({exc.strerror or exc})"
    fallback = Path(tempfile.mkdtemp(prefix="janus-imagine-"))
    paths = [fallback / name for name in names]
    for path, png in zip(paths, images, strict=True):
        path.write_bytes(png)
    return paths, reason


def imagine_command(args: argparse.Namespace) -> int:
    """``janus-bot imagine PROMPT``: exit 0 with the image paths on stdout; 2 for a bad input, found before
    the model loads (the output folder is created and tried first); 1 when the images could not be
    written to the output folder after all and were saved to a temporary folder instead (it says where).
    """
    request = GenerateRequest(
        request_id=_job_id("imagine"),
        prompt=args.prompt,
        n_images=args.count,
        guidance=args.guidance,
        temperature=args.temperature,
        seed=args.seed,
        negative_prompt=getattr(args, "negative", "") or "",
    )
    validate_generate_request(request)
    config = _engine_config(args, 1)
    out_dir = writable_output_dir(Path(args.output))
    result = asyncio.run(_imagine(config, request))
    assert isinstance(result, GenerateResult)
    stem = _slug(args.prompt)
    seed_part = f"-s{result.seed}" if result.seed is not None else ""
    names = [f"{stem}{seed_part}-{index}.png" for index in range(1, len(result.images) + 1)]
    paths, failure = _write_images(out_dir, names, result.images)
    for path in paths:
        print(path)
    if failure is not None:
        _say(f"janus-bot imagine: {failure}; the images are in {paths[0].parent} instead")
        return 1
    return 0


async def _imagine(config: EngineConfig, request: GenerateRequest) -> GenerateResult | UnderstandResult:
    _say(f"loading {config.model.model} on {config.devices[0]} ...")
    async with JanusEngine(config) as engine:
        handle = engine.submit(request, user_id="cli")
        return await _show_progress(handle, desc=f"imagine x{request.n_images}", unit="step")


# ---- describe ---------------------------------------------------------------------------------------------


def _read_image(path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InvalidImage(f"{path}: no such file.") from None
    except IsADirectoryError:
        raise InvalidImage(f"{path} is a folder, not an image file.") from None
    except OSError as exc:
        raise InvalidImage(f"{path}: cannot read it ({exc.strerror}).") from None
    try:
        return normalize_upload(data)
    except InvalidImage as exc:
        raise type(exc)(f"{path}: {exc.user_message}") from None


def describe_command(args: argparse.Namespace) -> int:
    """Describe each image (one job per image; the engine batches them together)."""
    sampling = TextSampling(temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed)
    requests = []
    for path in args.images:
        png = _read_image(path)
        request = UnderstandRequest(
            request_id=_job_id("describe"),
            turns=(Turn("user", args.prompt, images=(png,)),),
            sampling=sampling,
        )
        validate_understand_request(request)
        requests.append(request)
    results = asyncio.run(_describe(_engine_config(args, len(requests)), requests))
    for path, result in zip(args.images, results, strict=True):
        assert isinstance(result, UnderstandResult)
        if len(requests) > 1:
            print(f"== {path}")
        print(strip_control(result.text).strip())  # the tiny model emits ESC bytes; so may a real one
    return 0


async def _describe(
    config: EngineConfig, requests: Sequence[UnderstandRequest]
) -> list[GenerateResult | UnderstandResult]:
    _say(f"loading {config.model.model} on {config.devices[0]} ...")
    async with JanusEngine(config) as engine:
        handles = [engine.submit(request, user_id="cli") for request in requests]
        total = sum(request.sampling.max_new_tokens for request in requests)
        with tqdm(total=total, desc=f"describe x{len(requests)}", unit="tok", file=sys.stderr) as bar:
            return list(await asyncio.gather(*(_count_tokens(h, bar) for h in handles)))


async def _count_tokens(handle: JobHandle, bar: tqdm) -> GenerateResult | UnderstandResult:
    async for event in handle:
        if isinstance(event, TextDelta):
            bar.update(1)
    return await handle.result()


# ---- shared -----------------------------------------------------------------------------------------------


async def _show_progress(handle: JobHandle, *, desc: str, unit: str) -> GenerateResult | UnderstandResult:
    """Drive a tqdm bar from one job's Progress events; return its result (or raise its error)."""
    bar: tqdm | None = None
    try:
        async for event in handle:
            if isinstance(event, Progress) and event.preview is None:
                if bar is None:
                    bar = tqdm(total=event.total, desc=desc, unit=unit, file=sys.stderr)
                bar.update(event.step - bar.n)
            elif isinstance(event, Done) and bar is not None and bar.total is not None:
                bar.update(bar.total - bar.n)
    finally:
        if bar is not None:
            bar.close()
    return await handle.result()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
