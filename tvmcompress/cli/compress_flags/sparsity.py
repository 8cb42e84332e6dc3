"""``--sparsity S`` and its options: the Sparsify pass (magnitude sparsity, BSR kernels)."""

from __future__ import annotations

import argparse

ORDER = 30
PATTERNS = ("block", "unstructured", "n:m")


def _block(text: str) -> tuple[int, int]:
    """``RxC`` (rows of K x columns of N), e.g. 1x8 or 4x4."""
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--sparse-block takes RxC, e.g. 1x8, got {text!r}") \
            from err
    return rows, cols


def _nm(text: str) -> tuple[int, int]:
    try:
        n, m = (int(v) for v in text.split(":"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--sparse-nm takes N:M, e.g. 2:4, got {text!r}") \
            from err
    return n, m


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--sparsity", type=float, metavar="S",
                       help="zero this fraction [0, 1) of each matmul/conv weight by magnitude "
                            "and run layers where it is faster through block-sparse kernels")
    group.add_argument("--sparse-pattern", choices=PATTERNS, default="block",
                       help="block (default), unstructured (single weights) or n:m "
                            "(--sparse-nm, default 2:4; its sparsity is 1 - n/m)")
    group.add_argument("--sparse-block", type=_block, default=None, metavar="RxC",
                       help="block shape (rows of K x output columns); default 1 x the target's "
                            "vector width (1x8 on AVX2, 1x16 on AVX-512, 1x4 on NEON)")
    group.add_argument("--sparse-nm", type=_nm, default=(2, 4), metavar="N:M",
                       help="keep N of every M weights along K with --sparse-pattern n:m")
    group.add_argument("--sparse-decide", choices=("auto", "sparse", "dense"), default="auto",
                       help="auto: a layer runs sparse only where measured faster (default)")
    group.add_argument("--sparse-int8", action="store_true",
                       help="store the sparse values as int8 with per-output-channel scales")


def configs(args: argparse.Namespace) -> list:
    """A SparsifyConfig when ``--sparsity`` is given."""
    sparsity = getattr(args, "sparsity", None)
    if sparsity is None:
        return []
    from tvmcompress.passes.sparsify import SparsifyConfig

    return [SparsifyConfig(sparsity=sparsity, pattern=getattr(args, "sparse_pattern", "block"),
                           block=getattr(args, "sparse_block", None),
                           nm=getattr(args, "sparse_nm", (2, 4)),
                           decide=getattr(args, "sparse_decide", "auto"),
                           int8=getattr(args, "sparse_int8", False))]
