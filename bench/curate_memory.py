"""The curation driver's peak memory and the job's rate at two input sizes.

    .venv/bin/python bench/curate_memory.py [--tree DIR] [--videos 20,80] [--cpus 2] [--out DIR]

Writes ``max(--videos)`` synthetic 384x384 30 fps videos of 12 s (10 clips each at the settings below:
384x384, 17 frames at 15 fps, crf 8, so each clip is about 190 KB and the clips, not the fixed cost of
a Ray driver, dominate what packing could hold), then for each size curates the first N of them
twice, each run in a fresh driver process of the code in ``--tree`` (default: this checkout; pass
another worktree to measure an older version on the same inputs):

- ``end to end``: the whole job (staging and packing) into an empty folder;
- ``pack only``: the same folder again with another ``samples_per_shard``: staging is reused, so
  this is the packing alone.

For each run it prints the driver process's RSS once Ray is up and its peak RSS during the job
(its own, not its Ray workers'), wall seconds after Ray started, and clips per second. Never run in CI.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.samples import synthetic_scene, write_video  # noqa: E402

SETTINGS = ["size=384", "resize=squash", "crf=8", "clip_frames=17", "fps=15", "progress_interval=60"]

# Runs in a fresh interpreter with the measured tree first on sys.path; Ray starts before the clock.
# Starting Ray peaks the driver's RSS at a few hundred MiB, which would hide what curation adds: the
# peak is reset (``/proc/self/clear_refs``, Linux) once Ray is up, and read (``VmHWM``) at the end.
DRIVER = """
import json, re, sys, time
sys.path.insert(0, sys.argv[1])
from pipeline.curate import cli
from runtime.cluster import init_ray
def status(field):
    return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024
init_ray(int(sys.argv[2]))
base_mib = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
t0 = time.perf_counter()
rc = cli(sys.argv[3], sys.argv[4:])
seconds = time.perf_counter() - t0
peak_mib = status("VmHWM")
result = {"rc": rc, "seconds": seconds, "driver_peak_rss_mib": peak_mib, "driver_start_rss_mib": base_mib}
print("RESULT " + json.dumps(result))
"""


def make_videos(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"v{i:03d}.mp4"
        if not path.exists():
            frames = synthetic_scene(np.random.default_rng(i), 360, 384, 384, pan=3.0, objects=5)
            write_video(path, frames, 30, crf=18)
        paths.append(path)
    return paths


def curate(tree: Path, cpus: int, listing: Path, out: Path, *extra: str) -> dict:
    args = [str(ROOT / "jobs" / "curate.yaml"), f"input={listing}", f"output={out}", *SETTINGS, *extra]
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tree), str(cpus), *args],
        cwd=tree,
        capture_output=True,
        text=True,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"curate in {tree} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    stats = json.loads((out / "stats.json").read_text())
    result.update(clips=stats["clips"], shards=stats["shards"])
    result["clips_per_s"] = stats["clips"] / result["seconds"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", default=str(ROOT), help="checkout whose pipeline.curate is measured")
    ap.add_argument("--videos", default="20,80", help="input sizes (videos), comma-separated")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "curate_memory"))
    args = ap.parse_args()

    out = Path(args.out)
    sizes = [int(n) for n in args.videos.split(",")]
    videos = make_videos(out / "videos", max(sizes))
    results = []
    for n in sizes:
        listing = out / f"inputs-{n}.txt"
        listing.write_text("".join(f"{p}\n" for p in videos[:n]))
        folder = out / f"curated-{n}"
        shutil.rmtree(folder, ignore_errors=True)
        for phase, extra in (("end to end", ()), ("pack only", ("samples_per_shard=32",))):
            r = curate(Path(args.tree), args.cpus, listing, folder, *extra)
            r.update(videos=n, phase=phase)
            results.append(r)
            print(
                f"{n:4d} videos {r['clips']:5d} clips {r['shards']:3d} shards | {phase:10s} | "
                f"driver RSS at start {r['driver_start_rss_mib']:6.1f} MiB, "
                f"peak {r['driver_peak_rss_mib']:6.1f} MiB | "
                f"{r['seconds']:6.1f} s | "
                f"{r['clips_per_s']:6.1f} clips/s",
                flush=True,
            )
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
