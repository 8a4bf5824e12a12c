"""A stand-in trainer for the compute tests: rank 1 fails the way a real rank does (an exception, recorded by
`training.cli.record_failure`), rank 0 finishes its part. Run as `torchrun ... -m skinr1_pipeline_tests.failing_rank`.
"""

from __future__ import annotations

import sys

from skinr1_pipeline.runtime.distributed import current_rank
from skinr1_pipeline.training.cli import record_failure

MESSAGE = "CUDA out of memory on rank 1 (test stand-in)"


def main() -> int:
    rank = current_rank()
    try:
        if rank.rank == 1:
            raise RuntimeError(MESSAGE)
    except Exception:
        record_failure(rank.rank)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
