"""The GPU checks in one command, written to one report (REPORT.md and report.json in --out):

1. mnistlab against the plain loop (mnistlab-bench --batch-sizes) at batches 64-512, at one optimizer step per
   Lightning step and at data.steps_per_execution=auto; the same under compile=reduce-overhead;
2. the wall time of `python train.py` to 99% test accuracy on MNIST (the full set with --mnist-root, else the
   bundled 8,000 training digits, a harder start) and to 91% on Fashion-MNIST;
3. the targets the CPU could not reach: the seed network at >= 94.0% on Fashion-MNIST, distilled from a ResNet
   teacher, and a ResNet of <= 1M parameters at >= 95.0%.

    python scripts/gpu_suite.py --fashion-root .gpu/data --out $OUT   # MNIST: the bundled digits, re-split
    python scripts/gpu_suite.py --smoke --out /tmp/smoke      # the same code on the CPU, synthetic data, < 1 min

../shared/gpu/README.md says how to run it on the GPU machine.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from mnistlab.data.files import write_bundled_mnist  # noqa: E402
from mnistlab.data.synthetic import write_synthetic_dataset  # noqa: E402
from mnistlab.tools import benchmark  # noqa: E402

# (name, dataset, experiment and settings, the test accuracy to reach); epochs sized for an H100 in the 8 minutes.
TIME_TO_ACCURACY = [
    ("MNIST to 99%", "mnist", ["+experiment=bag_of_tricks", "trainer.max_epochs=8"], 0.99),
    ("Fashion-MNIST to 91%", "fashion_mnist", ["+experiment=bag_of_tricks", "trainer.max_epochs=6"], 0.91),
]
TEACHER = ["+experiment=resnet_bag_of_tricks", "trainer.max_epochs=30", "data.augment={translate: 0.1, hflip: 0.5}"]
STUDENT = ["+experiment=bag_of_tricks_long", "tricks.distill_weight=0.5", "tricks.distill_temperature=4.0"]
MAX_RESNET_PARAMETERS = 1_000_000


def train(args: argparse.Namespace, folder: Path, dataset: str, overrides: list[str]) -> dict:
    """One `python train.py` run: its metrics.json, with its wall time and network size."""
    root = {"mnist": args.mnist_root, "fashion_mnist": args.fashion_root}[dataset]
    command = [sys.executable, "train.py", f"data={dataset}", f"data.root={root}", "data.download=false",
               f"hydra.run.dir={folder}", *overrides, *(args.smoke_overrides if args.smoke else [])]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (folder.parent / f"{folder.name}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        return {"command": " ".join(command[1:]), "error": done.stderr.strip().splitlines()[-1:], "wall_s": seconds}
    metrics = json.loads((folder / "metrics.json").read_text())
    state = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    size = sum(t.numel() for name, t in state.items() if name.startswith("net.") and t.is_floating_point()
               and "running_" not in name)
    return metrics | {"command": " ".join(command[1:]), "wall_s": round(seconds, 1), "parameters": size}


def overhead(args: argparse.Namespace, out: Path) -> dict:
    """mnistlab-bench's batch sweep (a2 at auto and at one step per Lightning step, against b), plain and compiled."""
    results = {}
    common = ["--data-root", str(args.fashion_root), "--device", args.device,
              "--batch-sizes", "64" if args.smoke else "64,128,256,512", "--repeats", "1" if args.smoke else "3"]
    if args.smoke:
        common += ["--train-images", "600", "--val-size", "200"]
    for name, extra in (("eager", []), ("compile=reduce-overhead", ["compile=reduce-overhead"])):
        if args.smoke and extra:
            results[name] = {"skipped": "compiling takes minutes on a CPU: run on the GPU"}
            continue
        report = out / f"bench-{name.split('=')[0]}.json"
        benchmark.main([*common, "--json", str(report), *extra])
        results[name] = json.loads(report.read_text())["batch_sweep"]
    return results


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = out / "runs"
    runs.mkdir(exist_ok=True)
    report = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "smoke": args.smoke,
              "overhead": overhead(args, out), "time_to_accuracy": [], "targets": []}
    for name, dataset, overrides, target in TIME_TO_ACCURACY:
        result = train(args, runs / name.split()[0].lower(), dataset, overrides)
        report["time_to_accuracy"].append({"name": name, "target": target, **result,
                                           "reached": result.get("test/acc", 0) >= target})
    teacher = train(args, runs / "resnet_teacher", "fashion_mnist", TEACHER)
    report["targets"].append({"name": "ResNet <= 1M parameters at >= 95.0%", **teacher,
                              "reached": teacher.get("test/acc", 0) >= 0.95
                              and teacher.get("parameters", 2**31) <= MAX_RESNET_PARAMETERS})
    if "best_checkpoint" in teacher:
        student = train(args, runs / "seed_distilled", "fashion_mnist",
                        [*STUDENT, f"tricks.distill_teacher={teacher['best_checkpoint']}"])
        report["targets"].append({"name": "seed network at >= 94.0%", **student,
                                  "reached": student.get("test/acc", 0) >= 0.94})
    return report


def markdown(report: dict) -> str:
    lines = [f"# GPU suite on {report['device']}{' (smoke)' if report['smoke'] else ''}", ""]
    for name, rows in report["overhead"].items():
        lines.append(f"## mnistlab against the plain loop, {name}")
        if isinstance(rows, dict):
            lines += [rows["skipped"], ""]
            continue
        lines += ["| batch | K | a2/b | paired a2/b (range) | steps alone, paired a2/b | steps interleaved a2/b | "
                  "a2k1/b | a2 s | a2k1 s | b s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['batch']} | {r['steps_per_execution']} | {r['a2/b']:.2f} | "
                  f"{benchmark.paired_cell(r['a2/b_paired'])} | {benchmark.paired_cell(r['a2/b_steps_paired'])} | "
                  f"{benchmark.paired_cell(r['a2/b_interleaved'])} | {r['a2k1/b']:.2f} | "
                  f"{r['a2_seconds']:.2f} | {r['a2k1_seconds']:.2f} | {r['b_seconds']:.2f} |" for r in rows]
        lines.append("")
    lines += ["## Runs", "", "| run | test/acc | target | reached | wall s | parameters | command |",
              "|---|---|---|---|---|---|---|"]
    for row in report["time_to_accuracy"] + report["targets"]:
        accuracy = f"{row['test/acc']:.4f}" if "test/acc" in row else f"failed: {row.get('error')}"
        lines.append(f"| {row['name']} | {accuracy} | {row.get('target', '')} | {row['reached']} | {row['wall_s']} | "
                     f"{row.get('parameters', '')} | `{row['command']}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fashion-root", type=Path, help="Fashion-MNIST's four IDX files")
    parser.add_argument("--mnist-root", type=Path, help="MNIST's four IDX files (default: the 10,000 official test "
                        "digits bundled with mnistlab, re-split 8,000 / 2,000: the GPU machine is offline)")
    parser.add_argument("--out", type=Path, required=True, help="the folder for REPORT.md, report.json and logs")
    parser.add_argument("--smoke", action="store_true", help="the same code on the CPU, synthetic data, 1 epoch")
    args = parser.parse_args(argv)
    args.device = "cpu" if args.smoke else "cuda"
    args.smoke_overrides = ["trainer.max_epochs=1", "scheduler.warmup_epochs=0", "tricks.mix_off_last_epochs=0",
                            "data.val_size=200", "trainer.accelerator=cpu", "data.batch_size=64", "callbacks=minimal"]
    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as scratch:
        if args.smoke:
            args.fashion_root = args.mnist_root = write_synthetic_dataset(Path(scratch), n_train=800, n_test=200)
        elif not args.fashion_root:
            parser.error("--fashion-root is needed on the GPU (or give --smoke)")
        args.mnist_root = args.mnist_root or write_bundled_mnist(Path(scratch) / "mnist")
        report = run(args)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "REPORT.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
