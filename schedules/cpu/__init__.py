"""Default schedule rules for LLVM CPU targets (x86 AVX2/AVX-512, ARM NEON), one rule a file.

Each rule is a dlight ``ScheduleRule`` that answers None for functions that are not its kind
and for GPU targets, so ``rules_for`` can list them ahead of dlight's own CPU rules.
"""

from tvmcompress.schedules.cpu.conv2d import Conv2d
from tvmcompress.schedules.cpu.elementwise import Elementwise
from tvmcompress.schedules.cpu.matmul import Matmul

__all__ = ["Conv2d", "Elementwise", "Matmul"]
