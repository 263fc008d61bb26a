"""Where the time goes: py-spy recordings of server processes, and hot-spot tables of profiles.

Owns ``PySpy`` (``py-spy record`` of running server processes for as long as a block runs,
raw collapsed stacks, only while ``--profile`` asks for it and py-spy is installed: it is in
the ``dev`` extra) and the summaries ``bench --profile`` prints and writes to
``profiles/hotspots.txt``: per profile the functions with the largest cumulative share
(``file:function``, cumulative % and own %), from py-spy stacks and from cProfile ``.prof``
files alike.

py-spy samples every thread that is not idle; stacks that end in a wait (the event loop's
``select``, a worker thread waiting for work) still show up in ``--nonblocking`` mode and are
dropped here, so a function's cumulative % is its share of the process's busy samples. cProfile
shares are of the profiled thread's time. Neither is a latency breakdown: a wait shows up in
neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import pstats
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "HotSpot",
    "PySpy",
    "format_hotspots",
    "py_spy_path",
    "sample_count",
    "summarize",
    "top_of_prof",
    "top_of_raw",
]

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
# Leaf frames of a thread that waits rather than works.
IDLE_LEAVES = frozenset(
    {
        "selectors.py:EpollSelector.select",
        "concurrent/futures/thread.py:_worker",
        "threading.py:Condition.wait",
        "threading.py:Event.wait",
        "queue.py:Queue.get",
    }
)


@dataclass(frozen=True, slots=True)
class HotSpot:
    """One function of a profile: its cumulative and own share, in percent."""

    function: str  # "file:function"
    cumulative_pct: float
    own_pct: float


def py_spy_path() -> str | None:
    """The py-spy executable beside this Python, or on PATH; None when not installed."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class PySpy:
    """``async with PySpy(pids, out_dir, label):`` records each PID while the block runs.

    Writes ``<out_dir>/pyspy-<label>-<name>.txt`` (raw collapsed stacks) per process; does
    nothing when py-spy is not installed (``available`` is False then)."""

    def __init__(
        self, pids: Mapping[str, int], out_dir: Path, label: str, *, rate: int = 100
    ) -> None:
        self.pids = dict(pids)
        self.out_dir = out_dir
        self.label = label
        self.rate = rate
        self.executable = py_spy_path()
        self.outputs: dict[str, Path] = {}
        self._children: list[subprocess.Popen[bytes]] = []

    @property
    def available(self) -> bool:
        return self.executable is not None

    async def __aenter__(self) -> PySpy:
        if self.executable is None:
            return self
        await asyncio.to_thread(self._start, self.executable)
        await asyncio.sleep(0.5)  # let py-spy attach before the load starts
        return self

    def _start(self, executable: str) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            output = self.out_dir / f"pyspy-{self.label}-{name}.txt"
            command = [executable, "record", "--pid", str(pid), "--rate", str(self.rate)]
            command += ["--format", "raw", "--output", str(output), "--nonblocking"]
            self._children.append(
                subprocess.Popen(  # noqa: S603 - py-spy on our own child processes
                    command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
            self.outputs[name] = output

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self._stop)

    def _stop(self) -> None:
        for child in self._children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for child in self._children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _frame_name(frame: str) -> str:
    """``function (path/file.py:123)`` → ``path/file.py:function``."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    return f"{match['file']}:{match['function']}"


def _stacks(path: Path) -> Iterator[tuple[list[str], int]]:
    """(frames, samples) of every busy stack of a py-spy raw file."""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        frames = [_frame_name(frame) for frame in stack.split(";")]
        if frames[-1] not in IDLE_LEAVES:
            yield frames, int(number)


def sample_count(path: Path) -> int:
    """How many busy samples a py-spy raw file holds (all threads)."""
    return sum(samples for _, samples in _stacks(path))


def top_of_raw(path: Path, count: int = 15) -> list[HotSpot]:
    """The ``count`` functions with the largest cumulative share of py-spy's busy samples."""
    cumulative: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for frames, samples in _stacks(path):
        total += samples
        for name in set(frames):
            cumulative[name] += samples
        own[frames[-1]] += samples
    return _ranked(cumulative, own, total, count)


def top_of_prof(path: Path, count: int = 15) -> list[HotSpot]:
    """The ``count`` functions with the largest cumulative share of a cProfile ``.prof``."""
    stats = pstats.Stats(str(path))
    table = stats.stats  # type: ignore[attr-defined]
    total = max((ct for (_, _, _, ct, _) in table.values()), default=0.0)
    cumulative: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for (file, _, function), (_, _, tt, ct, _) in table.items():
        name = f"{_short(file)}:{function}"
        cumulative[name] = max(cumulative[name], ct)
        own[name] += tt
    return _ranked(cumulative, own, total, count)


def _short(file: str) -> str:
    """A file path from its package on (``site-packages/`` and the project root cut off)."""
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def _ranked(
    cumulative: Mapping[str, float], own: Mapping[str, float], total: float, count: int
) -> list[HotSpot]:
    if total <= 0:
        return []
    ranked = sorted(cumulative.items(), key=lambda item: item[1], reverse=True)[:count]
    return [
        HotSpot(name, 100 * value / total, 100 * own.get(name, 0) / total) for name, value in ranked
    ]


def format_hotspots(title: str, spots: Sequence[HotSpot]) -> str:
    lines = [title, "  cum%   own%  function"]
    lines += [f"  {s.cumulative_pct:5.1f}  {s.own_pct:5.1f}  {s.function}" for s in spots]
    return "\n".join(lines)


def summarize(profile_dir: Path, count: int = 15) -> str:
    """Hot spots of every profile in ``profile_dir``, as text (also written to hotspots.txt)."""
    sections = []
    for path in _profiles(profile_dir.iterdir()):
        with contextlib.suppress(Exception):  # one unreadable profile must not hide the rest
            spots = top_of_raw(path, count) if path.suffix == ".txt" else top_of_prof(path, count)
            sections.append(format_hotspots(path.name, spots))
    text = "\n\n".join(sections) + "\n"
    (profile_dir / "hotspots.txt").write_text(text, encoding="utf-8")
    return text


def _profiles(paths: Iterable[Path]) -> list[Path]:
    return sorted(
        p
        for p in paths
        if p.suffix == ".prof" or (p.suffix == ".txt" and p.name.startswith("pyspy-"))
    )
