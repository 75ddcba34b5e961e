"""Upload inspection latency: an interpreter started for the upload (cold) vs one started ahead
(warm, ``GIF_INSPECTOR_SPARES`` ≥ 1), on the files an upload really sends: the digits MLP
checkpoint as safetensors and as a ``.pt`` state dict (converted), and the digits training set.

Each warm sample waits until the spare has finished importing torch (an upload arriving after
an idle moment); ``--back-to-back`` sends the next request at once instead (a burst).

    python bench/inspector.py [--repeats 5] [--back-to-back]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import _common

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from jobs.inspector import Inspector  # noqa: E402
from tests import factories  # noqa: E402

#: Enough for ``import torch`` in the spare on this machine (it is idle while waiting).
SPARE_WARM_SECONDS = 4.0


def _files(folder: Path) -> dict[str, tuple[Path, str]]:
    import torch

    digits = factories.digits()
    model = factories.train_mlp(digits)
    written = factories.write_files(folder, digits, model)
    pt = folder / "checkpoint.pt"
    torch.save(model.state_dict(), pt)
    return {
        "checkpoint (safetensors)": (written["checkpoint"], "checkpoint"),
        "checkpoint (.pt, converted)": (pt, "checkpoint"),
        "dataset (safetensors)": (written["train"], "dataset"),
    }


def _time(inspector: Inspector, path: Path, kind: str, out: Path, settle: float) -> float:
    if settle:
        time.sleep(settle)
    started = time.perf_counter()
    inspector.inspect(path, kind, out)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--back-to-back", action="store_true", help="no pause between warm requests")
    args = parser.parse_args()
    settle = 0.0 if args.back_to_back else SPARE_WARM_SECONDS
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        out = folder / "converted.safetensors"
        for name, (path, kind) in _files(folder).items():
            cold_inspector, warm_inspector = Inspector(300, spares=0), Inspector(300, spares=1)
            warm_inspector.prestart()
            try:
                cold = [_time(cold_inspector, path, kind, out, 0.0) for _ in range(args.repeats)]
                warm = [_time(warm_inspector, path, kind, out, settle) for _ in range(args.repeats)]
            finally:
                warm_inspector.close()
            rows.append([name, f"{path.stat().st_size / 1024:.0f} KiB", _common.fmt_ms(_common.median(cold)),
                         _common.fmt_ms(_common.median(warm)), f"{_common.median(cold) / _common.median(warm):.1f}×",
                         f"{warm_inspector.warm}/{args.repeats}"])  # fmt: skip
    print(f"\n{_common.machine_description()}; median of {args.repeats}; "
          f"{'back-to-back' if args.back_to_back else f'{settle:.0f} s between'} warm requests\n")  # fmt: skip
    print(_common.markdown_table(["upload", "size", "cold", "warm (spare)", "speed-up", "served warm"], rows))


if __name__ == "__main__":
    main()
