import json
import subprocess
import sys

from mnistlab.report import collect, markdown_table


def fake_job(sweep, number: int, name: str, test_acc: float, val_acc: float, seconds: float) -> None:
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(f"name: {name}\nseed: {number}\n")
    (job / "metrics.json").write_text(json.dumps({"test/acc": test_acc, "val/acc_best": val_acc,
                                                  "seconds_per_epoch": seconds}))


def test_report_groups_jobs_by_name_with_mean_and_sample_std(tmp_path):
    for number, acc in enumerate([0.90, 0.92, 0.94]):
        fake_job(tmp_path, number, "baseline", acc, acc + 0.01, 10.0 + number)
    fake_job(tmp_path, 3, "bag_of_tricks", 0.95, 0.96, 5.0)
    (tmp_path / "4").mkdir()  # a job that failed before writing metrics.json is not a row
    groups = collect(tmp_path)
    assert list(groups) == ["baseline", "bag_of_tricks"] and len(groups["baseline"]) == 3
    table = markdown_table(groups).splitlines()
    # mean 92.00, sample std sqrt(((-2)^2 + 0 + 2^2) / 2) = 2.00, epoch time (10 + 11 + 12) / 3 = 11.0
    assert table[2] == "| baseline | 3 | 92.00 ± 2.00 | 93.00 ± 2.00 | 11.0 |"
    assert table[3] == "| bag_of_tricks | 1 | 95.00 ± 0.00 | 96.00 ± 0.00 | 5.0 |"


def test_report_of_an_empty_folder_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mnistlab.report", str(tmp_path)], capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: no */metrics.json under {tmp_path}: is it a multirun folder?"
