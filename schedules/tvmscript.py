"""TVMScript parsing without its slow stack walk.

``T.prim_func`` captures the caller's frames with ``inspect.stack()``, which resolves the
source file of every frame on the stack, and each resolution scans all of ``sys.modules``:
about 0.7 s per kernel once TVM is imported, so our 20 intrinsic definitions made
``import tvmcompress`` take 17 s, and every sparse kernel built cost as much. The parser only
needs the frames themselves (to resolve closure variables; the source lines serve a
class-scope check that does not apply to functions), so while our kernels are parsed the
stack is built straight from the frame objects.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Iterator


def _frames(context: int = 1) -> list[inspect.FrameInfo]:
    """``inspect.stack()`` without file names resolved through modules or source lines."""
    frame, infos = sys._getframe(1), []
    while frame is not None:
        code = frame.f_code
        fields = (frame, code.co_filename, frame.f_lineno, code.co_name, None, None)
        try:
            infos.append(inspect.FrameInfo(*fields, positions=None))
        except TypeError:  # Python 3.10: no positions
            infos.append(inspect.FrameInfo(*fields))
        frame = frame.f_back
    return infos


@contextlib.contextmanager
def frames_without_source() -> Iterator[None]:
    """Within the block, ``inspect.stack()`` is the cheap ``_frames``."""
    original = inspect.stack
    inspect.stack = _frames
    try:
        yield
    finally:
        inspect.stack = original
