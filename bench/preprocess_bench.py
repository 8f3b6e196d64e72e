"""Preprocessing a 24 MP JPEG: ours (``shared.analysis.preprocessing``) against the naive Pillow
path, pyvips' ``thumbnail``, simplejpeg's scaled decode and the entropy-decode floor, in one run.

    .venv/bin/python bench/preprocess_bench.py [--repeat 11] [--max-dimension 2048]

Every row reads the same file's bytes and ends at the same output size (the long side at the
target, aspect kept), single-threaded; every row but the floor also encodes a q90 4:2:0 JPEG:

* **ours**: ``preprocess()`` as the pipeline calls it: sniff, header and bomb checks, EXIF,
  DCT-scaled decode (3/8 when it covers the target), reduce/bicubic resample, descriptors, encode;
* **naive**: ``Image.open(...).convert("RGB").resize(target, BICUBIC)``, encode;
* **pyvips**: ``thumbnail_buffer`` (shrink-on-load, then its default lanczos3 resize), then
  ``jpegsave_buffer``; libvips limited to one worker thread (``VIPS_CONCURRENCY=1``) and its
  operation cache off, so no run reuses another's result;
* **simplejpeg**: ``decode_jpeg(min_width, min_height)`` (TurboJPEG picks the smallest M/8 scale
  that covers the target, the same 3/8 as ours), the same Pillow bicubic resample as ours (one
  copy into and one out of Pillow), ``encode_jpeg``;
* **floor**: entropy decoding only (DCT scaling at 1/8, nothing resampled or encoded): no
  decoder-based path can be faster, so it is the yardstick of the targets.

Each variant lives in its own process; peak memory is the rise of that fresh process's resident
high-water mark during its first run (Pillow and libvips allocate pixel buffers outside Python's
allocator, so ``tracemalloc`` would not see them); PSNR compares that run's output with the best
downscale Pillow makes (full decode, lanczos), so a row cannot buy speed with quality unseen.
The timed runs are interleaved: each trial runs every variant once, in a rotating order, so load
from other work on the machine falls on all of them alike. The targets use CPU time (one thread:
about the wall time on an idle box, without the waiting for a core on a shared one; wall time is
printed beside it); ratios to the floor are taken per trial, then their median. Targets: ours
<= 1.5x the floor and faster than pyvips and simplejpeg; >= 4x faster than naive at <= 1/4 of
its peak memory; descriptors <= 5 % of ours.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _chart  # bench/ itself: the script's folder is first on sys.path

QUALITY = 90
#: ours' target: at most this many times the entropy-decode floor
FLOOR_TARGET = 1.5
def make_24mp_jpeg(seed: int = 24) -> bytes:
    """A photo-like 6000x4000 JPEG: soft shapes over gradients plus luminance grain, q=90."""
    import random

    from PIL import Image, ImageChops, ImageDraw, ImageFilter

    rng = random.Random(seed)
    size = (6000, 4000)
    gradient = Image.linear_gradient("L").resize(size)
    im = Image.merge(
        "RGB",
        (
            gradient,
            gradient.transpose(Image.Transpose.ROTATE_180),
            gradient.rotate(90).resize(size),
        ),
    )
    draw = ImageDraw.Draw(im)
    for _ in range(300):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        w, h = rng.randrange(40, 900), rng.randrange(40, 900)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x, y, x + w, y + h), fill=colour)
    im = im.filter(ImageFilter.GaussianBlur(3))
    grain = Image.effect_noise(size, 8)
    im = Image.merge("RGB", [ImageChops.add(c, grain, 1.0, -128) for c in im.split()])
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _rss_kib(field: str) -> int:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _threads() -> int:
    tasks = Path("/proc/self/task")
    return len(list(tasks.iterdir())) if tasks.exists() else 0


#: output size, decoded at, stage times, the encoded output (none for the floor)
Run = tuple[tuple[int, int], str, dict[str, float], bytes]


def _target(width: int, height: int, max_dimension: int) -> tuple[int, int]:
    scale = max_dimension / max(width, height)
    return round(width * scale), round(height * scale)


def _ours(data: bytes, max_dimension: int) -> Run:
    from shared.analysis.preprocessing import PreprocessOptions, preprocess

    options = PreprocessOptions(max_dimension=max_dimension, jpeg_quality=QUALITY)
    result = preprocess(data, options, clock=time.process_time)  # stages in CPU time, as the rows
    record = result.record
    drafts = [step.split("->")[1] for step in record.steps if step.startswith("draft:")]
    size = (record.final_width, record.final_height)
    return size, (drafts[0] if drafts else "full size"), record.stage_ms, result.data


def _naive(data: bytes, max_dimension: int) -> Run:
    from PIL import Image

    im = Image.open(io.BytesIO(data)).convert("RGB")
    out = im.resize(_target(*im.size, max_dimension), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    out.save(buffer, "JPEG", quality=QUALITY)
    return out.size, "full size", {}, buffer.getvalue()


def _pyvips(data: bytes, max_dimension: int) -> Run:
    import pyvips

    # a max_dimension box: the long side lands on the target whichever way the photo is turned
    out = pyvips.Image.thumbnail_buffer(data, max_dimension, height=max_dimension, size="down")
    encoded = out.jpegsave_buffer(Q=QUALITY, subsample_mode="on")  # "auto": 4:4:4 at Q >= 90
    return (out.width, out.height), "shrink-on-load", {}, bytes(encoded)


def _simplejpeg(data: bytes, max_dimension: int) -> Run:
    import numpy as np
    import simplejpeg
    from PIL import Image

    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    target = _target(width, height, max_dimension)
    pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=target[0],
                                    min_height=target[1])
    decoded = f"{pixels.shape[1]}x{pixels.shape[0]}"
    out = Image.fromarray(pixels).resize(target, Image.Resampling.BICUBIC)
    encoded = simplejpeg.encode_jpeg(np.asarray(out), quality=QUALITY, colorspace="RGB",
                                     colorsubsampling="420")
    return out.size, decoded, {}, bytes(encoded)


def _floor(data: bytes, max_dimension: int) -> Run:
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.draft("RGB", (im.width // 8, im.height // 8))
    im.load()
    return (0, 0), f"{im.width}x{im.height}", {}, b""


VARIANTS: dict[str, Callable[[bytes, int], Run]] = {
    "ours": _ours, "naive": _naive, "pyvips": _pyvips, "simplejpeg": _simplejpeg,
    "floor": _floor,
}
LABELS = {
    "ours": "ours (shared.analysis.preprocessing)",
    "naive": "naive: full decode + resize",
    "pyvips": "pyvips thumbnail",
    "simplejpeg": "simplejpeg scaled decode",
    "floor": "floor: entropy decode only",
}


def _worker(variant: str, path: str, max_dimension: int, conn: Connection) -> None:
    """Memory first, in a process that has decoded nothing yet (freed heap is never returned,
    so a warm process would hide the peak); then one timed run per request until told to stop."""
    os.environ["VIPS_CONCURRENCY"] = "1"  # read when libvips starts: before the import below
    import PIL.Image  # noqa: F401  (imports are not part of the measurement)

    import shared.analysis.preprocessing  # noqa: F401

    if variant == "pyvips":
        import pyvips

        pyvips.cache_set_max(0)
    if variant == "simplejpeg":
        import numpy  # noqa: F401
        import simplejpeg  # noqa: F401

    data = Path(path).read_bytes()
    run = VARIANTS[variant]
    before = _rss_kib("VmRSS")
    output = run(data, max_dimension)[3]
    conn.send((_rss_kib("VmHWM") - before, _threads(), output))
    while conn.recv() == "run":
        t0, c0 = time.perf_counter(), time.process_time()
        size, decoded_at, stage_ms, _ = run(data, max_dimension)
        conn.send((time.perf_counter() - t0, time.process_time() - c0, size, decoded_at,
                   stage_ms))
    conn.close()


@dataclass
class Row:
    """One variant's measurements: its first run's memory, then every timed trial."""

    peak_kib: int
    threads: int
    psnr_db: float  # of the output against the reference (full decode + lanczos), after q90
    wall_s: list[float]
    cpu_s: list[float]
    size: tuple[int, int] = (0, 0)
    decoded_at: str = ""
    stages: list[dict[str, float]] | None = None

    @property
    def ms(self) -> float:
        """Median CPU ms per run: what the targets use (one thread, so CPU ~ wall on an idle
        box; on a shared one the CPU time leaves out the waiting for a core)."""
        return statistics.median(self.cpu_s) * 1000

    @property
    def wall_ms(self) -> float:
        return statistics.median(self.wall_s) * 1000

    def stage_ms(self) -> dict[str, float]:
        stages = self.stages or []
        if not stages:
            return {}
        return {name: statistics.median(s[name] for s in stages) for name in stages[0]}


def _reference(path: str, max_dimension: int) -> object:
    """The best downscale Pillow can make: full decode, lanczos (float pixels, for PSNR)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        full = im.convert("RGB")
    return np.asarray(full.resize(_target(*full.size, max_dimension), Image.Resampling.LANCZOS),
                      dtype=np.float64)


def _psnr(encoded: bytes, reference: object) -> float:
    import numpy as np
    from PIL import Image

    if not encoded:
        return float("nan")
    ref = np.asarray(reference)
    pixels = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"), dtype=np.float64)
    if pixels.shape != ref.shape:
        return float("nan")
    mse = float(((pixels - ref) ** 2).mean())
    return 10 * np.log10(255**2 / mse) if mse else float("inf")


def measure(path: str, max_dimension: int, trials: int) -> dict[str, Row]:
    """Start one worker per variant, then ``trials`` interleaved rounds of one run each."""
    reference = _reference(path, max_dimension)
    ctx = mp.get_context("spawn")
    workers: dict[str, Connection] = {}
    procs = []
    rows: dict[str, Row] = {}
    try:
        for name in VARIANTS:  # one at a time: each first run (the memory) has the box alone
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(name, path, max_dimension, child))
            proc.start()
            procs.append(proc)
            workers[name] = parent
            peak, threads, output = parent.recv()
            rows[name] = Row(peak, threads, _psnr(output, reference), [], [], stages=[])
        names = list(VARIANTS)
        for trial in range(trials):
            for name in names[trial % len(names):] + names[: trial % len(names)]:
                workers[name].send("run")
                wall, cpu, size, decoded_at, stage_ms = workers[name].recv()
                row = rows[name]
                row.wall_s.append(wall)
                row.cpu_s.append(cpu)
                row.size, row.decoded_at = size, decoded_at
                if stage_ms and row.stages is not None:
                    row.stages.append(stage_ms)
    finally:
        for conn in workers.values():
            conn.send("stop")
        for proc in procs:
            proc.join(timeout=30)
    return rows


def paired_ratio(rows: dict[str, Row], name: str, base: str = "floor") -> list[float]:
    """``name``'s CPU time over ``base``'s, trial by trial (both ran in the same round)."""
    return [a / b for a, b in zip(rows[name].cpu_s, rows[base].cpu_s, strict=True)]


def chart_of(dimension: int, rows: dict[str, Row]) -> _chart.Chart:
    """Ours split by stage against the other rows, the 1.5x-floor and the 4x-naive budgets."""
    ours = rows["ours"]
    stages = list(ours.stage_ms().items())
    other = max(0.0, ours.ms - sum(ms for _, ms in stages))  # open, header checks, EXIF
    bars = [
        _chart.Bar(LABELS[name], [*stages, ("other", other)] if name == "ours"
                   else [(name, rows[name].ms)])
        for name in ("naive", "pyvips", "simplejpeg", "ours", "floor")
    ]
    return _chart.bars(
        f"Preprocessing a 24 MP JPEG to {dimension} px, one thread: median CPU ms per image",
        "ms",
        bars,
        [_chart.Mark(f"{FLOOR_TARGET:g}x floor", rows["floor"].ms * FLOOR_TARGET),
         _chart.Mark("4x naive", rows["naive"].ms / 4)],
    )


def _spread(values: list[float], scale: float = 1.0) -> str:
    return f"{min(values) * scale:.0f}-{max(values) * scale:.0f}"


def report(dimension: int, rows: dict[str, Row]) -> list[bool]:
    """Print the table and every target's verdict; the verdicts, for the exit code."""
    verdicts: list[bool] = []
    for name, row in rows.items():
        output = f"{row.size[0]}x{row.size[1]}" if name != "floor" else "-"
        print(f"{dimension:>6}  {name:<10} {row.ms:>5.0f} ms {_spread(row.cpu_s, 1000):>9}"
              f" {row.wall_ms:>6.0f} ms {_spread(row.wall_s, 1000):>9} {row.threads:>4}"
              f" {row.peak_kib / 1024:>7.1f} MB {row.psnr_db:>5.1f} dB  {output:<10}"
              f" {row.decoded_at}")
    sizes = {rows[name].size for name in rows if name != "floor"}
    if len(sizes) != 1:
        print(f"{dimension:>6}  OUTPUT SIZES DIFFER ({sizes}): the rows are not comparable")
        verdicts.append(False)
    ours, naive, floor = rows["ours"], rows["naive"], rows["floor"]
    ratios = paired_ratio(rows, "ours")
    ratio = statistics.median(ratios)
    met = ratio <= FLOOR_TARGET
    verdicts.append(met)
    print(f"{dimension:>6}  target ours <= {FLOOR_TARGET:g}x floor: {ratio:.2f}x"
          f" (per trial {min(ratios):.2f}-{max(ratios):.2f}; {ours.ms:.0f} vs {floor.ms:.0f} ms,"
          f" budget {floor.ms * FLOOR_TARGET:.0f} ms): {'PASS' if met else 'MISS'}")
    for rival in ("pyvips", "simplejpeg"):
        theirs = paired_ratio(rows, rival)
        met = rows[rival].ms > ours.ms
        verdicts.append(met)
        print(f"{dimension:>6}  target ours faster than {rival}: {ours.ms:.0f} vs"
              f" {rows[rival].ms:.0f} ms ({statistics.median(theirs):.2f}x floor):"
              f" {'PASS' if met else 'MISS'}")
    speedup = naive.ms / ours.ms
    memory = ours.peak_kib / naive.peak_kib if naive.peak_kib else float("nan")
    print(f"{dimension:>6}  ours is {speedup:.1f}x faster than naive (target >= 4:"
          f" {'PASS' if speedup >= 4 else 'MISS'}) at {memory:.2f} of its peak memory"
          f" (target <= 0.25: {'PASS' if memory <= 0.25 else 'MISS'});"
          f" entropy decoding alone caps any path at {naive.ms / floor.ms:.1f}x")
    split = ours.stage_ms()
    print(f"{dimension:>6}  ours by stage (PreprocessRecord.stage_ms, CPU): "
          + ", ".join(f"{name} {ms:.1f} ms" for name, ms in split.items())
          + f"; other {max(0.0, ours.ms - sum(split.values())):.1f} ms")
    describe_ms = split.get("describe", float("nan"))
    share = describe_ms / ours.ms
    print(f"{dimension:>6}  descriptors (stage 'describe'): {describe_ms:.1f} ms ="
          f" {share:.1%} of ours (target <= 5 %): {'PASS' if share <= 0.05 else 'MISS'}")
    return verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=11, help="interleaved trials per target")
    parser.add_argument(
        "--max-dimension",
        type=int,
        action="append",
        help="target long side (repeatable; default: 2048 = PREPROCESS_MAX_DIMENSION, and 1500)",
    )
    parser.add_argument("--keep", type=Path, help="also write the generated JPEG here")
    parser.add_argument(
        "--charts",
        type=Path,
        default=Path("artifacts/bench"),
        help="folder for one SVG chart per target (default: artifacts/bench)",
    )
    args = parser.parse_args()

    import tempfile

    dimensions = args.max_dimension or [2048, 1500]
    data = make_24mp_jpeg()
    print(f"input: 6000x4000 photo-like JPEG, {len(data) / 1e6:.1f} MB; {args.repeat}"
          f" interleaved trials, one thread per variant; load average {os.getloadavg()[0]:.2f}")
    print(f"{'target':>6}  {'variant':<10} {'CPU':>8} {'range':>9} {'wall':>9} {'range':>9}"
          f" {'thr':>4} {'peak RSS':>10} {'PSNR':>8}  {'output':<10} decoded at")
    verdicts: list[bool] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "24mp.jpg"
        path.write_bytes(data)
        if args.keep:
            args.keep.write_bytes(data)
        for dimension in dimensions:
            rows = measure(str(path), dimension, args.repeat)
            verdicts += report(dimension, rows)
            chart = _chart.write(args.charts / f"preprocess-{dimension}.svg",
                                 chart_of(dimension, rows))
            print(f"{dimension:>6}  chart: {chart}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    _passthrough_descriptors(max(5, args.repeat))
    return 0 if all(verdicts) else 1


def _passthrough_descriptors(repeat: int) -> None:
    """Images sent unchanged: what the descriptors add to preprocessing, per sample.

    A JPEG's validation already decodes at 1/8 (the descriptors reuse it); a PNG's is a CRC walk
    that inflates nothing, so describing it costs one decode: shown here, not hidden.
    """
    from shared.analysis.preprocessing import PreprocessOptions, preprocess

    samples = Path(__file__).resolve().parents[1] / "samples"
    print(f"\nsent unchanged (samples/), median of {repeat}: preprocess with descriptors"
          " vs without")
    for path in sorted(p for p in samples.iterdir() if p.suffix in (".png", ".jpg")):
        data = path.read_bytes()
        timings = {}
        for on in (False, True):
            runs = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                preprocess(data, PreprocessOptions(descriptors=on))
                runs.append((time.perf_counter() - t0) * 1000)
            timings[on] = statistics.median(runs)
        print(f"  {path.name:<16} {timings[False]:>6.1f} ms -> {timings[True]:>6.1f} ms"
              f" (+{timings[True] - timings[False]:.1f} ms)")


if __name__ == "__main__":
    sys.exit(main())
