"""ViTDet backbone cost: windowed vs global attention (inference) and activation checkpointing on vs off (one
training step), seconds, FLOPs, achieved FLOP/s against the machine's GEMM rate, and peak memory (issue 12).

    python benchmarks/vitdet_backbone.py [--backbone aimv2-l] [--size 64*patch] [--window 16] [--batch 1]
        [--reps 3] [--train-reps 2] [--train-size SIZE] [--parts infer,train] [--device cpu] [--dtype fp32]
        [--threads N] [--gemm-size 2048] [--sequential [PARTS]] [--quick] [--out FILE]

Backbones are built from the registry with random weights. The default input gives a 64 x 64 token grid (the grid
ViTDet's SimpleFPN reads: a patch-16 model at 1024 px; 896 px for a patch-14 model). Inference runs
`forward_intermediates(x, indices=[-1], norm=False, output_fmt="NCHW")` under `torch.no_grad()` with
`set_window(W)` (windows of W x W tokens, 4 evenly spaced global blocks) and with `set_window(None)`; training runs
forward + backward of `forward_intermediates(...)[0].float().square().mean()` on the trainable, windowed backbone
with and without `set_grad_checkpointing(True)`.

Each configuration runs in its own process of this script, so that its peak memory is its own: on the CPU the peak
resident set (VmHWM, reset after the model and input are built, = ru_maxrss) minus the resident set at that point,
and, allocator-level, the peak of the bytes torch's CPU allocator held during one extra pass after the timed ones
(profiler memory events; the RSS also holds what glibc keeps after a free); on CUDA
`torch.cuda.max_memory_allocated` minus the memory allocated after building. The two configurations of a comparison
are built side by side and take turns, one pass each per round, the order alternating, so that load drift on a
shared machine hits both alike (`--sequential`: one after the other, when two at once do not fit in memory); the
first pass of each is a warm-up, the median of the timed passes after it is reported, and the time ratio also as the
median of the per-round ratios (`time_paired`, robust to the machine's speed drifting between rounds). FLOPs are
counted with `torch.utils.flop_counter.FlopCounterMode` over one step of the same configuration built on the meta
device (no compute, no memory; counting the real pass would also change what activation checkpointing keeps alive).
The GEMM rate is the best of 5 `torch.mm` of two `--gemm-size` square matrices, sampled before, in every round and
after; `fraction_of_gemm` is the median over the timed passes of each pass's FLOP/s over its round's sample.
`--quick` is a smoke run of about a minute on an idle 2-core machine (ViT-B/16 at 256 px, a 16 x 16 grid with
windows of 4, one timed pass each). The JSON report goes to benchmarks/out/vitdet_backbone.json
(vitdet_backbone_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils import flop_counter

OUT_DIR = Path(__file__).resolve().parent / "out"
QUICK = {"backbone": "timm:vit_base_patch16_224", "size": 256, "window": 4, "reps": 1, "train_reps": 1}
DTYPES = {"fp32": None, "bf16": torch.bfloat16}
FLOP_METHOD = ("torch.utils.flop_counter.FlopCounterMode over one step of the same configuration built on the meta "
               "device (2 FLOPs per multiply-add; in training backward and checkpoint recomputation included; no "
               "autocast: FLOPs do not depend on the dtype). SDPA runs its math form there (bmm): the fused kernels' "
               "forward FLOPs exactly; a fused backward that recomputes the attention scores (flash) does one QK^T "
               "more (+0.3% of a ViT-B/16 step at 256 px). flop_counter_mode() also registers the CPU SDPA kernel "
               "and nn.MultiheadAttention's fast path, which the counter misses, so that a count on a real CPU "
               "device agrees")


# ---------------------------------------------------------------- FLOP counting
def _sdpa_cpu(query, key, value, *args, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward(grad_out, query, key, value, *args, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


def _native_mha(query, key, value, embed_dim, num_head, qkv_weight, qkv_bias, proj_weight, proj_bias, *args,
                **kwargs) -> int:
    """nn.MultiheadAttention's inference fast path (open_clip): q/k/v projections, attention, output projection.
    Shapes are (B, L, D) (batch_first, the only layout the fast path takes)."""
    b, lq, d = query
    lk = key[1]
    return 2 * b * (lq + 2 * lk) * d * d + 4 * b * lq * lk * d + 2 * b * lq * d * d


def flop_counter_mode() -> flop_counter.FlopCounterMode:
    aten = torch.ops.aten
    custom = {aten._native_multi_head_attention: _native_mha}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu
        custom[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _sdpa_cpu_backward
    return flop_counter.FlopCounterMode(display=False, custom_mapping=custom)


def attention_flops_analytic(meta, batch: int, grid: tuple[int, int], window) -> int:
    """QK^T and AV of every block (4 L_q L_k D per sequence), windows as the shared loop cuts them (padded to whole
    windows, prefix tokens joining every window): a cross-check of the counted attention FLOPs."""
    h, w = grid
    p, d = meta.num_prefix_tokens, meta.embed_dim
    total = 0
    for i in range(meta.depth):
        if window is not None and i not in window.global_blocks:
            wh, ww = min(window.size, h), min(window.size, w)
            n_seq, length = batch * (-(-h // wh)) * (-(-w // ww)), p + wh * ww
        else:
            n_seq, length = batch, p + h * w
        total += 4 * n_seq * length * length * d
    return total


# ---------------------------------------------------------------- memory
def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def allocated_peak_mb(profiler: torch.profiler.profile) -> float:
    """Peak of the bytes the CPU allocator held during a profiled pass above what it held before (the running sum
    of the profiler's memory events; blocks allocated before profiling and freed during it are not seen)."""
    events = [e for e in profiler.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return round(peak / 2**20, 1)


class PeakMemory:
    """Peak memory of what runs after `start()`, in MiB, above what was held at that point."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = ""
        self.baseline_mb = 0.0

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_mb = torch.cuda.memory_allocated(self.device) / 2**20
            self.method = "torch.cuda.max_memory_allocated - memory_allocated after building"
            return
        rss = _status_kb("VmRSS")
        try:  # Linux >= 4.0: reset the peak resident set (VmHWM, which ru_maxrss reads) to the current one
            Path("/proc/self/clear_refs").write_text("5")
            reset = True
        except OSError:
            reset = False
        if rss is not None and reset:
            self.baseline_mb = rss / 1024
            self.method = "peak RSS (VmHWM / ru_maxrss, reset after building) - RSS after building"
        else:  # no reset possible: the high-water mark so far is the baseline
            self.baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            self.method = "ru_maxrss - ru_maxrss after building"

    def peak(self) -> dict:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            hwm = _status_kb("VmHWM")
            peak = (hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024
        return {"peak_mb": round(peak - self.baseline_mb, 1), "baseline_mb": round(self.baseline_mb, 1),
                "absolute_peak_mb": round(peak, 1), "memory_method": self.method}


# ---------------------------------------------------------------- one configuration (worker process)
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Measurement:
    """One configuration, built in this (fresh) process: FLOPs counted on a meta-device copy, a warm-up pass, timed
    passes, the peak memory (on the CPU also the allocator's, from one more, profiled pass)."""

    def __init__(self, cfg: dict) -> None:
        torch.set_num_threads(cfg["threads"])
        torch.manual_seed(0)
        self.cfg = cfg
        self.device = torch.device(cfg["device"])
        self.dtype = DTYPES[cfg["dtype"]]
        self.train = cfg["mode"] == "train"
        self.backbone, self.x = self.build(self.device)
        self.memory = PeakMemory(self.device)
        self.memory.start()

    def build(self, device: torch.device) -> tuple[torch.nn.Module, torch.Tensor]:
        from aimv2_eval.backbones import create_backbone

        with torch.device(device):
            backbone = create_backbone(self.cfg["backbone"], pretrained=False, trainable=self.train)
        backbone.to(device).set_window(self.cfg["window"])
        if self.train:
            backbone.set_grad_checkpointing(self.cfg["checkpointing"])
        x = torch.randn(self.cfg["batch"], 3, self.cfg["size"], self.cfg["size"], device=device)
        return backbone, x

    def step(self, backbone: torch.nn.Module | None = None, x: torch.Tensor | None = None,
             autocast: bool = True) -> torch.Tensor:
        bb = self.backbone if backbone is None else backbone
        x = self.x if x is None else x
        cast = torch.autocast(x.device.type, dtype=self.dtype) if autocast and self.dtype else nullcontext()
        if self.train:
            bb.zero_grad(set_to_none=True)
            with cast:
                out = bb.forward_intermediates(x, indices=[-1], norm=False, output_fmt="NCHW")[0]
            out.float().square().mean().backward()
            return out.detach()
        with torch.no_grad(), cast:
            return bb.forward_intermediates(x, indices=[-1], norm=False, output_fmt="NCHW")[0]

    def count(self) -> dict:
        """FLOPs of one step, counted on a meta-device copy (no compute, no memory: SDPA runs its math form
        there); then the warm-up pass."""
        meta_bb, meta_x = self.build(torch.device("meta"))
        counter = flop_counter_mode()
        with counter:
            out = self.step(meta_bb, meta_x, autocast=False)
        flops = counter.get_total_flops()
        by_op = {str(k): round(v / 1e9, 3) for k, v in sorted(counter.get_flop_counts()["Global"].items(), key=str)}
        grid = (out.shape[-2], out.shape[-1])
        del meta_bb, meta_x, out
        t0 = time.perf_counter()
        out = self.step()
        _sync(self.device)
        seconds = time.perf_counter() - t0
        bb = self.backbone
        return {"output_shape": list(out.shape), "grid": list(grid), "params_m": round(bb.num_params / 1e6, 2),
                "global_blocks": list(bb.window.global_blocks) if bb.window else None,
                "flops": flops, "gflops_by_op": by_op, "warmup_s": round(seconds, 4),
                "attention_gflops_analytic_fwd": round(
                    attention_flops_analytic(bb.meta, self.cfg["batch"], grid, bb.window) / 1e9, 3)}

    def timed(self) -> dict:
        _sync(self.device)
        t0 = time.perf_counter()
        self.step()
        _sync(self.device)
        return {"seconds": time.perf_counter() - t0}

    def peak(self) -> dict:
        """The peak memory of the passes so far."""
        return self.memory.peak()

    def allocator_peak(self) -> dict:
        """On the CPU, one more pass profiled for the allocator's peak (after the resident set is read: the
        profiler's own buffers would inflate it). Gradients left by the previous step were allocated before
        profiling, so their release is not seen and the new ones count in full: the same peak as a first step."""
        profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
        with profiler:
            self.step()
        return {"allocated_peak_mb": allocated_peak_mb(profiler)}


def _reply(msg: dict) -> None:
    print("@@" + json.dumps(msg), flush=True)


def worker_main(cfg: dict) -> int:
    """Serve one configuration: build, answer `ready`, then run the commands read from stdin one per line
    (count, time, peak, allocator) until stdin closes."""
    try:
        m = Measurement(cfg)
        _reply({"ready": True})
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "count":
                _reply(m.count())
            elif cmd == "time":
                _reply(m.timed())
            elif cmd == "peak":
                _reply(m.peak())
            elif cmd == "allocator":
                _reply(m.allocator_peak())
            else:
                _reply({"error": f"unknown command {cmd!r}"})
                return 2
    except Exception as e:  # reported to the parent, which records it and carries on with the other configurations
        _reply({"error": f"{type(e).__name__}: {e}"})
        return 1
    return 0


class Worker:
    """A configuration's own process (so that its peak memory is its own), driven by the parent one pass at a
    time, so that the configurations of a comparison can take turns."""

    def __init__(self, cfg: dict) -> None:
        self.stderr = tempfile.TemporaryFile(mode="w+")
        env = {**os.environ, "OMP_NUM_THREADS": str(cfg["threads"])}
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(cfg)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True, bufsize=1, env=env)
        self.error: str | None = None

    def call(self, cmd: str | None = None) -> dict | None:
        """Send a command (None: just read the next answer) and return the answer, or None once failed."""
        if self.error:
            return None
        try:
            if cmd:
                assert self.proc.stdin is not None
                self.proc.stdin.write(cmd + "\n")
                self.proc.stdin.flush()
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.startswith("@@"):
                    msg = json.loads(line[2:])
                    if "error" in msg:
                        self._fail(msg["error"])
                        return None
                    return msg
        except (BrokenPipeError, OSError):
            pass
        rc = self.proc.wait()
        self._fail(f"worker exited with status {rc}" + (" (killed: out of memory?)" if rc == -9 else ""))
        return None

    def _fail(self, message: str) -> None:
        self.stderr.seek(0)
        noise = ("USDT:", "DeviceProperties.cpp", "CPUAllocator.cpp")  # the profiler's chatter
        tail = [ln for ln in self.stderr.read().splitlines() if ln.strip() and not any(n in ln for n in noise)][-2:]
        self.error = message + (" | " + " | ".join(tail) if tail and message not in tail[-1] else "")
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                if self.proc.stdin:
                    self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def run_group(cfgs: dict[str, dict], reps: int, gemm: Callable[[], dict[str, float]], gemm_samples: list,
              sequential: bool = False) -> dict:
    """The configurations of one comparison side by side: all built at once, each in its own process; a warm-up
    pass each (with the FLOP count), then `reps` rounds of one timed pass each (order alternating, a GEMM timing per
    round). `sequential`: one configuration (process) at a time instead, when two at once do not fit in memory."""
    workers: dict[str, Worker] = {}
    counted: dict[str, dict] = {}
    times: dict[str, list[float]] = {name: [] for name in cfgs}
    round_gemm: dict[str, list[dict]] = {name: [] for name in cfgs}  # the GEMM sample of each timed pass's round
    finals: dict[str, dict | None] = {}
    for names in [[n] for n in cfgs] if sequential else [list(cfgs)]:
        batch = {name: Worker(cfgs[name]) for name in names}
        workers.update(batch)
        try:
            for w in batch.values():
                w.call()  # ready
            for name, w in batch.items():
                counted[name] = w.call("count") or {}
                if counted[name]:
                    print(f"  [{name}: warm-up {counted[name]['warmup_s']:.2f} s]", flush=True)
            for r in range(reps):
                sample = gemm()
                gemm_samples.append(sample)
                for name in names if r % 2 == 0 else names[::-1]:
                    msg = batch[name].call("time")
                    if msg:
                        times[name].append(msg["seconds"])
                        round_gemm[name].append(sample)
                done = [f"{n} {times[n][-1]:.2f} s" for n in names if len(times[n]) == r + 1]
                if done:
                    print(f"  [round {r + 1}/{reps}: " + ", ".join(done) + "]", flush=True)
            for name, w in batch.items():
                finals[name] = w.call("peak")
                if finals[name] is not None and cfgs[name]["device"] == "cpu":
                    alloc = w.call("allocator")  # may fail (memory) without losing the rest
                    finals[name].update(alloc or {"allocated_peak_error": w.error})
                    w.error = None
        finally:
            for w in batch.values():
                w.close()
    results = {}
    for name, cfg in cfgs.items():
        w = workers[name]
        if w.error or not times[name]:
            results[name] = {"mode": cfg["mode"], "error": w.error or "no timed pass"}
            continue
        c, seconds = counted[name], statistics.median(times[name])
        results[name] = {
            "mode": cfg["mode"], "window": cfg["window"], "checkpointing": cfg.get("checkpointing", False),
            "global_blocks": c["global_blocks"], "size": cfg["size"], "grid": c["grid"], "batch": cfg["batch"],
            "output_shape": c["output_shape"], "params_m": c["params_m"],
            "seconds": round(seconds, 4), "seconds_per_image": round(seconds / cfg["batch"], 4),
            "seconds_all": [round(t, 4) for t in times[name]], "gemm_per_pass": round_gemm[name],
            "warmup_s": c["warmup_s"],
            "gflops_per_image": round(c["flops"] / cfg["batch"] / 1e9, 3),
            "achieved_gflops": round(c["flops"] / seconds / 1e9, 2),
            "gflops_by_op": c["gflops_by_op"], "attention_gflops_analytic_fwd": c["attention_gflops_analytic_fwd"],
            **(finals[name] or {}),
        }
    return results


# ---------------------------------------------------------------- machine
def gemm_gflops(n: int, device: torch.device, dtype: torch.dtype, reps: int = 5) -> float:
    """Best rate of `reps` torch.mm of two n x n matrices (after one warm-up), in GFLOP/s."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device, threads: int) -> dict:
    info = {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": threads,
            "device": str(device), "python": platform.python_version(), "loadavg_end": list(os.getloadavg())}
    mem = None
    try:
        mem = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
    except (OSError, IndexError, ValueError):
        pass
    if mem:
        info["memory_gb"] = round(mem / 2**20, 1)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---------------------------------------------------------------- report
def _ratio(a: dict, b: dict, key: str) -> float | None:
    if "error" in a or "error" in b or not b.get(key):
        return None
    return round(a[key] / b[key], 3)


def _paired(a: dict, b: dict, sequential: bool) -> float | None:
    """Median over rounds of the ratio of the two passes of a round (they ran back to back: robust to the machine's
    speed drifting between rounds); None when the configurations ran one after the other."""
    if sequential or "error" in a or "error" in b or len(a["seconds_all"]) != len(b["seconds_all"]):
        return None
    return round(statistics.median(x / y for x, y in zip(a["seconds_all"], b["seconds_all"])), 3)


def _line(label: str, r: dict) -> str:
    if "error" in r:
        return f"  {label:<16} FAILED: {r['error']}"
    alloc = f" (allocator {r['allocated_peak_mb']:.0f} MB)" if "allocated_peak_mb" in r else ""
    return (f"  {label:<16} {r['seconds_per_image']:8.3f} s/img {r['gflops_per_image']:8.1f} GFLOP/img "
            f"{r['achieved_gflops']:6.1f} GFLOP/s ({r['fraction_of_gemm']:.2f} of GEMM)  peak {r['peak_mb']:.0f} MB"
            + alloc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default=None, help="registry name (default aimv2-l; --quick: ViT-B/16)")
    ap.add_argument("--size", type=int, default=None, help="input size in px (default: 64 x patch, a 64 x 64 grid)")
    ap.add_argument("--train-size", type=int, default=None, help="input size of the training step (default --size)")
    ap.add_argument("--window", type=int, default=None, help="window in tokens (default 16; --quick: 4)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=None, help="timed inference passes after the warm-up (default 3)")
    ap.add_argument("--train-reps", type=int, default=None, help="timed training steps after the warm-up (default 2)")
    ap.add_argument("--parts", default="infer,train", help="comma-separated: infer, train")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="bf16: autocast")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--gemm-size", type=int, default=2048)
    ap.add_argument("--sequential", nargs="?", const="infer,train", default="", metavar="PARTS",
                    help="for these parts (default both) run the two configurations one after the other, not side by "
                         "side, when two at once do not fit in memory")
    ap.add_argument("--quick", action="store_true", help="smoke run of about a minute (ViT-B/16, 256 px)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker_main(json.loads(args.worker))

    defaults = {"backbone": "aimv2-l", "window": 16, "reps": 3, "train_reps": 2, **(QUICK if args.quick else {})}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    sequential = {p.strip() for p in args.sequential.split(",") if p.strip()}
    if not parts <= {"infer", "train"} or not sequential <= {"infer", "train"}:
        ap.error(f"--parts and --sequential take infer and/or train, got {args.parts!r}, {args.sequential!r}")
    from aimv2_eval.backbones import describe_backbone, get_spec
    from aimv2_eval.report.store import environment

    spec = get_spec(args.backbone)
    meta = describe_backbone(spec.name)
    size = args.size or (QUICK["size"] if args.quick else 64 * meta.patch_size)
    train_size = args.train_size or size
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    out = args.out or OUT_DIR / ("vitdet_backbone_quick.json" if args.quick else "vitdet_backbone.json")

    gemm_dtypes = {"fp32": torch.float32, **({args.dtype: DTYPES[args.dtype]} if DTYPES[args.dtype] else {})}

    def gemm() -> dict[str, float]:
        return {k: round(gemm_gflops(args.gemm_size, device, dt), 2) for k, dt in gemm_dtypes.items()}

    loadavg_start = list(os.getloadavg())
    gemm_samples = [gemm()]
    print(f"GEMM {args.gemm_size}^3 on {device}: "
          + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in gemm_samples[0].items()), flush=True)

    def write_report(done: set[str], complete: bool) -> dict:
        """The report of the parts done so far, written at once (a run cut short keeps what it finished)."""
        gemm_median = {k: round(statistics.median(g[k] for g in gemm_samples), 2) for k in gemm_dtypes}
        ref = gemm_median[args.dtype] if args.dtype in gemm_median else gemm_median["fp32"]
        key = args.dtype if args.dtype in gemm_median else "fp32"
        for r in results.values():
            if "error" not in r:  # each pass against the GEMM rate sampled in its round: the machine's speed drifts
                r["fraction_of_gemm"] = round(statistics.median(
                    r["gflops_per_image"] * r["batch"] / t / g[key]
                    for t, g in zip(r["seconds_all"], r["gemm_per_pass"])), 3)
                r["fraction_of_median_gemm"] = round(r["achieved_gflops"] / ref, 3)

        ratios = {}
        if "infer" in done:
            w, g = results["infer_windowed"], results["infer_global"]
            ratios["windowed_over_global"] = {k: _ratio(w, g, key) for k, key in
                                              (("time", "seconds"), ("peak_memory", "peak_mb"),
                                               ("allocated_peak_memory", "allocated_peak_mb"),
                                               ("flops", "gflops_per_image"))}
            ratios["windowed_over_global"]["time_paired"] = _paired(w, g, "infer" in sequential)
        if "train" in done:
            c, n = results["train_checkpointing"], results["train_no_checkpointing"]
            ratios["checkpointing_over_no_checkpointing"] = {k: _ratio(c, n, key) for k, key in
                                                             (("peak_memory", "peak_mb"),
                                                              ("allocated_peak_memory", "allocated_peak_mb"),
                                                              ("time", "seconds"), ("flops", "gflops_per_image"))}
            ratios["checkpointing_over_no_checkpointing"]["time_paired"] = _paired(c, n, "train" in sequential)
        notes = []
        if "train" in parts and train_size != size:
            notes.append(f"the training step ran at {train_size} px (grid {train_size // meta.patch_size}, "
                         f"--train-size), not at the inference size {size} px")
        for part in sorted(sequential & done):
            notes.append(f"{part}: the two configurations ran one after the other (--sequential), not taking turns")
        if args.dtype != "fp32":
            notes.append(f"{args.dtype} autocast; fraction_of_gemm is against the {args.dtype} GEMM rate")
        report = {
            "benchmark": "vitdet_backbone", "complete": complete, "parts": sorted(done),
            "config": {"backbone": spec.name, "requested": args.backbone, "family": meta.family,
                       "depth": meta.depth, "embed_dim": meta.embed_dim, "patch_size": meta.patch_size, "size": size,
                       "grid": [size // meta.patch_size] * 2, "train_size": train_size,
                       "train_grid": [train_size // meta.patch_size] * 2, "window": args.window,
                       "batch": args.batch, "reps": args.reps, "train_reps": args.train_reps,
                       "device": args.device, "dtype": args.dtype,
                       "quick": args.quick, "sequential": sorted(sequential),
                       "weights": "random (pretrained=False)",
                       "inference_call": "forward_intermediates(x, indices=[-1], norm=False, output_fmt='NCHW') "
                                         "under torch.no_grad()",
                       "training_call": "forward_intermediates(...)[0].float().square().mean().backward(), "
                                        "trainable, windowed"},
            "machine": {**machine_info(device, args.threads), "loadavg_start": loadavg_start,
                        "gemm_gflops": gemm_median, "gemm_ref_gflops": ref, "gemm_gflops_samples": gemm_samples,
                        "gemm": f"best of 5 torch.mm of two {args.gemm_size}x{args.gemm_size} matrices; sampled "
                                "before, in every timing round and after; gemm_gflops is the median sample; a "
                                "result's fraction_of_gemm is the median over its timed passes of the pass's FLOP/s "
                                "over its round's sample (fraction_of_median_gemm: achieved_gflops / gemm_gflops)"},
            "flop_method": FLOP_METHOD,
            "results": results,
            "ratios": ratios,
            "notes": notes,
            "environment": environment(),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str))
        return report

    base = {"backbone": spec.name, "batch": args.batch, "device": args.device, "dtype": args.dtype,
            "threads": args.threads}
    results: dict[str, dict] = {}
    if "infer" in parts:
        print(f"inference, {size} px: windowed vs global attention", flush=True)
        results.update(run_group({
            f"infer_{label}": {**base, "mode": "infer", "size": size, "window": window}
            for label, window in (("windowed", args.window), ("global", None))
        }, args.reps, gemm, gemm_samples, "infer" in sequential))
        write_report({"infer"}, complete=parts == {"infer"})
    if "train" in parts:
        print(f"training step, {train_size} px, windowed: activation checkpointing off vs on", flush=True)
        results.update(run_group({
            f"train_{label}": {**base, "mode": "train", "size": train_size, "window": args.window,
                               "checkpointing": ckpt}
            for label, ckpt in (("no_checkpointing", False), ("checkpointing", True))
        }, args.train_reps, gemm, gemm_samples, "train" in sequential))
    gemm_samples.append(gemm())
    report = write_report(parts, complete=True)
    ratios, notes, ref = report["ratios"], report["notes"], report["machine"]["gemm_ref_gflops"]
    cfgd = report["config"]
    print(f"\n{spec.name} ({meta.family}, depth {meta.depth}, width {meta.embed_dim}, patch {meta.patch_size}) on "
          f"{report['machine']['cpu_model'] if device.type == 'cpu' else report['machine'].get('gpu')}, "
          f"{args.threads} threads, {args.dtype}, batch {args.batch}; GEMM {ref:.1f} GFLOP/s (median of "
          f"{len(gemm_samples)}); load average {loadavg_start[0]:.1f} at start, "
          f"{report['machine']['loadavg_end'][0]:.1f} at end")
    if "infer" in parts:
        gb = results["infer_windowed"].get("global_blocks")
        print(f"inference {size} px, grid {cfgd['grid'][0]}x{cfgd['grid'][1]}, window {args.window} "
              f"(global blocks {gb}):")
        print(_line("windowed", results["infer_windowed"]))
        print(_line("global", results["infer_global"]))
        print("  windowed/global: " + ", ".join(f"{k} {v}" for k, v in ratios["windowed_over_global"].items()))
    if "train" in parts:
        print(f"training step {train_size} px, grid {cfgd['train_grid'][0]}x{cfgd['train_grid'][1]}, windowed:")
        print(_line("no checkpointing", results["train_no_checkpointing"]))
        print(_line("checkpointing", results["train_checkpointing"]))
        print("  checkpointing/none: "
              + ", ".join(f"{k} {v}" for k, v in ratios["checkpointing_over_no_checkpointing"].items()))
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
