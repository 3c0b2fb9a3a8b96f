"""``voxray listen [FILE|-]``: live transcription, in-process or against a voxray server.

Reads an audio file, or raw pcm16 16 kHz mono from stdin (``ffmpeg ... -f s16le -ar 16000 -ac 1 -``,
``arecord -f S16_LE -r 16000``), and prints the partial line updating in place on a terminal and
each final as a line; ``--json`` prints the events instead. ``--server URL`` streams to the
server's ``/v1/realtime`` WebSocket (the OpenAI Realtime transcription events).
"""

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import Field

from voxray.asr.config import ASROptions
from voxray.asr.streaming import StreamingOptions
from voxray.audio import SAMPLE_RATE
from voxray.cli.options import add_options, collect_options
from voxray.config import Options
from voxray.errors import InputError

PACKET_S = 0.1  # audio handed over per step: a microphone's pace
_BATCH_ONLY = ("batch_seconds", "max_batch_items", "max_padding", "chunk_s", "stride_s", "padding")


class ListenOptions(Options):
    """``voxray listen``: where the audio comes from, where it is transcribed, how it is shown."""

    input: str = Field("-", description="audio file, or '-' for raw pcm16 16 kHz mono on stdin")
    server: str | None = Field(None, description="voxray server URL (ws:// or http://); default: in-process")
    realtime: bool = Field(False, description="pace a file at real time, as a live source would arrive")
    api_key: str | None = Field(None, description="API key for --server (default: $VOXRAY_API_KEY)")
    asr: ASROptions = Field(default_factory=ASROptions)
    streaming: StreamingOptions = Field(default_factory=StreamingOptions)


def _packets(opts: ListenOptions) -> Iterator[np.ndarray]:
    """16 kHz float32 packets of ``PACKET_S`` from a file or stdin (paced with --realtime)."""
    step = int(PACKET_S * SAMPLE_RATE)
    if opts.input == "-":
        stream = sys.stdin.buffer
        while chunk := stream.read(step * 2):
            yield np.frombuffer(chunk[: len(chunk) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
        return
    from voxray.audio import decode_audio

    audio = decode_audio(opts.input)
    start = time.monotonic()
    for i in range(0, len(audio), step):
        if opts.realtime:
            time.sleep(max(0.0, start + i / SAMPLE_RATE - time.monotonic()))
        yield audio[i: i + step]


class _Printer:
    """The partial line rewritten in place on a terminal; finals as lines."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.tty = sys.stdout.isatty()
        self.partial = ""

    def event(self, kind: str, text: str, raw: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps(raw, ensure_ascii=False), flush=True)
            return
        if kind == "delta":
            self.partial += text
            if self.tty:
                print("\r\033[K" + self.partial, end="", flush=True)
            return
        if self.tty:
            print("\r\033[K", end="")
        if text:
            print(text, flush=True)
        self.partial = ""


def _listen_local(opts: ListenOptions, printer: _Printer) -> None:
    from voxray.asr import ASRRunner
    from voxray.asr.streaming import StreamingASR

    engine = StreamingASR.from_runner(ASRRunner(opts.asr), opts.streaming)
    session = engine.session()

    def show(events: list[Any]) -> None:
        for ev in events:
            raw = {"type": ev.kind, "segment": ev.segment, "text": ev.text, "start_s": round(ev.start_s, 3),
                   "end_s": round(ev.end_s, 3), **({"spans": ev.spans} if ev.spans else {})}
            printer.event(ev.kind, ev.text, raw)

    for packet in _packets(opts):
        show(session.feed(packet))
    show(session.finish())


async def _listen_server(opts: ListenOptions, printer: _Printer) -> None:
    import websockets

    url = opts.server.rstrip("/")  # type: ignore[union-attr]
    url = "ws" + url[4:] if url.startswith("http") else url
    if not url.endswith("/v1/realtime"):
        url += "/v1/realtime"
    key = opts.api_key or os.environ.get("VOXRAY_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        ws = await websockets.connect(url + "?intent=transcription", additional_headers=headers, open_timeout=30)
    except (OSError, websockets.InvalidHandshake) as exc:
        raise InputError(f"cannot open {url}: {exc}. Is `voxray serve` running there?") from None

    async def send() -> None:
        await ws.send(json.dumps({"type": "transcription_session.update",
                                  "session": {"input_audio_format": "pcm16", "input_audio_sample_rate": SAMPLE_RATE}}))
        packets = _packets(opts)  # read (and paced) off the event loop: stdin and sleeps block
        while (packet := await asyncio.to_thread(next, packets, None)) is not None:
            pcm = (np.clip(packet, -1, 1) * 32767).astype("<i2").tobytes()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}))
            await asyncio.sleep(0)
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))

    sender = asyncio.create_task(send())
    try:
        async for message in ws:
            ev = json.loads(message)
            kind = ev.get("type", "")
            if kind == "error":
                raise InputError(f"server error: {ev['error'].get('message')}")
            if kind.endswith("input_audio_transcription.delta"):
                printer.event("delta", ev["delta"], ev)
            elif kind.endswith("input_audio_transcription.completed"):
                printer.event("final", ev["transcript"], ev)
                if sender.done():
                    break
            elif printer.as_json:
                printer.event(kind, "", ev)
    except websockets.ConnectionClosed as exc:
        raise InputError(f"the server closed the session: {exc.rcvd.reason if exc.rcvd else exc}") from None
    finally:
        sender.cancel()
        await ws.close()


def _cmd_listen(args: argparse.Namespace) -> int:
    opts = ListenOptions(**collect_options(args))
    if opts.input != "-" and not os.path.exists(opts.input):
        raise InputError(f"audio file not found: {opts.input}")
    if opts.input == "-" and sys.stdin.isatty():
        raise InputError("nothing to listen to: give an audio FILE, or pipe pcm16 16 kHz mono on stdin "
                         "(e.g. ffmpeg -i in.mp3 -f s16le -ar 16000 -ac 1 - | voxray listen -)")
    printer = _Printer(bool(args._json))
    if opts.server:
        asyncio.run(_listen_server(opts, printer))
    else:
        _listen_local(opts, printer)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "listen", help="live transcription of a file or stdin, in-process or against a voxray server",
        description="Transcribe as the audio arrives: partial text updates in place, finals print as lines.",
    )
    p.add_argument("input", nargs="?", default=None, metavar="FILE|-",
                   help=ListenOptions.model_fields["input"].description)
    add_options(p, ListenOptions, skip=("input", "asr"), flatten=("streaming",))
    p.add_argument("--json", dest="_json", action="store_true", help="print the events as JSON lines instead of text")
    # the model flags of the ASR options; its batch/chunk planners do not apply to a live stream
    add_options(p, ASROptions, prefix="asr__", skip=(*_BATCH_ONLY, "timestamps"))
    p.set_defaults(_handler=_cmd_listen)
